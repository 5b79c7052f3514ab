"""NUM × STRENGTH grid rendering on the standalone host: a whole epoch file's strengths as one
request list (one UNet batch with per-sample LoRA multipliers, the LoRA file loaded once) against
one cell per txt2img call (what a host without per-sample strengths must do), in the same run.

Tiny SD1 `ldm` model (real block layout, tiny widths), LoRA files written by lora_forge.grid.testing,
interleaved rounds, medians; every cell of the batched grid is compared with the same cell
rendered alone (same seed → same image within a few 1/255 steps).

    python bench/grid.py [--rounds 3] [--files 2] [--strengths "0.1-1 (+0.1)"] [--size 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np
    import torch

    from lora_forge.grid.plan import make_plan
    from lora_forge.grid.render import render_grid
    from lora_forge.grid.testing import write_run
    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd1

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--strengths", default="0.1-1 (+0.1)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    # LoRA weight scale: the random tiny model turns chaotic under large LoRA deltas (a strength
    # change of 1e-5 then moves pixels by 100+/255), which would hide the comparison in noise
    parser.add_argument("--lora-scale", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: spin-waiting threads would dominate
    with tempfile.TemporaryDirectory() as tmp:
        files = build_tiny_sd1(Path(tmp) / "tiny", seed=0)
        host = StandaloneHost(files.checkpoint, lora_dir=Path(tmp) / "lora")
        run = Path(tmp) / "run"
        write_run(host.sd_model(), run, epochs=args.files, final=False, scale=args.lora_scale)
        plan = make_plan(
            run, args.strengths, "a photo", "", seed=5, steps=args.steps, size=(args.size, args.size), cfg_scale=5.0
        )

        def batched() -> list[list]:
            return render_grid(host, plan).cells

        def one_per_call() -> list[list]:
            cells = [[None] * len(plan.files) for _ in plan.strengths]
            for c, f in enumerate(plan.files):
                for r, s in enumerate(plan.strengths):
                    cells[r][c] = host.txt2img([plan.request(f, s)])[0]
            return cells

        contenders = {"batched": batched, "per_cell": one_per_call}
        times: dict[str, list[float]] = {k: [] for k in contenders}
        outputs: dict[str, list[list]] = {}
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
    pairs = [
        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        for row_a, row_b in zip(outputs["batched"], outputs["per_cell"], strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    ]
    diffs = [int(d.max()) for d in pairs]
    mean_diff = float(np.mean([d.mean() for d in pairs]))
    cells = plan.cells
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, value in med.items():
        print(f"{name:>9}: {value:7.2f} s for {cells} cells = {cells / value:6.2f} cells/s (median of {args.rounds})")
    speedup = med["per_cell"] / med["batched"]
    print(
        f"batched rows {speedup:.2f}x faster than one cell per call; pixel difference to the cell alone: "
        f"largest {max(diffs)}/255, mean {mean_diff:.3f}/255"
    )
    result = {
        "batched_cells_per_s": f"{cells / med['batched']:.3f}",
        "per_cell_cells_per_s": f"{cells / med['per_cell']:.3f}",
        "speedup": f"{speedup:.3f}",
        "max_pixel_diff": max(diffs),
        "mean_pixel_diff": f"{mean_diff:.3f}",
        "cells": cells,
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
    }
    print("RESULT grid " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
