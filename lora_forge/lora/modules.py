"""LoRA / LoCon modules and how they ride on a host module's forward.

Injection never touches the host model's module tree: each target keeps its class, parameters,
buffers and flags, and only its *instance* `forward` is replaced by a small wrapper (the WebUI's
Lora loader and other extensions walk `named_modules()`, so paths must not move). The wrapper
holds a list of attached LoRA modules, so several networks (several files, or one file at several
strengths) can ride on one model at once and be removed in any order; when the last one leaves,
the instance `__dict__` is exactly what it was before.

Multipliers: a float, or a 1-D tensor with one value per batch element. When the module sees a
batch that is a whole multiple k of the tensor's length (CFG runs cond and uncond halves through
the UNet in one batch), element i uses `multiplier[i % len]`: the grid must lay out the halves
in the same sample order (`[c0..cN-1, u0..uN-1]`, as the WebUI's CFG denoiser and our standalone
host do), so the uncond image of sample i gets the same strength as its cond image. The text
encoder sees the prompts and negative prompts as separate batches of N, which line up directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lora_forge.model.targets import Target

log = logging.getLogger(__name__)

HUB_ATTR = "_lora_forge_hub"


class LoraModule(nn.Module):
    """One kohya LoRA module: `lora_down`, `lora_up`, `alpha`; adds `m · alpha/rank · up(down(x))`.

    For a k×k conv (LoCon) `lora_down` is a k×k conv with the target's stride/padding and
    `lora_up` a 1×1 conv, as kohya builds it, so the file shapes match theirs. Parameters are
    float32 by default; the input is cast to them and the delta back to the host's dtype, so a
    half-precision host needs no autocast to render.
    """

    def __init__(
        self,
        target: Target,
        rank: int,
        alpha: float | None,
        *,
        dropout: float = 0.0,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.target = target  # a dataclass, so nn.Module does not register the host module under us
        self.name = target.name
        self.rank = int(rank)
        if target.kind in ("conv", "conv1x1"):
            host = target.module
            self.lora_down: nn.Module = nn.Conv2d(
                target.in_features,
                rank,
                host.kernel_size,
                host.stride,
                host.padding,
                dilation=host.dilation,
                bias=False,
            )
            self.lora_up: nn.Module = nn.Conv2d(rank, target.out_features, 1, bias=False)
        else:
            self.lora_down = nn.Linear(target.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, target.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        # kohya: alpha 0/None means "no scaling", i.e. alpha = rank.
        self.register_buffer("alpha", torch.tensor(float(alpha) if alpha else float(rank)))
        self._scale_key: tuple[int, int] | None = None
        self._scale = 1.0
        self.multiplier: float | torch.Tensor = 1.0
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self._wrapper: Callable[..., Any] | None = None

    @property
    def scale(self) -> float:
        """alpha / rank, read from the buffer only when it changed: `float()` of a GPU tensor
        would stall the device once per module per forward."""
        key = (id(self.alpha), self.alpha._version)
        if self._scale_key != key:
            self._scale_key, self._scale = key, float(self.alpha) / self.rank
        return self._scale

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The delta to add to the host module's output, or None when it would be zero."""
        mult = self.multiplier
        if isinstance(mult, (int, float)) and mult == 0:
            return None
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return None
        weight = self.lora_down.weight
        lx = self.lora_down(x if torch.is_autocast_enabled() else x.to(weight.dtype))
        scale = self.scale
        if self.training:
            if self.dropout:
                lx = F.dropout(lx, p=self.dropout)
            if self.rank_dropout:
                lx = lx * self._rank_mask(lx)
                scale /= 1.0 - self.rank_dropout
        out = self.lora_up(lx)
        return out * _broadcast(mult, out, self.target.batch_dim, scale)

    def _rank_mask(self, lx: torch.Tensor) -> torch.Tensor:
        """kohya's rank dropout: drop whole ranks per sample (the kept ones are rescaled)."""
        shape = [1] * lx.dim()
        batch_dim = self.target.batch_dim if lx.dim() > 1 else 0
        rank_dim = 1 if isinstance(self.lora_down, nn.Conv2d) else lx.dim() - 1
        shape[batch_dim] = lx.shape[batch_dim]
        shape[rank_dim] = self.rank
        return (torch.rand(shape, device=lx.device) > self.rank_dropout).to(lx.dtype)

    # ----- injection -----
    def attach(self) -> None:
        """Start adding this module's delta to its target's output."""
        if self._wrapper is not None:
            return
        module = self.target.module
        current = module.__dict__.get("forward")
        hub = getattr(current, HUB_ATTR, None)
        if hub is None:
            hub = _Hub(module, current, mha=self.target.kind == "mha")
            module.__dict__["forward"] = hub.wrapper
        hub.loras.append(self)
        self._wrapper = hub.wrapper

    def detach(self) -> None:
        """Stop adding the delta; the last module to leave restores the instance forward."""
        wrapper, self._wrapper = self._wrapper, None
        if wrapper is None:
            return
        hub: _Hub = getattr(wrapper, HUB_ATTR)
        hub.loras[:] = [m for m in hub.loras if m is not self]
        if hub.loras:
            return
        module = self.target.module
        if module.__dict__.get("forward") is not wrapper:
            # Someone wrapped the forward after us; theirs calls ours, which now passes through.
            log.warning("%s: another extension wrapped this layer after LoRA Forge; left a no-op wrapper", self.name)
            return
        if hub.previous is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = hub.previous


def delta_weight(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """kohya's merge formula: Linear `up@down`, 1×1 conv on squeezed weights, k×k conv composed."""
    down, up = down.float(), up.float()
    scale = alpha / down.shape[0]
    if down.dim() == 2:
        return (up @ down) * scale
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1))[:, :, None, None] * scale
    return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def _broadcast(mult: float | torch.Tensor, out: torch.Tensor, batch_dim: int, scale: float) -> Any:
    """`mult · scale` shaped to multiply `out`; a per-sample tensor is tiled over CFG halves."""
    if not isinstance(mult, torch.Tensor) or mult.dim() == 0:
        return mult * scale
    n, m = out.shape[batch_dim], mult.shape[0]
    if n != m:
        if n % m:
            raise ValueError(f"a batch of {n} cannot take {m} per-sample LoRA multipliers")
        mult = mult.repeat(n // m)
    shape = [1] * out.dim()
    shape[batch_dim] = n
    return (mult.to(device=out.device, dtype=out.dtype) * scale).view(shape)


class _Hub:
    """The one wrapper installed on a host module, shared by every LoRA attached to it."""

    def __init__(self, module: nn.Module, previous: Any, *, mha: bool) -> None:
        self.previous = previous  # the instance forward that was there before us, if any
        self.loras: list[LoraModule] = []

        def call_base(*args: Any, **kwargs: Any) -> Any:
            # Resolved at call time, so a class-level patch made later (the WebUI's Lora) still runs.
            if self.previous is not None:
                return self.previous(*args, **kwargs)
            return type(module).forward(module, *args, **kwargs)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.loras:
                return call_base(*args, **kwargs)
            if mha:
                return _mha_forward(module, self.loras, *args, **kwargs)
            y = call_base(*args, **kwargs)
            x = args[0] if args else kwargs["input"]
            for lora in self.loras:
                d = lora(x)
                if d is not None:
                    y = y + d.to(y.dtype)
            return y

        setattr(wrapper, HUB_ATTR, self)
        self.wrapper = wrapper


def _with_lora(base: torch.Tensor, loras: list[LoraModule], slot: str, x: torch.Tensor) -> torch.Tensor:
    for lora in loras:
        if lora.target.slot == slot:
            d = lora(x)
            if d is not None:
                base = base + d.to(base.dtype)
    return base


def _mha_forward(
    mha: nn.MultiheadAttention,
    loras: list[LoraModule],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, None]:
    """`nn.MultiheadAttention` with LoRA on its q/k/v/out projections (OpenCLIP's fused attention).

    torch's own MHA reads `in_proj_weight`/`out_proj.weight` directly, so there is no Linear
    forward to wrap; we run the same attention with the four projections unfused. OpenCLIP asks
    for no attention weights, so none are returned.
    """
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or query.dim() != 3:
        raise NotImplementedError("LoRA on nn.MultiheadAttention supports OpenCLIP's plain batched attention only")
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    q = _with_lora(F.linear(query, wq, bq), loras, "q", query)
    k = _with_lora(F.linear(key, wk, bk), loras, "k", key)
    v = _with_lora(F.linear(value, wv, bv), loras, "v", value)
    n, lq, e = q.shape
    lk, h = k.shape[1], mha.num_heads
    q, k, v = (t.view(n, -1, h, e // h).transpose(1, 2) for t in (q, k, v))
    mask = _additive_mask(attn_mask, key_padding_mask, q.dtype, n, h, lq, lk)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0, is_causal=is_causal and mask is None
    )
    o = o.transpose(1, 2).reshape(n, lq, e)
    out = _with_lora(F.linear(o, mha.out_proj.weight, mha.out_proj.bias), loras, "out", o)
    return (out if mha.batch_first else out.transpose(0, 1)), None


def _additive_mask(
    attn_mask: torch.Tensor | None, padding: torch.Tensor | None, dtype: torch.dtype, n: int, h: int, lq: int, lk: int
) -> torch.Tensor | None:
    """MHA's masks (bool: True = blocked; float: added) as one float mask for SDPA."""

    def as_float(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = as_float(attn_mask)
        mask = mask.view(n, h, lq, lk) if mask.dim() == 3 else mask
    if padding is not None:
        pad = as_float(padding).view(n, 1, 1, lk)
        mask = pad if mask is None else mask + pad
    return mask
