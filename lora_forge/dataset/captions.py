"""Caption files: parse and join tags, read tolerantly, save safely with an on-disk history.

Every stage that writes captions (the tagger, the editor, the CLI) goes through `save_captions`, so
the rules hold everywhere: only files whose text really changes are written, each one atomically,
and the bytes they held before are first copied into `<dataset>/.lora_forge/history/<id>/`. Any
save can therefore be rolled back, also after a restart or a crash in the middle of a save.

Caption syntax (decided here, used by every stage):
- Tags are separated by commas. The full-width comma `，` that Chinese input methods type, and line
  breaks (LF, CRLF, CR), separate tags too. Whitespace around a tag is dropped, runs of inner
  whitespace become one space, empty tags (`a,,b`, trailing commas) vanish.
- Nothing else splits a tag: free text such as `a girl standing in the rain` stays one tag, so
  BLIP-style sentences survive a round trip unchanged; parentheses, escapes (`\\(`), underscores
  and kaomoji (`^_^`) are kept exactly as written (a booru tag like `name_(series)` is never cut in
  two, unlike BDTM #188).
- Tags are written back joined with ", " and no trailing newline, as UTF-8 without BOM.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lora_forge import fsio
from lora_forge.dataset.lock import STATE_DIR, dataset_lock
from lora_forge.errors import ForgeError

log = logging.getLogger(__name__)

CAPTION_EXT = ".txt"
HISTORY_DIR = "history"
INDEX_NAME = "index.json"
BACKUP_NAME = "before.zip"  # the previous bytes of every file of one save

_TO_COMMA = str.maketrans({"，": ",", "\r": ",", "\n": ",", "\ufeff": None})


def split_tags(text: str | None) -> list[str]:
    """Caption text → tags, tolerant of the separators and stray commas real datasets contain.
    (str methods, not regular expressions: loading 5,000 captions is dominated by this.)"""
    if not text:
        return []
    tags = []
    for part in text.translate(_TO_COMMA).split(","):
        tag = " ".join(part.split())
        if tag:
            tags.append(tag)
    return tags


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def caption_path_for(image_path: str | os.PathLike[str], ext: str = CAPTION_EXT) -> Path:
    """`img.png` → `img.txt` (kohya and the WebUI both pair files by stem in the same folder)."""
    return Path(image_path).with_suffix(ext)


def read_caption(path: str | os.PathLike[str]) -> str | None:
    """The caption text, or None when there is no caption file (an untagged image is normal)."""
    try:
        return fsio.read_text(path)
    except FileNotFoundError:
        return None
    except IsADirectoryError as e:
        raise ForgeError("a folder has the name of a caption file; rename it", path=path) from e
    except PermissionError as e:
        raise ForgeError("cannot read this caption file; check its permissions", path=path) from e


# ----------------------------------------------------------------------------------- history


@dataclass
class FileChange:
    """One file of a saved batch. `backup` names the copy of the old bytes inside the entry folder."""

    path: str  # relative to the dataset root, with forward slashes
    old_exists: bool
    new_exists: bool
    backup: str | None = None


@dataclass
class HistoryEntry:
    id: str
    time: float
    reason: str
    files: list[FileChange] = field(default_factory=list)
    # "writing" until every file is in place; an entry left in "writing" marks a save that was
    # interrupted (crash, power loss) and can still be rolled back.
    state: str = "writing"
    folder: Path | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "time": self.time,
            "reason": self.reason,
            "state": self.state,
            "files": [vars(f) for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Mapping, folder: Path) -> HistoryEntry:
        files = [FileChange(**f) for f in data.get("files", [])]
        return cls(data["id"], float(data["time"]), data.get("reason", ""), files, data.get("state", "?"), folder)


def history_root(dataset_root: str | os.PathLike[str]) -> Path:
    return Path(dataset_root) / STATE_DIR / HISTORY_DIR


def _new_entry_id() -> str:
    """Sorts by time; the random tail keeps two saves in the same microsecond apart."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{int(now * 1e6) % 1_000_000:06d}-{secrets.token_hex(2)}"


def _relative(path: Path, root: Path) -> str:
    """Path inside the dataset, as stored in the history (abspath, not resolve: thousands of
    resolve() calls are slow on network shares, and our paths come from scanning the root)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise ForgeError(f"caption file is outside the dataset folder {root}", path=path) from None


def _is_read_only(path: Path) -> bool:
    """os.access alone says "writable" to root (cloud containers run as root), so check the mode bits
    too: they carry the Windows read-only attribute and `chmod a-w`."""
    st = path.stat()
    return not (st.st_mode & stat.S_IWUSR) or not os.access(path, os.W_OK)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ForgeError(f"cannot read it before saving ({e.strerror}); nothing was saved", path=path) from e


def _read_or_none(path: Path) -> bytes | object | None:
    """The bytes, None when absent, or a sentinel equal to nothing when unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return object()


def _utf8_ok(text: str) -> bool:
    """False for a name with undecodable bytes (a GBK file name on Linux, kept as surrogates)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _write_index(entry: HistoryEntry) -> None:
    assert entry.folder is not None
    data = entry.to_json()
    # \u escapes keep a non-UTF-8 (GBK) file name's exact bytes; plain UTF-8 otherwise
    text = json.dumps(data, ensure_ascii=not all(_utf8_ok(f.path) for f in entry.files), indent=1)
    fsio.atomic_write_text(entry.folder / INDEX_NAME, text)


def _preflight(root: Path, targets: Iterable[Path]) -> None:
    """Refuse the whole batch before the first write, so a save never stops half-way on a
    problem we could have seen (a vanished folder, a read-only caption)."""
    if not root.is_dir():
        raise ForgeError("the dataset folder is gone (moved, renamed or unplugged?); nothing was saved", path=root)
    read_only = [p for p in targets if p.exists() and _is_read_only(p)]
    if read_only:
        names = ", ".join(p.name for p in read_only[:5]) + (" …" if len(read_only) > 5 else "")
        raise ForgeError(
            f"{len(read_only)} caption file(s) are read-only ({names}); make them writable and save again; "
            "nothing was saved"
        )
    missing_dirs = {p.parent for p in targets if not p.parent.is_dir()}
    if missing_dirs:
        raise ForgeError(f"folder {sorted(missing_dirs)[0]} is gone; nothing was saved")


def _fsync_dirs(folders: Iterable[Path]) -> None:
    """Make the renames themselves durable (POSIX; Windows has no directory handles for this)."""
    if os.name == "nt":
        return
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_many(data: Mapping[Path, bytes | None], placed: list[Path]) -> None:
    """fsio's rule (temp file, fsync, rename) for a whole batch, in three passes: write every temp
    file, fsync them from a few threads at once (the file system commits them together: a
    2,700-file save went from ~50 s to a few seconds on ext4), then rename each into place.
    A crash before the renames leaves only hidden temp files; during them, each caption is old or
    new. `placed` collects the files already in place so the caller can put them back on error."""
    from concurrent.futures import ThreadPoolExecutor

    temps: dict[Path, str] = {}
    try:
        for path, content in data.items():
            if content is None:
                continue
            fd, tmp = tempfile.mkstemp(prefix=fsio.temp_prefix(path.name), suffix=".tmp", dir=path.parent)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            try:  # keep the caption's permissions (mkstemp makes 0600 files)
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else _DEFAULT_MODE)
            except OSError:
                pass

        def sync(tmp: str) -> None:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(sync, temps.values()))
        for path, content in data.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(temps[path], path)
                del temps[path]
            placed.append(path)
        _fsync_dirs({p.parent for p in data})
    finally:
        for tmp in temps.values():  # only left when something failed before its rename
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_DEFAULT_MODE = _umask_mode()


def _commit(root: Path, new_data: dict[Path, bytes | None], reason: str) -> HistoryEntry | None:
    """Back up, then write. Shared by save and rollback so a rollback is itself undoable."""
    old_data: dict[Path, bytes | None] = {}
    for path, data in new_data.items():
        old = _read_bytes(path)
        if old != data:
            old_data[path] = old
    if not old_data:
        return None
    _preflight(root, old_data)

    entry = HistoryEntry(_new_entry_id(), time.time(), reason)
    entry.folder = history_root(root) / entry.id
    try:
        entry.folder.mkdir(parents=True)
    except OSError as e:
        raise ForgeError(f"cannot create the history folder ({e.strerror}); nothing was saved", path=root) from e
    # All old versions go into one zip: one file to fsync instead of one per caption.
    import zipfile  # here, not at the top: the WebUI imports us at start-up

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, old in old_data.items():
            change = FileChange(_relative(path, root), old is not None, new_data[path] is not None)
            if old is not None:
                member = change.path if _utf8_ok(change.path) else f"non-utf8/{len(entry.files)}"  # GBK names
                change.backup = f"{BACKUP_NAME}:{member}"
                zf.writestr(member, old)
            entry.files.append(change)
    fsio.atomic_write_bytes(entry.folder / BACKUP_NAME, buf.getvalue())
    _write_index(entry)  # from here on the old bytes are safe on disk

    placed: list[Path] = []
    try:
        _write_many({p: new_data[p] for p in old_data}, placed)
        bad = [p for p in old_data if _read_bytes(p) != new_data[p]]  # read back: BDTM #104 lost tags silently
        if bad:
            raise ForgeError("a file read back differs from what was written; check the disk", path=bad[0])
    except (OSError, ForgeError) as e:
        # Put the batch back as it was, but only the files that still hold what we wrote: one that
        # changed again meanwhile holds someone else's work, which a restore must never overwrite.
        ours = [p for p in placed if _read_or_none(p) == new_data[p]]
        try:
            _write_many({p: old_data[p] for p in ours}, [])
        except OSError:
            log.exception("could not restore every caption; the old ones are in %s", entry.folder)
        entry.state = "failed"
        _write_index(entry)
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        others = len(placed) - len(ours)
        if others:
            raise ForgeError(
                f"saving stopped ({detail}); the files written were restored, except {others} that another "
                "program changed meanwhile, which were left as that program wrote them"
            ) from e
        raise ForgeError(f"saving stopped ({detail}); the files written were restored, nothing changed") from e
    entry.state = "done"
    _write_index(entry)
    return entry


def _decode(raw: bytes | None) -> str | None:
    """The same reading rule as fsio.read_text, for bytes already in hand."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("gb18030", errors="replace")


def save_captions(
    changes: Mapping[Path, str | None],
    dataset_root: str | os.PathLike[str],
    reason: str,
    expected: Mapping[Path, str | None] | None = None,
) -> HistoryEntry | None:
    """Write caption texts (None deletes the caption) and record the previous bytes in the history.

    Files whose bytes would not change are not touched; returns None when nothing changed.
    `expected` is the text the caller loaded for those files; when a file on disk no longer holds it
    (another tool, e.g. the tagger, rewrote it meanwhile) the save is refused instead of silently
    overwriting that work.
    """
    root = Path(dataset_root)
    if not root.is_dir():
        raise ForgeError("the dataset folder is gone (moved, renamed or unplugged?); nothing was saved", path=root)
    paths = {Path(p): text for p, text in changes.items()}
    for p in paths:
        _relative(p, root)
    with dataset_lock(root):  # the check below and the write are one step for every other writer
        return _save_locked(root, paths, reason, expected)


def _save_locked(
    root: Path, paths: dict[Path, str | None], reason: str, expected: Mapping[Path, str | None] | None
) -> HistoryEntry | None:
    if expected is not None:
        stale = [p for p, text in expected.items() if Path(p) in paths and _decode(_read_bytes(Path(p))) != text]
        if stale:
            raise ForgeError(
                f"{len(stale)} caption(s) changed on disk since they were loaded (first: {Path(stale[0]).name}); "
                "reload the dataset and redo the edit; nothing was saved"
            )
    data = {p: None if text is None else text.encode("utf-8") for p, text in paths.items()}
    return _commit(root, data, reason)


def list_history(dataset_root: str | os.PathLike[str]) -> list[HistoryEntry]:
    """Newest first. Entries whose index cannot be read are skipped with a warning, never deleted."""
    folder = history_root(dataset_root)
    if not folder.is_dir():
        return []
    entries = []
    for sub in sorted(folder.iterdir(), reverse=True):
        index = sub / INDEX_NAME
        if not index.is_file():
            continue
        try:
            entries.append(HistoryEntry.from_json(json.loads(index.read_text("utf-8")), sub))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("skipping unreadable history entry %s: %s", sub, e)
    return entries


def rollback(dataset_root: str | os.PathLike[str], entry_id: str) -> HistoryEntry | None:
    """Put back the files of one save as they were before it; recorded as a new, undoable entry.

    Files that were edited again after that save are rolled back too (to their state before
    `entry_id`); the later entries still hold those later versions.
    """
    root = Path(dataset_root)
    with dataset_lock(root):
        return _rollback_locked(root, entry_id)


def _rollback_locked(root: Path, entry_id: str) -> HistoryEntry | None:
    match = [e for e in list_history(root) if e.id == entry_id]
    if not match:
        raise ForgeError(f"no saved history entry {entry_id!r}; list them with `tags DIR --history`", path=root)
    entry = match[0]
    assert entry.folder is not None
    import zipfile

    data: dict[Path, bytes | None] = {}
    try:
        with zipfile.ZipFile(entry.folder / BACKUP_NAME) as zf:
            for f in entry.files:
                data[root / f.path] = zf.read(f.backup.partition(":")[2]) if f.backup else None
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ForgeError(
            f"the backup of this save is missing or damaged ({e}); nothing was rolled back", path=entry.folder
        ) from e
    return _commit(root, data, f"rollback of {entry.id} ({entry.reason})")


def prune_history(dataset_root: str | os.PathLike[str], keep: int) -> int:
    """Delete all but the newest `keep` entries; the user asks for this, we never do it on our own."""
    removed = 0
    with dataset_lock(dataset_root):
        for entry in list_history(dataset_root)[keep:]:
            assert entry.folder is not None
            shutil.rmtree(entry.folder)
            removed += 1
    return removed
