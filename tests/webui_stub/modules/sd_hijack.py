"""modules/sd_hijack.py: the part of `model_hijack` a trainer resets (tiling's circular padding)."""

from __future__ import annotations

from typing import Any

from modules import shared


class StableDiffusionModelHijack:
    """1.10.1 keeps `layers` (the flattened model, set by hijack()) and toggles Conv2d padding."""

    circular_enabled = False
    layers: list[Any] | None = None

    def apply_circular(self, enable: bool) -> None:
        import torch

        if self.circular_enabled == enable:
            return
        self.circular_enabled = enable
        layers = self.layers if self.layers is not None else list(shared.sd_model.modules())
        for layer in [x for x in layers if type(x) is torch.nn.Conv2d]:
            layer.padding_mode = "circular" if enable else "zeros"


model_hijack = StableDiffusionModelHijack()


class TextEmbedderWrapper(__import__("torch").nn.Module):
    """sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords / sd_hijack_open_clip.
    FrozenOpenCLIPEmbedder2WithCustomWords, reduced to what the conditioner and a trainer see: the
    sgm embedder as `.wrapped`, `input_key`/`is_trainable`/`legacy_ucg_val` copied, and forward
    returning (z, pooled) when the wrapped embedder returns pooled (no prompt-emphasis parsing)."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.is_trainable = getattr(wrapped, "is_trainable", False)
        self.input_key = getattr(wrapped, "input_key", "txt")
        self.legacy_ucg_val = None
        self.ucg_rate = 0.0

    def forward(self, texts: Any) -> Any:
        return self.wrapped(list(texts))


def hijack_sdxl(m: Any) -> None:
    """What model_hijack.hijack does to an SDXL base: wrap both text embedders, and
    `cond_stage_model` = the conditioner (two text models)."""
    for i, embedder in enumerate(m.conditioner.embedders):
        if i < 2 and not hasattr(embedder, "wrapped"):
            m.conditioner.embedders[i] = TextEmbedderWrapper(embedder)
    m.cond_stage_model = m.conditioner
