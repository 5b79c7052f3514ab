"""Everything the loop needs set up on the live model, and put back exactly afterwards.

One ExitStack: freeze the base (requires_grad snapshot), FP8 storage when asked (model/fp8.py),
keep eval mode, SDP attention, non-reentrant block checkpointing, the LoRA network injected, and
the VAE / a frozen text encoder moved off the accelerator once their outputs are cached.
The checklist in webui-internals.md §10.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.train.config import PER_TENSOR, TrainConfig


@dataclass
class Precision:
    autocast_dtype: Any  # None: no autocast
    scaler: Any  # a GradScaler for fp16, else None
    device_type: str

    def autocast(self) -> Any:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


def precision_for(config: TrainConfig, device: Any, weight_dtype: Any) -> Precision:
    """Autocast + loss scaling for `mixed_precision`; refuses what this device cannot do."""
    import torch

    kind = device.type
    if config.mixed_precision == "fp16":
        if kind != "cuda":
            raise ForgeError("mixed_precision fp16 needs a CUDA GPU; use bf16 (or no) on this device")
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
        return Precision(torch.float16, scaler, kind)
    if config.mixed_precision == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ForgeError("this GPU has no bf16 (needs RTX 30xx or newer); use mixed_precision fp16")
        return Precision(torch.bfloat16, None, kind)
    if weight_dtype != torch.float32:
        raise ForgeError(
            f"the model's weights are {str(weight_dtype).replace('torch.', '')}; "
            "set mixed_precision to fp16 or bf16 to train on them"
        )
    return Precision(None, None, kind)


@contextlib.contextmanager
def offloaded(module: Any, device: Any) -> Any:
    """Move `module` to the CPU for the block when it sits on an accelerator, then move it back."""
    if device.type == "cpu":
        yield
        return
    module.to("cpu")
    try:
        yield
    finally:
        module.to(device)


@contextlib.contextmanager
def onloaded(modules: list[Any], device: Any) -> Any:
    """Bring offloaded modules back for a moment (sample renders need the VAE and text encoder)."""
    if device.type == "cpu":
        yield
        return
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


@dataclass
class Session:
    sd_model: Any
    network: Any
    unet: Any
    groups: list[dict[str, Any]]  # optimizer parameter groups
    fast: Any  # a FastLora, or None when lora/'s general forward runs (dropout, fused attention)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def begin_step(self, dtype: Any) -> None:
        if self.fast is not None:
            self.fast.begin_step(dtype)

    def end_step(self) -> None:
        if self.fast is not None:
            self.fast.end_step()

    @contextlib.contextmanager
    def muted(self) -> Any:
        """Our live modules add nothing for the block (a host compares the model without them,
        e.g. with the saved file applied by its own loader instead)."""
        if self.fast is not None:
            with self.fast.bypassed():
                yield
            return
        previous = self.network.multiplier
        self.network.multiplier = 0.0
        try:
            yield
        finally:
            self.network.multiplier = previous

    def close(self) -> None:
        self.stack.close()


def open_session(sd_model: Any, config: TrainConfig) -> Session:
    """Freeze the base, inject a fresh (or continued) LoRA, patch attention and checkpointing."""
    from lora_forge.model import fp8
    from lora_forge.model.unet import frozen, sdp_attention, training_unet, unet_of
    from lora_forge.train import fastlora

    stack = contextlib.ExitStack()
    try:
        unet = unet_of(sd_model)
        stack.enter_context(frozen(sd_model))
        if config.fp8_base:
            stack.enter_context(fp8.fp8_storage(unet))  # a no-op when the host's weights are FP8 already
        network = _seeded_network(sd_model, config)
        if config.network_weights:
            from lora_forge.lora.fileformat import load_lora

            state_dict, _ = load_lora(config.network_weights)
            network.load_kohya_state_dict(state_dict)
        network.train()
        groups = network.param_groups(config.unet_learning_rate, config.te_learning_rate)
        fast = None
        if fastlora.supported(network, config):
            passes = 2 if config.gradient_checkpointing else 1
            fast = fastlora.FastLora(network, groups, passes, flat=config.optimizer_type not in PER_TENSOR)
            stack.enter_context(fast.installed())
            groups = fast.groups
        else:
            stack.enter_context(network.injected())
        if fp8.stored_fp8(unet):  # the other FP8 layers upcast per op, keeping only FP8 for backward
            stack.enter_context(fp8.upcast_forwards(unet, skip={id(m.target.module) for m in network.loras}))
        if config.sdpa:
            stack.enter_context(sdp_attention())
        stack.enter_context(training_unet(unet, config.gradient_checkpointing))
    except BaseException:
        stack.close()
        raise
    return Session(sd_model, network, unet, groups, fast, stack)


def _seeded_network(sd_model: Any, config: TrainConfig) -> Any:
    """A fresh LoRA whose initial weights come from `config.seed` alone: same seed, same file.

    The modules are built on the CPU (then moved), so only the CPU generator is drawn from; it is
    forked, so the host's own global random state (the WebUI's next image) is left as it was.
    """
    import torch

    from lora_forge.lora.network import LoraNetwork

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return LoraNetwork.create(
            sd_model,
            rank=config.network_dim,
            alpha=config.network_alpha,
            conv_rank=config.conv_dim,
            conv_alpha=config.conv_alpha,
            train_unet=True,
            train_text_encoder=config.train_text_encoder,
            dropout=config.network_dropout,
            rank_dropout=config.rank_dropout,
            module_dropout=config.module_dropout,
        )
