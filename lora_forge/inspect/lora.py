"""Recognise LoRA-like files (kohya LoRA/LoCon, LyCORIS, diffusers/PEFT) and read their training metadata.

The key names follow the forms the WebUI's Lora loader accepts (network.py / networks.py of 1.10.1):
a module part and a parameter part (`lora_down.weight`, `hada_w1_a`, `lora_A.weight`, ...). Rank and
the base model come from shapes, which cannot lie; metadata is shown beside them and a mismatch is
pointed out, because files renamed or re-saved by merge tools often carry stale `ss_*` keys.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from lora_forge.inspect.readers import TensorTable

# parameter part of a key → which network module type owns it
_PARAM_RE = re.compile(
    r"^(?P<module>.+?)(?:\.(?P<param>"
    r"lora_down\.weight|lora_up\.weight|lora_mid\.weight|lora_A(?:\.default)?\.weight|lora_B(?:\.default)?\.weight"
    r"|lora\.down\.weight|lora\.up\.weight|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight"
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t[12]|oft_blocks|oft_diag|dora_scale"
    r"|w_norm|b_norm|diff|diff_b|alpha|scale)"
    # old diffusers attention processors: `...attn1.processor.to_q_lora.down.weight`
    r"|_(?P<proc>lora\.down\.weight|lora\.up\.weight))$"
)
_DOWN = (
    "lora_down.weight",
    "lora_A.weight",
    "lora_A.default.weight",
    "lora.down.weight",
    "lora_linear_layer.down.weight",
)

BASE_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux/sd3": "SD3/Flux-style (transformer)"}

# (metadata value prefix, base) for ss_base_model_version and modelspec.architecture
_META_BASES = (
    ("sdxl", "sdxl"),
    ("stable-diffusion-xl", "sdxl"),
    ("sd_v2", "sd2"),
    ("stable-diffusion-v2", "sd2"),
    ("sd_v1", "sd1"),
    ("stable-diffusion-v1", "sd1"),
    ("sd3", "flux/sd3"),
    ("flux", "flux/sd3"),
    ("stable-diffusion-v3", "flux/sd3"),
)


def split_lora_keys(keys: list[str]) -> dict[str, dict[str, str]]:
    """module name → {parameter part → full key} for every key that looks like a network parameter."""
    modules: dict[str, dict[str, str]] = {}
    for key in keys:
        m = _PARAM_RE.match(key)
        if m:
            modules.setdefault(m["module"], {})[m["param"] or m["proc"]] = key
    return modules


def looks_like_lora(keys: list[str]) -> bool:
    """Most keys are network parameters and at least one is a real weight (a stray `alpha` or
    `logit_scale` in a checkpoint proves nothing)."""
    keys = [k for k in keys if not k.startswith("bundle_emb.")]
    modules = split_lora_keys(keys)
    matched = sum(len(params) for params in modules.values())
    strong = any(p not in ("alpha", "scale") for params in modules.values() for p in params)
    return strong and matched * 2 >= len(keys)


def _component(module: str) -> str:
    """'unet', 'te', 'te1', 'te2' or 'other' from the module name's prefix."""
    m = module.lower()
    for prefix, comp in (
        ("lora_te1_", "te1"),
        ("lora_te2_", "te2"),
        ("lora_te_", "te"),
        ("text_encoder_2.", "te2"),
        ("text_encoder.", "te"),
        ("te1.", "te1"),
        ("te2.", "te2"),
    ):
        if m.startswith(prefix):
            return comp
    if "text_model" in m:
        return "te"
    if m.startswith(("lora_unet_", "unet.", "transformer.", "lora_transformer_", "base_model.model.")):
        return "unet"
    if "blocks" in m or "mid_block" in m or "middle_block" in m:
        return "unet"
    return "other"


def analyse_lora(table: TensorTable) -> tuple[str, dict[str, Any], list[str]]:
    """(title, details, notes) of a LoRA-like file."""
    modules = split_lora_keys(list(table.shapes))
    params = Counter(p for ps in modules.values() for p in ps)
    keys = list(table.shapes)
    notes: list[str] = []

    algos = []
    if params["hada_w1_a"]:
        algos.append("LoHa")
    if params["lokr_w1"] or params["lokr_w1_a"]:
        algos.append("LoKr")
    if params["oft_blocks"] or params["oft_diag"]:
        algos.append("OFT")
    if params["diff"]:
        algos.append("full (diff)")
    rank_rows, conv_rows = _ranks(table, modules)
    has_lora = any(params[p] for p in _DOWN)
    if has_lora:
        algos.insert(0, "LoCon" if conv_rows else "LoRA")
    if params["dora_scale"]:
        algos.append("DoRA")

    fmt = _format(keys, table.metadata, algos)
    comps = Counter(_component(m) for m in modules)
    module_counts = {
        "unet": comps["unet"],
        "text_encoder": comps["te"] + comps["te1"] + comps["te2"],
    }
    if comps["te1"] or comps["te2"]:
        module_counts["te1"] = comps["te1"]
        module_counts["te2"] = comps["te2"]
    if comps["other"]:
        module_counts["other"] = comps["other"]

    base, evidence = _base_from_keys(table, modules)
    meta_base = _base_from_metadata(table.metadata)
    if not base and meta_base:
        base, evidence = meta_base, "from the training metadata only"
    elif base and meta_base and meta_base != base:
        notes.append(
            f"metadata says {BASE_LABELS.get(meta_base, meta_base)} but the layer shapes are {BASE_LABELS[base]}; "
            "the shapes decide what it loads into"
        )

    details: dict[str, Any] = {
        "format": fmt,
        "network": " + ".join(algos) or "unknown network type",
        "base": base,
        "base_label": BASE_LABELS.get(base, "unknown"),
        "base_evidence": evidence,
        "rank": _distinct(r for r, _a in rank_rows),
        "alpha": _distinct(a for _r, a in rank_rows),
        "conv_rank": _distinct(r for r, _a in conv_rows),
        "conv_alpha": _distinct(a for _r, a in conv_rows),
        "modules": module_counts,
        "dtype": sorted(set(table.dtypes.values())),
    }
    if rank_rows and all(a is None for _r, a in rank_rows):
        notes.append("no alpha tensors: the WebUI applies scale 1 (as if alpha = rank)")
    bundled = sorted({k.split(".")[1] for k in keys if k.startswith("bundle_emb.") and k.count(".") >= 2})
    if bundled:
        details["bundled_embeddings"] = bundled
    details.update(training_summary(table.metadata))
    if not module_counts["unet"] and not module_counts["text_encoder"]:
        notes.append("no UNet or text-encoder module names the WebUI recognises")
    base_text = f" for {details['base_label']}" if base else ", base model unknown"
    return f"LoRA ({details['network']}, {fmt}){base_text}", details, notes


def _distinct(values: Any) -> list[Any]:
    """Distinct values, most common first (a rank list of [16] is the usual case)."""
    counts = Counter(v for v in values if v is not None)
    return [v for v, _n in counts.most_common()]


def _ranks(table: TensorTable, modules: dict[str, dict[str, str]]) -> tuple[list[tuple], list[tuple]]:
    """(rank, alpha) per module, split into linear/1×1 modules and k×k conv modules."""
    linear: list[tuple] = []
    conv: list[tuple] = []
    alphas = table.values([params["alpha"] for params in modules.values() if "alpha" in params])
    for params in modules.values():
        alpha = _alpha(alphas.get(params.get("alpha", "")))
        down = next((params[p] for p in _DOWN if p in params), None)
        if down is not None:
            shape = table.shapes[down]
            rank = shape[0] if shape else None
            is_conv = (len(shape) == 4 and shape[2] * shape[3] > 1) or "lora_mid.weight" in params
        elif "hada_w1_b" in params:
            shape = table.shapes[params["hada_w1_b"]]
            rank = shape[0] if shape else None
            is_conv = "hada_t1" in params or len(table.shapes[params.get("hada_w1_a", params["hada_w1_b"])]) == 4
        elif "lokr_w2_a" in params or "lokr_w1_a" in params:
            shape = table.shapes[params.get("lokr_w2_a") or params["lokr_w1_a"]]
            rank = shape[-1] if shape else None
            is_conv = "lokr_t2" in params
        else:
            continue
        (conv if is_conv else linear).append((rank, alpha))
    return linear, conv


def _alpha(values: list[float] | None) -> float | int | None:
    if not values:
        return None
    v = values[0]
    return int(v) if float(v).is_integer() else round(v, 4)


def _format(keys: list[str], metadata: dict[str, str], algos: list[str]) -> str:
    if any(".processor." in k for k in keys):
        return "diffusers (attention processors)"
    peft = any(".lora_A." in k for k in keys)
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")) for k in keys):
        return "diffusers/PEFT" if peft else "diffusers"
    if peft or any(k.startswith("base_model.model.") for k in keys):
        return "PEFT"
    if "lycoris" in metadata.get("ss_network_module", "") or any(a in algos for a in ("LoHa", "LoKr", "OFT")):
        return "LyCORIS"
    return "kohya"


def _in_width(table: TensorTable, modules: dict[str, dict[str, str]], module: str) -> int:
    params = modules[module]
    for p in (*_DOWN, "hada_w1_b", "hada_w2_b"):
        if p in params:
            shape = table.shapes[params[p]]
            return int(shape[1]) if len(shape) >= 2 else 0
    return 0


_CROSS_ATTN = ("attn2_to_k", "attn2_to_v", "attn2_processor_to_k", "attn2_processor_to_v")
_UNET_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTHS = {768: "sd1", 1024: "sd2"}


def _base_from_keys(table: TensorTable, modules: dict[str, dict[str, str]]) -> tuple[str, str]:
    """Base family from the cross-attention / text-encoder widths, else from SDXL-only names."""
    names = {m.lower().replace(".", "_"): m for m in modules}
    if any(n.startswith(("transformer_", "lora_transformer_")) or "double_blocks" in n for n in names):
        return "flux/sd3", "transformer (DiT) layer names"
    for norm, m in names.items():
        if norm.endswith(_CROSS_ATTN) and _component(m) == "unet":
            width = _in_width(table, modules, m)
            if width in _UNET_WIDTHS:
                return _UNET_WIDTHS[width], f"cross-attention input width {width}"
    if any(_component(m) in ("te1", "te2") for m in modules):
        return "sdxl", "two text encoders (te1/te2)"
    for norm, m in names.items():
        if _component(m) == "te" and norm.endswith(("q_proj", "mlp_fc1")):
            width = _in_width(table, modules, m)
            if width in _TE_WIDTHS:
                return _TE_WIDTHS[width], f"text-encoder width {width}"
    if any(re.search(r"transformer_blocks_[1-9]", n) for n in names):
        return "sdxl", "UNet blocks with several transformer layers"
    return "", ""


def _base_from_metadata(meta: dict[str, str]) -> str:
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = meta.get(key, "").lower()
        for prefix, base in _META_BASES:
            if value.startswith(prefix):
                return base
    if meta.get("ss_v2") == "True":
        return "sd2"
    return ""


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError, TypeError):
        return None


def _number(meta: dict[str, str], key: str) -> int | float | None:
    value = meta.get(key)
    if value in (None, "", "None"):
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else f


def training_summary(meta: dict[str, str], top: int = 10) -> dict[str, Any]:
    """What a user wants to know about how a LoRA was trained, from kohya's `ss_*` / modelspec keys."""
    out: dict[str, Any] = {}
    if not meta:
        return out
    for key, src in (
        ("output_name", "ss_output_name"),
        ("title", "modelspec.title"),
        ("base_model_name", "ss_sd_model_name"),
        ("base_model_version", "ss_base_model_version"),
        ("network_module", "ss_network_module"),
        ("optimizer", "ss_optimizer"),
        ("lr_scheduler", "ss_lr_scheduler"),
        ("sshs_model_hash", "sshs_model_hash"),
        ("sshs_legacy_hash", "sshs_legacy_hash"),
    ):
        if meta.get(src) not in (None, "", "None"):
            out[key] = meta[src]
    for key, src in (
        ("steps", "ss_steps"),
        ("max_train_steps", "ss_max_train_steps"),
        ("epoch", "ss_epoch"),
        ("epochs", "ss_num_epochs"),
        ("learning_rate", "ss_learning_rate"),
        ("unet_lr", "ss_unet_lr"),
        ("text_encoder_lr", "ss_text_encoder_lr"),
        ("network_dim", "ss_network_dim"),
        ("network_alpha", "ss_network_alpha"),
        ("batch_size", "ss_total_batch_size"),
        ("clip_skip", "ss_clip_skip"),
        ("num_train_images", "ss_num_train_images"),
    ):
        n = _number(meta, src)
        if n is not None:
            out[key] = n
    resolution = meta.get("ss_resolution") or meta.get("modelspec.resolution")
    if resolution:
        nums = re.findall(r"\d+", resolution)
        out["resolution"] = "x".join(nums[:2]) if len(nums) >= 2 else resolution
    args = _json(meta, "ss_network_args")
    if isinstance(args, dict) and args:
        out["network_args"] = {str(k): str(v) for k, v in args.items()}
    dirs = _json(meta, "ss_dataset_dirs")
    if isinstance(dirs, dict) and dirs:
        images = sum(int(d.get("img_count", 0)) for d in dirs.values() if isinstance(d, dict))
        out["dataset_images"] = images
        out["dataset_dirs"] = {
            str(name): {"images": d.get("img_count"), "repeats": d.get("n_repeats")}
            for name, d in dirs.items()
            if isinstance(d, dict)
        }
    freq = _json(meta, "ss_tag_frequency")
    if isinstance(freq, dict):
        merged: Counter[str] = Counter()
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, (int, float)):
                        merged[str(tag).strip()] += int(count)
        if merged:
            out["top_tags"] = [[tag, n] for tag, n in merged.most_common(top)]
            out["distinct_tags"] = len(merged)
    triggers = [meta[k] for k in ("modelspec.trigger_phrase", "ssmd_keywords") if meta.get(k)]
    if triggers:
        out["trigger_words"] = triggers
    started = _number(meta, "ss_training_started_at")
    if started is not None:
        import datetime

        out["trained_at"] = datetime.datetime.fromtimestamp(float(started), datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
    elif meta.get("modelspec.date"):
        out["trained_at"] = meta["modelspec.date"]
    if meta.get("ssmd_cover_images", "[]") not in ("", "[]"):
        out["has_cover_image"] = True
    return out
