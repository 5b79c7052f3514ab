"""Presets by subject, instead of eighty flags, and the step plan that fits them to a dataset.

Defaults follow what the ecosystem settled on (lora-format-and-trainers.md §2, §5, §6, §7):
rank 32 / alpha 16, UNet 1e-4 and text encoder 1e-5 (lora-scripts' beginner schema and
default.toml), cosine with restarts, min-SNR γ = 5 (lora-scripts' "5 if enabled"), caption shuffle
with the trigger word kept first, buckets 256-1024 step 64 without upscaling, cached latents.
AdamW rather than AdamW8bit: a rank-32 SD1 LoRA has ~150 MB of Adam state (§3.3), so 8-bit saves
little and bitsandbytes is the top install complaint (§4); users on CUDA can still pick it.

The subject changes what matters:
- person (人物): faces are not mirror-symmetric (parting, moles), so no flip; clip skip 1 for
  photo models; ~1600 steps, the usual "20 images × 8 repeats × 10 epochs".
- anime (二次元): clip skip 2 (every anime base model is trained so); no flip (asymmetric hair
  ornaments, eyes); ~1500 steps.
- style (画风): a style is mirror-invariant, so flip doubles the data; more capacity (rank 64)
  and more steps (~2500); tag dropout 0.1 so the style does not hide in individual tags; a small
  noise offset for the wider tonal range of illustrations.
- product (产品): logos and text must not mirror; rank 16 is plenty for one object; noise offset
  helps the white studio backgrounds; ~1200 steps.
- custom: the plain defaults, for users who bring their own numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.train.config import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    label: str  # English; Chinese in localizations
    target_steps: int  # optimizer steps the plan aims for
    values: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("person", "Person", 1600, {"flip_aug": False, "clip_skip": 1}),
        Preset("anime", "Anime character", 1500, {"flip_aug": False, "clip_skip": 2}),
        Preset(
            "style",
            "Art style",
            2500,
            {
                "network_dim": 64,
                "network_alpha": 32.0,
                "text_encoder_lr": 5e-6,
                "flip_aug": True,
                "caption_tag_dropout_rate": 0.1,
                "noise_offset": 0.05,
                "max_train_epochs": 12,
            },
        ),
        Preset(
            "product",
            "Product / object",
            1200,
            {"network_dim": 16, "network_alpha": 8.0, "flip_aug": False, "noise_offset": 0.05},
        ),
        Preset("custom", "Custom", 1500, {}),
    )
}

MAX_REPEATS = 50
MAX_EPOCHS = 40


def preset_config(preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset's config with the user's overrides on top (every key can be overridden)."""
    if preset not in PRESETS:
        raise ForgeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = TrainConfig.from_dict({**PRESETS[preset].values, "preset": preset})
    return TrainConfig.from_dict(overrides or {}, base=base)


@dataclass(frozen=True)
class StepPlan:
    repeats_for_plain: int  # repeats of folders without an `N_` prefix
    epochs: int
    steps_per_epoch: int
    total_steps: int  # optimizer steps
    note: str


def plan_steps(
    config: TrainConfig, folders: list[tuple[int, int | None]], user_keys: set[str] | frozenset[str] = frozenset()
) -> StepPlan:
    """Repeats and epochs that reach the preset's step target for this dataset.

    `folders` holds (images, repeats from an `N_` prefix or None). Whatever the user set
    (num_repeats, max_train_epochs, max_train_steps) is kept; the plan fills in the rest.
    """
    target = PRESETS.get(config.preset, PRESETS["custom"]).target_steps
    per_step = config.train_batch_size * config.gradient_accumulation_steps
    fixed = sum(n * r for n, r in folders if r is not None)
    plain = sum(n for n, r in folders if r is None)
    epochs = config.max_train_epochs
    if config.num_repeats or "num_repeats" in user_keys:
        repeats = max(1, config.num_repeats)
    elif plain:
        want = target * per_step / max(1, epochs) - fixed
        repeats = min(MAX_REPEATS, max(1, round(want / plain)))
    else:
        repeats = 1
    views = fixed + plain * repeats
    if not (user_keys & {"max_train_epochs", "max_train_steps"}) and not plain and views:
        epochs = min(MAX_EPOCHS, max(1, round(target * per_step / views)))
    steps_per_epoch = max(1, -(-views // per_step))
    total = steps_per_epoch * epochs
    if config.max_train_steps:
        total = config.max_train_steps
        epochs = -(-total // steps_per_epoch)
    note = (
        f"{views} image views per epoch ({plain} images × {repeats} repeats"
        + (f" + {fixed} from N_ folders" if fixed else "")
        + f"), {epochs} epochs, {total} steps"
    )
    return StepPlan(repeats, epochs, steps_per_epoch, total, note)


def describe_presets() -> list[dict[str, Any]]:
    """Each preset's name, label and the keys it changes, for the UI and `--help`."""
    defaults = dataclasses.asdict(TrainConfig())
    out = []
    for p in PRESETS.values():
        changed = {k: v for k, v in p.values.items() if defaults.get(k) != v}
        out.append({"name": p.name, "label": p.label, "target_steps": p.target_steps, "changes": changed})
    return out
