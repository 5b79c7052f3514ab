"""Image → model input, exactly as SmilingWolf's own tagger prepares it (dataset-tools.md A3).

The models were trained on white-padded squares resized with PIL bicubic, fed as raw 0..255 BGR:
any deviation (edge-repeat padding, area resize, normalisation, RGB) shifts the probabilities and
so the captions, which is why this file follows the reference step by step.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lora_forge.errors import ForgeError

WHITE = (255, 255, 255)
# The largest white square built for padding (48 MB of RGB): beyond it the image is shrunk first.
# Photos up to 4096 px follow the reference exactly; the model sees 448 px either way.
MAX_SQUARE_SIDE = 4096


def to_rgb_on_white(image):
    """Alpha (including palette transparency) composited onto opaque white, then RGB."""
    from PIL import Image

    if image.mode in ("P", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, (*WHITE, 255))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    # No alpha channel: compositing onto opaque white would return the same pixels, so skip its cost.
    return image.convert("RGB") if image.mode != "RGB" else image


def prepare(image, size: int) -> np.ndarray:
    """One picture → float32 [size, size, 3], BGR, 0..255 (the batch dimension is added by the caller)."""
    from PIL import Image

    rgb = to_rgb_on_white(image)
    side = max(rgb.size)
    if side > MAX_SQUARE_SIDE:
        # Padding first would allocate side² pixels: 30000×100 became a 2.7 GB square (89M×1 far
        # more). Box-reduce by a whole factor to at most MAX_SQUARE_SIDE on the long side first
        # (a bicubic resize of 89M px would itself need GBs of filter weights); then the reference.
        rgb = rgb.reduce(-(-side // MAX_SQUARE_SIDE))
        side = max(rgb.size)
    if rgb.size != (side, side):
        square = Image.new("RGB", (side, side), WHITE)
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = square
    if side != size:
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.float32)[:, :, ::-1]


def load(path: Path, size: int) -> np.ndarray:
    """Decode and prepare one file; an unreadable one becomes a ForgeError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return prepare(im, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ForgeError(f"cannot read this image ({e.__class__.__name__}: {e}); it was skipped", path=path) from e
