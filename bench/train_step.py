"""Our LoRA training step vs the floor: a bare forward + backward of the same frozen UNet.

The floor is what no LoRA trainer can beat: the same UNet, batch, precision, attention (our SDP
forward) and checkpointing, with gradients for the input latents only. Ours is the whole training
step of lora_forge.train.loop (noise, timesteps, LoRA forward/backward, min-SNR loss, grad clip,
AdamW step). Cases: the tiny test UNet, SD1.5's and SDXL's full UNets (random weights; SDXL is
sgm's UNetModel as sd_xl_base.yaml builds it, through host/sgm_compat, rank 16, its `vector`
input cached like the text), latents 16² and 32², fp32 and bf16 (bf16 frozen weights + bf16
autocast). Rounds interleave floor and ours after a warm-up, alternating which goes first; the
figure is median(ours) / median(floor) of the process CPU time (wall time on this shared 2-core
machine swings ±50 % with the neighbours), with `--threads` intra-op threads, 2 by default. With 2,
the CPU time also counts the second thread's spin-wait between ops, so a per-op overhead (the
LoRA's small matmuls) weighs about twice what it does with `--threads 1` (SDXL 16² bf16, measured
here). SDXL in fp32 holds ~10 GB of RAM and takes minutes per case on 2 cores: run it alone
(`--only sdxl`).

    python bench/train_step.py [--rounds 5] [--only tiny|sd15|sdxl] [--case sdxl_16] [--no-checkpointing] [--bound]
                               [--sides 16,32]

--sides picks the latent sizes (default 16² and 32², the issue's cases). Those keep CPU runs short
but put SDXL's 1280-wide blocks at 16–64 tokens a call, where every small op's fixed cost weighs
most; `--sides 64` (512 px) or 128 (1024 px, what SDXL is trained at) shows the same step at the
token counts users train with (minutes per case on 2 cores).

--bound also times a third step: the floor with the LoRA-targeted layers' own weights requiring
gradients, i.e. what a merged-form LoRA would cost if merging were free. It shows how much of the
gap is the weight-gradient work any LoRA needs somewhere (on the tiny model at 16² it alone is
above 1.10 of the floor: every layer there is a few dozen µs of dispatch).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

UNET = {
    "sd15": dict(model_channels=320, context_dim=768, num_heads=8, rank=32),
    "tiny": dict(model_channels=32, context_dim=32, num_heads=8, rank=8),
    "sdxl": dict(context_dim=2048, rank=16),  # sgm's UNetModel as sd_xl_base.yaml builds it (bench/unets.py)
}


class Bare(nn.Module):
    """Just enough of a LatentDiffusion for LoRA targeting: `.model.diffusion_model`."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.is_sd2 = False
        self.is_sdxl = False


def build_unet(kind: str, precision: str) -> nn.Module:
    if kind == "sdxl":  # 2.6 B parameters: made straight in the storage dtype, tensor by tensor
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from unets import build_unet as build_full

        return build_full("sdxl", precision)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    p = UNET[kind]
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=p["model_channels"],
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=p["num_heads"],
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=p["context_dim"],
        use_checkpoint=False,
        legacy=False,
    )
    return unet.eval()


def to_bf16(unet: nn.Module) -> None:
    """bf16 frozen weights, norms kept fp32 (ldm's GroupNorm32 computes in fp32 and CPU autocast
    does not cast the affine parameters back)."""
    for m in unet.modules():
        if not isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(torch.bfloat16)


def make_case(kind: str, side: int, precision: str, checkpointing: bool):
    """(floor_step, our_step, cleanup) for one case."""
    from lora_forge.model.schedule import NoiseSchedule
    from lora_forge.train.config import TrainConfig
    from lora_forge.train.loop import backward, diffusion_loss, optimizer_for, optimizer_step
    from lora_forge.train.optim import make_scheduler
    from lora_forge.train.session import open_session, precision_for

    unet = build_unet(kind, precision)
    if precision == "bf16" and kind != "sdxl":
        to_bf16(unet)
    model = Bare(unet)
    model.is_sdxl = kind == "sdxl"
    config = TrainConfig(
        network_dim=UNET[kind]["rank"],
        network_alpha=UNET[kind]["rank"] / 2,
        network_train_unet_only=True,
        mixed_precision=precision if precision == "bf16" else "no",
        gradient_checkpointing=checkpointing,
    )
    session = open_session(model, config)
    prec = precision_for(config, torch.device("cpu"), next(unet.parameters()).dtype)
    lora_params = list(session.network.parameters())
    optimizer, params = optimizer_for(session, config)
    scheduler = make_scheduler(optimizer, config, 1000)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    schedule = NoiseSchedule(torch.cumprod(1 - betas, 0).float(), "eps")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, side, side, generator=gen)
    cond = torch.randn(1, 77, UNET[kind]["context_dim"], generator=gen)
    net = unet
    if kind == "sdxl":  # the cached `vector` (pooled text + size conditioning) rides along
        from unets import WithVector

        net = WithVector(unet, torch.randn(1, 2816, generator=gen))
    with torch.no_grad():  # a non-zero LoRA, as after the first steps (zero `up` would skip nothing anyway)
        for p in lora_params:
            p.normal_(0, 0.01, generator=gen)

    def ours() -> None:
        session.begin_step(prec.autocast_dtype)
        loss = diffusion_loss(net, x0, lambda: cond, schedule, config, prec, gen)
        backward(loss, config, prec)
        optimizer_step(optimizer, scheduler, params, config, prec)
        session.end_step()

    def floor() -> None:
        x = x0.clone().requires_grad_(True)
        t = torch.randint(0, 1000, (1,), generator=gen)
        with prec.autocast():
            pred = net(x, timesteps=t, context=cond)
        torch.nn.functional.mse_loss(pred.float(), x0).backward()

    def floor_without_lora() -> None:
        with lora_off(session.network):
            floor()

    targets = [m.target.module for m in session.network.loras]

    def bound() -> None:
        for t in targets:
            t.weight.requires_grad_(True)
        try:
            floor_without_lora()
        finally:
            for t in targets:
                t.weight.requires_grad_(False)
                t.weight.grad = None

    return floor_without_lora, ours, bound, session.close


@contextlib.contextmanager
def lora_off(network):
    """The training forwards taken off the targets for the floor, and put back afterwards."""
    saved = [(m.target.module, m.target.module.__dict__.pop("forward", None)) for m in network.loras]
    try:
        yield
    finally:
        for module, fwd in saved:
            if fwd is not None:
                module.forward = fwd


def timed(fn) -> float:
    """CPU time of this process: on a shared machine wall time mostly measures the neighbours."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=["tiny", "sd15", "sdxl"])
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--case", default="", help="run only cases whose name contains this, e.g. sd15_32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bound", action="store_true", help="also time the floor with weight gradients (see above)")
    ap.add_argument("--sides", type=lambda v: [int(x) for x in v.split(",")], default=[16, 32], help="latent sides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = not args.no_checkpointing
    kinds = [args.only] if args.only else ["tiny", "sd15", "sdxl"]
    ratios = {}
    for kind in kinds:
        for side in args.sides:
            for precision in ("fp32", "bf16"):
                if args.case not in f"{kind}_{side}_{precision}":
                    continue
                floor, ours, bound, close = make_case(kind, side, precision, ckpt)
                try:
                    floor(), ours()  # warm-up (allocator, autocast caches, Adam state)
                    tf, to, tb = [], [], []
                    for r in range(args.rounds):
                        runs = [(floor, tf), (ours, to)] + ([(bound, tb)] if args.bound else [])
                        for fn, bucket in runs if r % 2 == 0 else runs[::-1]:
                            bucket.append(timed(fn))
                finally:
                    close()
                mf, mo = statistics.median(tf), statistics.median(to)
                name = f"{kind}_{side}_{precision}"
                ratios[name] = mo / mf
                extra = f"  bound {statistics.median(tb) / mf:.3f}" if tb else ""
                print(
                    f"{name:16s} ckpt={ckpt} floor {mf * 1000:8.1f} ms  ours {mo * 1000:8.1f} ms  ratio {mo / mf:.3f}"
                    + extra
                )
                sys.stdout.flush()
    worst = max(ratios, key=ratios.get)
    median = statistics.median(ratios.values())
    print(f"RESULT train_step worst_ratio={ratios[worst]:.3f} worst_case={worst} median_ratio={median:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
