"""Same seed, same LoRA: the initial weights come from the config's seed, not from whatever the
process drew from torch's global generator before (a WebUI that rendered images, another run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_forge.train.config import TrainConfig
from tests.train_support import FAST as TRAIN_FAST
from tests.train_support import noise_pictures

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
FAST = {**TRAIN_FAST, "max_train_steps": 2}
# Metadata that must differ between two runs: when each trained (kohya and modelspec clocks).
CLOCK_KEYS = {"ss_training_started_at", "ss_training_finished_at", "modelspec.date"}


def _initial_weights(host, seed: int) -> dict:
    from lora_forge.train.session import open_session

    session = open_session(host.sd_model(), TrainConfig.from_dict({**FAST, "seed": seed}))
    try:
        return {k: v.detach().clone() for k, v in session.network.state_dict().items()}
    finally:
        session.close()


def test_initial_lora_comes_from_the_seed_and_leaves_the_global_generator_alone(tiny_host):
    first = _initial_weights(tiny_host, 7)
    torch.rand(12345)  # the host rendered something in between
    before = torch.get_rng_state()
    again = _initial_weights(tiny_host, 7)
    assert torch.equal(torch.get_rng_state(), before)  # the WebUI's next image is not shifted
    other = _initial_weights(tiny_host, 8)
    downs = [k for k in first if "lora_down" in k]
    assert downs and all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in downs)


def test_two_fresh_processes_with_the_same_seed_write_the_same_tensors(tiny_files, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    noise_pictures(data)
    sets = [x for k, v in {**FAST, "seed": 4242}.items() for x in ("--set", f"{k}={v}")]
    procs = []
    for run in ("a", "b"):
        args = ["train", "--ckpt", str(tiny_files.checkpoint), "--data", str(data), "--name", "repro"]
        args += ["--out", str(tmp_path / run), "--json", *sets]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": {"a": "1", "b": "2"}[run]}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lora_forge", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    finals = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-2000:]
        finals.append(Path(json.loads(out.strip().splitlines()[-1])["final"]))
    from safetensors.torch import load_file

    from lora_forge.lora.fileformat import read_metadata

    a, b = (load_file(str(f)) for f in finals)
    assert a.keys() == b.keys() and len(a) > 10
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    meta_a, meta_b = (read_metadata(f) for f in finals)
    assert {k for k in meta_a.keys() | meta_b.keys() if meta_a.get(k) != meta_b.get(k)} <= CLOCK_KEYS
