"""Data-parallel training (train/distributed.py) on CPU with gloo and 2 processes, on the tiny real
ldm model: 2 processes × batch 1 train what 1 process × batch 2 trains, a killed job resumes to the
same bytes, a killed rank ends the job with a clear message and the saved epoch stays usable."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lora_forge.cli.train_launch import free_port
from tests import train_support

torch = pytest.importorskip("torch")
posix_kill = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds and kills the job's processes via /proc")

ROOT = Path(__file__).resolve().parent.parent
FAST = {
    **train_support.FAST,
    "cache_latents_to_disk": True,  # each rank encodes its shard, all read them (the first run)
    "network_dim": 4,
    "network_alpha": 2,
    "unet_lr": 2e-3,
    "seed": 3,
    "save_precision": "float",
    "save_every_n_epochs": 1,
    "max_train_epochs": 5,  # 4 images, global batch 2: 2 steps an epoch, 10 steps
    "shuffle_caption": "true",
    "noise_offset": 0.05,
}


def train_argv(ckpt: Path, data: Path, out: Path, batch: int, **changes) -> list[str]:
    sets = [x for k, v in {**FAST, "train_batch_size": batch, **changes}.items() for x in ("--set", f"{k}={v}")]
    return ["train", "--ckpt", str(ckpt), "--data", str(data), "--name", "ddp", "--out", str(out), "--json", *sets]


def start(command: list[str], marker: str) -> subprocess.Popen:
    """`command` with an environment marker that finds all of the job's processes (`job_pids`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORA_FORGE_TEST_JOB": marker}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def torchrun(argv: list[str], marker: str) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m lora_forge …`."""
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    return start([*head, "--master_port", str(free_port()), "-m", "lora_forge", *argv], marker)


def finish(proc: subprocess.Popen, marker: str, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_job(marker)
    return proc.returncode, out, err


def summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def tensor_bytes(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return train_support.squares(tmp_path_factory.mktemp("ddp-data"), caption="zkw, {name} square, noise, dark")


@pytest.fixture(scope="module")
def whole(tiny_files, dataset, tmp_path_factory) -> dict:
    """The uninterrupted 2-process run, started as a user would: `train --gpus 2 --device cpu`."""
    out = tmp_path_factory.mktemp("ddp-whole")
    argv = [*train_argv(tiny_files.checkpoint, dataset, out, 1), "--gpus", "2", "--device", "cpu"]
    marker = uuid.uuid4().hex
    code, stdout, stderr = finish(start([sys.executable, "-m", "lora_forge", *argv], marker), marker)
    assert code == 0, stderr[-3000:]
    return summary(stdout)


def test_two_processes_train_what_one_process_trains_with_the_doubled_batch(tiny_files, dataset, whole, tmp_path):
    from safetensors.torch import load_file

    from lora_forge.cli import main
    from lora_forge.lora.fileformat import read_metadata

    assert main(train_argv(tiny_files.checkpoint, dataset, tmp_path, 2)) == 0
    final = tmp_path / "ddp" / "ddp.safetensors"
    one, two = load_file(str(final)), load_file(whole["final"])
    first = load_file(str(tmp_path / "ddp" / "ddp-000001.safetensors"))
    # The same training up to float summation order: measured over all weights (L2), relative to how
    # far the last 4 epochs moved them; a wrong shard or draw differs by about as much as that.
    # (Not element-wise: AdamW divides by |grad| + 1e-8, so the few weights whose gradient is ~1e-8
    # turn an ulp of difference into a few percent of their step.)
    moved = sum(float(((one[k] - first[k]) ** 2).sum()) for k in one) ** 0.5
    apart = sum(float(((one[k] - two[k]) ** 2).sum()) for k in one) ** 0.5
    assert moved > 1e-2 and apart < 2e-3 * moved, (moved, apart)
    assert (whole["steps"], whole["world_size"], whole["global_batch"]) == (10, 2, 2)
    assert len(whole["peak_memory_bytes_per_process"]) == 2
    meta = read_metadata(Path(whole["final"]))
    assert (meta["ss_batch_size_per_device"], meta["ss_total_batch_size"]) == ("1", "2")
    losses = [json.loads(line)["loss"] for line in (Path(whole["run_dir"]) / "loss.jsonl").read_text().splitlines()]
    single = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "loss.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(single, abs=1e-5)  # rank 0's log holds the global batch's loss
    # rank 0 alone wrote: one run folder, nothing from the other rank beside it
    assert [p.name for p in Path(whole["run_dir"]).parent.iterdir()] == ["ddp"]


@posix_kill
def test_a_killed_job_resumes_on_two_processes_to_the_same_bytes(tiny_files, dataset, whole, tmp_path, capsys):
    from lora_forge.cli import main
    from lora_forge.rundir import state_file
    from lora_forge.train.state import find_state

    marker = uuid.uuid4().hex
    proc = torchrun(train_argv(tiny_files.checkpoint, dataset, tmp_path / "killed", 1), marker)
    run_dir = tmp_path / "killed" / "ddp"
    try:
        wait_for(run_dir / "state" / "state.json", proc)
    finally:
        kill_job(marker)  # the whole job at once (a power cut): torchrun and its workers
    proc.communicate()
    assert not (run_dir / "ddp.safetensors").exists()  # killed mid-run
    folder = find_state(run_dir)  # state/, or the complete one a kill in mid-commit left beside it
    saved = json.loads(state_file(folder, "position").read_text())
    assert saved["world_size"] == 2 and saved["step"] < 10
    assert len(json.loads(state_file(folder, "rng").read_text())["ranks"]) == 2

    # one process cannot continue it: it says so before loading the model
    one = train_argv(tiny_files.checkpoint, dataset, tmp_path / "one", 1, resume=run_dir)
    assert main(one) == 2
    assert "saved by a run on 2 process(es) and this one has 1" in capsys.readouterr().err

    marker = uuid.uuid4().hex
    resumed = torchrun(train_argv(tiny_files.checkpoint, dataset, tmp_path / "resumed", 1, resume=run_dir), marker)
    code, stdout, stderr = finish(resumed, marker)
    assert code == 0, stderr[-3000:]
    result = summary(stdout)
    assert result["steps"] == 10 and result["steps_this_run"] == 10 - saved["step"]
    assert tensor_bytes(result["final"]) == tensor_bytes(whole["final"])


def job_pids(marker: str, rank: int | None = None) -> list[int]:
    """The processes of the job started with `marker` (the one of `rank` only, when given)."""
    found: list[int] = []
    if not Path("/proc").is_dir():  # Windows: the job ended by itself (finish) or the test is skipped
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LORA_FORGE_TEST_JOB={marker}".encode() in env and (rank is None or f"RANK={rank}".encode() in env):
            found.append(int(entry.name))
    return found


def kill_job(marker: str) -> None:
    """SIGKILL every process of the job: torchrun starts its workers in sessions of their own."""
    for pid in job_pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@posix_kill
def test_a_killed_rank_ends_the_job_with_a_message_and_the_saved_epoch_stays_usable(tiny_files, dataset, tmp_path):
    from safetensors.torch import load_file

    from lora_forge.train.state import check_state, find_state

    marker = uuid.uuid4().hex
    proc = torchrun(train_argv(tiny_files.checkpoint, dataset, tmp_path, 1, max_train_epochs=500), marker)
    run_dir = tmp_path / "ddp"
    try:
        wait_for(run_dir / "ddp-000001.safetensors", proc)
        wait_for(run_dir / "state" / "state.json", proc)
        (pid,) = job_pids(marker, rank=1)
        os.kill(pid, signal.SIGKILL)  # what the OOM killer does
        killed = time.monotonic()
        code, _, stderr = finish(proc, marker, timeout=120)
    finally:
        kill_job(marker)
    assert time.monotonic() - killed < 60  # ended, not hung until the process-group timeout
    assert code != 0
    assert "another process of this 2-process job stopped" in stderr, stderr[-3000:]
    assert "resume from the last saved epoch with --resume" in stderr
    assert not (run_dir / "ddp.safetensors").exists()
    epochs = sorted(run_dir.glob("ddp-*.safetensors"))
    assert epochs and any("lora_down" in k for k in load_file(str(epochs[-1])))
    assert check_state(find_state(run_dir)).step >= 2


def test_gpus_relaunches_the_command_as_typed_and_a_stray_world_size_is_one_process(monkeypatch):
    from lora_forge.cli import build_parser
    from lora_forge.cli.train_launch import torchrun_command
    from lora_forge.train.distributed import world_from_env

    typed = ["train", "--ckpt", "m 1.safetensors", "--data", "d", "--name", "zkw", "--out", "runs", "--preset",
             "person", "--set", "network_dim=8", "--set", "seed=4", "--fp8-base", "--threads", "2"]  # fmt: skip
    args = build_parser().parse_args(["-v", *typed, "--gpus", "2"])
    command = torchrun_command(args)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--gpus" not in command
    assert command[command.index("--nproc_per_node") + 1] == "2"
    tail = command[command.index("lora_forge") + 1 :]
    assert tail[:2] == ["-v", "train"]
    assert sorted(tail[2:]) == sorted([*typed[1:], "--device", "cuda"])  # --gpus means CUDA unless told
    assert tail[tail.index("--set") : tail.index("--set") + 4] == ["--set", "network_dim=8", "--set", "seed=4"]

    monkeypatch.setenv("WORLD_SIZE", "4")  # set for something else, without torchrun's other variables
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert world_from_env("cpu") is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    world = world_from_env("cuda:0")
    assert (world.rank, world.world_size, world.device) == (3, 4, "cuda:1")  # one GPU per process
