"""Fixtures and helpers for the preprocessing tests (tests/test_dataset_*.py).

The YuNet model comes from the shared test data (LORA_FORGE_TEST_MODELS, default
/work/shared/data/models); tests that need it are skipped with that reason when it is absent.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lora_forge.dataset import faces
from lora_forge.settings import Settings

TEST_MODELS = Path(os.environ.get("LORA_FORGE_TEST_MODELS", "/work/shared/data/models"))
YUNET = TEST_MODELS / faces.YUNET_FILE
# The face of skimage's astronaut in its 512x512 original (x, y, w, h), as given in the project's
# design notes (docs/design.md); the tests place the photo and so know where the face went.
ASTRONAUT_FACE = (178, 63, 90, 113)

needs_yunet = pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet test model not found at {YUNET}")


@pytest.fixture
def yunet_settings(tmp_path: Path) -> Settings:
    """Settings whose models folder holds YuNet as if placed by hand (no download)."""
    if not YUNET.is_file():
        pytest.skip(f"YuNet test model not found at {YUNET}")
    models = tmp_path / "models"
    folder = models / faces.YUNET_REPO.replace("/", "--")
    folder.mkdir(parents=True)
    shutil.copy(YUNET, folder / faces.YUNET_FILE)
    return Settings(models_dir=models, dataset_dir=tmp_path / "datasets", hf_endpoint="http://127.0.0.1:9")


def astronaut(scale: float = 1.0):
    from PIL import Image
    from skimage import data

    im = Image.fromarray(data.astronaut())
    if scale != 1.0:
        im = im.resize((round(512 * scale), round(512 * scale)), Image.LANCZOS)
    return im


def place_astronaut(canvas_size: tuple[int, int], at: tuple[int, int], scale: float = 1.0):
    """The astronaut pasted into a noisy canvas; returns (image, true face box x, y, w, h)."""
    import numpy as np
    from PIL import Image

    w, h = canvas_size
    rng = np.random.default_rng(w * 7 + h)
    bg = np.clip(rng.normal(110, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(bg)
    photo = astronaut(scale)
    canvas.paste(photo.crop((0, 0, min(photo.width, w - at[0]), min(photo.height, h - at[1]))), at)
    fx, fy, fw, fh = ASTRONAUT_FACE
    return canvas, (at[0] + fx * scale, at[1] + fy * scale, fw * scale, fh * scale)


def contains(crop_box: list[int], face: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = crop_box
    fx, fy, fw, fh = face
    return x0 <= fx and y0 <= fy and x1 >= fx + fw and y1 >= fy + fh


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below `folder`: content hash and mtime (ns), to prove originals are untouched."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def as_ordinary_user() -> Iterator[None]:
    """Make file permissions bind this thread even when the tests run as root (as in CI containers).

    Root reads a chmod-000 folder anyway through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH. Linux
    capabilities are per thread, so we lower them in this thread's effective set (and in threads it
    starts meanwhile) and raise them again afterwards: the kernel then really refuses the read.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    caps = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), caps) != 0:
        pytest.skip("cannot read capabilities")
    saved = caps[0].effective
    caps[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(header), caps) != 0:
        pytest.skip("cannot lower capabilities")
    try:
        yield
    finally:
        caps[0].effective = saved
        assert libc.capset(ctypes.byref(header), caps) == 0
