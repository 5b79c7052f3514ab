"""A save killed with SIGKILL in the middle of a batch leaves every caption whole: old or new, never
empty or partial, and the interrupted save can still be rolled back from its history entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_forge.dataset.captions import list_history, rollback
from lora_forge.dataset.editor import Dataset

ROOT = Path(__file__).resolve().parent.parent
N = 300

# The child saves a batch edit of every caption. It announces each caption put in place on stdout
# (by watching os.replace, not by changing the save), so the parent can kill it at chosen points.
CHILD = r"""
import os, sys, time
from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.editor_ops import build_op

real_replace = os.replace
def announcing_replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".txt") and ".lora_forge" not in str(dst):
        sys.stdout.write("w\n"); sys.stdout.flush()
        time.sleep(0.002)  # a rename batch is so fast that the kill would land after it otherwise
os.replace = announcing_replace

ds = Dataset.load(sys.argv[1])
ds.apply(ds.plan(range(len(ds)), *build_op("regex", pattern="^(.*)$", repl=r"new \1 " + "y" * 3000)))
sys.stdout.write("saving\n"); sys.stdout.flush()
ds.save(reason="crash test")
sys.stdout.write("done\n"); sys.stdout.flush()
"""


def old_text(n: int) -> str:
    return f"tag{n}, " + "x" * (200 + n)


def make(folder: Path) -> Path:
    folder.mkdir()
    for n in range(N):
        (folder / f"{n:04d}.png").write_bytes(b"not decoded by the editor")
        (folder / f"{n:04d}.txt").write_text(old_text(n), encoding="utf-8")
    return folder


def new_text(n: int) -> str:
    return ", ".join(f"new {t} " + "y" * 3000 for t in (f"tag{n}", "x" * (200 + n)))


def kill_after(folder: Path, writes: int) -> int:
    """Run the child and SIGKILL it once it reported `writes` captions in place; returns how many it had
    reported by the time it died (the kill lands while it keeps writing)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    seen = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if writes == 0 and line.strip() == "saving":  # kill while backups and temp files are written
                os.kill(proc.pid, signal.SIGKILL)
                break
            if line.strip() == "w":
                seen += 1
                if seen >= writes:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            assert line.strip() != "done", "the save finished before the kill"
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


@pytest.mark.parametrize("writes", [0, 1, N // 2, N - 5])
def test_sigkill_during_a_batch_save_leaves_each_caption_old_or_new(tmp_path: Path, writes: int) -> None:
    folder = make(tmp_path / "set")
    t0 = time.monotonic()
    kill_after(folder, writes)
    states = {"old": 0, "new": 0}
    for n in range(N):
        text = (folder / f"{n:04d}.txt").read_text("utf-8")
        if text == old_text(n):
            states["old"] += 1
        elif text == new_text(n):
            states["new"] += 1
        else:
            pytest.fail(f"{n:04d}.txt is neither old nor new after the kill: {text[:60]!r} ({len(text)} chars)")
    assert states["new"] >= writes and states["old"] > 0, states  # the kill really landed mid-batch

    # the editor still loads the folder (temp files of the interrupted write are not taken for captions)
    ds = Dataset.load(folder)
    assert len(ds) == N
    history = list_history(folder)
    if writes == 0 and not history:
        assert states["old"] == N  # killed before the backup was complete: nothing was replaced yet
        return
    # the interrupted save is in the history, marked as such, and rolls back to the old captions
    entry = history[0]
    assert entry.reason == "crash test" and entry.state == "writing" and len(entry.files) == N
    rollback(folder, entry.id)
    for n in range(N):
        assert (folder / f"{n:04d}.txt").read_text("utf-8") == old_text(n)
    assert time.monotonic() - t0 < 60
