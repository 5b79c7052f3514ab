"""FP8 base weights: frozen Linear/Conv weights stored as `float8_e4m3fn`, upcast layer by layer.

This is what the WebUI's "FP8 weight" setting does for inference (1.10.1: `sd_models.load_model_weights`
casts every Linear and Conv2d outside the VAE to float8_e4m3fn and sets `devices.fp8`; at run time
autocast upcasts each weight to the compute dtype for its own op). A LoRA can train over such a
model: the base is frozen, so its weights only need reading, at 1 byte each instead of 2.

Two things here besides the storage:
- The upcast happens inside each layer's op, and what autograd keeps for backward is the FP8
  tensor itself, not the upcast copy (`_Fp8Linear`, `_Fp8Conv`): with plain autocast a checkpointed
  block's recomputation would hold every upcast weight of that block until its backward ends
  (about 0.7 GB for one of SDXL's 10-transformer blocks).
- `fp8_storage()` converts a model that is not FP8 yet (standalone, CLI, or the WebUI with the
  setting off) and puts the original tensors back afterwards, bit for bit. On an accelerator the
  originals wait in CPU memory, so the card holds only the FP8 copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lora_forge.errors import ForgeError


def fp8_dtype() -> Any:
    import torch

    return getattr(torch, "float8_e4m3fn", None)


def check_fp8(device: Any) -> None:
    """Refuse FP8 base weights before any work when this torch or device cannot do them."""
    import torch

    dtype = fp8_dtype()
    if dtype is None:
        raise ForgeError(
            f"FP8 base weights need torch 2.1 or newer (this is torch {torch.__version__}); "
            "turn fp8_base off, or update torch"
        )
    try:
        w = torch.ones(4, 4, device=device).to(dtype)
        upcast(w, torch.float32).sum().item()
    except (RuntimeError, TypeError) as e:
        raise ForgeError(f"FP8 base weights do not work on {device} with torch {torch.__version__} ({e})") from e


def is_fp8(t: Any) -> bool:
    dtype = fp8_dtype()
    return t is not None and dtype is not None and t.dtype == dtype


def _layers(module: Any) -> Iterator[Any]:
    import torch

    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            yield m


def stored_fp8(module: Any) -> bool:
    """True when the model's layers are already FP8 (the WebUI's FP8 weight setting)."""
    return any(is_fp8(m.weight) for m in _layers(module))


def fp8_weight_bytes(module: Any) -> int:
    """Bytes of `module`'s parameters when its Linear/Conv weights and biases are FP8."""
    layer_params = {id(p) for m in _layers(module) for p in m.parameters(recurse=False)}
    total = 0
    for p in module.parameters():
        total += p.numel() * (1 if id(p) in layer_params else p.element_size())
    return total


@contextlib.contextmanager
def fp8_storage(module: Any) -> Iterator[None]:
    """Every Linear/Conv2d weight and bias of `module` stored as float8_e4m3fn for the block.

    The parameters stay the same objects (optimizers, hooks and the WebUI's references keep
    working); only their `.data` changes, and the original tensors come back on exit. Originals
    on an accelerator are kept as exact CPU copies meanwhile."""
    dtype = fp8_dtype()
    saved: list[tuple[Any, Any, Any]] = []  # (parameter, original data or its CPU copy, its device)
    try:
        for m in _layers(module):
            for p in m.parameters(recurse=False):
                if is_fp8(p):
                    continue
                original = p.data
                kept = original if original.device.type == "cpu" else original.to("cpu", copy=True)
                saved.append((p, kept, original.device))
                p.data = original.to(dtype)
                del original
        yield
    finally:
        for p, kept, device in reversed(saved):
            p.data = kept if kept.device == device else kept.to(device)


def compute_dtype(x: Any) -> Any:
    """The dtype a layer computes in: autocast's when it is on for x's device, else x's own."""
    import torch

    kind = x.device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4 (the WebUI's 2.1): one flag per device kind
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
    if not on:
        return x.dtype
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(kind)
    return torch.get_autocast_cpu_dtype() if kind == "cpu" else torch.get_autocast_gpu_dtype()


def upcast(t: Any, dtype: Any) -> Any:
    return None if t is None else t.to(dtype)


def linear(x: Any, weight: Any, bias: Any) -> Any:
    """F.linear with an FP8 weight upcast for this op only (autograd keeps the FP8 tensor)."""
    dtype = compute_dtype(x)
    return _fp8_linear().apply(x.to(dtype), weight, bias, dtype)


def conv(module: Any, x: Any, weight: Any, bias: Any) -> Any:
    """`module`'s convolution with an FP8 weight upcast for this op only."""
    if module.padding_mode != "zeros":  # tiling (circular) is off while training; keep it exact anyway
        dtype = compute_dtype(x)
        return module._conv_forward(x.to(dtype), weight.to(dtype), upcast(bias, dtype))
    dtype = compute_dtype(x)
    args = (module.stride, module.padding, module.dilation, module.groups)
    return _fp8_conv().apply(x.to(dtype), weight, bias, dtype, *args)


_FUNCTIONS: dict[str, Any] = {}


def _fp8_linear() -> Any:
    if "linear" not in _FUNCTIONS:
        import torch
        import torch.nn.functional as F

        class _Fp8Linear(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, x: Any, w8: Any, b: Any, dtype: Any) -> Any:
                ctx.save_for_backward(w8)
                with torch.autocast(x.device.type, enabled=False):
                    return F.linear(x, w8.to(dtype), upcast(b, dtype))

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                (w8,) = ctx.saved_tensors
                grad_x = grad.matmul(w8.to(grad.dtype)) if ctx.needs_input_grad[0] else None
                return grad_x, None, None, None

        _FUNCTIONS["linear"] = _Fp8Linear
    return _FUNCTIONS["linear"]


def _fp8_conv() -> Any:
    if "conv" not in _FUNCTIONS:
        import torch
        import torch.nn.functional as F

        class _Fp8Conv(torch.autograd.Function):
            @staticmethod
            def forward(
                ctx: Any, x: Any, w8: Any, b: Any, dtype: Any, stride: Any, padding: Any, dilation: Any, groups: int
            ) -> Any:
                ctx.save_for_backward(w8)
                ctx.conf = (x.shape, stride, padding, dilation, groups)
                with torch.autocast(x.device.type, enabled=False):
                    return F.conv2d(x, w8.to(dtype), upcast(b, dtype), stride, padding, dilation, groups)

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                (w8,) = ctx.saved_tensors
                shape, stride, padding, dilation, groups = ctx.conf
                grad_x = None
                if ctx.needs_input_grad[0]:
                    w = w8.to(grad.dtype)
                    grad_x = torch.nn.grad.conv2d_input(shape, w, grad, stride, padding, dilation, groups)
                return (grad_x, *([None] * 7))

        _FUNCTIONS["conv"] = _Fp8Conv
    return _FUNCTIONS["conv"]


@contextlib.contextmanager
def upcast_forwards(module: Any, skip: set[int]) -> Iterator[None]:
    """Every FP8 Linear/Conv2d of `module` not in `skip` (ids of modules whose forward is someone
    else's, e.g. the LoRA targets) computes through `linear`/`conv` for the block."""
    import torch

    installed: list[tuple[Any, Any]] = []
    try:
        for m in _layers(module):
            if id(m) in skip or not is_fp8(m.weight):
                continue
            installed.append((m, m.__dict__.get("forward")))
            if isinstance(m, torch.nn.Linear):
                m.forward = lambda x, m=m: linear(x, m.weight, m.bias)
            else:
                m.forward = lambda x, m=m: conv(m, x, m.weight, m.bias)
        yield
    finally:
        for m, previous in reversed(installed):
            if previous is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = previous
