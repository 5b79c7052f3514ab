"""The grid picture: cells in place, labelled axes, infotext, saved where the user looks for it.

Inside the WebUI the host draws the labels with the WebUI's own image_grid +
draw_grid_annotations, so the grid looks like every X/Y/Z plot the user knows. Elsewhere we
draw them with a CJK-capable font (file names and prompts are often Chinese), falling back to
PIL's built-in font. Missing cells of a stopped grid are drawn as grey crossed boxes and the
file name and infotext say the grid is partial: nothing half-rendered passes for complete.
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.fsio import atomic_write_bytes, unused_path
from lora_forge.grid.plan import GridPlan
from lora_forge.grid.render import GridResult
from lora_forge.host.base import Host
from lora_forge.rundir import RunDir

FONT_CANDIDATES = (
    # Windows (the users' machines): Microsoft YaHei, SimHei, SimSun
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/msyh.ttf",
    "C:/Windows/Fonts/simhei.ttf",
    "C:/Windows/Fonts/simsun.ttc",
    # Linux: Noto CJK (fonts-noto-cjk), WenQuanYi, Droid fallback
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    # macOS
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
)
MISSING_FILL = (96, 96, 96)


@dataclass(frozen=True)
class Layout:
    """Where cell (column c, row r) sits in the labelled picture: (left + c*w, top + r*h)."""

    left: int
    top: int
    cell_w: int
    cell_h: int

    def box(self, col: int, row: int) -> tuple[int, int, int, int]:
        x, y = self.left + col * self.cell_w, self.top + row * self.cell_h
        return x, y, x + self.cell_w, y + self.cell_h


@functools.lru_cache(maxsize=1)
def font_path() -> str | None:
    """A font with Chinese glyphs: $LORA_FORGE_FONT, then the usual system places."""
    env = os.environ.get("LORA_FORGE_FONT", "").strip()
    for candidate in (env, *FONT_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    for folder in ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts")):
        if Path(folder).is_dir():
            for path in sorted(Path(folder).rglob("*CJK*")):
                if path.suffix.lower() in (".ttc", ".otf", ".ttf"):
                    return str(path)
    return None


@functools.lru_cache(maxsize=16)
def font(size: int) -> Any:
    from PIL import ImageFont

    path = font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default()


def _text_size(draw: Any, text: str, fnt: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def _fit(draw: Any, text: str, size: int, max_w: int) -> Any:
    """The largest font size up to `size` that fits `text` into `max_w` (at least 10 px)."""
    while size > 10 and _text_size(draw, text, font(size))[0] > max_w:
        size -= 2
    return font(size)


def missing_cell(width: int, height: int) -> Any:
    """A grey box with a cross: 'not rendered' at a glance, in any language."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), MISSING_FILL)
    d = ImageDraw.Draw(im)
    d.line((0, 0, width - 1, height - 1), fill=(160, 160, 160), width=max(1, width // 64))
    d.line((0, height - 1, width - 1, 0), fill=(160, 160, 160), width=max(1, width // 64))
    return im


def failed_cell(width: int, height: int, text: str = "NaN") -> Any:
    """A missing cell with a word saying why (the notes say it in full)."""
    from PIL import ImageDraw

    im = missing_cell(width, height)
    d = ImageDraw.Draw(im)
    f = _fit(d, text, max(10, height // 4), width - 4)
    tw, th = _text_size(d, text, f)
    d.text(((width - tw) / 2, (height - th) / 2), text, fill=(200, 30, 30), font=f)
    return im


def filled_cells(result: GridResult) -> list[list[Any]]:
    plan = result.plan
    out = []
    for r, row in enumerate(result.cells):
        line = []
        for c, cell in enumerate(row):
            if cell is not None:
                line.append(cell)
            elif (r, c) in result.failed:
                line.append(failed_cell(plan.width, plan.height, "NaN" if "NaN" in result.failed[(r, c)] else "failed"))
            else:
                line.append(missing_cell(plan.width, plan.height))
        out.append(line)
    return out


def draw_labelled(
    cells: list[list[Any]], x_labels: list[str], y_labels: list[str], x_title: str = "", y_title: str = ""
) -> tuple[Any, Layout]:
    """Our own labelled grid: column labels on top, row labels on the left."""
    from PIL import Image, ImageDraw

    w, h = cells[0][0].size
    size = max(12, (w + h) // 25)  # the WebUI's label size rule
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fnt = font(size)
    line_h = _text_size(probe, "Ag字", fnt)[1] + size // 2
    top = line_h * (2 if x_title else 1) + size // 2
    left = max([_text_size(probe, t, fnt)[0] for t in [*y_labels, y_title]] + [w // 4]) + size
    cols, rows = len(cells[0]), len(cells)
    canvas = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(canvas)
    if x_title:
        draw.text((left, size // 4), x_title, fill="black", font=fnt)
    if y_title:
        draw.text((size // 2, size // 4), y_title, fill="black", font=_fit(draw, y_title, size, left - size // 2))
    for c, text in enumerate(x_labels):
        f = _fit(draw, text, size, w - 4)
        tw, _th = _text_size(draw, text, f)
        draw.text((left + c * w + (w - tw) // 2, top - line_h), text, fill="black", font=f)
    for r, text in enumerate(y_labels):
        _tw, th = _text_size(draw, text, fnt)
        draw.text((size // 2, top + r * h + (h - th) // 2), text, fill="black", font=fnt)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            canvas.paste(cell.convert("RGB"), (left + c * w, top + r * h))
    return canvas, Layout(left, top, w, h)


def labelled(result: GridResult) -> tuple[Any, Layout]:
    """Our labelled picture of `result` (missing cells marked), and where its cells are."""
    plan = result.plan
    return draw_labelled(filled_cells(result), plan.x_labels(), plan.y_labels(), f"{plan.run}: epoch", "strength")


def grid_picture(result: GridResult, host: Host | None = None) -> tuple[Any, Layout | None]:
    """The labelled grid; the host's own annotator when it has one (Layout is then None)."""
    plan = result.plan
    if host is not None:
        flat = [c for row in filled_cells(result) for c in row]
        image = host.annotate_grid(flat, len(plan.strengths), plan.x_labels(), plan.y_labels())
        if image is not None:
            return image, None
    return labelled(result)


def infotext(result: GridResult, model_name: str = "") -> str:
    """The WebUI's `parameters` text (prompt, Negative prompt, key: value line) plus the grid's axes,
    so PNG Info and every infotext reader show how the grid was made."""
    plan = result.plan
    fields: dict[str, Any] = {
        "Steps": plan.steps,
        "Sampler": plan.sampler,
        "CFG scale": f"{plan.cfg_scale:g}",
        "Seed": plan.seed,
        "Size": f"{plan.width}x{plan.height}",
    }
    if model_name:
        fields["Model"] = model_name
    fields.update(
        {
            "Script": "LoRA Forge grid",
            "X Type": "LoRA epoch",
            "X Values": ", ".join(f.path.stem for f in plan.files),
            "Y Type": "LoRA strength",
            "Y Values": ", ".join(plan.y_labels()),
            "Trigger": plan.trigger,
        }
    )
    if not result.complete:
        why = result.stopped or f"{len(result.failed)} failed"
        fields["Grid"] = f"partial, {result.rendered} of {plan.cells} cells ({why})"
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v != "")
    return f"{plan.prompt}\nNegative prompt: {plan.negative_prompt}\n{line}"


def _quote(value: Any) -> str:
    """The WebUI's infotext quoting: JSON-quote a value that holds a comma, colon or newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(ch in text for ch in ",:\n") else text


def png_bytes(image: Any, text: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Any, path: Path, text: str) -> Path:
    """Write under `path`, or beside it under a fresh name: an earlier grid is never overwritten."""
    path = unused_path(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(image, text))
    return path


def default_path(result: GridResult) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RunDir(result.plan.folder).grid_file(result.plan.run, stamp, partial=not result.complete)


def save_grid(
    result: GridResult, image: Any, text: str, out: Path | None = None, host: Host | None = None
) -> list[Path]:
    """Into the run folder, to `out` when given, and where the host keeps its grids."""
    saved = [save_png(image, default_path(result), text)]
    if out is not None:
        saved.append(save_png(image, out, text))
    if host is not None:
        where = host.save_grid(image, text)
        if where is not None:
            saved.append(Path(where))
    return saved


def heatmap(image: Any, layout: Layout, scores: list[list[float | None]], labels: list[list[str]]) -> Any:
    """The grid with each cell tinted red (low) → green (high) by its score, the score written in
    the corner. `scores[row][col]` in 0..1; None leaves a cell untinted."""
    from PIL import Image, ImageDraw

    out = image.convert("RGB").copy()
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    fnt = font(max(10, layout.cell_h // 8))
    for r, row in enumerate(scores):
        for c, value in enumerate(row):
            if value is None:
                continue
            v = min(1.0, max(0.0, value))
            colour = (int(255 * (1 - v)), int(200 * v), 40, 110)
            x0, y0, x1, y1 = layout.box(c, r)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
            text = labels[r][c]
            tw, th = _text_size(draw, text, fnt)
            draw.rectangle((x0, y0, x0 + tw + 6, y0 + th + 6), fill=(0, 0, 0, 170))
            draw.text((x0 + 3, y0 + 2), text, fill=(255, 255, 255, 255), font=fnt)
    return Image.alpha_composite(out.convert("RGBA"), overlay).convert("RGB")


def cell_from_picture(image: Any, layout: Layout, col: int, row: int) -> Any:
    return image.crop(layout.box(col, row))


def plan_summary(plan: GridPlan) -> dict[str, Any]:
    return {
        "run": plan.run,
        "folder": str(plan.folder),
        "files": [{"file": str(f.path), "epoch": f.epoch, "final": f.is_final, "label": f.label} for f in plan.files],
        "strengths": plan.strengths,
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "seed": plan.seed,
        "steps": plan.steps,
        "cfg_scale": plan.cfg_scale,
        "size": [plan.width, plan.height],
        "sampler": plan.sampler,
        "trigger": plan.trigger,
        "notes": plan.notes,
    }
