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

SDXL-family models (SDXL, Pony, Illustrious, NoobAI) get `SDXL_BASE` and each subject's `sdxl`
values on top, chosen by `preset_config(..., family=)` / `model_preset_config(host)`:
- 1024 px with buckets 512-2048 in 64-px steps: SDXL's native size (kohya docs/train_SDXL-en.md
  "The default resolution of SDXL is 1024x1024"; kohya_ss's SDXL presets use max_bucket_reso 2048,
  bucket_reso_steps 64); 512 as the floor because SDXL renders badly below it.
- U-Net only, text encoder learning rate 0: kohya "highly recommends" --network_train_unet_only for
  SDXL LoRA (two text encoders give unexpected results) and it is what lets the cached
  text-encoder outputs fit 8 GB (same doc, "LoRA training can be done with 8GB").
- rank 16 / alpha 8 (32 / 16 for a style): the doc's 8 GB advice is dim 4-8, kohya_ss's SDXL
  presets and the Civitai Illustrious guides use 32; 16 is the middle, half-alpha as our SD1 presets.
- UNet learning rate 1e-4 with AdamW8bit on CUDA: kohya_ss's SDXL AdamW preset ("AI_Now") and
  the Illustrious guides' "0.0001 keeps image quality"; kohya recommends an 8-bit optimizer or
  Adafactor for 8 GB. At rank 16 Adam's fp32 state is only some hundred MB, so AdamW8bit is picked
  only where bitsandbytes is already installed and on CUDA (its only device); elsewhere AdamW.
- noise offset 0.0357 for style/product (kohya_ss's SDXL presets: SDXL was trained with it).
- clip skip 1: kohya's SDXL scripts warn that clip_skip does not apply to SDXL; inside the WebUI the
  user's own setting is used anyway.
Epochs and step targets stay the subjects' (the guides' "10 epochs" for beginners).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lora_forge.errors import ForgeError

if TYPE_CHECKING:
    from lora_forge.host.base import Host
from lora_forge.train.config import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    label: str  # English; Chinese in localizations
    target_steps: int  # optimizer steps the plan aims for
    values: dict[str, Any] = field(default_factory=dict)
    sdxl: dict[str, Any] = field(default_factory=dict)  # on top of SDXL_BASE for SDXL-family models


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("person", "Person", 1600, {"flip_aug": False, "clip_skip": 1}),
        Preset("anime", "Anime character", 1500, {"flip_aug": False, "clip_skip": 2}, {"clip_skip": 1}),
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
            {"network_dim": 32, "network_alpha": 16.0, "noise_offset": 0.0357},
        ),
        Preset(
            "product",
            "Product / object",
            1200,
            {"network_dim": 16, "network_alpha": 8.0, "flip_aug": False, "noise_offset": 0.05},
            {"noise_offset": 0.0357},
        ),
        Preset("custom", "Custom", 1500, {}),
    )
}

SDXL_BASE: dict[str, Any] = {
    "resolution": "1024",
    "min_bucket_reso": 512,
    "max_bucket_reso": 2048,
    "bucket_reso_steps": 64,
    "network_train_unet_only": True,
    "text_encoder_lr": 0.0,
    "network_dim": 16,
    "network_alpha": 8.0,
    "learning_rate": 1e-4,
    "clip_skip": 1,
}
MAX_REPEATS = 50
MAX_EPOCHS = 40


def preset_values(preset: str, family: str = "", device_type: str = "") -> dict[str, Any]:
    """The keys a preset sets for a model family ("sdxl…" gets the SDXL values) on a device."""
    from lora_forge.model.family import base_family

    if preset not in PRESETS:
        raise ForgeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if base_family(family) != "sdxl":
        return dict(p.values)
    optimizer = "AdamW8bit" if device_type == "cuda" and _has_bitsandbytes() else "AdamW"
    return {**p.values, **SDXL_BASE, "optimizer_type": optimizer, **p.sdxl}


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def preset_config(
    preset: str, overrides: dict[str, Any] | None = None, family: str = "", device_type: str = ""
) -> TrainConfig:
    """The preset's config for `family` (the loaded model's, model/family.py) with the user's
    overrides on top (every key can be overridden)."""
    base = TrainConfig.from_dict({**preset_values(preset, family, device_type), "preset": preset})
    return TrainConfig.from_dict(overrides or {}, base=base)


def loaded_family(host: Host) -> tuple[str, str]:
    """(family, device type) of the model the host holds, ("", "") when none is loaded."""
    from lora_forge.model.family import model_family

    try:
        return model_family(host.sd_model()), str(host.device.type)
    except ForgeError:
        return "", ""


def model_preset_config(preset: str, host: Host, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """`preset_config` for the model the host has loaded: what the Train section shows and
    starts with (SDXL values when an SDXL-family model is loaded)."""
    family, device_type = loaded_family(host)
    return preset_config(preset, overrides, family, device_type)


@dataclass(frozen=True)
class StepPlan:
    repeats_for_plain: int  # repeats of folders without an `N_` prefix
    epochs: int
    steps_per_epoch: int
    total_steps: int  # optimizer steps
    note: str  # "… image views per epoch (…), N epochs, M steps": the one plan line users read
    views: str = ""  # the note's first part, kept so the counts can be restated

    def with_steps(self, epochs: int, steps_per_epoch: int, total_steps: int) -> StepPlan:
        """The plan with the counts the batches really give, its note saying those counts."""
        note = f"{self.views}, {epochs} epochs, {total_steps} steps" if self.views else self.note
        return StepPlan(self.repeats_for_plain, epochs, steps_per_epoch, total_steps, note, self.views)


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
    head = (
        f"{views} image views per epoch ({plain} images × {repeats} repeats"
        + (f" + {fixed} from N_ folders" if fixed else "")
        + ")"
    )
    return StepPlan(repeats, epochs, steps_per_epoch, total, f"{head}, {epochs} epochs, {total} steps", head)


def describe_presets() -> list[dict[str, Any]]:
    """Each preset's name, label and the keys it changes (for SD1/SD2 and for SDXL on CUDA), for
    the UI and `--help`."""
    defaults = dataclasses.asdict(TrainConfig())
    out = []
    for p in PRESETS.values():
        changed = {k: v for k, v in p.values.items() if defaults.get(k) != v}
        sdxl = preset_values(p.name, "sdxl", "cuda")
        out.append(
            {
                "name": p.name,
                "label": p.label,
                "target_steps": p.target_steps,
                "changes": changed,
                "sdxl_changes": {k: v for k, v in sdxl.items() if defaults.get(k) != v},
            }
        )
    return out
