"""One writer at a time per dataset, across processes: the CLI, the tab and the API all take
`dataset_lock(root)` around anything that writes captions or their history.

Without it, `tags D --add AAA & tags D --add BBB` both read the captions, both wrote, and one edit
was lost (or the read-back check of one "restored" files the other had just written). The lock is a
`filelock.FileLock` on `<dataset>/.lora_forge/write.lock`: an OS lock (flock on POSIX, LockFileEx
on Windows) that the OS drops when its process dies, so a killed writer never leaves the dataset
locked. A second writer waits up to `wait` seconds, then is refused with a message.

Also here: removing the hidden `.name.XXXXXXXX.tmp` files that a write killed half-way leaves
behind (only while holding the lock, so no live writer's temp file is ever taken).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

log = logging.getLogger(__name__)

STATE_DIR = ".lora_forge"  # per-dataset folder for our own files (captions.STATE_DIR); loaders skip it
LOCK_NAME = "write.lock"
# Seconds a writer waits for another one; a 2,000-caption save takes a few seconds.
WAIT_ENV = "LORA_FORGE_DATASET_LOCK_WAIT"
DEFAULT_WAIT_S = 60.0
# tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"): the names fsio and captions write through
STRAY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

_locks: dict[str, Any] = {}
_locks_guard = threading.Lock()


def _locks_for(root: Path) -> tuple[threading.RLock, Any]:
    """(thread lock, file lock) of a dataset, one pair per process. The RLock keeps this process's
    threads apart whatever filelock version the WebUI has (before 3.10 a FileLock was re-entrant
    across threads); the FileLock keeps processes apart. Both re-enter within a thread (a save
    inside a locked CLI command)."""
    from filelock import FileLock

    folder = root / STATE_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise ForgeError(f"cannot lock the dataset for writing ({e.strerror}); nothing was saved", path=root) from e
    key = os.path.abspath(folder / LOCK_NAME)
    with _locks_guard:
        if key not in _locks:
            _locks[key] = (threading.RLock(), FileLock(key))
        return _locks[key]


def default_wait() -> float:
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        return DEFAULT_WAIT_S


@contextlib.contextmanager
def dataset_lock(root: str | os.PathLike[str], wait: float | None = None) -> Iterator[None]:
    """Hold the dataset's write lock for the block (waiting up to `wait` s, default 60 s)."""
    from filelock import Timeout

    root = Path(root)
    if not root.is_dir():
        raise ForgeError("the dataset folder does not exist; check the path", path=root)
    threads, lock = _locks_for(root)
    wait = default_wait() if wait is None else wait
    busy = ForgeError(
        f"another program or tab is saving this dataset and did not finish within {wait:g} s; "
        "save again when it is done; nothing was saved",
        path=root,
    )
    start = time.monotonic()
    if not threads.acquire(timeout=wait):
        raise busy
    try:
        try:
            lock.acquire(timeout=max(0.0, wait - (time.monotonic() - start)))
        except Timeout:
            raise busy from None
        except OSError as e:
            raise ForgeError(f"cannot lock the dataset for writing ({e.strerror}); nothing was saved", path=root) from e
        try:
            if lock.lock_counter == 1:
                remove_stray_temps(root)
            yield
        finally:
            lock.release()
    finally:
        threads.release()


def tidy(root: str | os.PathLike[str]) -> int:
    """Remove stray temp files when opening a dataset, if no writer is busy with it right now
    (then the next save does it). Returns how many were removed."""
    from filelock import Timeout

    root = Path(root)
    if not (root / STATE_DIR).is_dir():
        return 0  # we never wrote here (every save creates it before its first temp file)
    try:
        threads, lock = _locks_for(root)
    except ForgeError:
        return 0  # read-only media
    if not threads.acquire(blocking=False):
        return 0  # a writer of this process at work
    try:
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            return 0  # a writer elsewhere
        try:
            return remove_stray_temps(root) if lock.lock_counter == 1 else 0
        finally:
            lock.release()
    finally:
        threads.release()


def remove_stray_temps(root: Path) -> int:
    """Delete the hidden temp files of interrupted writes under `root` (links not followed)."""
    removed = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp") and STRAY_TEMP.match(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save in %s", removed, root)
    return removed
