"""Where to cut: the crop box for a target size, chosen from faces or a saliency map.

Scale first, then crop: the box always has the target's aspect and spans the image's full width or
full height (the `cover` box), so a huge photo is scaled down rather than having a small window
cut out of it. Only its position is chosen:
- faces: every face is kept whole with a margin (hair above, chin below); if they do not all fit,
  the biggest/surest ones that fit together are kept; a single face sits in the upper part;
- no face: the window holding the most saliency.
Face crops (脸部加强) are the exception: a tighter square where the face fills about half the side.
All boxes are in the original image's pixels (after EXIF rotation).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lora_forge.dataset.buckets import SizeRule
from lora_forge.dataset.faces import Face

# Margin around a face box as a fraction of its size. YuNet's box runs from the brows to the chin,
# so hair needs more room above than the chin below.
MARGIN_SIDE = 0.25
MARGIN_TOP = 0.45
MARGIN_BOTTOM = 0.25
# A single face's centre is placed at this fraction of the crop height (upper part of the frame).
FACE_HEIGHT_POSITION = 0.36
# Face crops: the face's larger side is this fraction of the crop side.
FACE_CROP_FILL = 0.5
# A face crop needing more upscaling than this is not worth training on.
FACE_CROP_MAX_UPSCALE = 2.0

# "face" is what "auto" does, named for the per-image button that undoes a "centre" or "whole"
ACTIONS = ("auto", "face", "centre", "whole")


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    def rounded(self) -> list[int]:
        return [round(self.x0), round(self.y0), round(self.x1), round(self.y1)]

    def contains(self, other: Box, tol: float = 0.5) -> bool:
        return (
            other.x0 >= self.x0 - tol
            and other.y0 >= self.y0 - tol
            and other.x1 <= self.x1 + tol
            and other.y1 <= self.y1 + tol
        )


@dataclass
class CropPlan:
    box: Box  # in original pixels; may extend past the image only for "whole" (padding)
    out_size: tuple[int, int]
    faces: list[Face]  # the faces kept whole in the box
    flags: list[str]

    @property
    def scale(self) -> float:
        return self.out_size[0] / self.box.w


def face_box(face: Face) -> Box:
    return Box(face.x, face.y, face.x + face.w, face.y + face.h)


def padded(face: Face, width: int, height: int) -> Box:
    """The face with its margin, clipped to the image."""
    return Box(
        max(0.0, face.x - MARGIN_SIDE * face.w),
        max(0.0, face.y - MARGIN_TOP * face.h),
        min(float(width), face.x + face.w * (1 + MARGIN_SIDE)),
        min(float(height), face.y + face.h * (1 + MARGIN_BOTTOM)),
    )


def _union(boxes: Sequence[Box]) -> Box:
    return Box(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(v, hi))


def cover_size(width: int, height: int, out_w: int, out_h: int) -> tuple[float, float]:
    """The largest box of the output's aspect that fits in the image (= scale to cover, then crop)."""
    s = max(out_w / width, out_h / height)
    return min(out_w / s, float(width)), min(out_h / s, float(height))


def plan_main(
    width: int,
    height: int,
    out_size: tuple[int, int],
    faces: Sequence[Face],
    saliency: Any = None,
    action: str = "auto",
) -> CropPlan:
    """The crop for one image (see the module docstring); `saliency` is a map at any size, or None."""
    if action not in ACTIONS:
        raise ValueError(f"unknown crop action {action!r}")
    out_w, out_h = out_size
    flags: list[str] = []
    if action == "whole":
        # contain instead of cover: the whole picture, padded with white to the output's aspect
        s = min(out_w / width, out_h / height)
        bw, bh = out_w / s, out_h / s
        box = Box((width - bw) / 2, (height - bh) / 2, (width + bw) / 2, (height + bh) / 2)
        if bw > width + 0.5 or bh > height + 0.5:
            flags.append("padded")
        return _finish(CropPlan(box, out_size, list(faces), flags))
    bw, bh = cover_size(width, height, out_w, out_h)
    kept: list[Face] = []
    if action == "centre" or (not faces and saliency is None):
        cx, cy = width / 2, height / 2
    elif faces:  # "auto" or "face"
        kept, cx, cy = _face_focus(width, height, bw, bh, faces, flags)
    else:
        cx, cy = _saliency_focus(width, height, bw, bh, saliency)
    x0 = _clamp(cx - bw / 2, 0.0, width - bw)
    y0 = _clamp(cy - bh / 2, 0.0, height - bh)
    if kept:
        u = _union([padded(f, width, height) for f in kept])
        x0 = _clamp(x0, max(0.0, u.x1 - bw), min(u.x0, width - bw))
        y0 = _clamp(y0, max(0.0, u.y1 - bh), min(u.y0, height - bh))
        x0, y0 = _clamp(x0, 0.0, width - bw), _clamp(y0, 0.0, height - bh)
    return _finish(CropPlan(Box(x0, y0, x0 + bw, y0 + bh), out_size, kept, flags))


def _face_focus(
    width: int, height: int, bw: float, bh: float, faces: Sequence[Face], flags: list[str]
) -> tuple[list[Face], float, float]:
    """Keep as many faces as fit, the most important first; return them and the desired centre."""
    ranked = sorted(faces, key=lambda f: -(f.w * f.h * f.score))
    kept: list[Face] = []
    for f in ranked:
        u = _union([padded(g, width, height) for g in [*kept, f]])
        if u.w <= bw + 0.5 and u.h <= bh + 0.5:
            kept.append(f)
    if not kept:
        kept = ranked[:1]
        flags.append("face larger than the crop; cut")
    if len(kept) < len(faces):
        flags.append(f"kept {len(kept)} of {len(faces)} faces")
    if len(kept) == 1:
        f = kept[0]
        return kept, f.cx, f.cy + bh * (0.5 - FACE_HEIGHT_POSITION)
    u = _union([padded(g, width, height) for g in kept])
    return kept, (u.x0 + u.x1) / 2, (u.y0 + u.y1) / 2 + bh * 0.1


def _saliency_focus(width: int, height: int, bw: float, bh: float, saliency: Any) -> tuple[float, float]:
    """Centre of the cover-sized window with the most saliency (the window only moves along one axis)."""
    import numpy as np

    sh, sw = saliency.shape
    if bw < width - 0.5:
        profile, span, horizontal = saliency.sum(axis=0), bw / width * sw, True
    elif bh < height - 0.5:
        profile, span, horizontal = saliency.sum(axis=1), bh / height * sh, False
    else:
        return width / 2, height / 2
    n = len(profile)
    win = max(1, min(n, round(span)))
    sums = np.convolve(profile, np.ones(win), mode="valid")
    centre = (int(np.argmax(sums)) + win / 2) / n
    return (centre * width, height / 2) if horizontal else (width / 2, centre * height)


def _finish(plan: CropPlan) -> CropPlan:
    if plan.scale > 1.001:
        plan.flags.append(f"upscaled x{plan.scale:.2f}")
    return plan


def plan_face_crops(
    width: int, height: int, faces: Sequence[Face], out_size: int, min_side: int = 64, no_upscale: bool = False
) -> tuple[list[CropPlan], list[str]]:
    """A square per face where the face fills about half the side; notes for faces left out.

    With `no_upscale` (bucket mode) a small face gets a smaller square (multiple of 64) instead.
    """
    plans: list[CropPlan] = []
    notes: list[str] = []
    for i, f in enumerate(sorted(faces, key=lambda f: f.x)):
        side = min(max(f.w, f.h) / FACE_CROP_FILL, float(width), float(height))
        size = out_size
        if no_upscale and side < out_size:
            size = max(min_side, int(side // 64) * 64)
        if size / side > FACE_CROP_MAX_UPSCALE:
            notes.append(f"face {i + 1} is too small for a face crop (would need x{size / side:.1f} upscaling)")
            continue
        x0 = _clamp(f.cx - side / 2, 0.0, width - side)
        y0 = _clamp(f.cy - side * 0.45, 0.0, height - side)
        box = Box(x0, y0, x0 + side, y0 + side)
        plans.append(_finish(CropPlan(box, (size, size), [f], [])))
    return plans, notes


def render(image: Any, image_scale: float, plan: CropPlan) -> Any:
    """Cut and scale in one resampling pass; `image` may be a reduced decode (`image_scale` of the original)."""
    from PIL import Image

    b = plan.box
    box = (b.x0 * image_scale, b.y0 * image_scale, b.x1 * image_scale, b.y1 * image_scale)
    full_w, full_h = image.size[0] / image_scale, image.size[1] / image_scale
    if b.x0 >= -0.5 and b.y0 >= -0.5 and b.x1 <= full_w + 0.5 and b.y1 <= full_h + 0.5:
        box = (max(0.0, box[0]), max(0.0, box[1]), min(image.size[0], box[2]), min(image.size[1], box[3]))
        return image.resize(plan.out_size, Image.LANCZOS, box=box, reducing_gap=3.0)
    # "whole": the picture scaled into the output, on white
    out = Image.new("RGB", plan.out_size, (255, 255, 255))
    s = plan.out_size[0] / (b.w * image_scale)
    w, h = max(1, round(image.size[0] * s)), max(1, round(image.size[1] * s))
    out.paste(image.resize((w, h), Image.LANCZOS, reducing_gap=3.0), (round(-box[0] * s), round(-box[1] * s)))
    return out


def faces_in_output(plan: CropPlan, faces: Sequence[Face]) -> list[Face]:
    """Face boxes in the output image's pixels (for drawing them in the gallery)."""
    s = plan.scale
    return [Face((f.x - plan.box.x0) * s, (f.y - plan.box.y0) * s, f.w * s, f.h * s, f.score) for f in faces]


def cover_scale(rule: SizeRule) -> Any:
    """The decode scale a crop needs, from the header size: JPEGs are then decoded at 1/2, 1/4 or 1/8."""

    def needed(w: int, h: int) -> float:
        ow, oh = rule.target(w, h)
        return min(1.0, max(ow / w, oh / h))

    return needed


def to_pil(arr: Any) -> Any:
    from PIL import Image

    return Image.fromarray(arr)


def encode(image: Any, fmt: str) -> bytes:
    """An output image's file bytes (see prepare.FORMATS for why these settings)."""
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, "JPEG", quality=95, subsampling=0)
    elif fmt == "png":
        image.save(buf, "PNG", compress_level=1)
    else:
        image.save(buf, "WEBP", lossless=True, method=2)
    return buf.getvalue()
