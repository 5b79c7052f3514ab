"""LoRA/LoCon modules on a loaded model, and the kohya `.safetensors` format.

The API the trainer, the grid and the hosts use (names resolve lazily; importing this package
does not import torch):

* `LoraNetwork.create(sd_model, *, rank, alpha, conv_rank=0, conv_alpha=1.0, train_unet=True,
  train_text_encoder=True, dropout=0.0, rank_dropout=0.0, module_dropout=0.0)` — fresh network
  (an nn.Module, not registered under `sd_model`; LoRA params fp32 on the model's device).
  `LoraNetwork.from_file(sd_model, path, *, multiplier=1.0)` / `.from_state_dict(...)` — load a
  kohya LoRA/LoCon, refusing (ForgeError, naming the family it was made for) one that does not fit.
* `net.apply_to()`, `net.remove()`, `with net.injected(): ...` — wrap/restore the targets' forwards
  (module tree, params, buffers, dtypes, `requires_grad` untouched). Several networks may be applied.
* `net.multiplier = 0.8` or a 1-D tensor (one strength per sample; tiled over CFG's cond/uncond
  halves, see `lora_forge.lora.modules`); `net.set_multipliers(unet=..., te=...)`.
* `net.param_groups(unet_lr, te_lr)` — optimizer groups; `net.train()` / `net.eval()` switch dropout.
* `net.kohya_state_dict(dtype=torch.float16)`, `net.load_kohya_state_dict(sd)` (resume).
* `lora_metadata(net, output_name=..., training={...}, tag_frequency=..., ...)` → `dict[str, str]`;
  `save_lora(path, state_dict, metadata) -> Path` (atomic, adds `sshs_model_hash`, never overwrites);
  `load_lora(path) -> (state_dict, metadata)`; `save_dtype("fp16"|"bf16"|"fp32")`;
  `old_model_hash(ckpt)`, `file_sha256(ckpt)`, `read_metadata(path)`.
* `merge(sd_model, state_dict, multiplier) -> MergedLora`; `merged.unmerge()` / `unmerge(merged)`
  restore the original weights bit for bit (several merges: undo last-in first-out).

LoRA parameters are created on the device each target layer is on at `create` time; a host that
moves layers around (WebUI --medvram) must `net.to(device)` before use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoraNetwork": "lora_forge.lora.network",
    "LoraModule": "lora_forge.lora.modules",
    "lora_metadata": "lora_forge.lora.fileformat",
    "minimal_metadata": "lora_forge.lora.fileformat",
    "save_lora": "lora_forge.lora.fileformat",
    "load_lora": "lora_forge.lora.fileformat",
    "save_dtype": "lora_forge.lora.fileformat",
    "read_metadata": "lora_forge.lora.fileformat",
    "old_model_hash": "lora_forge.lora.fileformat",
    "file_sha256": "lora_forge.lora.fileformat",
    "merge": "lora_forge.lora.merging",
    "unmerge": "lora_forge.lora.merging",
    "MergedLora": "lora_forge.lora.merging",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_forge.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
