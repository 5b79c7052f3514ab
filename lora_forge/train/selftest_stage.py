"""Selftest stage: a few training steps on the tiny model, with a stop + resume round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _synthetic_dataset(folder: Path) -> Path:
    """Six 64×64 images with captions: coloured squares on a gradient, a trigger word first."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    values = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (250, 250, 250), (10, 10, 10)]
    for i, (name, rgb) in enumerate(zip(colours, values, strict=True)):
        arr = np.linspace(0, 255, 64, dtype=np.float32)[None, :, None].repeat(64, 0).repeat(3, 2)
        x, y = rng.integers(8, 32, 2)
        arr[y : y + 24, x : x + 24] = rgb
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"lfselftest, {name} square, gradient", encoding="utf-8")
    return folder


def selftest(ctx: Any) -> str:
    from lora_forge.train.config import TrainConfig
    from lora_forge.train.loop import prepare, train

    host = ctx.shared["host"]
    data_dir = ctx.shared.get("dataset_dir") or _synthetic_dataset(ctx.out / "train-data")
    config = TrainConfig(
        output_name="selftest",
        trigger_word="lfselftest",
        resolution="64",
        min_bucket_reso=64,
        max_bucket_reso=128,
        max_train_steps=4,
        num_repeats=1,
        mixed_precision="no",  # the tiny host is fp32; CPU bf16 autocast only adds casts at this size
        gradient_checkpointing=False,
        learning_rate=1e-3,
        unet_lr=1e-3,
        text_encoder_lr=1e-4,
        sample_every_n_steps=4,
        sample_steps=4,
        cache_latents_to_disk=False,
    )
    prepared = prepare(config, data_dir, frozenset({"max_train_steps", "num_repeats"}))
    result = train(host, prepared, ctx.out / "train-runs")
    ctx.shared["run_dir"] = result.run_dir
    ctx.shared["lora_file"] = result.final_file
    files = len(result.epoch_files) + 1
    return f"{result.steps} steps in {result.seconds:.1f}s, {files} LoRA files, final loss {result.losses[-1]:.4f}"
