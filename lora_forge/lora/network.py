"""A set of LoRA modules for one model: create, inject, train, export, and load from a file."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_forge.errors import ForgeError
from lora_forge.lora.loader import Matched, match_state_dict
from lora_forge.lora.modules import LoraModule
from lora_forge.model.targets import find_targets, model_base


class LoraNetwork(nn.Module):
    """The LoRA modules for one model, held apart from it (never registered under `sd_model`).

    `apply_to()` wraps the targets' forwards, `remove()` restores them; several networks may be
    applied to the same model at once, each with its own (per-sample) multiplier. Created in
    training mode, as any nn.Module; call `.eval()` to render without dropout.
    """

    def __init__(
        self,
        sd_model: Any,
        loras: list[LoraModule],
        *,
        rank: int,
        alpha: float,
        conv_rank: int = 0,
        conv_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "sd_model", sd_model)  # a plain reference: not a submodule of ours
        self.family, self.base = model_base(sd_model)
        self.loras = nn.ModuleList(loras)
        self.rank, self.alpha = int(rank), float(alpha)
        self.conv_rank, self.conv_alpha = int(conv_rank), float(conv_alpha)
        self._multiplier: float | torch.Tensor = 1.0

    # ----- construction -----
    @classmethod
    def create(
        cls,
        sd_model: Any,
        *,
        rank: int,
        alpha: float,
        conv_rank: int = 0,
        conv_alpha: float = 1.0,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        dropout: float = 0.0,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
    ) -> LoraNetwork:
        """A fresh network with kohya's targets and init (up = 0, so it starts as a no-op).

        `conv_rank` > 0 makes it LoCon: the ResBlock/sampler k×k convs get `conv_rank`/`conv_alpha`,
        their Linear and 1×1 layers the network's `rank`/`alpha`.
        """
        if not (train_unet or train_text_encoder):
            raise ForgeError("train at least one of the UNet and the text encoder")
        targets = find_targets(sd_model, unet=train_unet, text_encoder=train_text_encoder, conv=conv_rank > 0)
        loras = []
        for t in targets:
            r, a = (conv_rank, conv_alpha) if t.is_conv_rank else (rank, alpha)
            lora = LoraModule(t, r, a, dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout)
            loras.append(lora.to(_device_of(t.module)))
        return cls(sd_model, loras, rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha)

    @classmethod
    def from_state_dict(
        cls,
        sd_model: Any,
        state_dict: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
        *,
        multiplier: float | torch.Tensor = 1.0,
        source: object = None,
    ) -> LoraNetwork:
        """A network holding a kohya file's weights (fp32), refusing files that do not fit the model."""
        matched = match_state_dict(sd_model, state_dict, metadata, source=source)
        loras = [_lora_from(m) for m in matched]
        plain = [m for m in matched if not m.target.is_conv_rank]
        conv = [m for m in matched if m.target.is_conv_rank]
        rank, alpha = _most_common(plain) if plain else _most_common(conv)
        conv_rank, conv_alpha = _most_common(conv) if conv else (0, 1.0)
        net = cls(sd_model, loras, rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha)
        net.multiplier = multiplier
        return net.eval()

    @classmethod
    def from_file(cls, sd_model: Any, path: str | Path, *, multiplier: float | torch.Tensor = 1.0) -> LoraNetwork:
        """Load a kohya LoRA/LoCon `.safetensors` for rendering or to continue training from it."""
        from lora_forge.lora.fileformat import load_lora

        state_dict, metadata = load_lora(path)
        return cls.from_state_dict(sd_model, state_dict, metadata, multiplier=multiplier, source=path)

    # ----- injection -----
    def apply_to(self) -> None:
        """Start adding every module's delta to its target's output (idempotent)."""
        for lora in self.loras:
            lora.attach()

    def remove(self) -> None:
        """Restore every target's forward exactly (idempotent; safe in `finally`)."""
        for lora in reversed(self.loras):
            lora.detach()

    @contextlib.contextmanager
    def injected(self) -> Iterator[LoraNetwork]:
        self.apply_to()
        try:
            yield self
        finally:
            self.remove()

    @property
    def multiplier(self) -> float | torch.Tensor:
        """One strength for all modules: a float, or a 1-D tensor with one value per batch element."""
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float | torch.Tensor) -> None:
        self.set_multipliers(unet=value, te=value)

    def set_multipliers(self, *, unet: float | torch.Tensor, te: float | torch.Tensor) -> None:
        """Separate text-encoder and UNet strengths, like `<lora:name:te:unet>` in the WebUI."""
        device = next(self.parameters()).device
        unet, te = (_on(m, device) for m in (unet, te))
        self._multiplier = unet
        for lora in self.loras:
            lora.multiplier = te if lora.target.part == "te" else unet

    # ----- training -----
    def unet_loras(self) -> list[LoraModule]:
        return [m for m in self.loras if m.target.part == "unet"]

    def te_loras(self) -> list[LoraModule]:
        return [m for m in self.loras if m.target.part == "te"]

    def param_groups(self, unet_lr: float, te_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups (text encoder first, as kohya); `te_lr` None means `unet_lr`.

        A group whose learning rate is 0 is left out, so those modules stay at their values.
        """
        groups = []
        for name, loras, lr in (
            ("text_encoder", self.te_loras(), unet_lr if te_lr is None else te_lr),
            ("unet", self.unet_loras(), unet_lr),
        ):
            params = [p for m in loras for p in m.parameters()]
            if params and lr:
                groups.append({"name": name, "params": params, "lr": lr})
        return groups

    def network_args(self) -> dict[str, str]:
        """kohya's `network_args` (strings, as they arrive from its command line)."""
        if not self.conv_rank:
            return {}
        return {"conv_dim": str(self.conv_rank), "conv_alpha": _num(self.conv_alpha)}

    # ----- export / import -----
    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """The file's tensors: per module `lora_down.weight`, `lora_up.weight` and a 0-d `alpha`, on CPU."""
        out: dict[str, torch.Tensor] = {}
        for lora in self.loras:
            out[f"{lora.name}.lora_down.weight"] = lora.lora_down.weight.detach().to("cpu", dtype).contiguous()
            out[f"{lora.name}.lora_up.weight"] = lora.lora_up.weight.detach().to("cpu", dtype).contiguous()
            out[f"{lora.name}.alpha"] = lora.alpha.detach().to("cpu", dtype).reshape(())
        return out

    def load_kohya_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Put a file's weights into this network's modules (resume); every module must be there."""
        matched = {m.target.name: m for m in match_state_dict(self.sd_model, state_dict)}
        missing = [lora.name for lora in self.loras if lora.name not in matched]
        if missing or len(matched) != len(self.loras):
            raise ForgeError(
                f"the file's modules differ from this network's ({len(matched)} vs {len(self.loras)}, "
                f"e.g. {(missing or sorted(matched))[0]}); resume with the same rank, LoCon and UNet/TE settings"
            )
        with torch.no_grad():
            for lora in self.loras:
                m = matched[lora.name]
                if m.rank != lora.rank:
                    raise ForgeError(f"{lora.name} has rank {m.rank} in the file but {lora.rank} here")
                lora.lora_down.weight.copy_(m.down)
                lora.lora_up.weight.copy_(m.up)
                lora.alpha.fill_(m.alpha)


def _on(multiplier: float | torch.Tensor, device: torch.device) -> float | torch.Tensor:
    """A per-sample multiplier moved once to the LoRA's device (not in every module's forward)."""
    if not isinstance(multiplier, torch.Tensor):
        return float(multiplier)
    if multiplier.dim() > 1:
        raise ValueError("a per-sample multiplier must be a 1-D tensor")
    return multiplier.detach().to(device=device, dtype=torch.float32)


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters(recurse=False):
        return p.device
    return torch.device("cpu")


def _lora_from(m: Matched) -> LoraModule:
    lora = LoraModule(m.target, m.rank, m.alpha)
    with torch.no_grad():
        lora.lora_down.weight.copy_(m.down)
        lora.lora_up.weight.copy_(m.up)
    return lora.to(_device_of(m.target.module))


def _most_common(matched: list[Matched]) -> tuple[int, float]:
    """The rank/alpha most modules have (a file may mix ranks, e.g. after resizing)."""
    return Counter((m.rank, m.alpha) for m in matched).most_common(1)[0][0]


def _num(x: float) -> str:
    """`1` rather than `1.0` for whole numbers, as a user types it on kohya's command line."""
    return str(int(x)) if float(x).is_integer() else str(x)
