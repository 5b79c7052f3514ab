"""Peak resident memory of UNet-only LoRA training steps vs the frozen-UNet floor, SD1.5 at 512 px.

Each measurement runs in a fresh process (peak RSS = the kernel's VmHWM): SD1.5's full UNet with
random weights built directly in bf16 (norms fp32), latents 64×64 (512×512 px), batch 1, bf16
autocast, our SDP attention and non-reentrant block checkpointing. The floor process runs
forward + backward with gradients for the input only; ours runs full training steps (rank-32
LoRA on every UNet target, AdamW, clipping) and, before them, prints the memory plan's estimate.
Floor and ours alternate for `--rounds` rounds; medians are compared.

Both children run with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_): by
default glibc raises the threshold after the first large free, so later activations land in the
heap and their freed pages stay resident; the high-water mark then measures allocator history
more than tensors. `--default-malloc` measures with glibc's defaults instead.

    python bench/train_memory.py [--rounds 1] [--steps 2] [--side 64] [--default-malloc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def child(mode: str, side: int, steps: int, rank: int = 32) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from torch import nn

    from lora_forge.train import memory

    torch.set_num_threads(1)
    with torch.device("meta"):
        unet = UNetModel(
            image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
            num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
            transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
        )  # fmt: skip
    for m in unet.modules():
        keep32 = isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        for name, p in list(m.named_parameters(recurse=False)):
            dtype = torch.float32 if keep32 else torch.bfloat16
            setattr(m, name, nn.Parameter(torch.empty(p.shape, dtype=dtype).normal_(0, 0.02), requires_grad=False))
    unet.eval()

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.diffusion_model = unet
            self.is_sd2 = False
            self.is_sdxl = False

    from lora_forge.model.schedule import NoiseSchedule
    from lora_forge.train.config import TrainConfig
    from lora_forge.train.loop import backward, diffusion_loss, optimizer_for, optimizer_step
    from lora_forge.train.optim import make_scheduler
    from lora_forge.train.session import open_session, precision_for

    config = TrainConfig(
        network_dim=rank, network_alpha=rank / 2, network_train_unet_only=True, mixed_precision="bf16",
        gradient_checkpointing=True, resolution=str(side * 8), max_bucket_reso=max(1024, side * 8),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, side, side, generator=gen)
    cond = torch.randn(1, 77, 768, generator=gen)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    schedule = NoiseSchedule(torch.cumprod(1 - betas, 0).float(), "eps")
    model = Bare()
    out: dict = {"mode": mode}
    if mode == "floor":
        from lora_forge.model.unet import sdp_attention, training_unet

        with sdp_attention(), training_unet(unet, True):
            for _ in range(steps):
                x = x0.clone().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    pred = unet(x, timesteps=torch.tensor([500]), context=cond)
                torch.nn.functional.mse_loss(pred.float(), x0).backward()
                del x, pred
    else:
        session = open_session(model, config)
        try:
            if os.environ.get("LF_BENCH_NO_ESTIMATE"):
                out["estimate"] = {"total": 0}
            else:
                est = memory.estimate(model, session.network, config, None, torch.device("cpu"))
                out["estimate"] = est.as_dict()
            out["rss_before_steps"] = memory.current_bytes(torch.device("cpu"))
            prec = precision_for(config, torch.device("cpu"), torch.bfloat16)
            optimizer, params = optimizer_for(session, config)
            scheduler = make_scheduler(optimizer, config, 100)
            out["lora_params"] = sum(p.numel() for p in params)
            for _ in range(steps):
                session.begin_step(prec.autocast_dtype)
                loss = diffusion_loss(unet, x0, lambda: cond, schedule, config, prec, gen)
                backward(loss, config, prec)
                optimizer_step(optimizer, scheduler, params, config, prec)
                session.end_step()
        finally:
            session.close()
    out["weights"] = sum(p.numel() * p.element_size() for p in unet.parameters())
    out["peak"] = memory.peak_bytes(torch.device("cpu"))
    return out


def run_child(mode: str, side: int, steps: int, rank: int, default_malloc: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--side", str(side), "--steps", str(steps), "--rank", str(rank)]
    env = dict(os.environ)
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's dynamic mmap threshold")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.side, args.steps, args.rank)))
        return 0
    floors, ours = [], []
    for r in range(args.rounds):
        order = ("floor", "ours") if r % 2 == 0 else ("ours", "floor")
        for mode in order:
            result = run_child(mode, args.side, args.steps, args.rank, args.default_malloc)
            (floors if mode == "floor" else ours).append(result)
            print(f"round {r + 1} {mode:5s} peak {result['peak'] / GIB:.3f} GiB", flush=True)
    floor = statistics.median(r["peak"] for r in floors)
    mine = statistics.median(r["peak"] for r in ours)
    est = ours[-1]["estimate"]
    print(
        f"UNet weights (bf16, norms fp32): {ours[-1]['weights'] / GIB:.3f} GiB; LoRA params {ours[-1]['lora_params']:,}"
    )
    print("estimate breakdown (GiB): " + ", ".join(f"{k} {v / GIB:.3f}" for k, v in est.items()))
    print(f"floor {floor / GIB:.3f} GiB, ours {mine / GIB:.3f} GiB, extra {(mine - floor) / 2**20:.0f} MiB")
    err = est["total"] / mine - 1
    print(
        f"RESULT train_memory ratio={mine / floor:.3f} peak_gib={mine / GIB:.3f} floor_gib={floor / GIB:.3f} "
        f"estimate_gib={est['total'] / GIB:.3f} estimate_error={err:+.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
