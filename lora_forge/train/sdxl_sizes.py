"""SDXL's size conditioning per training image: original size, crop offset, target size.

SDXL was trained knowing, for every image, how big the original was and where the crop sat; at
generation the WebUI passes the render's size and a (0, 0) crop. Training with a constant (as if
every image were a 1024² uncropped original) teaches the LoRA that small or cropped photos look like
full-size ones. kohya passes each image's real values; so do we, and we know more than kohya: the
dataset manifest (dataset/manifest.py) remembers the photo each prepared image was cut from and the
crop box, so the original size is the *photo's* and the crop offset is where the training crop sits
in the photo scaled to training resolution.

The chain for one item: photo (W₀×H₀) → crop box (x0, y0, x1, y1) resized to the prepared image
(w×h) → resized to cover the bucket (bw×bh) and centre-cropped by `train.data.load_pixels` → maybe
flipped. All numbers are (height, width) / (top, left) pairs, as sgm's embedders take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SizeCond:
    original_hw: tuple[int, int]
    crop_tl: tuple[int, int]
    target_hw: tuple[int, int]


@dataclass(frozen=True)
class Origin:
    """Where a prepared image came from: the photo's size and the crop box in its pixels."""

    size: tuple[int, int]  # photo width, height
    box: tuple[int, int, int, int]  # x0, y0, x1, y1


def bucket_crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """(scale, resized w, resized h, left, top) of `load_pixels`' cover-resize and centre crop."""
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return scale, rw, rh, (rw - bw) // 2, (rh - bh) // 2


def size_cond(size: tuple[int, int], bucket: tuple[int, int], flip: bool, origin: Origin | None = None) -> SizeCond:
    """The three pairs for an image of `size` (w, h) trained at `bucket` (w, h)."""
    scale, rw, _rh, left, top = bucket_crop(size, bucket)
    bw, bh = bucket
    if flip:  # the crop of the mirrored image starts where the original's ended, seen from the right
        left = rw - bw - left
    if origin is None:
        return SizeCond((size[1], size[0]), (top, left), (bh, bw))
    (pw, ph), (x0, y0, x1, y1) = origin.size, origin.box
    sx = size[0] / max(1, x1 - x0) * scale  # photo pixels → training pixels
    sy = size[1] / max(1, y1 - y0) * scale
    before_x = (pw - x1) if flip else x0  # photo pixels left of the crop box (right of it when mirrored)
    return SizeCond((ph, pw), (round(y0 * sy) + top, round(before_x * sx) + left), (bh, bw))


def item_origins(items: list[Any]) -> list[Origin | None]:
    """The photo and crop box of each item that a dataset manifest in its folder knows about.

    An image the user changed after preparing (its size no longer the recorded one) gets None, so
    it is conditioned on its own size.
    """
    from lora_forge.dataset.manifest import Manifest

    manifests: dict[Path, Any] = {}
    out: list[Origin | None] = []
    for item in items:
        folder = Path(item.path).parent
        if folder not in manifests:
            try:
                manifests[folder] = Manifest.load(folder)
            except Exception:  # no or unreadable manifest: a plain folder of images
                manifests[folder] = None
        manifest = manifests[folder]
        source = manifest.by_output(Path(item.path).name) if manifest is not None else None
        record = next((o for o in source.outputs if o.file == Path(item.path).name), None) if source else None
        if record is None or tuple(record.size) != tuple(item.size) or len(source.size) != 2:
            out.append(None)
            continue
        x0, y0, x1, y1 = (int(v) for v in record.crop_box)
        out.append(Origin((int(source.size[0]), int(source.size[1])), (x0, y0, x1, y1)))
    return out


def size_tensors(conds: list[SizeCond]) -> dict[str, Any]:
    """The batch's pairs as the [B, 2] tensors sgm's size embedders take."""
    import torch

    return {
        "original_size_as_tuple": torch.tensor([c.original_hw for c in conds], dtype=torch.float32),
        "crop_coords_top_left": torch.tensor([c.crop_tl for c in conds], dtype=torch.float32),
        "target_size_as_tuple": torch.tensor([c.target_hw for c in conds], dtype=torch.float32),
    }
