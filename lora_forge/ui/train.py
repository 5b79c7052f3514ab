"""训练: pick a preset, set the handful of values users touch, start; watch progress, the loss
chart, memory and samples; stop, resume. The run itself is app.train's (a Job on a worker
thread); the Start/Resume/Watch handlers are generators that poll it, so gradio's event loop and
the WebUI stay free while it trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.host.base import Host
from lora_forge.ui.context import UiContext

TITLE = "Train"
POLL_SECONDS = 1.0
LOCK_NOTE = "While this trains, generations and checkpoint changes wait; press Stop here, or Interrupt in txt2img."
PRESET_LABELS = {
    "person": "Person",
    "anime": "Anime character",
    "style": "Art style",
    "product": "Product / object",
    "custom": "Custom",
}
# the fields users touch: (config key, label, kind)
MAIN_FIELDS = [
    ("output_name", "LoRA name", "text"),
    ("trigger_word", "Trigger word", "text"),
    ("num_repeats", "Repeats (0 = planned for the preset)", "int"),
    ("max_train_epochs", "Epochs", "int"),
    ("network_dim", "Rank (dim)", "int"),
    ("network_alpha", "Alpha", "float"),
    ("learning_rate", "Learning rate", "float"),
    ("resolution", "Resolution", "text"),
    ("train_batch_size", "Batch size", "int"),
    ("save_every_n_epochs", "Save every N epochs", "int"),
    ("sample_every_n_steps", "Sample every N steps (0 = none)", "int"),
]
ADVANCED_FIELDS = [
    ("text_encoder_lr", "Text encoder learning rate (0 = UNet only)", "float"),
    ("clip_skip", "Clip skip (0 = the WebUI's setting)", "int"),
    ("optimizer_type", "Optimizer", "text"),
    ("lr_scheduler", "LR scheduler", "text"),
    ("mixed_precision", "Mixed precision (no / fp16 / bf16)", "text"),
    ("min_snr_gamma", "Min-SNR gamma (0 = off)", "float"),
    ("noise_offset", "Noise offset", "float"),
    ("v_parameterization", "v-prediction (auto / true / false)", "text"),
    ("seed", "Seed", "int"),
]


def _preset_values(preset: str, host: Host | None = None) -> list[Any]:
    """The fields' values for a preset, for the model `host` has loaded (SDXL values for SDXL)."""
    from lora_forge.train.presets import model_preset_config, preset_config

    config = preset_config(_preset_name(preset)) if host is None else model_preset_config(_preset_name(preset), host)
    values = []
    for key, _, _ in MAIN_FIELDS + ADVANCED_FIELDS:
        v = getattr(config, key)
        values.append(0 if key == "clip_skip" else v)
    return values


def _preset_kind(host: Host | None) -> str:
    """Which preset values the loaded model wants: "sdxl" for the SDXL family, "sd" otherwise (also
    when no model is loaded yet, as the form is built)."""
    from lora_forge.model.family import base_family
    from lora_forge.train.presets import loaded_family

    return "sdxl" if host is not None and base_family(loaded_family(host)[0]) == "sdxl" else "sd"


def _overrides(values: list[Any], extra: str) -> dict[str, Any]:
    from lora_forge.train.layering import parse_sets

    out: dict[str, Any] = {}
    for (key, _, kind), v in zip(MAIN_FIELDS + ADVANCED_FIELDS, values, strict=True):
        if v is None or v == "":
            continue
        out[key] = int(v) if kind == "int" else float(v) if kind == "float" else str(v).strip()
    if not out.get("text_encoder_lr"):
        out["network_train_unet_only"] = True
    lines = [line.strip() for line in (extra or "").splitlines() if line.strip() and not line.startswith("#")]
    out.update(parse_sets(lines))
    return out


def _fmt_eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def render(status: Any) -> tuple[Any, ...]:
    """(status markdown, progress html, chart, sample image, result markdown) for one poll."""
    from lora_forge.app.train import GOOD_LOSS
    from lora_forge.ui.train_chart import loss_chart

    if status is None:
        return "No training run yet.", "", None, None, ""
    pct = 100.0 * status.step / status.total if status.total else 0.0
    lines = [f"**{status.name or '…'}** — {status.state}"]
    if status.plan:
        lines.append(f"Plan: {status.plan}")
    if status.state == "running" and status.total:
        eta = f", ETA {_fmt_eta(status.eta_s)}" if status.eta_s else ""
        lines.append(f"Step {status.step}/{status.total} (epoch {status.epoch}/{status.epochs}){eta}")
    if status.memory_bytes:
        lines.append(f"Memory in use: {status.memory_bytes / 1024**3:.2f} GiB")
    if status.estimate:
        lines.append(f"Memory plan: {status.estimate.removeprefix('memory plan: ')}")
    if status.message and not status.done:
        lines.append(status.message)
    if not status.done:
        lines += [f"**⚠ {w}**" for w in status.warnings]
        lines.append(LOCK_NOTE)
    bar = (
        f"<div class='lora-forge-progress' style='background:#ddd;border-radius:4px;height:14px'>"
        f"<div style='width:{pct:.1f}%;background:#4a8;height:14px;border-radius:4px'></div></div>"
        f"<span id='lora_forge_train_pct'>{pct:.0f}%</span>"
    )
    first = status.step - len(status.losses)  # a resumed run charts from where it resumed
    chart = loss_chart(status.losses, status.smoothed, GOOD_LOSS, status.total, first) if status.losses else None
    sample = getattr(status, "_sample_image", None)
    result = ""
    if status.done:
        result = f"**Failed:** {status.error}" if status.state == "failed" else status.message
        for w in status.warnings:
            result += f"\n\n**Warning: {w}**"
    return "\n\n".join(lines), bar, chart, sample, result


def _card_memory(host: Host, needed: int) -> str:
    """The card's memory, and a plain warning when the estimate does not fit in it."""
    import torch

    device = host.device
    if device.type != "cuda":
        return f"the card has no GPU memory limit ({device.type})"
    total = torch.cuda.get_device_properties(device).total_memory
    text = f"the card has {total / 1024**3:.1f} GiB ({torch.cuda.get_device_name(device)})"
    if needed > total:
        text += "; this will not fit: lower the batch size, the resolution or the rank"
    return text


def estimate_memory(ctx: UiContext, data_dir: str, preset: str, *values: Any) -> str:
    from lora_forge.app import train

    try:
        host = ctx.host()
        overrides = _overrides(list(values[:-1]), values[-1])
        est, prepared = train.estimate_memory(host, data_dir, _preset_name(preset), overrides)
    except ForgeError as e:
        return f"**Failed:** {e}"
    return f"Memory plan: {est.summary()} — {_card_memory(host, est.total)}. {prepared.plan.note}"


@dataclass
class TrainHandles:
    """What the tab wires to: the form (preset, a field per config key, the more-settings box), the
    status line, the run the last Start launched, and the events that follow a run until it ends."""

    preset: Any
    fields: dict[str, Any]  # config key → its Textbox / Number
    extra: Any  # keys without a field of their own, as `key = value` lines
    status: Any
    run_id: Any  # gr.State: the id of the run Start or Resume launched (what app.train returned)
    launches: list[Any]  # Start's and Resume's launch: run_id holds the new run when each is done
    run_ended: list[Any] = field(default_factory=list)  # Start, Resume, Show progress: done when their run is
    _follow: Any = None
    _outputs: list[Any] = field(default_factory=list)
    filled_for: Any = None  # gr.State: the kind of model ("sd"/"sdxl") the form's preset values are for
    _for_model: Any = None  # (event) -> None: refill the preset's values when the loaded model's kind changed
    _kind: Any = None  # () -> the kind of the model loaded now

    def follow_after(self, event: Any) -> Any:
        """Show the run whose id is in run_id once `event` is done (e.g. the bar's Resume), as this
        section's own Start does; the returned event ends when the run does."""
        followed = event.then(self._follow, [self.run_id], self._outputs)
        self.run_ended.append(followed)
        return followed

    def follow_model(self, event: Any) -> None:
        """After `event` (opening this section), show the preset's values for the model loaded now
        when they were filled for another kind (SD1 numbers on an SDXL model, or after a checkpoint
        switch); values the user typed for the same kind of model stay."""
        self._for_model(event)

    def fill(self, values: dict[str, Any], more: str | None) -> dict[Any, Any]:
        """Updates that show `values` (config keys) in the form; `more` for the more-settings box
        (None leaves it as it is). Keys with no field and no value are left as the page has them."""
        import gradio as gr

        out: dict[Any, Any] = {comp: gr.update(value=values[k]) for k, comp in self.fields.items() if k in values}
        if more is not None:
            out[self.extra] = more
        out[self.filled_for] = self._kind()  # a filled form is the user's for this model: keep it
        return out

    @property
    def form(self) -> list[Any]:
        """The components `fill` may update: list them as the outputs of an event that fills."""
        return [*self.fields.values(), self.extra, self.filled_for]


def build(ctx: UiContext) -> TrainHandles:
    import gradio as gr

    from lora_forge.app import train

    dataset_dir = ctx.shared["dataset_dir"]
    preset = gr.Radio(
        choices=list(PRESET_LABELS.values()),  # labels as values: the WebUI's localization translates them
        value=PRESET_LABELS["person"],
        label="Preset",
        elem_id="lora_forge_train_preset",
        elem_classes=["lora-forge-preset-cards"],
    )
    defaults = _preset_values("person")
    fields: dict[str, Any] = {}
    with gr.Row():
        for i, (key, label, kind) in enumerate(MAIN_FIELDS):
            value = "my_lora" if key == "output_name" else defaults[i]
            comp = gr.Textbox if kind == "text" else gr.Number
            fields[key] = comp(value=value, label=label, elem_id=f"lora_forge_train_{key}", min_width=160)
    with gr.Accordion("Advanced", open=False, elem_id="lora_forge_train_advanced"):
        with gr.Row():
            for j, (key, label, kind) in enumerate(ADVANCED_FIELDS):
                value = defaults[len(MAIN_FIELDS) + j]
                comp = gr.Textbox if kind == "text" else gr.Number
                fields[key] = comp(value=value, label=label, elem_id=f"lora_forge_train_{key}", min_width=160)
        extra = gr.Textbox(
            label="More settings, one `key = value` per line (kohya names)",
            lines=3,
            elem_id="lora_forge_train_extra",
        )
    components = list(fields.values())
    with gr.Row():
        check = gr.Button("Check memory", elem_id="lora_forge_train_check")
        start = gr.Button("Start training", variant="primary", elem_id="lora_forge_train_start")
        stop = gr.Button("Stop", variant="stop", elem_id="lora_forge_train_stop")
        resume = gr.Button("Resume", elem_id="lora_forge_train_resume")
        watch = gr.Button("Show progress", elem_id="lora_forge_train_watch")
    memory_md = gr.Markdown("", elem_id="lora_forge_train_memory")
    status_md = gr.Markdown("No training run yet.", elem_id="lora_forge_train_status")
    bar = gr.HTML("", elem_id="lora_forge_train_bar")
    with gr.Row():
        chart = gr.Image(label="Loss", type="pil", interactive=False, height=240, elem_id="lora_forge_train_chart")
        sample = gr.Image(
            label="Latest sample", type="pil", interactive=False, height=240, elem_id="lora_forge_train_sample"
        )
    result_md = gr.Markdown("", elem_id="lora_forge_train_result")
    run_id = gr.State("")
    filled_for = gr.State("sd")  # the kind of model the preset's values in the form are for
    outputs = [status_md, bar, chart, sample, result_md, memory_md]

    def follow(run: str):
        """The run's progress every POLL_SECONDS until it is done; nothing when no run was launched."""
        if not run:
            return
        while True:
            status = train.get(run)
            yield (*render(status), "")
            if status.done:
                return
            time.sleep(POLL_SECONDS)

    def failed(message: str) -> dict[Any, Any]:
        return {run_id: "", status_md: "", bar: "", chart: None, sample: None, result_md: message, memory_md: ""}

    def on_start(data_dir: str, preset_name: str, *values: Any):
        try:
            overrides = _overrides(list(values[:-1]), values[-1])
            status = train.start(ctx.host(), data_dir, _preset_name(preset_name), overrides)
        except ForgeError as e:
            return failed(f"**Failed:** {e}")
        return {run_id: status.id, memory_md: ""}

    def on_resume(data_dir: str):
        last = train.latest()
        if last is None or last.state not in ("stopped", "failed") or not last.run_dir:
            return failed("Nothing to resume: no stopped run in this session.")
        try:
            status = train.resume(ctx.host(), last.run_dir, data_dir or last.data_dir)
        except ForgeError as e:
            return failed(f"**Failed:** {e}")
        return {run_id: status.id, memory_md: ""}

    def on_stop() -> str:
        active = train.active()
        if active is None:
            return "Nothing is training."
        train.stop(active.id)
        return "Stopping after the current step…"

    def on_watch():
        active = train.active() or train.latest()
        if active is None:
            yield (*render(None), "")
            return
        yield from follow(active.id)

    def on_preset(name: str) -> list[Any]:
        host = ctx.host_or_none()
        values = _preset_values(name, host)
        # name and trigger word stay the user's
        return [*(gr.update(value=v) for v in values[2:]), _preset_kind(host)]

    def on_model(name: str, kind: str) -> list[Any]:
        host = ctx.host_or_none()
        if _preset_kind(host) == kind:
            return [*(gr.update() for _ in components[2:]), kind]
        return on_preset(name)

    def for_model(event: Any) -> None:
        event(on_model, inputs=[preset, filled_for], outputs=[*components[2:], filled_for])

    inputs = [dataset_dir, preset, *components, extra]
    preset.change(on_preset, inputs=[preset], outputs=[*components[2:], filled_for])
    check.click(lambda *a: estimate_memory(ctx, a[0], a[1], *a[2:]), inputs=inputs, outputs=[memory_md])
    started = start.click(on_start, inputs=inputs, outputs=[run_id, *outputs])
    resumed = resume.click(on_resume, inputs=[dataset_dir], outputs=[run_id, *outputs])
    stop.click(on_stop, outputs=[memory_md])
    watched = watch.click(on_watch, outputs=outputs)
    handles = TrainHandles(
        preset,
        fields,
        extra,
        status_md,
        run_id,
        [started, resumed],
        [watched],
        follow,
        outputs,
        filled_for,
        for_model,
        lambda: _preset_kind(ctx.host_or_none()),
    )
    handles.follow_after(started)
    handles.follow_after(resumed)
    return handles


def _preset_name(label: str) -> str:
    return next((name for name, text in PRESET_LABELS.items() if text == label), label or "custom")
