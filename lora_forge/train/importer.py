"""Bring a kohya sd-scripts / kohya_ss / lora-scripts config over: map their keys onto ours.

sd-scripts and lora-scripts (秋叶) write sd-scripts' argparse names, so most keys pass through;
kohya_ss GUI JSON uses a few names of its own (`epoch`, `max_resolution`, `lr_warmup` in percent,
`optimizer`, `LoRA_type`). What we cannot honour is listed back to the user, never silently lost.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lora_forge.train.config import OPTIMIZERS, SCHEDULERS, TrainConfig, read_config_file

# kohya_ss GUI name -> sd-scripts name
_GUI_NAMES = {
    "epoch": "max_train_epochs",
    "max_resolution": "resolution",
    "optimizer": "optimizer_type",
}

# Keys that describe the machine or paths our CLI/UI decide, not the training: ignored quietly.
_PATH_KEYS = {
    "pretrained_model_name_or_path",
    "train_data_dir",
    "reg_data_dir",
    "output_dir",
    "logging_dir",
    "vae",
    "save_model_as",
    "network_module",
    "model_train_type",
    "xformers",
    "mem_eff_attn",
    "lowram",
    "highvram",
    "persistent_data_loader_workers",
    "max_data_loader_n_workers",
    "log_with",
    "log_prefix",
    "v2",
    "full_fp16",
    "full_bf16",
    "no_half_vae",
}


def import_config(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Our keys from a foreign config file, and one warning per key we could not use."""
    raw = _noise_offset_type(read_config_file(path))
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if value is None or (isinstance(value, str) and value.strip() == "" and key != "training_comment"):
            continue
        name = _GUI_NAMES.get(key, key)
        if key == "lr_warmup":  # kohya_ss GUI: percent of the steps
            out["lr_warmup_steps"] = min(float(value), 99.0) / 100.0
            continue
        if key == "network_args":
            _network_args(value, out, warnings)
            continue
        if key in ("v_parameterization", "zero_terminal_snr"):
            if str(value).lower() in ("true", "1"):  # kohya_ss writes false everywhere: that stays "auto"
                out[key] = "true"
            continue
        if key == "LoRA_type":
            if str(value).lower() not in ("standard", "kohya locon", "locon"):
                warnings.append(f"LoRA_type={value!r} is not supported; training a standard LoRA (LoCon via conv_dim)")
            continue
        if key == "sample_prompts" and isinstance(value, str):
            prompt_file = Path(value)
            if prompt_file.is_file():
                out["sample_prompts"] = _prompt_file(prompt_file)
            else:
                warnings.append(f"sample_prompts file {value!r} not found; using the default prompts")
            continue
        if name == "optimizer_type":
            mapped = _optimizer(str(value))
            if mapped:
                out[name] = mapped
                if mapped.lower() != str(value).lower():
                    warnings.append(f"optimizer_type={value!r} mapped to {mapped!r}")
            else:
                warnings.append(f"optimizer_type={value!r} is not supported; keeping {TrainConfig.optimizer_type!r}")
            continue
        if name == "lr_scheduler":
            if value in SCHEDULERS:
                out[name] = value
            else:
                warnings.append(f"lr_scheduler={value!r} is not supported; keeping the preset's")
            continue
        if name == "sdpa" or key == "xformers":
            out["sdpa"] = True
            continue
        if key in _PATH_KEYS:
            warnings.append(f"{key} ignored (set by the command line or the UI)")
            continue
        if name in ours:
            out[name] = value
        else:
            warnings.append(f"{key} ignored (no such option in LoRA Forge)")
    if out.get("adaptive_noise_scale") and not out.get("noise_offset"):  # kohya ignores it without an offset
        del out["adaptive_noise_scale"]
        warnings.append("adaptive_noise_scale ignored: it only applies together with noise_offset")
    return out, warnings


def _noise_offset_type(raw: dict[str, Any]) -> dict[str, Any]:
    """kohya_ss GUI files hold both noise kinds and pass sd-scripts only the one `noise_offset_type`
    names ("Original": noise_offset, "Multires": multires_noise_*): keep only that one."""
    kind = str(raw.pop("noise_offset_type", "")).lower()
    drop = {"original": ("multires_noise_iterations", "multires_noise_discount"), "multires": ("noise_offset",
            "adaptive_noise_scale", "noise_offset_random_strength")}.get(kind, ())  # fmt: skip
    return {k: v for k, v in raw.items() if k not in drop}


def _optimizer(value: str) -> str:
    low = value.lower().replace("_", "").replace("-", "")
    aliases = {"lion8bit": "Lion", "pagedlion8bit": "Lion", "pagedadamw8bit": "AdamW8bit", "adam": "AdamW"}
    for name in OPTIMIZERS:
        if low == name.lower():
            return name
    return aliases.get(low, "")


def _network_args(value: Any, out: dict[str, Any], warnings: list[str]) -> None:
    items = value if isinstance(value, list) else str(value).split()
    for item in items:
        k, _, v = str(item).partition("=")
        k = k.strip()
        if k in ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout"):
            out[k] = v.strip()
        else:
            warnings.append(f"network_args {k!r} ignored (not supported)")


def _prompt_file(path: Path) -> list[str]:
    """kohya's prompt file: one prompt per line, `#` comments, inline `--n/--w/...` options dropped."""
    from lora_forge.fsio import read_text

    prompts = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(line.split(" --", 1)[0].strip())
    return prompts
