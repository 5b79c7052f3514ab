"""File I/O rules shared by every stage: atomic writes, never-overwrite names, tolerant caption reads."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from lora_forge.errors import ForgeError

log = logging.getLogger(__name__)

# errno values that mean "no room left": the disk, or the user's quota on a shared machine
NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class DiskFull(ForgeError):
    """The disk (or quota) ran out while writing; the file being written was left as it was."""


def temp_prefix(name: str) -> str:
    """The hidden temp-file prefix for writing `name`: `.name.`, cut so that with mkstemp's 8
    random characters and `.tmp` it stays well inside the 255-byte name limit."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 160:
        name = raw[:160].decode("utf-8", "ignore") or "file"
    return f".{name}."


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A crash of the process at any moment leaves either the old file or the new one, never a
    half-written one. `durable=False` skips the fsync: for derived files that a re-run can make
    again (prepared images), where it only guards against a power cut and cost a third of the
    stage's extra time. The caller decides whether replacing an existing file is allowed.
    """
    path = Path(path)
    # A file with no write bit was marked read-only on purpose; honour that even when we could
    # replace it (root in a container, or a rename into a writable folder).
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise ForgeError("the file is read-only; make it writable or choose another folder", path=path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise DiskFull(
                "the disk is full; free some space and try again (the file was not changed)", path=path
            ) from e
        raise
    try:
        # mkstemp makes the file owner-only (0600); give it the mode the replaced file had, or the
        # mode a plain open() would have, so other tools and users can still read our captions.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise DiskFull(
                "the disk is full; free some space and try again (the file was not changed)", path=path
            ) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Captions and configs are always written as UTF-8 without BOM."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a caption or text file: UTF-8 (BOM tolerated), else GB18030 with a warning.

    Chinese Windows tools still save captions in GBK; GB18030 is a superset that decodes them.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError as e:
        raise ForgeError("not UTF-8 or GBK text; re-save it as UTF-8", path=path) from e
    log.warning("%s is not UTF-8; read it as GBK/GB18030 (it will be written back as UTF-8)", path)
    return text


def unused_path(path: str | os.PathLike[str]) -> Path:
    """`path` if nothing is there, else `stem-2.ext`, `stem-3.ext`, ...: we never overwrite."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def is_within(child: str | os.PathLike[str], parent: str | os.PathLike[str]) -> bool:
    """True when `child` resolves (links followed) to `parent` or somewhere below it."""
    c = Path(child).resolve()
    p = Path(parent).resolve()
    return c == p or p in c.parents


def display_name(text: str) -> str:
    """A name as a person reads it. A file name that is not UTF-8 (GBK, from a Chinese Windows
    copy) reaches Python on Linux as surrogate escapes, which no JSON or console can print; its
    bytes are decoded as GB18030 instead (backslash escapes when even that fails)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = os.fsencode(text)
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")
