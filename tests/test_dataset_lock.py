"""Two writers on one dataset: a cross-process lock makes the second wait (or refuses it after a
bounded time), a failed save restores only its own files, and temp files of killed saves go away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_forge.dataset import captions
from lora_forge.dataset.captions import list_history, save_captions
from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.lock import dataset_lock
from lora_forge.errors import ForgeError

ROOT = Path(__file__).resolve().parent.parent
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _dataset(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.png").write_bytes(TINY_PNG)
        (folder / f"{i:05d}.txt").write_text(f"photo, item{i}", encoding="utf-8")
    return folder


def _tags(folder: Path, *args: str, wait: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if wait is not None:
        env["LORA_FORGE_DATASET_LOCK_WAIT"] = str(wait)
    return subprocess.Popen(
        [sys.executable, "-m", "lora_forge", "tags", str(folder), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_tags_processes_on_one_dataset_both_land(tmp_path):
    folder = _dataset(tmp_path / "d", 1500)
    a, b = _tags(folder, "--add", "AAA"), _tags(folder, "--add", "BBB")
    for p in (a, b):
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    lost = [p.name for p in folder.glob("*.txt") if not {"AAA", "BBB"} <= set(captions.split_tags(p.read_text()))]
    assert lost == []
    assert [e.state for e in list_history(folder)] == ["done", "done"]
    assert not list(folder.rglob("*.tmp"))


def test_a_writer_that_cannot_get_the_lock_in_time_is_refused_and_writes_nothing(tmp_path):
    folder = _dataset(tmp_path / "d", 20)
    before = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    with dataset_lock(folder):  # this test process is the other writer
        started = time.monotonic()
        p = _tags(folder, "--add", "late", wait=1)
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 2
        assert "another program or tab is saving this dataset" in err and "Traceback" not in err
        assert time.monotonic() - started < 60
    assert {p.name: p.read_bytes() for p in folder.glob("*.txt")} == before
    p = _tags(folder, "--add", "late", wait=1)  # once the lock is free, the same command works
    assert p.communicate(timeout=120) and p.returncode == 0
    assert all("late" in p.read_text() for p in folder.glob("*.txt"))


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_a_killed_writer_never_leaves_the_dataset_locked(tmp_path, monkeypatch):
    folder = _dataset(tmp_path / "d", 3)
    code = (
        "import sys, time; from lora_forge.dataset.lock import dataset_lock\n"
        "with dataset_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("LORA_FORGE_DATASET_LOCK_WAIT", "0.5")
        with pytest.raises(ForgeError, match=r"did not finish within 0\.5 s"):
            save_captions({folder / "00000.txt": "x"}, folder, "test")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert save_captions({folder / "00000.txt": "after"}, folder, "test") is not None
    finally:
        holder.kill()
        holder.wait()


def test_failed_save_restores_only_its_own_files(tmp_path, monkeypatch):
    """Another program rewrites one caption between our write and our read-back: the read-back
    fails, and the restore puts back our other files but leaves that program's work alone."""
    folder = _dataset(tmp_path / "d", 4)
    victim = folder / "00002.txt"
    real = captions._write_many

    def write_then_someone_else_writes(data, placed):
        real(data, placed)
        if data and next(iter(data.values())) is not None and b"mine" in next(iter(data.values())):
            victim.write_text("their work", encoding="utf-8")

    monkeypatch.setattr(captions, "_write_many", write_then_someone_else_writes)
    changes = {p: "mine" for p in sorted(folder.glob("*.txt"))}
    with pytest.raises(ForgeError, match="except 1 that another program changed meanwhile"):
        save_captions(changes, folder, "test")
    assert victim.read_text(encoding="utf-8") == "their work"
    others = [p for p in folder.glob("*.txt") if p != victim]
    assert all(p.read_text(encoding="utf-8").startswith("photo, item") for p in others)


def test_temp_files_of_killed_saves_are_removed_when_the_dataset_is_opened(tmp_path):
    folder = _dataset(tmp_path / "d", 3)
    save_captions({folder / "00000.txt": "edited"}, folder, "test")  # the dataset has our state folder
    (folder / "sub").mkdir()
    strays = [folder / ".00001.txt.k3j_9zq1.tmp", folder / "sub" / ".x.txt.abcdefgh.tmp"]
    strays.append(next(list_history(folder)[0].folder.glob("*")).with_name(".index.json.a1b2c3d4.tmp"))
    kept = [folder / "notes.tmp", folder / ".hidden.tmp", folder / "00001.txt"]
    for p in strays + kept[:2]:
        p.write_bytes(b"half")
    ds = Dataset.load(folder)
    assert len(ds) == 3
    assert [p for p in strays if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_two_threads_of_one_process_are_kept_apart_too(tmp_path):
    """The tab saves from gradio's worker threads: one thread's save waits for another's."""
    import threading

    folder = _dataset(tmp_path / "d", 2)
    held, release = threading.Event(), threading.Event()

    def holder():
        with dataset_lock(folder):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(ForgeError, match="did not finish within"), dataset_lock(folder, wait=0.3):
            pass
    finally:
        release.set()
        t.join()
    with dataset_lock(folder, wait=0.3):  # free again, and re-entrant within one thread
        assert save_captions({folder / "00000.txt": "mine"}, folder, "test") is not None
