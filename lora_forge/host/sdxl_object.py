"""What the WebUI adds to an sgm DiffusionEngine when it loads an SDXL model (`sd_models_xl.py`,
`extend_sdxl`, `sd_hijack`), for the standalone host: later stages then see the same object in both.

* `get_learned_conditioning(batch)` → `{'crossattn', 'vector'}` with `batch.width/height` (default
  1024) as original and target size, crop (0, 0), and the text embeddings forced to zero for an empty
  negative prompt (the WebUI's `force_zero_embeddings=['txt']`);
* `apply_model(x, t, cond)` = `self.model(x, t, cond)` (OpenAIWrapper);
* `parameterization` from the denoiser's scaling, fp32 `alphas_cumprod` from sgm's
  LegacyDDPMDiscretization, `conditioning_key`, `cond_stage_key`, and `cond_stage_model` = the
  conditioner (what the WebUI's hijack sets for a base model).
"""

from __future__ import annotations

import types
from typing import Any


class SizedPrompts(list):
    """A prompt list with the render size, as the WebUI's `prompt_parser.SdConditioning`."""

    def __init__(self, prompts: list[str], width: int = 1024, height: int = 1024, is_negative_prompt: bool = False):
        super().__init__(prompts)
        self.width, self.height, self.is_negative_prompt = width, height, is_negative_prompt


def get_learned_conditioning(self: Any, batch: Any) -> dict[str, Any]:
    import torch

    for embedder in self.conditioner.embedders:
        embedder.ucg_rate = 0.0
    width = getattr(batch, "width", 1024) or 1024
    height = getattr(batch, "height", 1024) or 1024
    negative = getattr(batch, "is_negative_prompt", False)
    device = self.first_stage_model.decoder.conv_in.weight.device
    pair = torch.tensor([height, width], device=device, dtype=torch.float32)
    conds = {
        "txt": list(batch),
        "original_size_as_tuple": pair.repeat(len(batch), 1),
        "crop_coords_top_left": torch.zeros(len(batch), 2, device=device),
        "target_size_as_tuple": pair.repeat(len(batch), 1),
    }
    zero_text = negative and all(x == "" for x in batch)
    return self.conditioner(conds, force_zero_embeddings=["txt"] if zero_text else [])


def apply_model(self: Any, x: Any, t: Any, cond: Any) -> Any:
    return self.model(x, t, cond)


def extend_sdxl(model: Any, device: Any) -> Any:
    """Give `model` (a DiffusionEngine of an SDXL base) the WebUI's additions; returns it."""
    import torch

    from lora_forge.host.sgm_compat import ensure_sgm

    ensure_sgm()
    from sgm.modules.diffusionmodules.denoiser_scaling import VScaling
    from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization

    model.parameterization = "v" if isinstance(model.denoiser.scaling, VScaling) else "eps"
    alphas = torch.as_tensor(LegacyDDPMDiscretization().alphas_cumprod, dtype=torch.float32)
    model.alphas_cumprod = alphas.to(device)
    model.model.conditioning_key = "crossattn"
    model.cond_stage_key = "txt"
    model.cond_stage_model = model.conditioner
    for embedder in model.conditioner.embedders:
        if hasattr(embedder, "device"):
            embedder.device = device  # sgm's text embedders move their tokens there
    model.get_learned_conditioning = types.MethodType(get_learned_conditioning, model)
    model.apply_model = types.MethodType(apply_model, model)
    return model
