"""modules/sd_models_xl.py (1.10.1): what the WebUI adds to sgm's DiffusionEngine for SDXL.

At import the WebUI assigns `get_learned_conditioning`, `apply_model` and friends to the
DiffusionEngine *class*; `extend_sdxl(model)` runs when a model loads. Re-implemented in a few lines.
"""

from __future__ import annotations

from typing import Any

from modules import devices, shared


def get_learned_conditioning(self: Any, batch: Any) -> dict[str, Any]:
    import torch

    for embedder in self.conditioner.embedders:
        embedder.ucg_rate = 0.0
    width = getattr(batch, "width", 1024) or 1024
    height = getattr(batch, "height", 1024) or 1024
    is_negative_prompt = getattr(batch, "is_negative_prompt", False)
    args = dict(device=devices.device, dtype=torch.float32)
    sdxl_conds = {
        "txt": batch,
        "original_size_as_tuple": torch.tensor([height, width], **args).repeat(len(batch), 1),
        "crop_coords_top_left": torch.tensor(
            [shared.opts.data.get("sdxl_crop_top", 0), shared.opts.data.get("sdxl_crop_left", 0)], **args
        ).repeat(len(batch), 1),
        "target_size_as_tuple": torch.tensor([height, width], **args).repeat(len(batch), 1),
    }
    force_zero_negative_prompt = is_negative_prompt and all(x == "" for x in batch)
    return self.conditioner(sdxl_conds, force_zero_embeddings=["txt"] if force_zero_negative_prompt else [])


def apply_model(self: Any, x: Any, t: Any, cond: Any) -> Any:
    return self.model(x, t, cond)


def extend_sdxl(model: Any) -> None:
    """Set what the WebUI sets on an SDXL model after loading it."""
    import torch
    from sgm.modules.diffusionmodules.denoiser_scaling import VScaling
    from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization

    model.model.diffusion_model.dtype = torch.float32
    model.model.conditioning_key = "crossattn"
    model.cond_stage_key = "txt"
    model.parameterization = "v" if isinstance(model.denoiser.scaling, VScaling) else "eps"
    discretization = LegacyDDPMDiscretization()
    model.alphas_cumprod = torch.asarray(discretization.alphas_cumprod, device=devices.device, dtype=torch.float32)
    model.conditioner.wrapped = torch.nn.Module()


def install() -> None:
    """The import-time assignments of sd_models_xl.py (needs `sgm` importable)."""
    from sgm.models.diffusion import DiffusionEngine

    DiffusionEngine.get_learned_conditioning = get_learned_conditioning
    DiffusionEngine.apply_model = apply_model
