"""Peak resident memory of UNet-only LoRA training steps vs the frozen-UNet floor.

Each measurement runs in a fresh process (peak RSS = the kernel's VmHWM) with one variant:
- the floor: the same frozen UNet (same storage, bf16 autocast, our SDP attention and non-reentrant
  block checkpointing) running forward + backward with gradients for the input latents only;
- ours: full training steps of lora_forge.train.loop (LoRA on every UNet target, the optimizer,
  clipping), after printing the memory plan's pre-training estimate.
Conditioning is cached (random tensors of the text encoders' output shapes; no text encoder or VAE
in the process), batch 1.

Models (`--model`):
- sd15: SD1.5's UNet, 512² (64² latents), rank 32: AdamW (fp32 state), AdamW8bit (bitsandbytes,
  when installed; also with the fused backward pass) and Adafactor with the fused backward pass,
  each against the floor.
- sdxl: SDXL's UNet, 1024² (128² latents), rank 16, Adafactor + fused backward: bf16 base weights
  against the floor, and FP8 base weights (float8_e4m3fn storage, upcast per layer) in absolute GiB.
  Slow on a CPU (several minutes per process): `--steps 1`.
Variants run one after another (never two processes at once), for `--rounds` rounds; medians.

`--compute fp32`: the same runs without bf16 autocast: bf16 storage becomes fp32 (floor and
ours alike), FP8 weights upcast to fp32 per layer, activations fp32. For CPUs without bf16
arithmetic (AVX2 only: there torch's bf16 matmul runs at ~1/50 of fp32, and one SDXL step at 128²
takes hours); activations are then twice their bf16 size, so an FP8 peak measured so is an upper
bound of the bf16 one, and the ratio is the fp32 run's against its own fp32 floor.

Every child, the floor included, first imports the optimizer libraries any variant uses
(bitsandbytes, transformers' Adafactor) when they are installed. They are host code and data, which
a GPU's card never holds, and only one variant would otherwise carry them: with bitsandbytes 0.50.2
the floor's peak rises by 0.057 GiB (SD1.5, measured here). The estimate then sees them in the
process's resident set, as it would see any library the host had loaded.

Both children run with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_): by
default glibc raises the threshold after the first large free, so later activations land in the
heap and their freed pages stay resident; the high-water mark then measures allocator history
more than tensors. `--default-malloc` measures with glibc's defaults instead.

Both children also run with oneDNN's primitive cache off (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0). By
default oneDNN keeps every primitive it built, up to 1024: the JIT-compiled kernel and its
descriptor, about 260 KiB for one bf16 matmul (heaptrack, SD1.5). The floor's convolutions and
linears fill part of that cache, and the LoRA's small matmuls add shapes of their own (rank-wide
products, weight gradients), so ours would carry ~0.025 GiB more of it (SD1.5, measured here). That
is host code a GPU's card never holds: on CUDA cuBLAS keeps its kernels in the CUDA context, which
the estimate counts on its own. `--onednn-cache` measures with the cache on.

    python bench/train_memory.py [--model sd15|sdxl] [--rounds 1] [--steps 2] [--compute fp32] [--default-malloc]
                                 [--onednn-cache]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3

# name: (storage, optimizer, fused backward, fp8_base)
VARIANTS = {
    "sd15": {
        "floor": ("bf16", "", False, False),
        "adamw": ("bf16", "AdamW", False, False),
        "adamw8bit": ("bf16", "AdamW8bit", False, False),
        "adafactor_fused": ("bf16", "Adafactor", True, False),
        "adamw8bit_fused": ("bf16", "AdamW8bit", True, False),
    },
    "sdxl": {
        "floor": ("bf16", "", False, False),
        "bf16": ("bf16", "Adafactor", True, False),
        "fp8": ("fp8", "Adafactor", True, True),
    },
}
OPTIMIZER_LIBRARIES = ("bitsandbytes", "transformers.optimization")
SIDE = {"sd15": 64, "sdxl": 128}
RANK = {"sd15": 32, "sdxl": 16}


def child(model_kind: str, variant: str, side: int, steps: int, rank: int, compute: str = "bf16") -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from unets import CONTEXT, Bare, WithVector, build_unet

    from lora_forge.train import memory

    torch.set_num_threads(int(os.environ.get("LF_BENCH_THREADS", "1")))
    for library in OPTIMIZER_LIBRARIES:  # the same host code in every process (see above)
        if importlib.util.find_spec(library.split(".")[0]) is not None:
            importlib.import_module(library)
    storage, optimizer_type, fused, fp8_base = VARIANTS[model_kind][variant]
    fp32 = compute == "fp32"
    if fp32 and storage == "bf16":
        storage = "fp32"
    sdxl = model_kind == "sdxl"
    unet = build_unet(model_kind, storage)
    model = Bare(unet, sdxl)

    from lora_forge.model.schedule import NoiseSchedule
    from lora_forge.train.config import TrainConfig
    from lora_forge.train.loop import backward, diffusion_loss, optimizer_for, optimizer_step
    from lora_forge.train.optim import make_scheduler
    from lora_forge.train.session import open_session, precision_for

    config = TrainConfig(
        network_dim=rank, network_alpha=rank / 2, network_train_unet_only=True,
        mixed_precision="no" if fp32 else "bf16",
        gradient_checkpointing=True, resolution=str(side * 8), max_bucket_reso=max(1024, side * 8),
        optimizer_type=optimizer_type or "AdamW", fused_backward_pass=fused, fp8_base=fp8_base,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, side, side, generator=gen)
    cond = torch.randn(1, 77, CONTEXT[model_kind], generator=gen)
    net = WithVector(unet, torch.randn(1, 2816, generator=gen)) if sdxl else unet
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    schedule = NoiseSchedule(torch.cumprod(1 - betas, 0).float(), "eps")
    out: dict = {"variant": variant}
    if variant == "floor":
        from lora_forge.model.unet import sdp_attention, training_unet

        with sdp_attention(), training_unet(unet, True):
            for _ in range(steps):
                x = x0.clone().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp32):
                    pred = net(x, timesteps=torch.tensor([500]), context=cond)
                torch.nn.functional.mse_loss(pred.float(), x0).backward()
                del x, pred
    else:
        session = open_session(model, config)
        try:
            est = memory.estimate(model, session.network, config, None, torch.device("cpu"))
            out["estimate"] = est.as_dict()
            out["verdict"] = est.verdict
            prec = precision_for(config, torch.device("cpu"), torch.float32 if fp32 else torch.bfloat16)
            optimizer, params = optimizer_for(session, config)
            scheduler = make_scheduler(optimizer, config, 100)
            out["lora_params"] = sum(p.numel() for p in params)
            for _ in range(steps):
                session.begin_step(prec.autocast_dtype)
                loss = diffusion_loss(net, x0, lambda: cond, schedule, config, prec, gen)
                backward(loss, config, prec)
                optimizer_step(optimizer, scheduler, params, config, prec)
                session.end_step()
        finally:
            session.close()
    out["weights"] = sum(p.numel() * p.element_size() for p in unet.parameters())
    out["peak"] = memory.peak_bytes(torch.device("cpu"))
    return out


def run_child(model: str, variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--model", model, "--side", str(args.side),
           "--steps", str(args.steps), "--rank", str(args.rank), "--compute", args.compute]  # fmt: skip
    env = dict(os.environ)
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    if not args.onednn_cache:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise SystemExit(f"{model} {variant} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(VARIANTS), default="sd15")
    ap.add_argument("--variants", default="", help="comma-separated subset, e.g. floor,adamw")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--side", type=int, default=0, help="latent side (default: 64 for sd15, 128 for sdxl)")
    ap.add_argument("--rank", type=int, default=0, help="LoRA rank (default: 32 for sd15, 16 for sdxl)")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's dynamic mmap threshold")
    ap.add_argument("--onednn-cache", action="store_true", help="keep oneDNN's primitive cache (see above)")
    ap.add_argument("--compute", choices=("bf16", "fp32"), default="bf16", help="fp32: no autocast (see above)")
    ap.add_argument("--child")
    args = ap.parse_args()
    args.side = args.side or SIDE[args.model]
    args.rank = args.rank or RANK[args.model]
    if args.child:
        print(json.dumps(child(args.model, args.child, args.side, args.steps, args.rank, args.compute)))
        return 0
    names = [v for v in (args.variants.split(",") if args.variants else VARIANTS[args.model]) if v]
    if importlib.util.find_spec("bitsandbytes") is None:
        for name in [n for n in names if n.startswith("adamw8bit")]:
            print(f"{name} skipped: bitsandbytes is not installed")
            names.remove(name)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            result = run_child(args.model, name, args)
            results[name].append(result)
            print(f"round {r + 1} {args.model} {name:16s} peak {result['peak'] / GIB:.3f} GiB", flush=True)
    peaks = {n: statistics.median(r["peak"] for r in rs) for n, rs in results.items()}
    floor = peaks.get("floor")
    fields = [f"model={args.model}", f"side={args.side}", f"rank={args.rank}", f"compute={args.compute}"]
    fields.append(f"onednn_cache={'on' if args.onednn_cache else 'off'}")
    if floor:
        fields.append(f"floor_gib={floor / GIB:.3f}")
    worst_err = 0.0
    for name in names:
        if name == "floor":
            continue
        last = results[name][-1]
        est = last["estimate"]
        err = est["total"] / peaks[name] - 1
        worst_err = max(worst_err, abs(err))
        print(
            f"{name}: peak {peaks[name] / GIB:.3f} GiB, estimate {est['total'] / GIB:.3f} GiB ({err:+.1%}), "
            f"verdict '{last['verdict']}', UNet weights {last['weights'] / GIB:.3f} GiB, "
            f"LoRA params {last['lora_params']:,}"
        )
        parts = [f"{k} {v / GIB:.3f}" for k, v in est.items() if isinstance(v, int) and v]
        print("  estimate breakdown (GiB): " + ", ".join(parts))
        if floor and results[name][-1]["weights"] == results["floor"][-1]["weights"]:
            fields.append(f"{name}_ratio={peaks[name] / floor:.3f}")
        fields.append(f"{name}_gib={peaks[name] / GIB:.3f}")
        fields.append(f"{name}_est_err={err:+.3f}")
    fields.append(f"worst_est_err={worst_err:.3f}")
    print("RESULT train_memory " + " ".join(fields))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
