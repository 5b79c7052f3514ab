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
