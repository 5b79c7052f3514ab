"""Ctrl-C (SIGINT) or SIGTERM during `python -m lora_forge train` is a stop: the step finishes, a
usable LoRA and a complete resumable state are written, the resume command is printed, exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_support import FAST as TRAIN_FAST
from tests.train_support import noise_pictures

ROOT = Path(__file__).resolve().parent.parent
FAST = {**TRAIN_FAST, "max_train_steps": 5000}  # far more than the test waits for


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals; on Windows Ctrl-C arrives as a console event")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_training_saves_a_usable_lora_and_state_and_exits_130(tiny_files, tmp_path, sig):
    from safetensors.torch import load_file

    from lora_forge.train.state import check_state, find_state

    data = tmp_path / "data"
    data.mkdir()
    noise_pictures(data)
    out = tmp_path / "out"
    sets = [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]
    args = ["train", "--ckpt", str(tiny_files.checkpoint), "--data", str(data), "--name", "cut", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_forge", *args, *sets],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        log = out / "cut" / "loss.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text(encoding="utf-8").splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    run_dir = out / "cut"
    assert f"resume with: python -m lora_forge train --resume {run_dir}" in stdout
    final = run_dir / "cut.safetensors"
    tensors = load_file(str(final))  # a complete, loadable LoRA
    assert any("lora_down" in k for k in tensors)
    pos = check_state(find_state(run_dir))
    assert 2 <= pos.step < 5000
    steps_logged = len((run_dir / "loss.jsonl").read_text(encoding="utf-8").splitlines())
    assert pos.step == steps_logged  # the state is the step the LoRA was saved at
