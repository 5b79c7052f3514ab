"""Caption (and, for SDXL, image sizes) → the conditioning the UNet takes during training.

SD1/SD2: one tensor [B, 77·k, C]. SDXL: the dict the WebUI's `OpenAIWrapper` hands the UNet,
`{'crossattn', 'vector'}`, with the text part per caption and the size part per image and flip
(train/sdxl_sizes.py). The text part is cached per item when the text encoders are frozen and
captions fixed (both SDXL encoders and the pooled output included); the size part costs nothing
and is made per step.
"""

from __future__ import annotations

from typing import Any

from lora_forge.train import data
from lora_forge.train.config import TrainConfig


def _stack(rows: list[Any]) -> Any:
    import torch

    if isinstance(rows[0], dict):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return torch.stack(rows)


def _row(cond: Any, i: int, device: Any) -> Any:
    if isinstance(cond, dict):
        return {k: v[i].to(device) for k, v in cond.items()}
    return cond[i].to(device)


class Conditioner:
    """Conditioning for a batch of item ids; see the module docstring."""

    def __init__(self, sd_model: Any, config: TrainConfig, dataset: Any, device: Any, precision: Any) -> None:
        from lora_forge.model.encode import TextEncoder
        from lora_forge.model.family import model_family

        self.sd_model = sd_model
        self.sdxl = model_family(sd_model).startswith("sdxl")
        if self.sdxl:
            from lora_forge.model.encode_sdxl import SdxlTextEncoder
            from lora_forge.train.sdxl_sizes import item_origins

            self.encoder: Any = SdxlTextEncoder(sd_model, config.clip_skip, config.max_token_length)
            self.origins = item_origins(dataset.items)
        else:
            self.encoder = TextEncoder(sd_model, config.clip_skip, config.max_token_length)
        self.dataset = dataset
        self.trained = config.train_text_encoder
        self.cacheable = config.cache_text_encoder_outputs and not self.trained and not data.captions_vary(config)
        self.cache: dict[int, Any] = {}
        self.precision = precision
        self.device = device

    def fill_cache(self, dataset: Any) -> None:
        import torch

        if not self.cacheable:
            return
        with torch.no_grad(), self.precision.autocast():
            for i, item in enumerate(dataset.items):
                self.cache[i] = _row(self.encoder([item.caption]), 0, self.device)

    def text(self, ids: list[int], captions: list[str]) -> Any:
        import torch

        if self.cache:
            return _stack([self.cache[i] for i in ids])
        if self.trained:
            return self.encoder(captions)
        with torch.no_grad():
            return self.encoder(captions)

    def __call__(self, ids: list[int], captions: list[str], flips: list[bool] | None = None) -> Any:
        text = self.text(ids, captions)
        if not self.sdxl:
            return text
        from lora_forge.model.encode_sdxl import unet_conditioning
        from lora_forge.train.sdxl_sizes import size_cond, size_tensors

        flips = flips or [False] * len(ids)
        items = self.dataset.items
        sizes = [size_cond(items[i].size, items[i].bucket, f, self.origins[i]) for i, f in zip(ids, flips, strict=True)]
        return unet_conditioning(self.sd_model, text, size_tensors(sizes))
