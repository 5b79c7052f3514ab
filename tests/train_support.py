"""Training data and settings the training tests share: small pictures a tiny real model learns
from in seconds, the settings that keep a run fast, and a hash that says whether weights changed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# What keeps a run on the tiny models fast: 64 px buckets, no samples, latents in memory, fp32.
FAST: dict[str, Any] = {
    "resolution": "64",
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "sample_every_n_steps": 0,
    "cache_latents_to_disk": False,
    "mixed_precision": "no",
    "num_repeats": 1,
}

# Tags with the WebUI's prompt syntax in them: training must read them literally.
SYNTAX_CAPTION = "zkw, {name} square, (noise:1.5), [bg]"
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 30), "blue": (30, 40, 220), "white": (250, 250, 250)}


def squares(
    folder: Path,
    names: Sequence[str] = ("red", "green", "blue", "white"),
    *,
    seed: int = 0,
    caption: str = "zkw, {name} square, noise",
    widen: bool = False,
) -> Path:
    """A coloured square on dark noise per name, captioned: a concept a tiny model learns quickly.
    `widen` makes every second picture 80 px wide (two buckets, SDXL's size conditioning varies)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        width = 64 + 16 * (i % 2) if widen else 64
        arr = rng.integers(0, 60, (64, width, 3)).astype(np.uint8)
        arr[16:48, 16:48] = COLOURS[name]
        Image.fromarray(arr).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption.format(name=name), encoding="utf-8")
    return folder


def noise_pictures(folder: Path, count: int = 3, seed: int = 0) -> Path:
    """`count` pictures of plain noise captioned "zkw, item i": for runs whose result is not looked at."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"zkw, item {i}", encoding="utf-8")
    return folder


def nonzero_lora(network: Any) -> None:
    """Every LoRA tensor drawn from N(0, 0.1) after `torch.manual_seed(0)`: `up` starts at zero,
    which would hide every `down` gradient, and one fixed start makes two sessions comparable."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.normal_(0, 0.1)
            lora.lora_down.weight.normal_(0, 0.1)


def weights_hash(module: Any) -> str:
    """Every tensor of the state dict, raw bytes and dtype (bf16, FP8 and 0-dim buffers too):
    equal before and after means the model is exactly as it was."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        v = v.detach().cpu().contiguous().reshape(-1)
        h.update(str(v.dtype).encode() + v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
