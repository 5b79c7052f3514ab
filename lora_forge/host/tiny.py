"""A real Stable Diffusion model at toy size, for tests, the selftest and benchmarks.

It is the genuine `ldm` LatentDiffusion with SD1.5's block layout (channel_mult [1,2,4,4], two res
blocks per level, a transformer at the first three levels = 16 transformer blocks, a 12-layer CLIP
text encoder, a 4-level VAE so latents are 1/8 of the image), only narrow. So every module name,
kohya LoRA name (192 UNet + 72 text-encoder targets) and state-dict key is the real one, while a
64×64 render takes a fraction of a second on CPU. Weights are random but fixed by the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.fsio import atomic_write_text
from lora_forge.host.clip_files import write_clip_text_config, write_clip_tokenizer
from lora_forge.host.ldm_build import CONFIG_DIR, instantiate, load_config

TEXT_WIDTH = 32
TEXT_LAYERS = 12
TINY_OPEN_CLIP = "lf-tiny-openclip"


@dataclass(frozen=True)
class TinyModelFiles:
    checkpoint: Path  # tiny-<family>.safetensors, WebUI key names
    config: Path  # the yaml beside it (the WebUI loads that config for this file)
    clip_folder: Path | None  # tokenizer + config.json of the SD1 text encoder; None for SD2 (OpenCLIP)
    family: str  # "sd1", "sd2" or "sd2-v"
    seed: int


def _tiny_config(family: str, clip_folder: Path | None) -> Any:
    """Our built-in config for the family with every width shrunk; the structure is untouched."""
    config = load_config(CONFIG_DIR / {"sd1": "sd1.yaml", "sd2": "sd2.yaml", "sd2-v": "sd2-v.yaml"}[family])
    p = config.model.params
    p.image_size = 8
    unet = p.unet_config.params
    unet.model_channels = 32  # GroupNorm(32) sets the floor
    unet.context_dim = TEXT_WIDTH
    if clip_folder is not None:
        unet.num_heads = 8
        p.cond_stage_config.params.version = str(clip_folder.resolve())
    else:
        unet.num_head_channels = 8
        p.cond_stage_config.params.arch = TINY_OPEN_CLIP
    p.first_stage_config.params.ddconfig.ch = 32
    return config


def _wake_zero_layers(model: Any, generator: Any) -> None:
    """ldm zero-initialises each block's last conv / projection so a fresh model starts as the
    identity; at random weights that would make the UNet's output and every attention LoRA inert,
    so those weights get small random values instead."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and not param.any():
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            if name.startswith("model.diffusion_model.out."):
                param.mul_(0.5)


def _write_open_clip_config(folder: Path) -> Path:
    """An open_clip architecture for the tiny SD2 text encoder (the vision tower is dropped by ldm)."""
    arch = {
        "embed_dim": TEXT_WIDTH,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": 4, "layers": 12},
    }
    path = folder / f"{TINY_OPEN_CLIP}.json"
    atomic_write_text(path, json.dumps(arch, indent=2))
    return path


def build_tiny(out_dir: Path, family: str = "sd1", seed: int = 0) -> TinyModelFiles:
    """Build, save and describe a tiny model of `family` ("sd1", "sd2" or "sd2-v") in `out_dir`."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from lora_forge.host.ldm_build import register_open_clip_configs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_folder = None
    if family == "sd1":
        clip_folder = write_clip_tokenizer(out_dir / "tiny-sd1-clip")
        write_clip_text_config(clip_folder, width=TEXT_WIDTH, layers=TEXT_LAYERS, heads=4, ffn=4 * TEXT_WIDTH)
    else:
        register_open_clip_configs(TINY_OPEN_CLIP, [_write_open_clip_config(out_dir).parent])
    config = _tiny_config(family, clip_folder)

    fork_devices: list[Any] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = instantiate(config, on_meta=False)
        _wake_zero_layers(model, torch.Generator().manual_seed(seed + 1))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    checkpoint = out_dir / f"tiny-{family}.safetensors"
    yaml_path = checkpoint.with_suffix(".yaml")
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    save_file(state, str(tmp), metadata={"lora_forge_tiny": family, "seed": str(seed)})
    tmp.replace(checkpoint)
    header = f"# LoRA Forge tiny {family} test model (random weights, seed {seed}); real SD block layout.\n"
    atomic_write_text(yaml_path, header + OmegaConf.to_yaml(config))
    return TinyModelFiles(checkpoint, yaml_path, clip_folder, family, seed)


def build_tiny_sd1(out_dir: Path, seed: int = 0) -> TinyModelFiles:
    """The tiny SD1.5-layout model every test and the selftest use."""
    return build_tiny(out_dir, "sd1", seed)


def build_tiny_sd2(out_dir: Path, v: bool = True, seed: int = 0) -> TinyModelFiles:
    """A tiny SD2.x model (OpenCLIP text encoder, linear transformer projections), v- or eps-prediction."""
    return build_tiny(out_dir, "sd2-v" if v else "sd2", seed)


def write_tiny_vae(model_files: TinyModelFiles, path: Path, seed: int = 1) -> Path:
    """A separate VAE file for the tiny model (different weights), in the layout VAE files ship in."""
    import torch
    from ldm.util import instantiate_from_config
    from safetensors.torch import save_file

    config = load_config(model_files.config)
    fork_devices: list[Any] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        vae = instantiate_from_config(config.model.params.first_stage_config)
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path
