"""The memory plan: an estimate of peak accelerator memory before training, and measurements.

Activations are not guessed from a table: the UNet (with the LoRA injected) runs one probe
forward at the largest bucket's latent size, without backward, under a saved-tensors hook that adds
up, per UNet block, what autograd keeps for backward and each block's input; the probe itself
keeps nothing, so it holds one block's activations at a time. With gradient checkpointing,
backward holds every block's input plus one block's recomputed activations at a time; without it,
everything at once.

Why one probe at the real size rather than small probes and a fit: it is exact for that size and
costs one forward, and it adds nothing to the training peak. Small probe sizes did: on CPU, oneDNN
keeps a JIT-compiled kernel per convolution shape, and three extra shapes stayed resident as
~70 MiB on SD1.5 (bench/train_memory.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from lora_forge.train.config import PER_TENSOR, TrainConfig

GIB = 1024**3
CUDA_CONTEXT = 400 * 1024**2  # the CUDA context and kernels; not in torch's allocator counters
CARDS_GB = (4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 80)  # the card sizes a verdict names ("fits 8 GB")


@dataclass
class Estimate:
    frozen_weights: int
    trainable: int  # LoRA weights + grads + optimizer state
    activations: int
    runtime: int  # process / CUDA context overhead
    total: int
    fp8_total: int = 0  # the same run with FP8 base weights (= total when they are FP8 already)
    card: int = 0  # the accelerator's memory; 0 when unknown (CPU)
    verdict: str = ""  # "fits 8 GB", "needs FP8 for 6 GB", "needs 10.3 GB"

    @property
    def fits(self) -> bool:
        return not self.card or self.total <= self.card

    def summary(self) -> str:
        parts = (
            f"frozen weights {self.frozen_weights / GIB:.2f}",
            f"LoRA+grads+optimizer {self.trainable / GIB:.2f}",
            f"activations {self.activations / GIB:.2f}",
            f"runtime {self.runtime / GIB:.2f}",
        )
        text = f"≈ {self.total / GIB:.2f} GiB peak (" + ", ".join(parts) + " GiB)"
        return f"{text}; {self.verdict}" if self.verdict else text

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


OPTIMIZER_STATE = {"AdamW": 2.0, "AdamW8bit": 0.5, "Lion": 1.0, "Prodigy": 4.0}  # × the fp32 weights


def optimizer_state_bytes(params: list[Any], name: str) -> int:
    """What the optimizer keeps per trained tensor. Adafactor (kohya's settings: no first moment)
    keeps a row and a column statistic for a matrix, the full second moment for a vector; a 1×1
    conv's 4-d LoRA tensor factors over its last two dims, which saves nothing."""
    if name != "Adafactor":
        return int(_bytes(params) * OPTIMIZER_STATE.get(name, 2.0))
    total = 0
    for p in params:
        shape = tuple(p.shape)
        if len(shape) < 2:
            total += p.numel() * 4
            continue
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        total += (rows + cols) * 4
    return total


def trainable_bytes(params: list[Any], config: TrainConfig) -> int:
    """LoRA weights, their gradients (one tensor at a time with a fused backward pass), the step's
    low-precision copy of them under mixed precision (flat groups only: per-tensor optimizers'
    forwards cast each pair as they use it, train/fastlora.py), and the optimizer state."""
    weights = _bytes(params)
    grads = max((p.numel() * 4 for p in params), default=0) if config.fused_backward_pass else weights
    step_copy = weights // 2 if config.mixed_precision != "no" and config.optimizer_type not in PER_TENSOR else 0
    return weights + grads + step_copy + optimizer_state_bytes(params, config.optimizer_type)


def _bytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _on(device: Any, module: Any) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.device.type == device.type


def estimate(sd_model: Any, network: Any, config: TrainConfig, dataset: Any, device: Any = None) -> Estimate:
    """Peak memory of training this config on this model and dataset (see the module docstring)."""
    from lora_forge.model.unet import unet_of

    unet = unet_of(sd_model)
    device = device or next(unet.parameters()).device
    on_cpu = device.type == "cpu"
    from lora_forge.train.data import captions_vary

    te = getattr(sd_model, "cond_stage_model", None)
    vae = getattr(sd_model, "first_stage_model", None)
    te_stays = config.train_text_encoder or captions_vary(config) or not config.cache_text_encoder_outputs
    from lora_forge.model.fp8 import fp8_weight_bytes

    frozen = _bytes(unet.parameters())  # the session has converted them already when fp8_base is on
    extra = 0  # frozen bytes besides the UNet's
    if te is not None and (on_cpu or te_stays):
        extra += _bytes(te.parameters())
    if vae is not None and on_cpu:
        extra += _bytes(vae.parameters())
    trained = [m for m in network.loras if config.train_text_encoder or m.target.part == "unet"]
    idle = [m for m in network.loras if m not in trained]  # untrained TE modules: weights only
    trainable = trainable_bytes([p for m in trained for p in m.parameters()], config)
    trainable += _bytes(p for m in idle for p in m.parameters())
    buckets = dataset.bucket_counts() if dataset is not None else {config.resolution_wh: 1}
    w, h = max(buckets, key=lambda wh: wh[0] * wh[1])
    acts = activation_bytes(unet, (h // 8, w // 8), config)
    # On CPU the process itself (Python, torch, the rest of the model) is part of the resident set.
    runtime = max(0, current_bytes(device) - frozen - extra - _bytes(network.parameters())) if on_cpu else CUDA_CONTEXT
    total = frozen + extra + trainable + acts + runtime
    fp8_total = total - frozen + fp8_weight_bytes(unet)
    est = Estimate(frozen + extra, trainable, acts, runtime, total, fp8_total, _card(device))
    est.verdict = verdict(est)
    return est


def _card(device: Any) -> int:
    from lora_forge.train.fit import capacity

    return capacity(device) or 0


def verdict(est: Estimate) -> str:
    """Will it fit: "fits 8 GB", "needs FP8 for 6 GB", "needs 10.3 GB". With a known card, about
    that card; without one, the smallest common card that fits, and a smaller one FP8 would reach."""

    def card_for(total: int) -> int:
        return next((gb for gb in CARDS_GB if total <= gb * GIB), 0)

    if est.card:
        card_gb = round(est.card / GIB)
        if est.total <= est.card:
            return f"fits {card_gb} GB"
        if est.fp8_total <= est.card:
            return f"needs FP8 for {card_gb} GB"
        return f"needs {est.total / GIB:.1f} GB"
    plain, fp8 = card_for(est.total), card_for(est.fp8_total)
    if not plain:
        return f"needs {est.total / GIB:.1f} GB"
    if fp8 and fp8 < plain:
        return f"fits {plain} GB; needs FP8 for {fp8} GB"
    return f"fits {plain} GB"


def activation_bytes(unet: Any, latent_hw: tuple[int, int], config: TrainConfig) -> int:
    """Peak activation bytes of one training step at this latent size (see the module docstring)."""
    probe = _probe(unet, latent_hw, config)
    saved, inputs = probe["saved"], probe["inputs"]
    out_bytes = 4 * latent_hw[0] * latent_hw[1] * 4.0  # the fp32 prediction, target and their grads
    if config.gradient_checkpointing:
        peak = sum(inputs.values()) + max(saved[n] + 2 * inputs[n] for n in saved)
    else:
        peak = sum(saved.values()) + 2 * max(inputs.values())
    return int(config.train_batch_size * (peak + 4 * out_bytes))


def _probe(unet: Any, latent_hw: tuple[int, int], config: TrainConfig) -> dict[str, dict[str, float]]:
    """Bytes autograd saves per UNet block, and each block's input, for one forward at this size."""
    import torch

    from lora_forge.model.unet import unet_blocks

    blocks = unet_blocks(unet)
    names = [f"block{i}" for i in range(len(blocks))] + ["outside"]
    saved = dict.fromkeys(names, 0.0)
    inputs = dict.fromkeys(names, 0.0)
    seen: set[int] = set()
    held: list[Any] = []  # this block's saved tensors, alive until it ends (so storages stay distinct)
    params = {p.data_ptr() for p in unet.parameters()}
    current = ["outside"]

    def pack(t: Any) -> Any:
        """Count the tensor, hand autograd a placeholder: the probe never runs backward, so the
        graph keeps nothing and the probe's own footprint stays at one block's activations."""
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            held.append(t)
            saved[current[0]] += t.untyped_storage().nbytes()

    def enter(name: str) -> None:
        current[0] = name
        held.clear()
        seen.clear()

    hooks = []
    for name, block in zip(names, blocks, strict=False):

        def pre(_m: Any, args: Any, name: str = name) -> None:
            enter(name)
            inputs[name] += args[0].numel() * args[0].element_size()

        def post(_m: Any, _a: Any, _o: Any) -> None:
            enter("outside")

        hooks += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    wrappers = {id(b): b.__dict__.pop("forward") for b in blocks if "forward" in b.__dict__}
    dtype = next(unet.parameters()).dtype
    if dtype.itemsize == 1:  # FP8 storage: inputs in a compute dtype (the layers upcast to it)
        dtype = torch.float32 if config.mixed_precision == "no" else torch.bfloat16
    device = next(unet.parameters()).device
    ctx_dim = _context_dim(unet)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16)
        if config.mixed_precision != "no"
        else contextlib.nullcontext()
    )
    try:
        x = torch.zeros(1, 4, *latent_hw, device=device, dtype=torch.float32, requires_grad=True)
        t = torch.full((1,), 500, device=device)
        cond = torch.zeros(1, 77 * (config.max_token_length // 75), ctx_dim, device=device, dtype=dtype)
        label_emb = getattr(unet, "label_emb", None)  # SDXL: the `vector` input
        adm = label_emb[0][0].in_features if label_emb is not None else 0
        y = torch.zeros(1, int(adm), device=device, dtype=dtype) if adm else None
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None), autocast:
            unet(x, timesteps=t, context=cond, **({"y": y} if y is not None else {}))
        held.clear()
    finally:
        for h in hooks:
            h.remove()
        for b in blocks:
            if id(b) in wrappers:
                b.forward = wrappers[id(b)]
    return {"saved": saved, "inputs": inputs}


def _context_dim(unet: Any) -> int:
    for name, m in unet.named_modules():
        if name.endswith("attn2.to_k"):
            return int(m.in_features)
    return 768


# ------------------------------------------------------------------------------- measurements
def current_bytes(device: Any) -> int:
    """Memory in use now: the CUDA allocator's count, or this process's resident set on CPU."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(device))
    return _proc_status("VmRSS") or _psutil_rss()


def peak_bytes(device: Any) -> int:
    """Peak memory so far (CUDA allocator peak, or the process's high-water RSS on CPU)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    value = _proc_status("VmHWM")
    if value:
        return value
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except ImportError:  # Windows
        return _psutil_rss()


def _proc_status(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _psutil_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return 0
