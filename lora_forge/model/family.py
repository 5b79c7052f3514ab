"""Which Stable Diffusion family a checkpoint file or a loaded model belongs to.

Later stages (LoRA targets, noise schedule, the inspector) branch on the family, and users pick
files by it, so the answer must match what the WebUI would load the file as
(`sd_models_config.guess_model_config_from_state_dict` in 1.10.1). We follow its order of tests
but look at the *structure* of the keys rather than exact widths (the WebUI asks for a 1024-wide
OpenCLIP to call a file SD2): the same rules then also hold for our tiny test models, and no
real checkpoint is classified differently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TEXT = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
SDXL_BIGG = "conditioner.embedders.1.model.ln_final.weight"
SDXL_REFINER_G = "conditioner.embedders.0.model.ln_final.weight"
SD3_PATCH = "model.diffusion_model.x_embedder.proj.weight"
DEPTH = "depth_model.model.pretrained.act_postprocess3.0.project.0.bias"
UNCLIP = "embedder.model.ln_final.weight"
SDXL_V_MARKER = "v_pred"

# Every answer `checkpoint_family` / `model_family` can give, with the words a user reads.
FAMILY_LABELS: dict[str, str] = {
    "sd1": "SD1.x",
    "sd1-inpaint": "SD1.x inpainting",
    "sd1-pix2pix": "SD1.x InstructPix2Pix",
    "sd2": "SD2.x",
    "sd2-v": "SD2.x 768-v",
    "sd2-inpaint": "SD2.x inpainting",
    "sd2-depth": "SD2.x depth",
    "sd2-unclip": "SD2.x unCLIP",
    "sdxl": "SDXL base",
    "sdxl-v": "SDXL base (v-prediction)",
    "sdxl-refiner": "SDXL refiner",
    "sdxl-inpaint": "SDXL inpainting",
    "sd3": "SD3",
}

# Families whose model is an `sgm` DiffusionEngine rather than an `ldm` LatentDiffusion.
SDXL_FAMILIES = frozenset({"sdxl", "sdxl-v", "sdxl-refiner", "sdxl-inpaint"})


def base_family(family: str) -> str:
    """ "sd1", "sd2", "sdxl" or "sd3": what a LoRA must have been trained on to fit this model."""
    for base in ("sdxl", "sd1", "sd2", "sd3"):
        if family.startswith(base):
            return base
    return ""


def _in_channels(shapes: Mapping[str, tuple[int, ...]]) -> int:
    shape = shapes.get(UNET_IN)
    return int(shape[1]) if shape is not None and len(shape) == 4 else 0


def checkpoint_family(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Family of a full checkpoint from its key → shape map, or "" when it is not one.

    "sd2" covers both SD2 flavours: 512-eps and 768-v share every shape, and the WebUI tells
    them apart with a yaml beside the file or a test forward pass (`sd2_is_v_prediction`).
    A UNet without any text encoder is still a checkpoint to the WebUI (it loads it as SD1);
    we classify it by its cross-attention width instead, which is what such a file needs.
    """
    if SD3_PATCH in shapes:
        return "sd3"
    in_ch = _in_channels(shapes)
    if SDXL_BIGG in shapes:
        if in_ch == 9:
            return "sdxl-inpaint"
        return "sdxl-v" if SDXL_V_MARKER in shapes else "sdxl"
    if SDXL_REFINER_G in shapes:
        return "sdxl-refiner"
    if DEPTH in shapes:
        return "sd2-depth"
    if UNCLIP in shapes:
        return "sd2-unclip"
    if not in_ch:
        return ""
    if SD2_TEXT in shapes or (SD1_TEXT not in shapes and _context_dim(shapes) == 1024):
        return "sd2-inpaint" if in_ch == 9 else "sd2"
    if in_ch == 9:
        return "sd1-inpaint"
    if in_ch == 8:
        return "sd1-pix2pix"
    return "sd1"


def _context_dim(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Cross-attention width of the first transformer block (768 SD1, 1024 SD2, 2048 SDXL)."""
    for key, shape in shapes.items():
        if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return 0


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Key → shape from a `.safetensors` header without reading a tensor; {} for any other or
    unreadable file (callers then fall back to what they know without it)."""
    if not str(path).lower().endswith(".safetensors"):
        return {}
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 << 20:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return {}
    if not isinstance(header, dict):
        return {}
    return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def state_dict_shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key → shape of a loaded state dict, for `checkpoint_family`."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}


def sd2_is_v_prediction(state_dict: Mapping[str, Any]) -> bool:
    """The WebUI's test for SD2 files without a yaml: a v-model's output at t=999 on a flat grey
    latent swings far below the input, an eps-model's does not.

    Runs the UNet (built from the state dict's own widths) once on a tiny 8×8 latent; about a
    second on CPU for a full-size SD2.
    """
    import torch
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    prefix = "model.diffusion_model."
    unet_sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    shapes = {prefix + k: tuple(v.shape) for k, v in unet_sd.items()}
    channels = int(unet_sd["input_blocks.0.0.weight"].shape[0])
    context = _context_dim(shapes)
    with torch.device("meta"):
        unet = UNetModel(
            use_checkpoint=False,
            image_size=32,
            in_channels=4,
            out_channels=4,
            model_channels=channels,
            attention_resolutions=[4, 2, 1],
            num_res_blocks=2,
            channel_mult=[1, 2, 4, 4],
            num_head_channels=64 if channels % 64 == 0 else channels,
            use_spatial_transformer=True,
            use_linear_in_transformer=unet_sd["input_blocks.1.1.proj_in.weight"].dim() == 2,
            transformer_depth=1,
            context_dim=context,
            legacy=False,
        )
    unet.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True, assign=True)
    unet.eval()
    with torch.no_grad():
        cond = torch.full((1, 2, context), 0.5)
        x = torch.full((1, 4, 8, 8), 0.5)
        out = (unet(x, torch.tensor([999]), context=cond) - x).mean().item()
    return out < -1


def model_family(sd_model: Any) -> str:
    """Family of a live `ldm` LatentDiffusion / `sgm` DiffusionEngine, as either host holds it.

    Uses the flags the WebUI sets when it loads a model (`is_sdxl`, `is_sd2`, ...) when present
    and otherwise looks at the objects themselves, so it also works on a model we built.
    """
    unet = sd_model.model.diffusion_model
    in_ch = int(getattr(unet, "in_channels", 4))
    v = getattr(sd_model, "parameterization", "eps") == "v"
    conditioner = getattr(sd_model, "conditioner", None)
    if getattr(sd_model, "is_sdxl", False) or conditioner is not None:
        embedders = getattr(conditioner, "embedders", [])
        embedders = [getattr(e, "wrapped", e) for e in embedders]  # the WebUI's hijack wraps the text ones
        text_embedders = [e for e in embedders if hasattr(e, "tokenizer") or hasattr(e, "model")]
        if len(text_embedders) == 1 and not getattr(sd_model, "is_sdxl_inpaint", False):
            return "sdxl-refiner"
        if in_ch == 9 or getattr(sd_model, "is_sdxl_inpaint", False):
            return "sdxl-inpaint"
        return "sdxl-v" if v else "sdxl"
    cond = getattr(sd_model, "cond_stage_model", None)
    wrapped = getattr(cond, "wrapped", cond)  # the WebUI's hijack wraps the ldm embedder
    is_sd2 = getattr(sd_model, "is_sd2", None)
    if is_sd2 is None:
        is_sd2 = hasattr(wrapped, "model") and not hasattr(wrapped, "transformer")
    if is_sd2:
        if in_ch == 9:
            return "sd2-inpaint"
        return "sd2-v" if v else "sd2"
    if in_ch == 9:
        return "sd1-inpaint"
    if in_ch == 8:
        return "sd1-pix2pix"
    return "sd1"
