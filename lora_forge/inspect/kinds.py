"""Everything that is not a LoRA: checkpoints, embeddings, hypernetworks, VAEs, ControlNets, upscalers.

Each recogniser looks at key names and shapes only (no tensor data) and returns
(title, details, notes) or None when the file is not of its kind. The marker keys are the ones the
loaders that consume these files look for (the WebUI, its ControlNet extension, spandrel for
upscalers), so "recognised here" means "has the layout that loader expects".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.inspect.readers import InertObject, TensorTable, is_tensor
from lora_forge.model.family import FAMILY_LABELS, base_family, checkpoint_family
from lora_forge.model.yaml_policy import dangerous_entries, read_yaml_tree

Result = tuple[str, dict[str, Any], list[str]]

# width of the text-encoder output → the family an embedding / hypernetwork / ControlNet belongs to
_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_FAMILY = {768: "sd1", 1024: "sd2"}  # SD1/SD2 embeddings; SDXL ones have clip_l + clip_g
_BASE_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "": "unknown"}


def _params(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> int:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))


def _dtypes(table: TensorTable) -> list[str]:
    """Distinct dtypes, the one holding the most parameters first."""
    mass: Counter[str] = Counter()
    for key, dtype in table.dtypes.items():
        mass[dtype] += math.prod(table.shapes[key])
    return [d for d, _n in mass.most_common()]


def _yaml_parameterization(path: Path) -> tuple[str, str]:
    """("v"|"eps"|"", yaml name) from a config beside the checkpoint, as the WebUI would pick it.

    Read as text: a yaml from the internet is untrusted too, and one regex answers the question.
    """
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        try:
            text = candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        m = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", text, re.MULTILINE)
        return ("v" if m and m[1] == "v" else "eps"), candidate.name
    return "", ""


def _yaml_warnings(yaml_path: Path, details: dict[str, Any]) -> list[str]:
    """Check the yaml the WebUI would load with this checkpoint against the model-class allow-list:
    its `target`s are imported and called when the checkpoint is loaded, so a foreign one runs code.
    Dangerous entries go to `details["yaml_dangerous"]` (the report turns them into its error)."""
    try:
        dangers = dangerous_entries(read_yaml_tree(yaml_path))
    except ForgeError as e:
        return [f"the config beside it could not be checked: {str(e).removeprefix(f'{yaml_path}: ')}"]
    if dangers:
        details["yaml_dangerous"] = dangers
    return []


def checkpoint(table: TensorTable, path: Path, extras: dict[str, Any]) -> Result | None:
    family = checkpoint_family(table.shapes)
    if not family:
        return None
    shapes = table.shapes
    notes: list[str] = []
    label = FAMILY_LABELS.get(family, family)
    prediction, yaml_name = _yaml_parameterization(path)
    if family in ("sd2", "sd2-v"):
        if prediction == "v":
            label = FAMILY_LABELS["sd2-v"]
        elif prediction == "eps":
            label = "SD2.x 512 (eps)"
        else:
            label = "SD2.x (eps or v)"
            prediction = "eps or v"
            notes.append(
                "SD2 512-eps and 768-v files have the same layers; the WebUI uses a .yaml beside the file "
                "if there is one, otherwise it runs one test step of the UNet to decide"
            )
    elif not prediction:
        prediction = "v" if family.endswith("-v") else "eps"
    components = {
        "unet": sum(k.startswith("model.diffusion_model.") for k in shapes),
        "vae": sum(k.startswith("first_stage_model.") for k in shapes),
        "text_encoder": sum(k.startswith(("cond_stage_model.", "conditioner.")) for k in shapes),
        "ema": sum(k.startswith("model_ema.") for k in shapes),
    }
    if not components["vae"]:
        notes.append("no VAE inside: the WebUI needs a separate VAE file for this checkpoint")
    if not components["text_encoder"]:
        notes.append("no text encoder inside (a UNet-only file)")
    if components["ema"]:
        notes.append("includes EMA weights (useful only for further training; a pruned copy is smaller)")
    details: dict[str, Any] = {
        "family": family,
        "family_label": label,
        "base": base_family(family),
        "prediction": prediction,
        "unet_parameters": _params(shapes, "model.diffusion_model."),
        "components": components,
        "dtype": _dtypes(table),
    }
    if yaml_name:
        details["yaml"] = yaml_name
        notes.extend(_yaml_warnings(path.with_name(yaml_name), details))
    for key in ("global_step", "epoch"):
        if isinstance(extras.get(key), int):
            details[key] = extras[key]
    for key in ("modelspec.title", "modelspec.architecture"):
        if table.metadata.get(key):
            details[key.split(".")[1]] = table.metadata[key]
    return f"Checkpoint, {label}", details, notes


# ------------------------------------------------------------------------------------------ embeddings


def _embedding_details(vectors: Any, name: str | None = None) -> dict[str, Any]:
    shape = tuple(vectors.shape) if hasattr(vectors, "shape") else tuple(vectors)
    width = shape[-1] if shape else 0
    count = shape[0] if len(shape) == 2 else 1
    details: dict[str, Any] = {"base": _TE_FAMILY.get(width, ""), "vectors": count, "width": width}
    if name:
        details["name"] = name
    return details


def embedding_from_pickle(raw: Any) -> Result | None:
    """A1111's `.pt` embedding: {'string_to_param': {'*': tensor}, 'name', 'step', ...}; the original
    textual-inversion code stored a ParameterDict there, which arrives here as an inert object."""
    if not isinstance(raw, Mapping) or "string_to_param" not in raw:
        return None
    params = raw["string_to_param"]
    if isinstance(params, InertObject):
        params = getattr(params, "_parameters", {})
    tensors = [v for v in params.values() if is_tensor(v)] if isinstance(params, Mapping) else []
    if not tensors:
        return None
    details = _embedding_details(tensors[0], raw.get("name") if isinstance(raw.get("name"), str) else None)
    for key in ("step", "sd_checkpoint_name"):
        if isinstance(raw.get(key), (int, str)) and raw.get(key) is not None:
            details[key] = raw[key]
    details["format"] = "A1111 .pt"
    return _embedding_title(details), details, []


def embedding_from_table(table: TensorTable) -> Result | None:
    shapes = table.shapes
    if "emb_params" in shapes and len(shapes) <= 2:
        details = _embedding_details(shapes["emb_params"]) | {"format": "safetensors (emb_params)"}
    elif "clip_l" in shapes and "clip_g" in shapes:
        details = {
            "base": "sdxl",
            "vectors": shapes["clip_l"][0] if len(shapes["clip_l"]) == 2 else 1,
            "width": f"{shapes['clip_l'][-1]} + {shapes['clip_g'][-1]}",
            "format": "SDXL (clip_l + clip_g)",
        }
    elif (
        1 <= len(shapes) <= 2
        and all(len(s) in (1, 2) and s[-1] in _TE_FAMILY for s in shapes.values())
        and not any("." in k for k in shapes)
    ):  # diffusers `learned_embeds`: {"<token>": vector}
        token, shape = next(iter(shapes.items()))
        details = _embedding_details(shape, token) | {"format": "diffusers learned_embeds"}
    else:
        return None
    details["dtype"] = _dtypes(table)
    return _embedding_title(details), details, []


def _embedding_title(details: dict[str, Any]) -> str:
    n = details["vectors"]
    return f"Textual-inversion embedding for {_BASE_LABELS.get(details['base'], 'unknown')}, {n} vector{'s' * (n != 1)}"


# -------------------------------------------------------------------------------------- hypernetworks


def hypernetwork(raw: Any) -> Result | None:
    """A1111 hypernetwork `.pt`: {768: [sd_k, sd_v], 320: [...], ..., 'layer_structure': [...], ...}."""
    if not isinstance(raw, Mapping):
        return None
    sizes = sorted(k for k, v in raw.items() if isinstance(k, int) and isinstance(v, (list, tuple)))
    if not sizes or not all(any(isinstance(sd, Mapping) for sd in raw[s]) for s in sizes):
        return None
    layers = sum(1 for s in sizes for sd in raw[s] if isinstance(sd, Mapping) for k in sd if str(k).endswith(".weight"))
    context = 1024 if 1024 in sizes and 768 not in sizes else 768
    details: dict[str, Any] = {"base": _WIDTH_FAMILY[context], "sizes": sizes, "weight_layers": layers}
    for key in (
        "name",
        "layer_structure",
        "activation_func",
        "is_layer_norm",
        "weight_initialization",
        "use_dropout",
        "step",
        "sd_checkpoint_name",
    ):
        value = raw.get(key)
        if isinstance(value, (str, int, float, bool, list)) and value is not None:
            details[key] = list(value) if isinstance(value, list) else value
    return f"Hypernetwork (A1111) for {_BASE_LABELS[details['base']]}", details, []


# ------------------------------------------------------------------------------------------------ VAE


def _strip(shapes: Mapping[str, tuple[int, ...]], prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in shapes):
            return {k[len(prefix) :]: s for k, s in shapes.items() if k.startswith(prefix)}
    return dict(shapes)


def vae(table: TensorTable, path: Path) -> Result | None:
    shapes = _strip(table.shapes, ("first_stage_model.", "vae."))
    if "encoder.conv_in.weight" not in shapes or "decoder.conv_out.weight" not in shapes:
        return None
    latent = shapes.get("decoder.conv_in.weight", (0, 0))[1]
    layout = "diffusers" if any(k.startswith("encoder.down_blocks.") for k in shapes) else "ldm (WebUI)"
    notes = []
    if latent == 4:
        fits = "SD1.x / SD2.x / SDXL"
        notes.append(
            "SD1/SD2 and SDXL VAEs have the same layers and differ only in their weights, so the layout "
            "cannot say which one this is; use it with the family its name or source says"
        )
        if re.search(r"xl", path.name, re.IGNORECASE):
            notes.append("the file name suggests SDXL")
    elif latent == 16:
        fits = "SD3 / Flux (16 latent channels; not for SD1/SD2/SDXL)"
    else:
        fits = f"unknown ({latent} latent channels)"
    if any(k.startswith("loss.") for k in table.shapes):
        notes.append("contains training-only loss/discriminator weights (harmless, the WebUI ignores them)")
    details = {"latent_channels": latent, "fits": fits, "layout": layout, "dtype": _dtypes(table)}
    return f"VAE ({fits})", details, notes


# ------------------------------------------------------------------------------------------ ControlNet


def controlnet(table: TensorTable) -> Result | None:
    shapes = _strip(table.shapes, ("control_model.",))
    keys = list(shapes)
    control_lora = any("lora_controlnet" in k for k in keys)
    if "input_hint_block.0.weight" in shapes or control_lora:
        layout = "ldm (sd-webui-controlnet)"
    elif "controlnet_cond_embedding.conv_in.weight" in shapes:
        layout = "diffusers"
    else:
        return None
    widths = {s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2}
    base = next((_WIDTH_FAMILY[w] for w in sorted(widths) if w in _WIDTH_FAMILY), "")
    if not base and any(k.startswith(("label_emb.", "add_embedding.")) for k in keys):
        base = "sdxl"
    details = {"base": base, "layout": layout, "parameters": _params(shapes), "dtype": _dtypes(table)}
    kind = "Control-LoRA" if control_lora else "ControlNet"
    return f"{kind} for {_BASE_LABELS[base]}", details, []


# ------------------------------------------------------------------------------------------- upscalers


def upscaler(table: TensorTable) -> Result | None:
    shapes = table.shapes
    keys = list(shapes)
    details: dict[str, Any] = {}
    if "model.0.weight" in shapes and any(k.startswith("model.1.sub.") for k in keys):
        arch = "ESRGAN (RRDB, original layout)"
        blocks = {m[1] for k in keys if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB1\.", k))}
        convs = {m[1] for k in keys if (m := re.fullmatch(r"model\.(\d+)\.weight", k))}
        details["blocks"] = len(blocks)
        ups = len(convs) - 3  # first conv, HR conv and last conv besides the upsampling convs
        in_ch = shapes["model.0.weight"][1] if len(shapes["model.0.weight"]) == 4 else 3
        if ups > 0:
            details["scale"] = 2**ups // max(1, math.isqrt(in_ch // 3))
    elif "conv_first.weight" in shapes and any(re.match(r"body\.\d+\.rdb1\.", k) for k in keys):
        arch = "Real-ESRGAN / ESRGAN (RRDBNet)"
        details["blocks"] = len({k.split(".")[1] for k in keys if k.startswith("body.")})
        in_ch = shapes["conv_first.weight"][1]
        details["scale"] = 4 // max(1, math.isqrt(in_ch // 3))
    elif any(k.startswith("layers.0.residual_group.blocks.0.") for k in keys) and "conv_first.weight" in shapes:
        arch = "HAT" if any(".conv_block." in k for k in keys) else "SwinIR"
        ups = {k for k in keys if re.fullmatch(r"upsample\.\d+\.weight", k)}
        if ups:
            details["scale"] = 2 ** len(ups)
    elif "m_head.0.weight" in shapes and any(k.startswith("m_down1.") for k in keys):
        arch = "SCUNet"
    elif keys and all(re.fullmatch(r"body\.\d+\.(weight|bias)", k) for k in keys) and "body.0.weight" in shapes:
        arch = "Real-ESRGAN compact (SRVGGNet)"
        last = max(keys, key=lambda k: int(k.split(".")[1]) if k.endswith(".weight") and len(shapes[k]) == 4 else -1)
        out_ch = shapes[last][0]
        if out_ch % 3 == 0 and math.isqrt(out_ch // 3) ** 2 == out_ch // 3:
            details["scale"] = math.isqrt(out_ch // 3)
    else:
        return None
    details = {"architecture": arch, **details, "parameters": _params(shapes), "dtype": _dtypes(table)}
    scale = f", {details['scale']}x" if "scale" in details else ""
    return f"Upscaler: {arch}{scale}", details, []


# ------------------------------------------------------------------- parts of other model formats


def other_model(table: TensorTable) -> Result | None:
    """Files users download by mistake for a checkpoint: one part of a diffusers folder, or a Flux
    model. Saying so beats "unknown": the fix is to fetch the single-file checkpoint instead."""
    shapes = _strip(table.shapes, ("model.diffusion_model.",))
    keys = list(shapes)
    single_file = "the WebUI loads single-file checkpoints; get the .safetensors checkpoint of this model instead"
    if any(k.startswith("double_blocks.") for k in keys) and any(k.startswith("single_blocks.") for k in keys):
        details = {"parameters": _params(shapes), "dtype": _dtypes(table)}
        return "Flux model (transformer)", details, ["A1111 WebUI 1.10 cannot load Flux models; WebUI Forge can"]
    if "conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes:
        widths = {s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2}
        base = next((_WIDTH_FAMILY[w] for w in sorted(widths) if w in _WIDTH_FAMILY), "")
        details = {"base": base, "layout": "diffusers", "in_channels": shapes["conv_in.weight"][1]}
        details |= {"parameters": _params(shapes), "dtype": _dtypes(table)}
        return f"Diffusers UNet for {_BASE_LABELS[base]} (one part of a diffusers folder)", details, [single_file]
    token = shapes.get("text_model.embeddings.token_embedding.weight")
    if token is not None and len(token) == 2:
        width = token[1]
        fits = {768: "SD1.x, or SDXL's first text encoder", 1024: "SD2.x", 1280: "SDXL's second text encoder"}
        details = {"width": width, "fits": fits.get(width, "unknown"), "layers": _count_layers(keys)}
        details |= {"dtype": _dtypes(table)}
        return "CLIP text encoder (transformers layout)", details, [single_file]
    return None


def _count_layers(keys: list[str]) -> int:
    return len({m[1] for k in keys if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
