"""Merging a LoRA into the model's weights (`W + m·ΔW`) and undoing it exactly.

Merged weights render at full speed (no extra matmuls), which the standalone host uses for a
single strength. Unmerge restores a copy of the original weights rather than subtracting ΔW:
in fp16 `(W + ΔW) − ΔW` is not W, and a user's loaded model must come back bit for bit.
The copies cover only the merged layers (attention and, for LoCon, ResBlock weights). Because
unmerge restores copies, several merges must be undone last-in first-out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lora_forge.lora.loader import match_state_dict
from lora_forge.lora.modules import delta_weight

SLOT_ROWS = {"q": 0, "k": 1, "v": 2}


@dataclass
class MergedLora:
    """What `merge` changed: each touched parameter with a copy of its original value."""

    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=list)

    def unmerge(self) -> None:
        """Put every touched weight back exactly; calling it twice is harmless."""
        with torch.no_grad():
            for param, original in self.originals:
                param.copy_(original)
        self.originals.clear()


def merge(
    sd_model: Any,
    state_dict: Mapping[str, torch.Tensor],
    multiplier: float = 1.0,
    metadata: Mapping[str, str] | None = None,
) -> MergedLora:
    """Add `multiplier · ΔW` of every module in a kohya state dict to `sd_model`'s weights in place.

    Refuses (ForgeError) a state dict that does not fit the model, before touching anything.
    """
    matched = match_state_dict(sd_model, state_dict, metadata)
    merged = MergedLora()
    saved: set[int] = set()

    def keep(param: torch.nn.Parameter) -> None:
        if id(param) not in saved:
            saved.add(id(param))
            merged.originals.append((param, param.detach().clone()))

    with torch.no_grad():
        for m in matched:
            module, slot = m.target.module, m.target.slot
            delta = delta_weight(m.down, m.up, m.alpha) * multiplier
            if slot is None:
                param, rows = module.weight, None
            elif slot == "out":
                param, rows = module.out_proj.weight, None
            else:
                param, rows = module.in_proj_weight, SLOT_ROWS[slot]
            keep(param)
            if rows is None:
                param.copy_((param.float() + delta.to(param.device)).to(param.dtype))
            else:
                width = param.shape[0] // 3
                part = param[rows * width : (rows + 1) * width]
                part.copy_((part.float() + delta.to(param.device)).to(param.dtype))
    return merged


def unmerge(merged: MergedLora) -> None:
    merged.unmerge()
