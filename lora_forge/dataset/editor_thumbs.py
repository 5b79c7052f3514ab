"""Gallery thumbnails, made once per image version and cached on disk.

The cache lives in the dataset (`.lora_forge/thumbs/`), keyed by the image's path, size and mtime,
so reopening a 5,000-image dataset decodes nothing that was decoded before, and an edited image
gets a fresh thumbnail. Each image is opened, shrunk and closed at once: no PIL file handles stay
open (DTE ran out of file descriptors at a few hundred images).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from pathlib import Path

from lora_forge import fsio
from lora_forge.dataset.captions import STATE_DIR

log = logging.getLogger(__name__)

GALLERY_SIZE = 256
PREVIEW_SIZE = 640
# Keys (path, size, mtime) of images that failed to decode in this process: not retried (and not
# logged again) on every page view; an edited image has a new key and is tried again.
_FAILED: set[str] = set()


def _temp_cache(name: str) -> Path:
    folder = Path(tempfile.gettempdir()) / "lora_forge_thumbs" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_dir(dataset_root: Path) -> Path:
    """The dataset's thumbnail folder; a per-dataset temp folder when the dataset is read-only
    (a mounted share, a CD), so browsing never needs write access."""
    folder = dataset_root / STATE_DIR / "thumbs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError:
        return _temp_cache(hashlib.sha1(str(dataset_root.resolve()).encode()).hexdigest()[:16])


def _key(image: Path, size: int) -> str | None:
    try:
        st = image.stat()
    except OSError:
        return None
    ident = f"{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}"
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()


def _render(image: Path, size: int) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(image) as im:
        im.draft("RGB", (size, size))  # JPEG decodes at a fraction of full size: much faster
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size))
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (128, 128, 128))
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _placeholder(size: int) -> Path:
    """A grey square for images that cannot be decoded or have vanished, so the gallery keeps its
    order. It lives in the temp folder: the dataset folder may be the thing that vanished."""
    path = _temp_cache("shared") / f"unreadable-{size}.jpg"
    if not path.exists():
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (size, size), (90, 90, 90)).save(buf, "JPEG")
        fsio.atomic_write_bytes(path, buf.getvalue())
    return path


def thumbnail(folder: Path, image: Path, size: int = GALLERY_SIZE) -> Path:
    """The cached thumbnail of `image` in `folder` (see cache_dir), made now if missing."""
    key = _key(image, size)
    if key is None:
        return _placeholder(size)
    path = folder / f"{key}.jpg"
    if path.exists():
        return path
    if key in _FAILED:
        return _placeholder(size)
    from PIL import Image

    try:
        data = _render(image, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # the image's fault, not ours
        log.warning("cannot make a thumbnail of %s: %s", image, e)
        _FAILED.add(key)
        return _placeholder(size)
    try:
        fsio.atomic_write_bytes(path, data)
    except OSError as e:  # the cache folder went away with the dataset (unplugged drive): still show it
        log.warning("cannot cache the thumbnail of %s: %s", image, e)
        path = _temp_cache("shared") / f"{key}.jpg"
        fsio.atomic_write_bytes(path, data)
    return path
