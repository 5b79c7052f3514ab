"""Data-parallel training throughput: 2 processes × 1 thread vs 1 process × 1 thread, same global batch.

Both sides are the real command line on the tiny real ldm model (lora_forge/host/tiny.py) at
`--side` px: the baseline is `python -m lora_forge train --threads 1` with train_batch_size =
global batch; the data-parallel side is `… train --gpus 2 --device cpu` (torchrun, 2 processes) with
train_batch_size = global batch / 2, each process on one thread (gloo, CPU). The figure is the
steady-state optimizer steps per second each run logs last (loss.jsonl's `it_s`: the rate over the
latest steps, the first step's warm-up excluded), so process start, model load and latent encoding
are not in it. Same global batch, so steps/s compare like samples/s. Rounds interleave the two
sides, alternating which goes first; medians. Wall time, so run it on a quiet machine.

    python bench/train_ddp.py [--rounds 4] [--steps 24] [--side 256] [--batch 4]

Ends with `RESULT train_ddp ratio=<ddp/single> …` (goal ≥ 1.7 on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, side: int, images: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    from lora_forge.host.tiny import build_tiny_sd1

    files = build_tiny_sd1(folder / "model", seed=0)
    data = folder / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (side, side, 3)).astype(np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"zkw, item {i}", encoding="utf-8")
    return files.checkpoint, data


def run_once(kind: str, ckpt: Path, data: Path, out: Path, args: argparse.Namespace) -> float:
    """One training run; its steady-state optimizer steps per second."""
    per_process = args.batch if kind == "single" else args.batch // 2
    sets = {
        "resolution": str(args.side),
        "min_bucket_reso": 64,
        "max_bucket_reso": args.side * 2,
        "sample_every_n_steps": 0,
        "cache_latents_to_disk": False,
        "save_state": False,
        "save_every_n_epochs": 0,
        "mixed_precision": "no",
        "num_repeats": 1,
        "network_dim": 8,
        "network_alpha": 4,
        "train_batch_size": per_process,
        "max_train_steps": args.steps,
    }
    train = ["train", "--ckpt", str(ckpt), "--data", str(data), "--name", kind, "--out", str(out), "--json"]
    train += ["--threads", "1", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    if kind == "ddp":  # the command a user types, which runs torchrun with 2 CPU processes
        train += ["--gpus", "2", "--device", "cpu"]
    command = [sys.executable, "-m", "lora_forge", *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    last = json.loads((Path(result["run_dir"]) / "loss.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    return float(last["it_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run (the rate is over the last 20)")
    parser.add_argument("--side", type=int, default=256, help="image side in px (latents side/8)")
    parser.add_argument("--batch", type=int, default=4, help="global batch (even)")
    args = parser.parse_args()
    if args.batch % 2:
        sys.exit("--batch must be even (two processes share it)")
    rates: dict[str, list[float]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        ckpt, data = make_inputs(Path(tmp), args.side, max(4, args.batch))
        for r in range(args.rounds):
            order = ["single", "ddp"] if r % 2 == 0 else ["ddp", "single"]
            for kind in order:
                rate = run_once(kind, ckpt, data, Path(tmp) / f"out-{kind}-{r}", args)
                rates[kind].append(rate)
                print(f"round {r + 1}/{args.rounds} {kind:6s} {rate:.3f} steps/s", flush=True)
    single, ddp = statistics.median(rates["single"]), statistics.median(rates["ddp"])
    print(
        f"RESULT train_ddp ratio={ddp / single:.3f} single_steps_per_s={single:.3f} ddp_steps_per_s={ddp:.3f} "
        f"global_batch={args.batch} side={args.side} steps={args.steps} rounds={args.rounds} threads_per_process=1"
    )


if __name__ == "__main__":
    main()
