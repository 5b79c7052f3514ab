"""modules/devices.py: where and in which precision the model computes (CPU fp32 here)."""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
device_interrogate = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False
fp8 = False


def torch_gc() -> None:
    """CUDA cache cleanup in the WebUI; nothing to free on CPU."""


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    # fp32 (--no-half / CPU) takes the WebUI's nullcontext branch
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()
