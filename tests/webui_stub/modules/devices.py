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
    if not disable and fp8 and device == cpu:  # 1.10.1: FP8 weights on the CPU compute in bf16
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=True)
    # fp32 (--no-half / CPU) takes the WebUI's nullcontext branch
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class NansException(Exception):
    """Raised by test_for_nans: process_images stops the whole job with it."""


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """1.10.1's check: the first element of the UNet's latents / the VAE's pixels is NaN → NansException,
    its message naming the part and, in half precision, the flag that usually helps."""
    from modules import shared

    opts = shared.cmd_opts
    if getattr(opts, "disable_nan_check", False) or not torch.isnan(x[(0,) * len(x.shape)]):
        return
    if where == "unet":
        message = "A tensor with NaNs was produced in Unet."
        if not opts.no_half:
            message += (
                " This could be either because there's not enough precision to represent the picture, or because"
                ' your video card does not support half type. Try setting the "Upcast cross attention layer to'
                ' float32" option in Settings > Stable Diffusion or using the --no-half commandline argument'
                " to fix this."
            )
    elif where == "vae":
        message = "A tensor with NaNs was produced in VAE."
        if not opts.no_half and not opts.no_half_vae:
            message += (
                " This could be because there's not enough precision to represent the picture."
                " Try adding --no-half-vae commandline argument to fix this."
            )
    else:
        message = "A tensor with NaNs was produced."
    raise NansException(message + " Use --disable-nan-check commandline argument to disable this check.")
