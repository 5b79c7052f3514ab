"""Optimizers and learning-rate schedules, each checked before training starts.

Schedules are pure functions of the step (a LambdaLR), so resuming only needs the step number.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.train.config import TrainConfig


def check_optimizer(name: str, device_type: str) -> None:
    """Fail before any work when the optimizer cannot run here, saying what to install or pick."""
    if name == "AdamW8bit":
        _need("bitsandbytes", "AdamW8bit", "pip install bitsandbytes")
        _probe_8bit(device_type)
    elif name == "Adafactor":
        _need("transformers", "Adafactor", "pip install transformers")
    elif name == "Lion":
        _need("lion_pytorch", "Lion", "pip install lion-pytorch")
    elif name == "Prodigy":
        _need("prodigyopt", "Prodigy", "pip install prodigyopt")


def _need(module: str, name: str, how: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ForgeError(f"optimizer_type {name} needs the {module} package ({how}), or choose AdamW")


def _probe_8bit(device_type: str) -> None:
    """One 8-bit step on a small tensor: older bitsandbytes builds run on NVIDIA GPUs only, newer
    ones on the CPU too; which one is installed shows only when it runs."""
    import torch

    try:
        import bitsandbytes as bnb

        p = torch.nn.Parameter(torch.zeros(8, 512, device=device_type))
        p.grad = torch.ones_like(p)
        bnb.optim.AdamW8bit([p]).step()
    except Exception as e:  # a missing native library, an unsupported device: any of them means "no"
        raise ForgeError(
            f"optimizer_type AdamW8bit: the installed bitsandbytes cannot run on {device_type} ({type(e).__name__}); "
            "choose AdamW or Adafactor"
        ) from e


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
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # kohya's recommended LoRA settings: a fixed learning rate (ours, scheduled by LambdaLR),
        # no parameter scaling; factored second moment, no first moment, update clipping at 1.
        return Adafactor(groups, lr=groups[0]["lr"], scale_parameter=False, relative_step=False, warmup_init=False)
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


@contextlib.contextmanager
def fused_backward(optimizer: Any, max_grad_norm: float) -> Iterator[None]:
    """Each parameter's optimizer step runs in backward, as soon as its gradient is complete, and
    the gradient is freed at once (kohya's --fused_backward_pass for Adafactor; for AdamW8bit, what
    its --fused_optimizer_groups does with one group per tensor): the gradients never exist all
    together. The step is the optimizer's own, on a one-parameter view of the parameter's group,
    so it is the same update as after a full backward. Clipping is per tensor (the global norm
    is unknown until backward ends), as in kohya. The optimizer is marked `steps_in_backward`;
    `loop.optimizer_step` then only advances the schedule."""
    handles = []

    def hook_for(group: dict[str, Any]) -> Callable[[Any], None]:
        import torch

        def step(param: Any) -> None:
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_([param], max_grad_norm)
            groups = optimizer.param_groups
            optimizer.param_groups = [{**group, "params": [param]}]
            try:
                optimizer.step()
            finally:
                optimizer.param_groups = groups
            param.grad = None

        return step

    try:
        for group in optimizer.param_groups:
            for p in group["params"]:
                handles.append(p.register_post_accumulate_grad_hook(hook_for(group)))
        optimizer.steps_in_backward = True
        yield
    finally:
        for h in handles:
            h.remove()
        optimizer.steps_in_backward = False
