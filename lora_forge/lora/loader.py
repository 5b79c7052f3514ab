"""Fitting a kohya LoRA/LoCon state dict onto a loaded model, or refusing it in words.

The WebUI loads a file that only half fits without a word (unmatched keys are logged at DEBUG),
which is how users end up with "the LoRA does nothing". We refuse instead, and say which family
the file was made for, because that is nearly always the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.model.family import FAMILY_LABELS
from lora_forge.model.targets import Target, find_targets, model_base

LORA_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
# Network parts of module types the WebUI knows but we do not train or render (§3.4 of the facts).
OTHER_TYPES = {
    "hada_w1_a": "LyCORIS LoHa",
    "lokr_w1": "LyCORIS LoKr",
    "lokr_w1_a": "LyCORIS LoKr",
    "lora_mid.weight": "LyCORIS LoCon (CP decomposition)",
    "dora_scale": "DoRA",
    "oft_blocks": "OFT",
    "diff": "full-weight difference",
    "w_norm": "norm",
    "a1.weight": "GLoRA",
    "weight": "IA3",
}
# Cross-attention width (in-features of attn2.to_k) of each base family's UNet.
CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
ARCH_BASES = (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v2", "sd2"), ("stable-diffusion-v1", "sd1"))
BASE_LABELS = {"sd1": FAMILY_LABELS["sd1"], "sd2": FAMILY_LABELS["sd2"], "sdxl": "SDXL"}


@dataclass
class Matched:
    """One file module fitted to its target: weights reshaped to what the target's LoRA uses."""

    target: Target
    down: Any
    up: Any
    alpha: float
    rank: int


def group_modules(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{module name: {network part: tensor}}`, splitting each key at its first dot like the WebUI."""
    modules: dict[str, dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        module, _, part = key.partition(".")
        modules.setdefault(module, {})[part] = tensor
    return modules


def file_base(state_dict: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    """ "sd1", "sd2", "sdxl" or "" — what a LoRA file was made for, by metadata, then key names, then widths."""
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    arch = metadata.get("modelspec.architecture", "")
    for marker, base in (
        ("stable-diffusion-xl", "sdxl"),
        ("stable-diffusion-v2", "sd2"),
        ("stable-diffusion-v1", "sd1"),
    ):
        if arch.startswith(marker):
            return base
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in state_dict):
        return "sdxl"
    for key, tensor in state_dict.items():
        if key.endswith("attn2_to_k.lora_down.weight") and tensor.dim() >= 2:
            return CONTEXT_WIDTH.get(int(tensor.shape[1]), "")
    return ""


def describe_base(base: str) -> str:
    return BASE_LABELS.get(base, "another model family")


def match_state_dict(
    sd_model: Any, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None, *, source: object = None
) -> list[Matched]:
    """Every module of the file fitted to a target of `sd_model`, in the model's target order.

    Raises ForgeError when any module has no target, a wrong shape, or is not plain LoRA/LoCon:
    a partial load would silently render something other than what was trained.
    """
    metadata = metadata or {}
    family, base = model_base(sd_model)
    modules = group_modules(state_dict)
    if not modules:
        raise ForgeError("the file holds no LoRA weights", path=source)
    if any(".lora_A." in k or ".lora.down." in k or k.startswith(("unet.", "text_encoder.")) for k in state_dict):
        raise ForgeError(
            "this is a diffusers/PEFT-format LoRA; LoRA Forge reads kohya-format files "
            "(convert it with kohya's or ComfyUI's tools, or use it in the WebUI directly)",
            path=source,
        )
    for parts in modules.values():
        for part in parts:
            if part in OTHER_TYPES:
                raise ForgeError(
                    f"this is a {OTHER_TYPES[part]} file; LoRA Forge reads plain LoRA/LoCon files only "
                    "(use it in the WebUI's own Lora loader instead)",
                    path=source,
                )
    targets = find_targets(sd_model, conv=True)
    by_name: dict[str, Target] = {}
    for t in targets:
        by_name[t.name] = t
        for alias in t.aliases:
            by_name.setdefault(alias, t)
    order = {t.name: i for i, t in enumerate(targets)}
    matched: list[Matched] = []
    problems: list[str] = []
    for name, parts in modules.items():
        target = by_name.get(name)
        if target is None:
            problems.append(f"no layer {name}")
            continue
        if not {"lora_down.weight", "lora_up.weight"} <= parts.keys() or not parts.keys() <= LORA_PARTS:
            problems.append(f"{name} has keys {sorted(parts)}")
            continue
        m = _fit(target, parts)
        if m is None:
            problems.append(f"{name} has shape {tuple(parts['lora_down.weight'].shape)}")
        else:
            matched.append(m)
    if problems:
        made_for = file_base(state_dict, metadata)
        label = FAMILY_LABELS.get(family, family)
        if made_for and made_for != base:
            other = describe_base(made_for)
            hint = f"it was made for {other}; load an {other} checkpoint to use it, or pick an {label} LoRA"
        else:
            hint = f"it was made for a different model than the loaded {label} checkpoint"
        raise ForgeError(
            f"{len(problems)} of {len(modules)} LoRA modules do not fit the loaded {label} model "
            f"(first: {problems[0]}); {hint}",
            path=source,
        )
    matched.sort(key=lambda m: order[m.target.name])
    return matched


def _fit(target: Target, parts: Mapping[str, Any]) -> Matched | None:
    """The file's down/up reshaped to the target's module type, or None when they cannot fit.

    kohya writes SD2's Linear proj_in/out as 1×1 convs and other tools write 1×1 convs as 2-D
    matrices; like the WebUI we accept both and reshape.
    """
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    rank = int(down.shape[0])
    if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != rank:
        return None
    if up.dim() == 4 and up.shape[2:] != (1, 1):
        return None
    if int(down.shape[1]) != target.in_features or int(up.shape[0]) != target.out_features:
        return None
    kernel = tuple(down.shape[2:]) if down.dim() == 4 else (1, 1)
    if target.kind == "conv":
        if kernel != target.kernel:
            return None
    elif kernel != (1, 1):
        return None
    if target.kind in ("linear", "mha"):
        down, up = down.reshape(rank, -1), up.reshape(up.shape[0], rank)
    else:
        down = down.reshape(rank, target.in_features, *kernel)
        up = up.reshape(up.shape[0], rank, 1, 1)
    alpha_t = parts.get("alpha")
    alpha = float(alpha_t.item()) if alpha_t is not None else float(rank)  # no alpha: scale 1, as the WebUI
    return Matched(target, down, up, alpha, rank)
