"""Optimizers and learning-rate schedules, each checked before training starts.

Schedules are pure functions of the step (a LambdaLR), so resuming only needs the step number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.train.config import TrainConfig


def check_optimizer(name: str, device_type: str) -> None:
    """Fail before any work when the optimizer cannot run here, saying what to install or pick."""
    if name == "AdamW8bit":
        if device_type != "cuda":
            raise ForgeError("optimizer_type AdamW8bit needs an NVIDIA GPU (bitsandbytes); use AdamW on this device")
        _need("bitsandbytes", "AdamW8bit", "pip install bitsandbytes")
    elif name == "Lion":
        _need("lion_pytorch", "Lion", "pip install lion-pytorch")
    elif name == "Prodigy":
        _need("prodigyopt", "Prodigy", "pip install prodigyopt")


def _need(module: str, name: str, how: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ForgeError(f"optimizer_type {name} needs the {module} package ({how}), or choose AdamW")


def make_optimizer(name: str, groups: list[dict[str, Any]]) -> Any:
    import torch

    if name == "AdamW":
        # The fused kernel (CPU and CUDA since torch 2.4) updates in one pass over memory instead of
        # ~8 elementwise passes: at rank 32 that is a tenth of an SD1.5 step on CPU.
        # torch < 2.4 (the WebUI ships 2.1) has the fused kernel for CUDA only.
        cpu_fused = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
        fused = all(p.dtype == torch.float32 and (p.is_cuda or cpu_fused) for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8, fused=fused or None)
    if name == "AdamW8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=(0.9, 0.999), weight_decay=0.01)
    if name == "Lion":
        from lion_pytorch import Lion

        return Lion(groups, betas=(0.9, 0.99), weight_decay=0.01)
    if name == "Prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, weight_decay=0.01, d_coef=1.0, safeguard_warmup=True, use_bias_correction=True)
    raise ForgeError(f"unknown optimizer_type {name!r}")


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at each optimizer step (kohya/diffusers' schedule shapes)."""
    warmup = min(config.warmup_steps(total_steps), max(0, total_steps - 1))
    kind, cycles = config.lr_scheduler, config.lr_scheduler_num_cycles
    if kind == "constant_with_warmup" and not warmup:
        kind = "constant"

    def factor(step: int) -> float:
        if warmup and step < warmup and kind != "constant":
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        # cosine_with_restarts: `cycles` hard restarts
        if progress >= 1.0:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))

    return factor


def make_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
