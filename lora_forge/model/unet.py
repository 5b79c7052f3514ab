"""The UNet as training needs it: frozen base, SDP attention, non-reentrant checkpointing.

Each helper is a context manager that puts back exactly what it changed, because the model we
train on is the one the WebUI keeps rendering with afterwards (webui-internals.md §10).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def unet_of(sd_model: Any) -> Any:
    return sd_model.model.diffusion_model


def predict(unet: Any, x: Any, t: Any, cond: Any) -> Any:
    """ε or v prediction of the UNet for noisy latents `x` at timesteps `t`.

    SDXL's cond is the `{'crossattn', 'vector'}` dict, passed the way sgm's OpenAIWrapper does."""
    if isinstance(cond, dict):
        return unet(x, timesteps=t, context=cond["crossattn"], y=cond["vector"])
    return unet(x, timesteps=t, context=cond)


@contextlib.contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Every parameter of `modules` gets requires_grad=False; the flags come back afterwards.

    The WebUI leaves UNet parameters with requires_grad=True (its built-in trainers never freeze
    them), which would make backward fill a second UNet's worth of gradients.
    """
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _sdp_forward(self: Any, x: Any, context: Any = None, mask: Any = None) -> Any:
    """ldm CrossAttention with torch's fused scaled-dot-product attention.

    Same maths as the stock einsum/softmax forward, but the attention matrix is never stored for
    backward (flash / memory-efficient kernels), which is most of the activation memory at 512 px.
    """
    import torch.nn.functional as F

    h = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, inner = q.shape
    d = inner // h
    q, k, v = (z.view(b, -1, h, d).transpose(1, 2) for z in (q, k, v))
    if mask is not None:
        mask = mask.reshape(b, 1, 1, -1).bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(b, n, inner)
    return self.to_out(out)


@contextlib.contextmanager
def sdp_attention() -> Iterator[None]:
    """Swap ldm's CrossAttention.forward for the SDP one while training, then restore it.

    The stock ldm forward (and the WebUI's with optimisations undone) is the einsum version that
    keeps a heads×N×N matrix per block for backward. Whatever forward was installed (the WebUI's
    own sdp/xformers hijack included) is put back on exit.
    """
    from ldm.modules.attention import CrossAttention

    original = CrossAttention.__dict__["forward"]
    CrossAttention.forward = _sdp_forward
    try:
        yield
    finally:
        CrossAttention.forward = original


def _checkpointed(module: Any) -> Any:
    import torch.utils.checkpoint as cp

    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return cp.checkpoint(inner, *args, use_reentrant=False, **kwargs)

    return forward


def _ldm_checkpoint_flags(unet: Any) -> list[tuple[Any, str, Any]]:
    """(module, attribute, value) of ldm's own checkpoint switches inside the UNet."""
    found = []
    for m in unet.modules():
        for attr in ("checkpoint", "use_checkpoint"):
            value = m.__dict__.get(attr)
            if isinstance(value, bool):
                found.append((m, attr, value))
    return found


def unet_blocks(unet: Any) -> list[Any]:
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


@contextlib.contextmanager
def training_unet(unet: Any, gradient_checkpointing: bool) -> Iterator[None]:
    """Turn ldm's own checkpointing off and, if asked, checkpoint each UNet block non-reentrantly.

    ldm's `CheckpointFunction` differentiates only w.r.t. the block's registered parameters, so a
    LoRA whose weights live outside the block would silently get no gradient; the reentrant
    torch checkpoint has the same hole when no block input requires grad. `use_reentrant=False`
    records whatever the recomputation touches. Blocks are wrapped by an instance `forward`, so
    module paths never change, and the wrapper is removed afterwards.
    """
    flags = _ldm_checkpoint_flags(unet)
    wrapped: list[tuple[Any, Any]] = []
    try:
        for m, attr, _ in flags:
            setattr(m, attr, False)
        if gradient_checkpointing:
            for block in unet_blocks(unet):
                wrapped.append((block, block.__dict__.get("forward")))
                block.forward = _checkpointed(block)
        yield
    finally:
        for block, previous in reversed(wrapped):
            if previous is None:
                del block.forward
            else:
                block.forward = previous
        for m, attr, value in flags:
            setattr(m, attr, value)
