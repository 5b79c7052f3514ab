"""modules/images.py: grids, grid labels and saving (the calls a NUM x STRENGTH grid makes)."""

from __future__ import annotations

import math
import os
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from modules import shared


def image_grid(imgs: list[Any], batch_size: int = 1, rows: int | None = None) -> Any:
    if rows is None:
        rows = int(shared.opts.data.get("n_rows", -1))
        rows = rows if rows > 0 else max(1, int(math.sqrt(len(imgs))))
    rows = min(rows, len(imgs))
    cols = math.ceil(len(imgs) / rows)
    w, h = max(i.width for i in imgs), max(i.height for i in imgs)
    grid = Image.new("RGB", size=(cols * w, rows * h), color=shared.opts.data.get("grid_background_color", "#ffffff"))
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w + (w - img.width) // 2, i // cols * h + (h - img.height) // 2))
    return grid


class GridAnnotation:
    def __init__(self, text: str = "", is_active: bool = True) -> None:
        self.text = text
        self.is_active = is_active
        self.size: Any = None


def draw_grid_annotations(
    im: Any,
    width: int,
    height: int,
    hor_texts: list[list[GridAnnotation]],
    ver_texts: list[list[GridAnnotation]],
    margin: int = 0,
) -> Any:
    cols, rows = im.width // width, im.height // height
    assert cols == len(hor_texts), f"bad number of horizontal texts: {len(hor_texts)}; must be {cols}"
    assert rows == len(ver_texts), f"bad number of vertical texts: {len(ver_texts)}; must be {rows}"
    font = ImageFont.load_default()
    line = 14
    pad_top = line * max(len(t) for t in hor_texts) + 4
    pad_left = width * 3 // 4 if any(a.text for t in ver_texts for a in t) else 0
    out = Image.new(
        "RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)), "white"
    )
    for r in range(rows):
        for c in range(cols):
            cell = im.crop((c * width, r * height, (c + 1) * width, (r + 1) * height))
            out.paste(cell, (pad_left + c * (width + margin), pad_top + r * (height + margin)))
    draw = ImageDraw.Draw(out)
    for c, texts in enumerate(hor_texts):
        for k, a in enumerate(texts):
            draw.text(
                (pad_left + c * (width + margin) + 2, 2 + k * line),
                a.text,
                fill="black" if a.is_active else "gray",
                font=font,
            )
    for r, texts in enumerate(ver_texts):
        for k, a in enumerate(texts):
            draw.text((2, pad_top + r * (height + margin) + height // 2 + k * line), a.text, fill="black", font=font)
    return out


def save_image(
    image: Any,
    path: str,
    basename: str,
    seed: Any = None,
    prompt: str | None = None,
    extension: str = "png",
    info: str | None = None,
    short_filename: bool = False,
    no_prompt: bool = False,
    grid: bool = False,
    pnginfo_section_name: str = "parameters",
    p: Any = None,
    existing_info: Any = None,
    forced_filename: str | None = None,
    suffix: str = "",
    save_to_dirs: bool | None = None,
) -> tuple[str, str | None]:
    """Numbered file name (never overwrites), infotext in the PNG, written via a .tmp rename."""
    os.makedirs(path, exist_ok=True)
    if forced_filename is None:
        number = len([f for f in os.listdir(path) if f.split("-", 1)[0].isdigit()])
        while True:
            stem = "-".join(x for x in (f"{number:05}", basename, str(seed) if seed is not None else "") if x)
            if not os.path.exists(os.path.join(path, f"{stem}{suffix}.{extension}")):
                break
            number += 1
    else:
        stem = forced_filename
    fullfn = os.path.join(path, f"{stem}{suffix}.{extension}")
    pnginfo = PngInfo()
    if info:
        pnginfo.add_text(pnginfo_section_name, info)
    tmp = fullfn + ".tmp"
    image.save(
        tmp, format="PNG" if extension == "png" else extension.upper(), pnginfo=pnginfo if extension == "png" else None
    )
    os.replace(tmp, fullfn)
    return fullfn, None
