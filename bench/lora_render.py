"""LoRA at render time: cost of the injected modules, and one batch of strengths vs one run each.

On the tiny SD1 `ldm` model (real block layout, tiny widths) at a 16×16 latent (128 px), rank 16 LoRA on
all 264 kohya targets, interleaved rounds, medians:
  plain     - the UNet alone (baseline);
  injected  - with the LoRA modules riding on the forwards (what training and the grid use);
  merged    - with W + ΔW merged into the weights (no extra work per forward);
  strengths - a NUM × STRENGTH row: 4 strengths as one batch of 4 (per-sample multipliers)
              against 4 separate batch-1 runs (how a loader without per-sample strengths must do it).

On CPU a batch of 4 costs about 4 batch-1 runs (compute-bound), so `batch_strengths_speedup`
near 1 is expected here; the batch pays off on a GPU, where batch-1 leaves the device idle.

    python bench/lora_render.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from lora_forge.host.standalone import StandaloneHost
    from lora_forge.host.tiny import build_tiny_sd1
    from lora_forge.lora import LoraNetwork, merge

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: spin-waiting threads would dominate
    with tempfile.TemporaryDirectory() as tmp:
        files = build_tiny_sd1(Path(tmp) / "tiny", seed=0)
        model = StandaloneHost(files.checkpoint, lora_dir=Path(tmp) / "lora").sd_model()
    unet = model.model.diffusion_model
    width = model.cond_stage_model.transformer.config.hidden_size
    g = torch.Generator().manual_seed(0)
    x1, ctx1 = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, width, generator=g)
    x4, ctx4 = x1.expand(4, -1, -1, -1).contiguous(), ctx1.expand(4, -1, -1).contiguous()
    t1, t4 = torch.tensor([500]), torch.tensor([500] * 4)
    net = LoraNetwork.create(model, rank=16, alpha=8.0)
    with torch.no_grad():
        for lora in net.loras:
            lora.lora_up.weight.normal_(0.0, 0.1, generator=g)
    strengths = [0.25, 0.5, 0.75, 1.0]

    def plain() -> None:
        unet(x1, t1, context=ctx1)

    def injected() -> None:
        with net.injected():
            net.multiplier = 1.0
            unet(x1, t1, context=ctx1)

    def merged() -> None:
        m = merge(model, state_dict, 1.0)
        try:
            start = time.perf_counter()
            unet(x1, t1, context=ctx1)
            merged_times.append(time.perf_counter() - start)  # the merge itself is timed apart
        finally:
            m.unmerge()

    def batch_of_strengths() -> None:
        with net.injected():
            net.multiplier = torch.tensor(strengths)
            unet(x4, t4, context=ctx4)

    def one_run_each() -> None:
        with net.injected():
            for s in strengths:
                net.multiplier = s
                unet(x1, t1, context=ctx1)

    state_dict = net.kohya_state_dict(torch.float32)
    merged_times: list[float] = []
    contenders: dict[str, Callable[[], None]] = {
        "plain": plain,
        "injected": injected,
        "merged": merged,
        "batch": batch_of_strengths,
        "separate": one_run_each,
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.no_grad():
        for fn in contenders.values():
            fn()  # warm-up
        merged_times.clear()
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["merged"] = statistics.median(merged_times)
    for name, value in med.items():
        print(f"{name:>9}: {value * 1000:8.1f} ms (median of {args.rounds})")
    injected_ratio = med["injected"] / med["plain"]
    merged_ratio = med["merged"] / med["plain"]
    batch_speedup = med["separate"] / med["batch"]
    print(f"injected LoRA costs {injected_ratio:.2f}x the plain UNet; merged {merged_ratio:.2f}x")
    print(f"4 strengths in one batch: {batch_speedup:.2f}x faster than 4 separate runs")
    print(
        f"RESULT lora_render injected_vs_plain={injected_ratio:.3f} merged_vs_plain={merged_ratio:.3f} "
        f"batch_strengths_speedup={batch_speedup:.3f} modules={len(net.loras)} rounds={args.rounds}"
    )


if __name__ == "__main__":
    main()
