"""Names of the files the preprocess stage writes: readable, Windows-safe and short enough.

A source name becomes an output stem that every file system and tool accepts: characters Windows
forbids become `_`, device names (`con`) get a prefix, a non-UTF-8 (GBK) name is decoded as the
person who made it reads it, and the stem is cut to MAX_STEM_BYTES of UTF-8 so that the longest
name we derive from it (`<stem>-12__face3.webp`, and the hidden `.<name>.XXXXXXXX.tmp` it is
written through) stays far below the 255-byte limit of ext4/NTFS (a 250-character stem failed
with ENAMETOOLONG).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from lora_forge.dataset.manifest import FACE_SUFFIX
from lora_forge.fsio import display_name

MAX_STEM_BYTES = 150
_BAD_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def clip_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes (whole characters)."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def output_stem(source_name: str, taken: set[str], out: Path, exts: tuple[str, ...]) -> str:
    """A stem for a source's outputs that no other source of this run (`taken`) and no file in
    `out` (with any of `exts`) uses yet; `taken` gains it."""
    base = _BAD_NAME.sub("_", PurePosixPath(display_name(source_name)).stem).strip(" .") or "image"
    base = clip_utf8(base.replace(FACE_SUFFIX, "_face"), MAX_STEM_BYTES).strip(" .") or "image"
    if base.upper() in _WINDOWS_DEVICES:  # "con.jpg" cannot be created on Windows
        base = f"_{base}"
    stem, n = base, 2
    while stem in taken or any((out / f"{stem}{ext}").exists() for ext in exts):
        stem, n = f"{base}-{n}", n + 1
    taken.add(stem)
    return stem
