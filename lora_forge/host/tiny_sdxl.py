"""A real SDXL base model at toy size: Stability's `sgm` DiffusionEngine with SDXL's exact layout.

The structure is the built-in SDXL config's (configs/sdxl.yaml) with only widths shrunk: UNet
input_blocks 0–8 / middle / output_blocks 0–8 over three levels, no attention at the first level and
per-level transformer depth [1, 1, 2] (SDXL: [1, 2, 10]), Linear proj_in/out, the `vector` path
(`label_emb`) fed by bigG's pooled output plus original size, crop offset and target size, CLIP-L
(`conditioner.embedders.0.transformer…`, 12 layers, hidden layer 11) and an OpenCLIP bigG-style
encoder (`conditioner.embedders.1.model…`, 32 layers, penultimate + pooled), and a 4-level VAE (latents
1/8 of the image, scale_factor 0.13025). Every module path, state-dict key and kohya LoRA name is the
real one (72 `lora_te1_` + 192 `lora_te2_` text targets), while a 64×64 render takes well under a
second on CPU. The two text widths differ (32 and 48) so a swapped concatenation cannot go unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_forge.fsio import atomic_write_text
from lora_forge.host.clip_files import write_clip_text_config, write_clip_tokenizer
from lora_forge.host.ldm_build import CONFIG_DIR, instantiate, load_config, register_open_clip_configs
from lora_forge.host.tiny import TinyModelFiles, _wake_zero_layers

CLIP_L_WIDTH = 32
BIGG_WIDTH = 48
BIGG_POOLED = 32
BIGG_LAYERS = 32
SIZE_EMBED = 32  # per number; 3 size embedders × 2 numbers × 32 = 192
TINY_BIGG = "lf-tiny-bigg"
VECTOR_WIDTH = BIGG_POOLED + 3 * 2 * SIZE_EMBED


def _write_bigg_config(folder: Path) -> Path:
    """An open_clip architecture for the tiny bigG (sgm drops the vision tower after building it)."""
    arch = {
        "embed_dim": BIGG_POOLED,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": BIGG_WIDTH, "heads": 4, "layers": BIGG_LAYERS},
    }
    path = folder / f"{TINY_BIGG}.json"
    atomic_write_text(path, json.dumps(arch, indent=2))
    return path


def tiny_sdxl_config(clip_folder: Path) -> Any:
    """Our built-in SDXL config with every width shrunk; the structure is untouched."""
    config = load_config(CONFIG_DIR / "sdxl.yaml")
    p = config.model.params
    unet = p.network_config.params
    unet.model_channels = 32  # GroupNorm(32) sets the floor
    unet.num_head_channels = 8
    unet.transformer_depth = [1, 1, 2]
    unet.context_dim = CLIP_L_WIDTH + BIGG_WIDTH
    unet.adm_in_channels = VECTOR_WIDTH
    embedders = p.conditioner_config.params.emb_models
    embedders[0].params.version = str(clip_folder.resolve())
    embedders[1].params.arch = TINY_BIGG
    for size in embedders[2:]:
        size.params.outdim = SIZE_EMBED
    p.first_stage_config.params.ddconfig.ch = 32
    return config


def build_tiny_sdxl(out_dir: Path, seed: int = 0) -> TinyModelFiles:
    """Build, save and describe the tiny SDXL model in `out_dir` (tiny-sdxl.safetensors + yaml)."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from lora_forge.host.sgm_compat import ensure_sgm

    ensure_sgm()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_folder = write_clip_tokenizer(out_dir / "tiny-sdxl-clip")
    write_clip_text_config(clip_folder, width=CLIP_L_WIDTH, layers=12, heads=4, ffn=4 * CLIP_L_WIDTH)
    register_open_clip_configs(TINY_BIGG, [_write_bigg_config(out_dir).parent])
    config = tiny_sdxl_config(clip_folder)

    fork_devices: list[Any] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = instantiate(config, on_meta=False)
        _wake_zero_layers(model, torch.Generator().manual_seed(seed + 1))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    checkpoint = out_dir / "tiny-sdxl.safetensors"
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    save_file(state, str(tmp), metadata={"lora_forge_tiny": "sdxl", "seed": str(seed)})
    tmp.replace(checkpoint)
    yaml_path = checkpoint.with_suffix(".yaml")
    header = f"# LoRA Forge tiny SDXL test model (random weights, seed {seed}); real SDXL block layout.\n"
    atomic_write_text(yaml_path, header + OmegaConf.to_yaml(config))
    return TinyModelFiles(checkpoint, yaml_path, clip_folder, "sdxl", seed)
