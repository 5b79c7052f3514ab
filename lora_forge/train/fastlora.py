"""The training-time forward of a LoraNetwork: same maths, fewer and cheaper operations.

lora/ injects LoRA for every use (several networks at once, per-sample strengths for the grid,
dropout); a training step needs only one network at strength 1, and there every extra tensor
operation and module call per target shows up directly in the step time (bench/train_step.py).
So while training, each target's instance forward computes its output in one of two exact forms,
whichever costs fewer FLOPs at this call's shape:

- merged:   y = layer(x; W + s·up·down)      one small matmul, then the layer's own op;
             backward adds the weight gradient of the layer (tokens·in·out).
- unmerged: y = layer(x; W) + s·up(down(x))  one autograd node for linear layers (the layer's
             matmul and two small ones); costs ~(passes + 3)·tokens·rank·(in + out).

Wide layers at many tokens (SD1.5's 1280-channel blocks) go unmerged; narrow ones and the
77-token cross-attention keys/values go merged. The parameters are the network's own, so the
files, the optimizer and the resume state see no difference; LoRA dropout and OpenCLIP's fused
attention need lora/'s general path, and the session falls back to it for them.

Parameters are also moved into one flat buffer per optimizer group (views keep each module's
tensors where they were), so AdamW and gradient clipping run as a handful of operations instead of
a dozen per LoRA tensor; optimizers that need each tensor's own shape keep them apart (`flat=False`).
Frozen FP8 weights (model/fp8.py) are upcast inside each op and never merged back into FP8.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


def supported(network: Any, config: Any) -> bool:
    """True when the fast forward computes exactly what lora/'s forward would."""
    if config.network_dropout or config.rank_dropout or config.module_dropout:
        return False
    return all(m.target.kind in ("linear", "conv1x1", "conv") for m in network.loras)


class FastLora:
    """The network's trained tensors in one flat fp32 parameter per optimizer group, and the
    training forwards that read them.

    Each LoRA tensor of the network becomes a view into its group's flat parameter, so files,
    resume state and renders keep working on the modules as usual. The forwards, however, take
    their (down, up) from `begin_step()`: one cast of each flat parameter to the autocast dtype
    and one split per step, instead of two casts per target per pass, and autograd accumulates
    into one gradient per group. AdamW and clipping then run on a handful of tensors.
    """

    def __init__(self, network: Any, groups: list[dict[str, Any]], passes: int, flat: bool = True) -> None:
        """`flat=False` keeps the network's own tensors as the trained parameters (one cast each per
        step): optimizers whose update depends on each tensor's shape (Adafactor's factored second
        moment, 8-bit block quantisation) and per-tensor gradient hooks need them (train/optim.py)."""
        import torch

        self.network, self.passes, self.flat = network, passes, flat
        self.groups: list[dict[str, Any]] = []
        self.layout: list[list[Any]] = []  # per group: the original parameters, in flat order
        slot: dict[int, tuple[int, int]] = {}
        for gi, group in enumerate(groups):
            params = group["params"]
            for pi, p in enumerate(params):
                slot[id(p)] = (gi, pi)
            self.layout.append(params)
            if not flat:
                self.groups.append(group)
                continue
            flat_param = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
            offset = 0
            with torch.no_grad():
                for p in params:
                    n = p.numel()
                    flat_param[offset : offset + n].copy_(p.detach().reshape(-1))
                    p.data = flat_param[offset : offset + n].view_as(p)
                    offset += n
            self.groups.append({**group, "params": [torch.nn.Parameter(flat_param)]})
        self.slots = [(slot[id(m.lora_down.weight)], slot[id(m.lora_up.weight)]) for m in network.loras]
        self.current: list[tuple[Any, Any, Any]] = []
        self.casts: list[_CastBuffers] = []  # per flat group: the step's low-precision copy
        self.previous: list[tuple[Any, Any]] = []  # (target, its instance forward before ours), while installed

    @property
    def params(self) -> list[Any]:
        """The trained parameters: one flat tensor per group, or every LoRA tensor when not flat."""
        return [p for g in self.groups for p in g["params"]]

    def begin_step(self, dtype: Any = None) -> None:
        """(down, up) of every module for this step, in `dtype` (None: the fp32 masters).

        Per-tensor parameters (`flat=False`) are handed over as the fp32 masters and each forward
        casts its own pair as it uses it: the memory-lean optimizers (Adafactor, AdamW8bit) are
        then not paying for a low-precision copy of the whole network that would live from the
        first forward to the end of backward (SD1.5 rank 32: 0.025 GiB of a 2.6 GiB step; SDXL
        rank 16: 0.08 GiB). The flat groups keep their one cast per step, which is cheaper per call."""
        if not self.flat:
            views = self.layout
        elif dtype is None:
            views = []
            for master, params in zip(self.params, self.layout, strict=True):
                parts = master.split([p.numel() for p in params])
                views.append([part.view_as(p) for part, p in zip(parts, params, strict=True)])
        else:
            if not self.casts or self.casts[0].dtype != dtype:
                self.casts = [
                    _CastBuffers(master, params, dtype) for master, params in zip(self.params, self.layout, strict=True)
                ]
            views = [list(_cast_function().apply(buffers.master, buffers)) for buffers in self.casts]
        self.current = [(views[gd][pd], views[gu][pu], dtype) for (gd, pd), (gu, pu) in self.slots]

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The training forward on every target; the instance dicts are restored on exit."""
        saved = self.previous = []
        try:
            for i, lora in enumerate(self.network.loras):
                module = lora.target.module
                make = _linear_forward if lora.target.kind == "linear" else _conv_forward
                saved.append((module, module.__dict__.get("forward")))
                module.forward = make(module, lora, self.passes, self.current_of(i))
            yield
        finally:
            _put_back(reversed(saved))
            self.previous = []

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """The targets' own forwards for the block, ours reinstalled after: the model as if this
        network were absent. A multiplier cannot do it (the training forward has none), and the
        WebUI's Lora extension merges its networks in the layer's class forward, which ours skips."""
        ours = [(module, module.__dict__["forward"]) for module, _ in self.previous]
        try:
            _put_back(self.previous)
            yield
        finally:
            for module, forward in ours:
                module.forward = forward

    def end_step(self) -> None:
        """Drop this step's views (and their graph); renders then read the live weights."""
        self.current = []

    def current_of(self, i: int) -> Any:
        """The module's (down, up, x_dtype) getter. x_dtype is the step's autocast dtype: the
        forward casts its input once to it, where autocast would cast it again for every op
        that reads it (the layer and the LoRA's down-projection); None leaves x alone. down and
        up may still be fp32 masters under an x_dtype (`flat=False`): the forwards cast them."""

        def get(x: Any) -> tuple[Any, Any, Any]:
            if self.current:
                return self.current[i]
            # a render between steps (samples): the live fp32 values, cast when no autocast does it
            import torch

            lora = self.network.loras[i]
            down, up = lora.lora_down.weight, lora.lora_up.weight
            if down.dtype != x.dtype and not torch.is_autocast_enabled():
                down, up = down.to(x.dtype), up.to(x.dtype)
            return down, up, None

        return get


class _CastBuffers:
    """A flat fp32 master's copy in the step's compute dtype, kept from step to step (it lives
    through every forward and backward anyway): casting into a fresh tensor each step cost more
    than the cast itself on the CPU (a 42.6M-element SDXL rank-16 master: ~170 ms in new pages,
    ~8 ms into this). The gradient is allocated in backward, as autograd would: kept, it would sit
    in memory through the next forward, the step's peak."""

    def __init__(self, master: Any, params: list[Any], dtype: Any) -> None:
        import torch

        self.master, self.dtype = master, dtype
        self.low = torch.empty_like(master, dtype=dtype)
        self.sizes = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        self.low_views = [part.view(shape) for part, shape in zip(self.low.split(self.sizes), self.shapes, strict=True)]

    def grad_views(self, grad: Any) -> list[Any]:
        return [part.view(shape) for part, shape in zip(grad.split(self.sizes), self.shapes, strict=True)]


@functools.cache
def _cast_function() -> Any:
    """The autograd Function behind `FastLora.begin_step`'s casts (made on first use: no torch at import)."""
    import torch

    class Cast(torch.autograd.Function):
        """master → one view per LoRA tensor in the compute dtype; backward writes (or adds) each
        view's gradient into the master's fp32 gradient: no cat of the parts into a full-size
        low-precision gradient first. The values are those of `master.to(dtype).split(...)` and its
        backward."""

        @staticmethod
        def forward(ctx: Any, master: Any, buffers: _CastBuffers) -> tuple[Any, ...]:
            ctx.set_materialize_grads(False)  # a tensor no op read gets None, not a new zero tensor
            buffers.low.copy_(master)
            ctx.buffers = buffers
            return tuple(buffers.low_views)

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> tuple[Any, None]:
            buffers = ctx.buffers
            master = buffers.master
            fresh = master.grad is None  # else: a later micro-step of the same optimizer step adds
            grad = torch.empty_like(master) if fresh else master.grad
            for view, g in zip(buffers.grad_views(grad), grads, strict=True):
                if fresh:
                    view.zero_() if g is None else view.copy_(g)
                elif g is not None:
                    view.add_(g)
            master.grad = grad
            return None, None

    return Cast


def _put_back(saved: Any) -> None:
    for module, previous in saved:
        if previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous


def _costs(n_in: int, n_out: int, rank: int, passes: int) -> tuple[int, int, int]:
    """Per-token FLOPs of the merged and unmerged forms, and the merged form's per-call part."""
    merged = n_in * n_out  # the layer's weight gradient
    unmerged = (passes + 3) * rank * (n_in + n_out)
    fixed = (passes + 2) * n_in * n_out * rank  # the small matmul, per call and in backward
    return merged, unmerged, fixed


def _linear_forward(module: Any, lora: Any, passes: int, get: Any) -> Any:
    import torch
    import torch.nn.functional as F

    from lora_forge.model import fp8

    weight, bias = module.weight, module.bias
    scale = float(lora.alpha) / lora.rank
    n_out, n_in = weight.shape
    merged_cost, unmerged_cost, fixed = _costs(n_in, n_out, lora.rank, passes)
    stored_fp8 = fp8.is_fp8(weight)  # frozen FP8 storage: upcast for the op, never merged back into FP8
    unmerged = _unmerged_linear()

    def forward(x: Any) -> Any:
        down, up, x_dtype = get(x)
        tokens = x.numel() // n_in
        if tokens * merged_cost + fixed <= tokens * unmerged_cost:
            if x_dtype is not None and up.dtype != x_dtype:  # fp32 masters: merge in the step's dtype
                down, up = down.to(x_dtype), up.to(x_dtype)
            merged = torch.addmm(weight.to(up.dtype), up, down, alpha=scale)
            if stored_fp8:
                dtype = fp8.compute_dtype(x)
                return F.linear(x.to(dtype), merged.to(dtype), None if bias is None else bias.to(dtype))
            return F.linear(x, merged.to(weight.dtype), bias)
        dtype = fp8.compute_dtype(x) if x_dtype is None else x_dtype
        return unmerged.apply(x.to(dtype), weight, bias, down, up, scale)

    return forward


@functools.cache
def _unmerged_linear() -> Any:
    """The autograd Function of the unmerged form (made on first use: no torch at import)."""
    import torch

    class UnmergedLinear(torch.autograd.Function):
        """y = x·Wᵀ + b + s·(x·downᵀ)·upᵀ as one autograd node, computed in x's dtype.

        Built from separate ops, autograd makes ~10 nodes of it per call (views, transposes, the
        scale, the add of the two input gradients), and at SDXL's 16–256 tokens per call their
        dispatch costs more than the LoRA's arithmetic. Here the forward is three matmuls, the
        backward four small ones plus the base's input gradient, which takes the LoRA's share in
        place (addmm_). Only x and s·x·downᵀ (tokens × rank) go through save_for_backward, so a
        checkpointed block still drops and recomputes them; W, b, down and up live through the
        step anyway and are kept as they are (an FP8 W is upcast for each use, never kept upcast);
        backward lets go of them, as autograd frees saved tensors, so a finished step's graph (its
        loss is often still referenced during the next forward) holds none of them. down and up may
        come in fp32 (per-tensor masters): they are cast here for each use and not kept, and their
        gradients go back in their own dtype.
        """

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, down: Any, up: Any, scale: float) -> Any:
            dtype = x.dtype
            x2 = x.reshape(-1, x.shape[-1])
            h = torch.mm(x2, down.to(dtype).t()).mul_(scale)
            w = weight.to(dtype)
            y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(h, up.to(dtype).t())
            ctx.save_for_backward(x2, h)
            ctx.weight, ctx.down, ctx.up, ctx.scale, ctx.x_shape = weight, down, up, scale, x.shape
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            x2, h = ctx.saved_tensors
            weight, down, up = ctx.weight, ctx.down, ctx.up
            ctx.weight = ctx.down = ctx.up = None
            g = grad.reshape(-1, grad.shape[-1])
            gh = torch.mm(g, up.to(g.dtype)).mul_(ctx.scale)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.mm(g, weight.to(g.dtype)).addmm_(gh, down.to(g.dtype)).view(ctx.x_shape)
            grad_down = torch.mm(gh.t(), x2).to(down.dtype) if ctx.needs_input_grad[3] else None
            grad_up = torch.mm(g.t(), h).to(up.dtype) if ctx.needs_input_grad[4] else None
            return grad_x, None, None, grad_down, grad_up, None

    return UnmergedLinear


def _conv_forward(module: Any, lora: Any, passes: int, get: Any) -> Any:
    import torch
    import torch.nn.functional as F

    from lora_forge.model import fp8

    weight, bias = module.weight, module.bias
    scale = float(lora.alpha) / lora.rank
    n_out, n_in = weight.shape[0], weight[0].numel()  # in_channels · kh · kw
    merged_cost, unmerged_cost, fixed = _costs(n_in, n_out, lora.rank, passes)

    pointwise = lora.target.kind == "conv1x1" and module.stride == (1, 1) and module.padding in ((0, 0), "valid")
    pointwise = pointwise and module.groups == 1 and module.padding_mode == "zeros"
    stored_fp8 = fp8.is_fp8(weight)

    def forward(x: Any) -> Any:
        down, up, x_dtype = get(x)
        if x_dtype is not None and up.dtype != x_dtype:  # fp32 masters (see current_of)
            down, up = down.to(x_dtype), up.to(x_dtype)
        tokens = x.numel() // module.in_channels  # output positions, for the stride-1 layers that matter
        if tokens * merged_cost + fixed <= tokens * unmerged_cost:
            w = torch.addmm(weight.flatten(1).to(up.dtype), up.flatten(1), down.flatten(1), alpha=scale)
            if stored_fp8:
                dtype = fp8.compute_dtype(x)
                return module._conv_forward(x.to(dtype), w.view_as(weight).to(dtype), fp8.upcast(bias, dtype))
            return module._conv_forward(x, w.view_as(weight).to(weight.dtype), bias)
        if x_dtype is not None and x.dtype != x_dtype:
            x = x.to(x_dtype)
        y = fp8.conv(module, x, weight, bias) if stored_fp8 else module._conv_forward(x, weight, bias)
        if pointwise and x.dim() == 4 and x.shape[0] == 1:
            # one image's 1×1 LoRA is two plain matmuls over its pixels: as convolutions (or a
            # batched matmul) each pays a setup that at rank 8–32 costs more than the arithmetic,
            # 2–8x more in bf16 on CPU (measured at SD1.5's shapes)
            h = down.flatten(1).mm(x.reshape(x.shape[1], -1))
            return torch.addmm(y.reshape(y.shape[1], -1), up.flatten(1), h, alpha=scale).view(y.shape)
        lx = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)
        return y.add(F.conv2d(lx, up), alpha=scale)

    return forward
