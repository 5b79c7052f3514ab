"""The training half of a LoRA file's metadata, in kohya sd-scripts' keys and value formats.

Model sites, ComfyUI's and the WebUI's metadata views and kohya's own tools read `ss_*` keys as
`train_network.py` writes them: `str()` of the argument (so "True", "None", "(512, 512)"),
JSON for dicts. We write the keys for every setting our config holds, the counts kohya derives
from the dataset (images × repeats, batches per epoch), and its fixed answers for features we
do not have (no regularisation images, no colour augmentation) so readers find every key they
expect. File-level keys (network, modelspec, hashes) are `lora.fileformat`'s.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from lora_forge.train import data
from lora_forge.train.config import TrainConfig

# kohya arguments it writes as `ss_<name>` verbatim; a TrainConfig field with one of these names
# is written as it stands (new config keys named like kohya's land in the file without edits here).
KOHYA_ARG_KEYS = (
    "learning_rate", "gradient_checkpointing", "gradient_accumulation_steps", "lr_scheduler",
    "mixed_precision", "max_token_length", "cache_latents", "seed", "noise_offset",
    "multires_noise_iterations", "multires_noise_discount", "adaptive_noise_scale", "zero_terminal_snr",
    "max_grad_norm", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "min_snr_gamma", "scale_weight_norms", "ip_noise_gamma", "noise_offset_random_strength",
    "ip_noise_gamma_random_strength", "loss_type", "huber_schedule", "huber_scale", "huber_c",
    "fp8_base", "fp8_base_unet", "flip_aug", "shuffle_caption", "enable_bucket", "bucket_no_upscale",
    "min_bucket_reso", "max_bucket_reso", "keep_tokens",
)  # fmt: skip
RENAMED = {"debiased_estimation_loss": "debiased_estimation"}  # kohya arg → its ss_ key
# What kohya writes for features LoRA Forge does not have (its defaults when they are off).
FIXED = {
    "num_reg_images": 0,
    "num_validation_images": 0,
    "reg_dataset_dirs": {},
    "full_fp16": False,
    "lowram": False,
    "color_aug": False,
    "random_crop": False,
    "prior_loss_weight": 1.0,
    "face_crop_aug_range": None,
    "caption_dropout_every_n_epochs": 0,
    "multires_noise_iterations": None,
    "multires_noise_discount": 0.3,
    "adaptive_noise_scale": None,
    "scale_weight_norms": None,
    "ip_noise_gamma": None,
    "noise_offset_random_strength": False,
    "ip_noise_gamma_random_strength": False,
    "debiased_estimation": False,
    "zero_terminal_snr": False,
    "loss_type": "l2",
    "fp8_base": False,
    "fp8_base_unet": False,
}


def file_fields(
    config: TrainConfig,
    dataset: data.Dataset,
    plan: Any,
    *,
    step: int,
    epoch: int,
    optimizer: Any,
    checkpoint: Any,
    config_hash: str,
    world_size: int = 1,
) -> dict[str, Any]:
    """Keyword arguments for `lora.fileformat.lora_metadata` describing this run at `step`.

    `checkpoint` is the loaded model's `sd_checkpoint_info` (or None), `optimizer` the live
    optimizer (its class path is kohya's `ss_optimizer`), `config_hash` what stays the same over
    a run and its resumes (kohya's `ss_session_id` groups the files of one run); `world_size` the
    processes of a data-parallel run (kohya's total batch counts them)."""
    fields: dict[str, Any] = {
        "training": training_keys(
            config, dataset, plan, step=step, epoch=epoch, optimizer=optimizer, world_size=world_size
        ),
        "dataset_dirs": dataset_dirs(dataset),
        "tag_frequency": dataset.tag_frequency(),
        "bucket_info": bucket_info(dataset),
    }
    fields["training"]["session_id"] = int(hashlib.sha256(config_hash.encode()).hexdigest()[:8], 16)
    fields.update(checkpoint_fields(checkpoint))
    return fields


def training_keys(
    config: TrainConfig,
    dataset: data.Dataset,
    plan: Any,
    *,
    step: int,
    epoch: int,
    optimizer: Any,
    world_size: int = 1,
) -> dict[str, Any]:
    """kohya's `ss_*` run keys (without the prefix), values as kohya's arguments hold them."""
    c = config
    values = config.to_dict()
    out: dict[str, Any] = dict(FIXED)
    out.update({k: values[k] for k in KOHYA_ARG_KEYS if k in values})
    out.update({key: values[arg] for arg, key in RENAMED.items() if arg in values})
    w, h = c.resolution_wh
    batches = len(data.epoch_batches(dataset, c.train_batch_size * world_size, c.seed, 0))
    out.update(
        {
            "num_train_images": sum(max(1, it.repeats) for it in dataset.items),
            "num_batches_per_epoch": batches,
            "num_epochs": plan.epochs,
            "steps": step,
            "epoch": epoch,
            "max_train_steps": plan.total_steps,
            "unet_lr": c.unet_learning_rate,
            "text_encoder_lr": c.te_learning_rate if c.train_text_encoder else 0.0,
            "lr_warmup_steps": c.warmup_steps(plan.total_steps),
            "optimizer": class_path(optimizer),
            "batch_size_per_device": c.train_batch_size,
            "total_batch_size": c.train_batch_size * world_size * c.gradient_accumulation_steps,
            "resolution": f"({w}, {h})",  # kohya's args.resolution is a tuple
            "network_dropout": c.network_dropout or None,
            "training_comment": c.training_comment or None,
            "network_train_unet_only": not c.train_text_encoder,
        }
    )
    return out


def class_path(obj: Any) -> str | None:
    """`torch.optim.adamw.AdamW`: module and class name, as kohya writes `ss_optimizer`."""
    if obj is None:
        return None
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def dataset_dirs(dataset: data.Dataset) -> dict[str, dict[str, int]]:
    """`{folder name: {"n_repeats", "img_count"}}` with the repeats each folder trained with.

    A folder without an `N_` prefix trains with the planned repeats (`data.apply_repeats`);
    the file says that number, not 0. Names repeat as kohya makes them unique: "dir (2)"."""
    repeats: dict[str, int] = {}
    for it in dataset.items:
        repeats.setdefault(it.folder, max(1, it.repeats))
    out: dict[str, dict[str, int]] = {}
    for name, count, prefix in dataset.folders:
        key, n = name, 2
        while key in out:
            key, n = f"{name} ({n})", n + 1
        out[key] = {"n_repeats": repeats.get(name, prefix or 0), "img_count": count}
    return out


def bucket_info(dataset: data.Dataset) -> dict[str, Any]:
    """kohya's `ss_bucket_info`: image count × repeats per bucket and the mean |aspect error|.

    The error is per image without repeats: |bucket w/h − image w/h|, as kohya's BucketManager."""
    buckets = {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(dataset.bucket_counts().items())}
    errors = [abs(it.bucket[0] / it.bucket[1] - it.size[0] / it.size[1]) for it in dataset.items]
    mean = sum(errors) / len(errors) if errors else 0.0
    return {"buckets": buckets, "mean_img_ar_error": mean if math.isfinite(mean) else 0.0}


def checkpoint_fields(info: Any) -> dict[str, Any]:
    """Model name (file name with extension, like kohya's basename) and the WebUI's two hashes."""
    filename = getattr(info, "filename", None)
    name = re.split(r"[\\/]", str(filename))[-1] if filename else getattr(info, "model_name", None)
    return {
        "sd_model_name": name,
        "sd_model_hash": getattr(info, "hash", None),
        "new_sd_model_hash": getattr(info, "sha256", None),
    }
