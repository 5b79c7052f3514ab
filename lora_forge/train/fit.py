"""Refuse a run the card cannot hold, before the first step (issue 15's "cannot fit the card").

The memory estimate (train/memory.py) is compared with the card's whole capacity, not with what is
free right now: the WebUI's own model and caches are already part of what the estimate counts, and a
run that cannot fit even an empty card would only spill into shared memory (the slow, silent failure
users report most) or stop with an out-of-memory error minutes later. On the CPU there is no such
limit to check. Also here: what must be checked before any work (the optimizer and FP8 can run).
"""

from __future__ import annotations

from typing import Any

from lora_forge.errors import ForgeError

GIB = 1024**3


def capacity(device: Any) -> int | None:
    """Bytes the accelerator holds, or None when there is no fixed limit (CPU)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return int(torch.cuda.get_device_properties(device).total_memory)


def check_before_work(config: Any, device: Any) -> None:
    """ForgeError, before the model is touched, for what this torch/device cannot do."""
    from lora_forge.train.optim import check_optimizer

    check_optimizer(config.optimizer_type, device.type)
    if config.fp8_base:
        from lora_forge.model.fp8 import check_fp8

        check_fp8(device)


def check_fits(estimate: Any, config: Any) -> None:
    """ForgeError naming both sizes and what lowers the need, when the estimate (whose `card` is
    `capacity()`, see memory.estimate) exceeds the card; FP8 base weights first when they suffice."""
    if not estimate.card or estimate.total <= estimate.card:
        return
    need, have = f"{estimate.total / GIB:.1f}", f"{estimate.card / GIB:.1f}"
    if not config.fp8_base and estimate.fp8_total <= estimate.card:
        raise ForgeError(
            f"this run needs about {need} GB of graphics memory but the card has {have} GB; turn on FP8 base "
            "weights (fp8_base, or the WebUI's FP8 weight setting): then it needs about "
            f"{estimate.fp8_total / GIB:.1f} GB"
        )
    raise ForgeError(
        f"this run needs about {need} GB of graphics memory but the card has {have} GB; "
        "lower the resolution or batch size, turn on gradient checkpointing, train the UNet only with cached "
        "text-encoder outputs, or use FP8 base weights"
    )
