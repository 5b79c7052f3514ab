"""The WebUI stand-in's SDXL object: what 1.10.1 holds in `shared.sd_model` after loading an SDXL
base checkpoint (sgm DiffusionEngine from the checkpoint's yaml, weights loaded, `sd_models_xl`'s
additions, both text embedders hijacked behind `.wrapped`, the `is_*` flags)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

STUB_DIR = Path(__file__).parent / "webui_stub"


def webui_sdxl_model(files: Any) -> Any:
    import torch
    from safetensors.torch import load_file

    from lora_forge.host.ldm_build import instantiate, load_config, register_open_clip_configs
    from lora_forge.host.sgm_compat import ensure_sgm
    from lora_forge.host.tiny_sdxl import TINY_BIGG

    ensure_sgm()
    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    from modules import sd_hijack, sd_models_xl

    register_open_clip_configs(TINY_BIGG, [Path(files.checkpoint).parent])
    model = instantiate(load_config(files.config), on_meta=False)
    model.load_state_dict(load_file(str(files.checkpoint)), strict=True)
    model.eval()
    for embedder in model.conditioner.embedders:
        if hasattr(embedder, "device"):
            embedder.device = torch.device("cpu")
    sd_models_xl.install()
    sd_models_xl.extend_sdxl(model)
    sd_hijack.hijack_sdxl(model)
    model.is_sdxl, model.is_sd1, model.is_sd2, model.is_ssd, model.is_sd3 = True, False, False, False, False
    model.is_sdxl_inpaint = False
    model.latent_channels = 4
    model.alphas_cumprod_original = model.alphas_cumprod.clone()
    model.sd_checkpoint_info = None
    model.sd_model_checkpoint = str(files.checkpoint)
    model.sd_model_hash = "tinysdxl"
    return model
