"""Output sizes: one fixed square, or an aspect-ratio bucket per image that never upscales.

The bucket rule follows kohya's `bucket_no_upscale`: an image larger than the training area is
scaled down to that area keeping its aspect, a smaller one keeps its size, and both sides are then
rounded down to the step (64), so the crop trims at most one step and nothing is enlarged. Two
additions: the long side is capped at `max_side`, and an aspect beyond max_side:min_side is cropped
to that limit (a 5:1 panorama would otherwise give a side under `min_side`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SQUARE_SIZES = (512, 768, 1024)


@dataclass(frozen=True)
class SizeRule:
    size: int = 512  # the square side, or the bucket resolution (area = size * size)
    buckets: bool = False
    min_side: int = 256
    max_side: int = 1024
    step: int = 64

    def __post_init__(self) -> None:
        if self.size < self.step or self.size % 8:
            raise ValueError(f"size {self.size} must be a multiple of 8 and at least {self.step}")
        if not self.step <= self.min_side <= self.size <= self.max_side:
            raise ValueError(f"need step <= min_side <= size <= max_side, got {self}")

    def target(self, width: int, height: int) -> tuple[int, int]:
        """Output size for an image of `width` x `height` (after any crop the caller will make)."""
        if not self.buckets:
            return self.size, self.size
        return bucket_for(width, height, self.size, self.min_side, self.max_side, self.step)


def _round_down(value: float, step: int) -> int:
    return max(step, int(value // step) * step)


def bucket_for(width: int, height: int, resolution: int, min_side: int, max_side: int, step: int) -> tuple[int, int]:
    """The no-upscale bucket of one image (see the module docstring)."""
    max_aspect = max_side / min_side
    aspect = min(max(width / height, 1 / max_aspect), max_aspect)
    # the part of the image a bucket of that aspect can hold without upscaling
    w = min(width, height * aspect)
    h = w / aspect
    area = resolution * resolution
    if w * h > area:
        w = math.sqrt(area * aspect)
        h = w / aspect
    if max(w, h) > max_side:
        shrink = max_side / max(w, h)
        w, h = w * shrink, h * shrink
    return _round_down(w, step), _round_down(h, step)
