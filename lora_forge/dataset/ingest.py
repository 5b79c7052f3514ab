"""Finding and decoding the user's images without trusting them: folders, zips, uploads.

Everything here reads; nothing writes. Originals are opened read-only and zip members are read
into memory by our own rules, never extracted by their stored names, so a hostile archive cannot
place a file anywhere. Every file that is not used lands in a `Skipped` entry with a reason the
user can act on, and the rest of the batch goes on.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lora_forge import fsio
from lora_forge.dataset.safe_files import Archive, file_problem, is_file, open_regular
from lora_forge.errors import ForgeError
from lora_forge.fsio import display_name

# Our own pixel limit, checked from the header before decoding. It equals Pillow's default warning
# threshold, so Pillow never warns about an image we accept; we never touch Image.MAX_IMAGE_PIXELS
# (other extensions in the same WebUI process rely on it).
MAX_PIXELS = 89_478_485
# One image file larger than this is not a photo; in a zip it is a bomb.
MAX_FILE_BYTES = 256 * 1024 * 1024
# Zip limits: sum of declared sizes, members, and the ratio that marks a member as a bomb when it is
# also big (a flat-colour BMP legitimately compresses 100x, but it is never 32 MB and 100x at once).
MAX_ZIP_TOTAL = 4 * 1024 * 1024 * 1024
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 100
ZIP_RATIO_FLOOR = 32 * 1024 * 1024

CAPTION_EXTS = (".txt", ".caption")
SYSTEM_FILES = {"thumbs.db", "desktop.ini", ".ds_store"}
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Skipped:
    source: str  # as the user knows it: a path, or "archive.zip:member"
    reason: str


@dataclass(frozen=True)
class SourceItem:
    """One candidate image: a file on disk, or a member of a zip on disk."""

    label: str
    path: Path  # the file itself, or the zip that holds it
    member: str | None = None
    caption: str | None = None  # path (or zip member) of the caption file that came with it
    archive: Archive | None = field(default=None, compare=False, repr=False)  # the zip, opened once

    @property
    def name(self) -> str:
        """The file name as the user knows it (a zip member's name re-decoded, see zip_name)."""
        return PurePosixPath(self.label.rsplit(":", 1)[-1]).name if self.member else self.path.name

    def read(self, limit: int = MAX_FILE_BYTES) -> bytes:
        """The file's bytes, refusing more than `limit` (a bomb or not an image)."""
        if self.member is None:
            with open_regular(self.path, self.label) as f:
                data = f.read(limit + 1)
        else:
            data = (self.archive or Archive(self.path)).read(self.member, limit + 1, self.label)
        if len(data) > limit:
            raise ForgeError(f"larger than {limit // (1024 * 1024)} MB; not an image we can use", path=self.label)
        return data

    def read_caption(self) -> str | None:
        if self.caption is None:
            return None
        if self.member is None:
            return fsio.read_text(self.caption)
        raw = (self.archive or Archive(self.path)).read(self.caption, MAX_FILE_BYTES, self.label)
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return raw.decode("gb18030", errors="replace")


@dataclass
class Scan:
    items: list[SourceItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def close(self) -> None:
        """Close the zips the items read from (on Windows an open zip cannot be deleted or moved)."""
        for archive in {id(i.archive): i.archive for i in self.items if i.archive is not None}.values():
            archive.close()


def scan(inputs: Sequence[str | os.PathLike[str]], exclude: Path | None = None) -> Scan:
    """Expand folders (recursively), zips and single files into candidate images.

    `exclude` is our output folder: when it lies inside a source folder it must not be read back.
    """
    result = Scan()
    loose: dict[Path, list[Path]] = {}
    for raw in inputs:
        path = Path(raw)
        try:
            st = path.stat()
        except OSError as e:
            result.skipped.append(
                Skipped(display_name(str(path)), f"cannot be read ({e.strerror or e}); check the path")
            )
            continue
        if stat.S_ISDIR(st.st_mode):
            _scan_folder(path, exclude, result)
        elif not stat.S_ISREG(st.st_mode):
            result.skipped.append(
                Skipped(display_name(str(path)), "not a regular file (a named pipe, socket or device)")
            )
        elif path.suffix.lower() == ".zip":
            _scan_zip(path, path.name, result)
        else:
            loose.setdefault(path.parent, []).append(path)
    for files in loose.values():
        _pair_files(files, lambda p: display_name(p.name), result)
    return result


def _scan_folder(root: Path, exclude: Path | None, result: Scan) -> None:
    excluded = exclude.resolve() if exclude is not None else None

    def label(p: Path) -> str:
        return display_name(str(p.relative_to(root.parent)))

    def on_error(e: OSError) -> None:
        where = label(Path(e.filename)) if e.filename else str(root)
        result.skipped.append(Skipped(where, f"folder cannot be read ({e.strerror}); check its permissions"))

    for folder, dirs, files in os.walk(root, onerror=on_error):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):
            if d.startswith(".") or (excluded is not None and (here / d).resolve() == excluded):
                continue
            keep.append(d)
        dirs[:] = keep
        paths = []
        for name in sorted(files):
            problem = file_problem(here / name)
            if name.startswith(".") or name.lower() in SYSTEM_FILES:
                result.skipped.append(Skipped(label(here / name), "hidden or system file"))
            elif problem:
                result.skipped.append(Skipped(label(here / name), problem))
            elif name.lower().endswith(".zip"):
                _scan_zip(here / name, label(here / name), result)
            else:
                paths.append(here / name)
        _pair_files(paths, label, result)


def _pair_files(paths: list[Path], label: Callable[[Path], str], result: Scan) -> None:
    """Images become items; `x.txt` beside `x.png` is that image's caption; lone text files are reported."""
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    for p in paths:
        by_stem.setdefault((p.parent, p.stem), []).append(p)
    for (folder, stem), group in by_stem.items():
        images = [p for p in group if p.suffix.lower() not in CAPTION_EXTS]
        if not images:
            for c in group:
                result.skipped.append(Skipped(label(c), "caption file with no image of the same name"))
            continue
        captions = [folder / f"{stem}{ext}" for ext in CAPTION_EXTS]
        caption = next((str(c) for c in captions if is_file(c)), None)
        for p in images:
            result.items.append(SourceItem(label(p), p, None, caption))


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    name = zip_name(info).replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path inside the zip; rejected (nothing extracted)"
    if ".." in PurePosixPath(name).parts:
        return "path with '..' inside the zip would escape the folder; rejected"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link inside the zip; rejected"
    if info.flag_bits & 0x1:
        return "encrypted zip member; unzip it yourself and add the images"
    if info.file_size > MAX_FILE_BYTES:
        return f"unpacks to {info.file_size // (1024 * 1024)} MB (zip bomb?); rejected"
    if info.file_size > ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        return f"compressed {info.file_size // max(info.compress_size, 1)}:1 (zip bomb?); rejected"
    return None


def _scan_zip(path: Path, label: str, result: Scan) -> None:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        result.skipped.append(Skipped(label, f"not a readable zip ({e}); re-create the archive"))
        return
    archive = Archive(path, zf)  # closed by Scan.close(), or when no item holds it any more
    if len(infos) > MAX_ZIP_MEMBERS:
        zf.close()
        result.skipped.append(Skipped(label, f"{len(infos)} members is too many for a dataset zip; rejected"))
        return
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_TOTAL:
        zf.close()
        result.skipped.append(
            Skipped(label, f"declares {total / 2**30:.1f} GB of content (zip bomb?); rejected, nothing read")
        )
        return
    groups: dict[tuple[str, str], list[zipfile.ZipInfo]] = {}
    for info in infos:
        if info.is_dir():
            continue
        name = zip_name(info).replace("\\", "/")
        where = f"{label}:{zip_name(info)}"
        problem = _zip_member_problem(info)
        if problem:
            result.skipped.append(Skipped(where, problem))
            continue
        pure = PurePosixPath(name)
        if any(part.startswith(".") or part == "__MACOSX" for part in pure.parts) or pure.name.lower() in SYSTEM_FILES:
            result.skipped.append(Skipped(where, "hidden or system file"))
            continue
        groups.setdefault((str(pure.parent), pure.stem), []).append(info)
    for (_parent, _stem), group in groups.items():
        captions = [i for i in group if PurePosixPath(i.filename).suffix.lower() in CAPTION_EXTS]
        images = [i for i in group if i not in captions]
        caption = captions[0].filename if captions else None
        if not images:
            for c in captions:
                result.skipped.append(Skipped(f"{label}:{zip_name(c)}", "caption file with no image of the same name"))
        for i in images:
            result.items.append(SourceItem(f"{label}:{zip_name(i)}", path, i.filename, caption, archive))


def zip_name(info: zipfile.ZipInfo) -> str:
    """A member's real name. Zips made by Windows' own "Send to > Compressed folder" on a Chinese
    system store GBK names without the UTF-8 flag, which zipfile decodes as cp437 mojibake
    ("╦╪▓─.jpg"); the stored bytes are tried as UTF-8, then GBK (GB18030)."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    for codec in ("utf-8", "gb18030"):
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    return info.filename


# --------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Decoded:
    """An RGB image and how it relates to the original.

    `size` is the original's full size after EXIF rotation: the coordinate system of every box in
    the manifest. `image` may be smaller (JPEG draft decoding); `scale` = image width / size width.
    """

    image: Any  # PIL.Image.Image, RGB
    size: tuple[int, int]
    format: str
    notes: list[str]

    @property
    def scale(self) -> float:
        return self.image.size[0] / self.size[0]


_EXIF_SWAPS = {5, 6, 7, 8}
# EXIF orientation -> PIL transpose method (the values of Image.Transpose), as ImageOps.exif_transpose
_EXIF_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


def register_plugins() -> None:
    """AVIF/HEIC readers the WebUI may have installed; without them those files are reported, not crashed on."""
    for name in ("pillow_avif", "pillow_heif"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        if name == "pillow_heif":
            module.register_heif_opener()


def decode(
    data: bytes,
    label: str,
    *,
    min_scale: float | Callable[[int, int], float] = 1.0,
    max_pixels: int = MAX_PIXELS,
) -> Decoded:
    """Decode image bytes to RGB, reading no more pixels than `min_scale` of the original needs.

    `min_scale` may be a function of the header's width and height. Only JPEG can decode at a
    reduced scale (1/2, 1/4, 1/8, never below the request); other formats decode in full.

    The pixel count is checked from the header before any pixel is decoded. Every failure raises
    ForgeError naming the file and the reason.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ForgeError("empty file (0 bytes); remove it or copy it again", path=label)
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ForgeError(f"too many pixels ({e}); a decompression bomb or a huge scan, skipped", path=label) from e
    except UnidentifiedImageError as e:
        raise ForgeError("not an image this Pillow can read (or a corrupt one); skipped", path=label) from e
    except Exception as e:  # Pillow plugins raise many types on malformed headers
        raise ForgeError(f"corrupt image header ({e.__class__.__name__}: {e}); skipped", path=label) from e
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ForgeError(
                f"{w}x{h} = {w * h / 1e6:.0f} megapixels is over the {max_pixels / 1e6:.0f} MP limit "
                "(decompression bomb?); skipped without decoding; shrink it first if it is real",
                path=label,
            )
        if w < 1 or h < 1:
            raise ForgeError("image has no pixels; skipped", path=label)
        fmt = im.format or "?"
        notes: list[str] = []
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            notes.append(f"animated: used the first of {frames} frames")
        scale = min_scale(w, h) if callable(min_scale) else min_scale
        if scale < 1.0 and fmt == "JPEG":
            im.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        try:
            im.load()  # before getexif(), which loads PNGs itself and hides a failed load
            orientation = _orientation(im)
            rgb = _to_rgb(im, notes)
            if orientation in _EXIF_TRANSPOSE:
                rgb = rgb.transpose(_EXIF_TRANSPOSE[orientation])
                notes.append("rotated by its EXIF orientation")
        except ForgeError:
            raise
        except Exception as e:
            reason = "truncated" if "truncated" in str(e) else "corrupt"
            raise ForgeError(f"{reason} image ({e.__class__.__name__}: {e}); skipped", path=label) from e
    size = (h, w) if orientation in _EXIF_SWAPS else (w, h)
    return Decoded(rgb, size, fmt, notes)


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block must not cost the picture
        return 1


def _to_rgb(im: Any, notes: list[str]) -> Any:
    """Any Pillow mode to RGB: alpha on white, 16-bit scaled (Pillow's own convert clamps it)."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
            arr = arr / 257.0
            notes.append("16-bit image scaled to 8 bits")
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if mode == "F" and hi <= 1.0 and lo >= 0.0:
                arr = arr * 255.0
            elif hi > 255 or lo < 0:
                arr = (arr - lo) * (255.0 / max(hi - lo, 1e-9))
                notes.append(f"{mode} image scaled from {lo:g}..{hi:g} to 8 bits")
        gray = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
        return im.convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("transparency composited on white")
        background = Image.new("RGB", im.size, WHITE)
        background.paste(im.convert("RGB"), mask=alpha)
        return background
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


# --------------------------------------------------------------------------------------------
# Duplicates

# Hamming distance on the 64-bit dHash at or below which two images are flagged as near copies.
# Measured on scikit-image's sample photos: re-encodes (JPEG q60), half-size copies and +-20 %
# brightness/contrast land at 0-2; 5 % crops at 6-16; the closest two *different* photos at 12.
# 6 flags every re-encode/resize/tone edit with margin and stays clear of distinct pictures.
NEAR_DUPLICATE_BITS = 6


def dhash(image: Any) -> int:
    """64-bit difference hash of a PIL image: robust to re-encoding, resizing and tone changes."""
    import numpy as np
    from PIL import Image

    g = np.asarray(image.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def near_duplicates(hashes: Iterable[tuple[str, int]], bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[str, str, int]]:
    """All pairs (a, b, distance) within `bits`; a dataset is tens of images, so pairs are cheap."""
    items = list(hashes)
    pairs = []
    for i, (a, ha) in enumerate(items):
        for b, hb in items[i + 1 :]:
            d = (ha ^ hb).bit_count()
            if d <= bits:
                pairs.append((a, b, d))
    return pairs
