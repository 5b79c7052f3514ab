"""One report per file, and its two renderings: plain text for the CLI, Markdown for the UI panel."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Report:
    path: str  # printable (non-UTF-8 bytes escaped)
    # checkpoint, lora, embedding, hypernetwork, vae, controlnet, upscaler, other (diffusers part, Flux),
    # torchscript, unknown, error
    kind: str = "unknown"
    title: str = ""
    container: str = ""  # safetensors, pickle (zip), pickle (legacy), torchscript
    size: int | None = None
    tensors: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# detail key → label, in display order; keys not listed are shown after these with their own name
LABELS: dict[str, str] = {
    "family_label": "Model",
    "prediction": "Prediction",
    "yaml": "Config",
    "network": "Network",
    "format": "Format",
    "base_label": "Base model",
    "base_evidence": "Recognised by",
    "rank": "Rank",
    "alpha": "Alpha",
    "conv_rank": "Conv rank",
    "conv_alpha": "Conv alpha",
    "modules": "Modules",
    "architecture": "Architecture",
    "scale": "Scale",
    "blocks": "Blocks",
    "fits": "Fits",
    "latent_channels": "Latent channels",
    "layout": "Layout",
    "vectors": "Vectors",
    "width": "Width",
    "name": "Name",
    "sizes": "Layer sizes",
    "layer_structure": "Layer structure",
    "activation_func": "Activation",
    "components": "Contents (tensors)",
    "unet_parameters": "UNet parameters",
    "parameters": "Parameters",
    "dtype": "Precision",
    "output_name": "Output name",
    "title": "Title",
    "trigger_words": "Trigger words",
    "base_model_name": "Trained on",
    "base_model_version": "Base model version",
    "steps": "Steps",
    "max_train_steps": "Max steps",
    "epoch": "Epoch",
    "epochs": "Epochs",
    "resolution": "Resolution",
    "dataset_images": "Dataset images",
    "num_train_images": "Training images (x repeats)",
    "dataset_dirs": "Dataset folders",
    "top_tags": "Top tags",
    "distinct_tags": "Distinct tags",
    "network_dim": "Network dim (metadata)",
    "network_alpha": "Network alpha (metadata)",
    "network_args": "Network args",
    "learning_rate": "Learning rate",
    "unet_lr": "UNet LR",
    "text_encoder_lr": "Text encoder LR",
    "optimizer": "Optimizer",
    "lr_scheduler": "LR scheduler",
    "batch_size": "Batch size",
    "clip_skip": "Clip skip",
    "trained_at": "Trained at",
    "sshs_model_hash": "Short hash (WebUI)",
    "step": "Step",
    "sd_checkpoint_name": "Trained on",
    "global_step": "Global step",
    "first_keys": "First keys",
}
# machine-only keys the text views leave out (their readable twin is shown)
_HIDDEN = {"family", "base", "sshs_legacy_hash"}


def _fmt(key: str, value: Any) -> str:
    if key == "top_tags":
        return ", ".join(f"{tag} ({n})" for tag, n in value)
    if key == "dataset_dirs":
        return "; ".join(f"{name}: {d.get('images')} images x {d.get('repeats')}" for name, d in value.items())
    if key in ("unet_parameters", "parameters") and isinstance(value, int):
        return f"{value / 1e6:,.1f} M" if value >= 1e5 else str(value)
    if key == "modules" and isinstance(value, dict):
        parts = [f"{value.get('unet', 0)} UNet", f"{value.get('text_encoder', 0)} text encoder"]
        if "te1" in value:
            parts[-1] += f" (te1 {value['te1']}, te2 {value['te2']})"
        if value.get("other"):
            parts.append(f"{value['other']} other")
        return " + ".join(parts)
    if key == "sshs_model_hash":
        return str(value)[:12]  # what the WebUI shows and writes into infotext; JSON keeps the full hash
    if key == "components":
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items() if v)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _rows(report: Report) -> list[tuple[str, str]]:
    details = report.details
    order = [k for k in LABELS if k in details] + [k for k in details if k not in LABELS]
    rows = []
    for key in order:
        value = details[key]
        if key in _HIDDEN or value in (None, "", [], {}):
            continue
        rows.append((LABELS.get(key, key.replace("_", " ").capitalize()), _fmt(key, value)))
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_text(report: Report) -> str:
    if report.error:
        return f"{report.path}: error: {report.error}"
    lines = [f"{report.path}: {report.title}"]
    lines.append(f"  {'File':<24} {report.container}, {_size(report.size)}, {report.tensors} tensors")
    lines += [f"  {label:<24} {value}" for label, value in _rows(report)]
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*").replace("_", "\\_")


def render_markdown(report: Report) -> str:
    name = _md_escape(report.path)
    if report.error:
        return f"### {name}\n\n**Error:** {_md_escape(report.error)}\n"
    out = [f"### {name}", "", f"**{_md_escape(report.title)}**", "", "| | |", "|---|---|"]
    out.append(f"| File | {_md_escape(f'{report.container}, {_size(report.size)}, {report.tensors} tensors')} |")
    out += [f"| {_md_escape(label)} | {_md_escape(value)} |" for label, value in _rows(report)]
    if report.notes:
        out.append("")
        out += [f"- {_md_escape(n)}" for n in report.notes]
    return "\n".join(out) + "\n"
