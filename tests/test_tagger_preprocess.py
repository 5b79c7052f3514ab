"""Model input exactly as SmilingWolf's reference prepares it (dataset-tools.md A3)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_forge.tagger.labels import TagList, Thresholds, escape, match_key, mcut_threshold, predict, visible_form
from lora_forge.tagger.preprocess import prepare


def reference(image: Image.Image, size: int) -> np.ndarray:
    """The spec's steps written out literally: RGBA, composite on white, pad centred, bicubic, BGR."""
    if image.mode in ("P", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def test_transparent_pixels_become_white_and_channels_are_bgr() -> None:
    im = Image.new("RGBA", (2, 2), (255, 0, 0, 255))
    im.putpixel((1, 1), (0, 0, 255, 0))  # fully transparent blue
    im.putpixel((0, 1), (0, 0, 0, 128))  # half transparent black
    out = prepare(im, 2)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 255]  # red, written B, G, R
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[1, 0].tolist() == [127, 127, 127]  # half black over white


def test_padding_is_white_and_centred() -> None:
    im = Image.new("RGB", (4, 2), (10, 20, 30))
    out = prepare(im, 4)  # already the size: padded, not resized
    assert out[0].tolist() == [[255, 255, 255]] * 4  # top row: pad ((4-2)//2 = 1 row above)
    assert out[1].tolist() == [[30, 20, 10]] * 4
    assert out[2].tolist() == [[30, 20, 10]] * 4
    assert out[3].tolist() == [[255, 255, 255]] * 4
    tall = prepare(Image.new("RGB", (1, 3), (0, 0, 0)), 3)
    assert tall[:, 0].tolist() == [[255] * 3] * 3 and tall[:, 1].tolist() == [[0] * 3] * 3


@pytest.mark.parametrize(
    ("mode", "size", "target"),
    [("RGB", (300, 200), 64), ("RGBA", (123, 321), 64), ("L", (50, 70), 96), ("P", (80, 80), 48), ("LA", (33, 20), 48)],
)
def test_matches_the_reference_steps_exactly(mode: str, size: tuple[int, int], target: int) -> None:
    rng = np.random.default_rng(sum(size))
    base = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    im = base.convert(mode) if mode != "P" else base.convert("RGB").quantize(16)
    if mode == "P":
        im.info["transparency"] = 3
    assert np.array_equal(prepare(im, target), reference(im, target))


def test_small_images_are_upscaled_not_padded_to_the_model_size() -> None:
    out = prepare(Image.new("RGB", (8, 8), (0, 255, 0)), 32)
    assert out.shape == (32, 32, 3) and np.all(out == [0, 255, 0])


def test_tag_forms() -> None:
    assert visible_form("long_hair") == "long hair"
    assert visible_form("^_^") == "^_^" and visible_form("(o)_(o)") == "(o)_(o)" and visible_form("||_||") == "||_||"
    assert escape(visible_form("hu_tao_(genshin_impact)")) == r"hu tao \(genshin impact\)"
    assert escape("a\\b") == "a\\\\b"
    assert escape(visible_form("(o)_(o)")) == r"\(o\)_\(o\)"
    assert match_key(r"Star \(Symbol\)") == match_key("star_(symbol)") == "star (symbol)"


def test_mcut_takes_the_middle_of_the_biggest_gap() -> None:
    assert mcut_threshold(np.array([0.9, 0.1, 0.8, 0.7])) == pytest.approx(0.4)
    assert mcut_threshold(np.array([0.5])) == 0.0
    tags = TagList(["r1", "a", "b", "c", "ch"], np.array([9, 0, 0, 0, 4]))
    pred = predict(np.array([0.6, 0.9, 0.85, 0.2, 0.12], np.float32), tags, Thresholds(mcut=True))
    assert [n for n, _ in pred.tags] == ["a", "b"]  # the lone character at .12 stays under the 0.15 floor
    assert pred.character_threshold == 0.15 and pred.rating == ("r1", pytest.approx(0.6))
