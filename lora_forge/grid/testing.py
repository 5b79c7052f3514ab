"""A run folder of LoRA epoch files for the tiny model, for the selftest, tests and the benchmark.

Each file is a real kohya LoRA (our LoraNetwork, saved by save_lora with kohya metadata) whose
weights grow with the epoch, so later epochs change the picture more, as trained ones do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TAGS = {"1girl": 6, "long_hair": 5, "smile": 4, "lfgrid": 6, "solo": 2}


def write_run(
    sd_model: Any,
    folder: Path,
    name: str = "lfgrid",
    epochs: int = 2,
    final: bool = True,
    trigger: str = "lfgrid",
    scale: float = 0.15,
    seed: int = 0,
) -> list[Path]:
    """name-000001 … name-00000N in `folder`, plus name.safetensors as kohya's final save: the
    epoch after the last numbered one (kohya writes no numbered file for the last epoch)."""
    import torch

    from lora_forge.lora import LoraNetwork, lora_metadata, save_lora

    folder.mkdir(parents=True, exist_ok=True)
    net = LoraNetwork.create(sd_model, rank=4, alpha=4.0, train_text_encoder=True)
    gen = torch.Generator().manual_seed(seed)
    directions = [torch.randn(p.shape, generator=gen) for p in net.parameters()]
    paths = []
    stems = [f"{name}-{e:06d}" for e in range(1, epochs + 1)] + ([name] if final else [])
    for k, stem in enumerate(stems):
        step = k + 1
        with torch.no_grad():
            for p, d in zip(net.parameters(), directions, strict=True):
                p.copy_(d.to(p.device) * scale * step)
        meta = lora_metadata(
            net,
            output_name=name,
            training={"epoch": step, "num_train_images": 6},
            tag_frequency={f"1_{name}": dict(TAGS)},
            dataset_dirs={f"1_{name}": {"n_repeats": 1, "img_count": 6}},
            trigger_phrase=trigger or None,
            resolution=(64, 64),
        )
        paths.append(save_lora(folder / f"{stem}.safetensors", net.kohya_state_dict(torch.float32), meta))
    return paths
