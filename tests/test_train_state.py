"""The training state is one commit: a state torn at any of its files (a crash or a full disk in the
middle of a save) is never resumed; the last complete one is, and the log says so."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from lora_forge import fsio
from lora_forge.errors import ForgeError
from lora_forge.rundir import RunDir
from lora_forge.train import state

torch = pytest.importorskip("torch")
KINDS = ("weights", "optimizer", "rng", "position")


class _Killed(BaseException):
    """The process dies here: nothing after it runs."""


def _parts(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return net, opt, sched


def _save(run_dir: Path, step: int) -> Path:
    net, opt, sched = _parts(step)
    return state.save_state(run_dir, net, opt, sched, state.Position(step, 0, step, 10, 0.0, "hash"))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    _save(folder, 1)
    _save(folder, 2)
    return folder


def test_a_complete_state_is_found_and_nothing_of_the_commit_is_left(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == ["state"]
    assert state.check_state(state.find_state(run_dir)).step == 2
    record = json.loads((run_dir / "state" / "state.json").read_text(encoding="utf-8"))
    assert sorted(record["files"]) == ["optimizer.state", "rng.json", "weights.state"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_torn_at_any_file_is_refused_with_the_reason(run_dir, tmp_path, kind):
    other = tmp_path / "other"
    other.mkdir()
    _save(other, 3)  # the same file from a later save: what a crash between two writes leaves
    name = RunDir(run_dir).state_file(kind).name
    if kind == "position":
        (run_dir / "state" / name).write_text('{"step": 12', encoding="utf-8")  # cut short
    else:
        shutil.copy(other / "state" / name, run_dir / "state" / name)
    with pytest.raises(state.TornState, match="incomplete") as e:
        state.find_state(run_dir)
    assert name in str(e.value) and "cannot be resumed" in str(e.value)
    net, opt, sched = _parts(0)
    with pytest.raises(ForgeError):  # also when handed the folder directly
        state.load_state(run_dir / "state", net, opt, sched)


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_file_is_refused(run_dir, kind):
    RunDir(run_dir).state_file(kind).unlink()
    with pytest.raises(ForgeError, match=r"incomplete|no saved training state"):
        state.find_state(run_dir)


def test_a_crash_before_state_json_leaves_the_previous_state_whole(run_dir, monkeypatch):
    real = state.atomic_write_text

    def die_at_the_record(path, text):
        if Path(path).name == "state.json":
            raise _Killed
        real(path, text)

    monkeypatch.setattr(state, "atomic_write_text", die_at_the_record)
    with pytest.raises(_Killed):
        _save(run_dir, 18)
    monkeypatch.undo()
    assert state.check_state(state.find_state(run_dir)).step == 2  # not step 2 with step-18 weights


@pytest.mark.parametrize("kind", ["weights", "optimizer", "rng"])
def test_a_full_disk_mid_save_keeps_the_previous_state_and_says_so(run_dir, monkeypatch, kind):
    real = state.atomic_write_bytes
    target = RunDir(run_dir).state_path(kind).name

    def full(path, data, durable=True):
        if Path(path).name == target:
            raise fsio.DiskFull("the disk is full; free some space and try again", path=path)
        real(path, data, durable)

    monkeypatch.setattr(state, "atomic_write_bytes", full)
    with pytest.raises(ForgeError, match="disk is full"):
        _save(run_dir, 3)
    assert not RunDir(run_dir).state_incoming.exists()
    assert state.check_state(state.find_state(run_dir)).step == 2


def test_a_crash_in_the_swap_resumes_from_whichever_state_is_complete(run_dir, monkeypatch, caplog):
    real = state._rename

    def die_after_moving_the_old_state_away(src, dst):
        real(src, dst)
        if Path(dst).name == ".state-previous":
            raise _Killed

    monkeypatch.setattr(state, "_rename", die_after_moving_the_old_state_away)
    with pytest.raises(_Killed):
        _save(run_dir, 3)
    monkeypatch.undo()
    run = RunDir(run_dir)
    assert not run.state.exists() and run.state_previous.is_dir() and run.state_incoming.is_dir()
    assert state.check_state(state.find_state(run_dir)).step == 3  # the new one was complete
    # had the new one been torn, the previous complete one is used, and the log says so
    (run.state_incoming / "weights.state").write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="lora_forge.train.state"):
        found = state.find_state(run_dir)
    assert found == run.state_previous and state.check_state(found).step == 2
    assert "incomplete" in caplog.text and "step 2" in caplog.text
    _save(run_dir, 4)  # the next save tidies up
    assert sorted(p.name for p in run_dir.iterdir()) == ["state"]


def test_an_old_style_state_written_out_of_order_is_refused(run_dir):
    """Runs saved before the commit record: state.json was written last, so a weights file newer
    than it is the disk-full case of the issue (lora.safetensors newer than optimizer.pt)."""
    folder = run_dir / "state"
    record = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    for key in ("files", "format"):
        record.pop(key)
    (folder / "state.json").write_text(json.dumps(record), encoding="utf-8")
    (folder / "weights.state").rename(folder / "lora.safetensors")
    (folder / "optimizer.state").rename(folder / "optimizer.pt")
    assert state.check_state(state.find_state(run_dir)).step == 2  # in order: still resumes
    later = (folder / "state.json").stat().st_mtime_ns + 5_000_000_000
    os.utime(folder / "lora.safetensors", ns=(later, later))
    with pytest.raises(state.TornState, match=r"lora\.safetensors was written after state\.json"):
        state.find_state(run_dir)


def test_train_cli_refuses_to_resume_a_torn_state_with_exit_2(run_dir, tmp_path):
    import subprocess
    import sys

    (run_dir / "state" / "optimizer.state").write_bytes(b"half written")
    (tmp_path / "data").mkdir()
    args = ["train", "--resume", str(run_dir), "--ckpt", str(tmp_path / "m.safetensors"), "--data"]
    args += [str(tmp_path / "data"), "--name", "x", "--out", str(tmp_path / "out")]
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "lora_forge", *args], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "incomplete (optimizer.state is not the file state.json recorded" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
