"""优化: advice from the last grid's scores, and "train again with these changes", which writes a
new run config from the previous run's (that run stays as it is) and opens 训练 filled with it.

Wiring only: the rules are lora_forge.optimise. The scores come from the grid section through
ctx.shared["grid_scores"] when it fills it, else from the newest `*-scores.json` beside a grid in
the project's run folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_forge import optimise
from lora_forge.errors import ForgeError
from lora_forge.rundir import RunDir
from lora_forge.ui.context import UiContext

if TYPE_CHECKING:
    from lora_forge.ui.train import TrainHandles

TITLE = "Optimise"
EMPTY = "Render a grid with scores in Test grid first; the advice is based on what the grid measured."


def latest_scores(run_dirs: list[Path]) -> tuple[dict[str, Any], Path] | None:
    """The newest grid scores (GridScores.to_json) saved in these run folders, with its run."""
    found = [(p, run) for run in run_dirs if run.is_dir() for p in RunDir(run).scores_files()]
    if not found:
        return None
    path, run = max(found, key=lambda pr: pr[0].stat().st_mtime)
    try:
        return json.loads(path.read_text(encoding="utf-8")), run
    except (OSError, ValueError) as e:
        raise ForgeError(f"the grid scores cannot be read ({e.__class__.__name__})", path=path) from e


def run_config(run_dir: Path) -> dict[str, Any]:
    from lora_forge.train.config import read_config_file

    run = RunDir(run_dir)
    values = read_config_file(run.config) if run.config.is_file() else {}
    report = run.report
    if report.is_file():  # the epochs it really trained (a preset may have planned them)
        try:
            values.setdefault("max_train_epochs", json.loads(report.read_text(encoding="utf-8")).get("epochs"))
        except (OSError, ValueError):
            pass
    return values


def more_settings(values: dict[str, Any], preset_label: str) -> str:
    """The config keys 训练 has no field for, as its "more settings" lines, where they differ from
    what Start would take from the preset now selected: Start then trains exactly `values`."""
    from lora_forge.train.presets import PRESETS, preset_config
    from lora_forge.ui.train import ADVANCED_FIELDS, MAIN_FIELDS, _preset_name

    preset = str(values.get("preset") or "custom")
    preset = preset if preset in PRESETS else "custom"
    lines = [f"preset = {preset}"] if preset != _preset_name(preset_label) else []
    defaults = preset_config(preset).to_dict()
    skip = {k for k, _, _ in MAIN_FIELDS + ADVANCED_FIELDS} | {"preset", "resume", "network_weights"}
    skip.add("network_train_unet_only")  # Start derives it from the text encoder learning rate field
    for key, value in values.items():
        if key in skip or key not in defaults or value == defaults[key]:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = " | ".join(str(v) for v in value)
        lines.append(f"{key} = {value}")
    return "\n".join(lines)


def build(ctx: UiContext, train: TrainHandles | None = None) -> None:
    """The section; `train` is 训练's form, which "Train again with these changes" fills."""
    import gradio as gr

    from lora_forge.ui.projects import from_state, to_state

    project_state = ctx.shared.get("project") or gr.State(None)
    scores_state = ctx.shared.get("grid_scores") or gr.State(None)
    with gr.Row(elem_classes="lf-toolbar"):
        advise_btn = gr.Button("Advise from the last grid", variant="primary", elem_id="lora_forge_optimise_advise")
        again_btn = gr.Button("Train again with these changes", interactive=False, elem_id="lora_forge_optimise_again")
    advice_md = gr.Markdown(EMPTY, elem_id="lora_forge_optimise_advice")
    pending = gr.State(None)  # {"run": run folder, "changes": {...}}

    def on_advise(project_v: Any, scores_v: Any):
        try:
            project = from_state(project_v)
            runs = list(project.runs)
            if scores_v and scores_v.get("run_dir"):
                scores, run = scores_v, Path(scores_v["run_dir"])
            else:
                got = latest_scores(runs)
                if got is None:
                    return EMPTY, None, gr.update(interactive=False)
                scores, run = got
            advice = optimise.advise(scores, run_config(run))
        except ForgeError as e:
            return f"**Error:** {e}", None, gr.update(interactive=False)
        text = advice.markdown() + f"\n\n<span class='lf-hint'>From the grid of run `{run.name}`.</span>"
        if not advice.changes:
            return text, None, gr.update(interactive=False)
        return text, {"run": str(run), "changes": advice.changes}, gr.update(interactive=True)

    advise_btn.click(on_advise, [project_state, scores_state], [advice_md, pending, again_btn])

    sections = ctx.shared.get("sections")

    def on_again(project_v: Any, pending_v: Any, preset_label: str = "") -> dict[Any, Any]:
        try:
            project = from_state(project_v)
            if not pending_v:
                raise ForgeError("press Advise first")
            path, values = optimise.next_config(Path(pending_v["run"]), pending_v["changes"], project.configs_dir)
            project.save({"settings": {**project.settings, "next_config": str(path)}})
        except ForgeError as e:
            return {advice_md: f"**Error:** {e}"}
        if values.get("network_train_unet_only"):
            values["text_encoder_lr"] = 0
        msg = (
            f"Saved the next run's config as `{path}` (the previous run is kept). "
            "Train is filled with it: press Start training."
        )
        out: dict[Any, Any] = {advice_md: msg, project_state: to_state(project)}
        if sections is not None:
            out[sections] = gr.update(selected="train")
        if train is not None:
            # keys without a field (e.g. bucket sizes typed under Advanced) go to the "more settings" box
            out.update(train.fill(values, more_settings(values, preset_label)))
        return out

    outputs = [advice_md, project_state, *([sections] if sections is not None else [])]
    if train is None:
        again_btn.click(on_again, [project_state, pending], outputs)
    else:
        again_btn.click(on_again, [project_state, pending, train.preset], [*outputs, *train.form])
