"""测试: render a run's epoch × strength grid, read the scores, keep the chosen file.

Wiring only: the work is lora_forge.grid, run as an app.grids job (inside the host's job lock,
the WebUI's queue) that this handler follows; Stop ends it after the cell (or
batched column) in hand, and a stopped grid is shown and saved as partial.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext

TITLE = "Test grid"
HEADERS = ["Epoch", "Strength", "Fidelity", "Face", "Flexibility", "Combined"]
SCORES_MIN_WIDTH = 780
NO_RUN = "(type a folder below)"


def _paths(text: str) -> list[Path]:
    """A folder, or files one per line (Windows' "Copy as path" quotes removed)."""
    return [Path(line.strip().strip('"').strip("'")) for line in (text or "").splitlines() if line.strip()]


def run_choices(ctx: UiContext) -> list[str]:
    from lora_forge.grid.files import run_folders

    try:
        lora_dir = ctx.host().lora_dir()
    except ForgeError:
        return [NO_RUN]
    return [NO_RUN, *[str(p) for p in run_folders(lora_dir)]]


def runs_update(ctx: UiContext, project_runs: list[Path], scan: bool) -> dict[str, Any]:
    """The run picker for the open project: its runs with LoRA files first, the newest picked (what
    a user opening 测试 wants to compare). `scan` adds the Lora folder's other runs; only once a
    host exists (after training), since a standalone host loads the model when first asked."""
    import gradio as gr

    newest: dict[str, float] = {}
    for folder in project_runs:
        times = [p.stat().st_mtime for p in folder.glob("*.safetensors")] if folder.is_dir() else []
        if times:
            newest[str(folder)] = max(times)
    mine = sorted(newest, key=lambda f: -newest[f])
    others = [c for c in (run_choices(ctx) if scan else []) if c != NO_RUN and c not in newest]
    choices = [NO_RUN, *mine, *others]
    return gr.update(choices=choices, value=choices[1] if len(choices) > 1 else NO_RUN)


def sources(run: str, typed: str) -> list[Path]:
    typed_paths = _paths(typed)
    if typed_paths:
        return typed_paths
    if run and run != NO_RUN:
        return [Path(run)]
    raise ForgeError("pick a run folder, or type a folder (or epoch files, one per line)")


def scores_markdown(scores: Any) -> str:
    if scores is None:
        return ""
    parts = []
    rec = scores.recommendation
    if rec is not None:
        parts.append(f"**Recommended: `{html.escape(rec.file.path.name)}` at strength {rec.strength:g}.** {rec.reason}")
    else:
        parts.append("No recommendation: nothing could be measured (see the notes).")
    if scores.warning:
        parts.append(f"⚠ {scores.warning}")
    parts.append("*Advice from automatic tags: look at the grid too.*")
    if scores.notes:
        parts.append("\n".join(f"- {html.escape(n)}" for n in scores.notes))
    return "\n\n".join(parts)


def send_settings(ctx: UiContext, plan: Any) -> tuple[str, str]:
    """(infotext for the WebUI's paste, Markdown showing the prompt and script_args)."""
    from lora_forge.grid.xyz import host_layout, xyz_settings

    if plan is None:
        raise ForgeError("render a grid first (the settings are those of the grid on screen)")
    host = ctx.host()
    found = host_layout(host)
    if found is None:
        settings = xyz_settings(plan, [f.path.stem for f in plan.files])
        note = "No WebUI here: these are the settings for WebUI 1.8 – 1.10.1 to enter by hand.\n\n"
        return "", note + _settings_md(settings)
    layout, index = found
    names = [host.network_name(f.path) for f in plan.files]
    settings = xyz_settings(plan, names, layout, prompt_sr_index=index)
    return settings.infotext, _settings_md(settings)


def _settings_md(settings: Any) -> str:
    return (
        f"Prompt: `{settings.prompt}`\n\nX values (Prompt S/R): `{', '.join(settings.x_values)}`\n\n"
        f"Y values (Prompt S/R): `{', '.join(settings.y_values)}`\n\n"
        f"API script_args ({settings.layout}): `{json.dumps(settings.script_args)}`"
    )


@dataclass(frozen=True)
class GridHandles:
    """What the tab wires to: the run picker (the project's runs, the newest picked) and the Render
    click (a grid changes the steps)."""

    run: Any
    rendered: Any


def build(ctx: UiContext) -> GridHandles:
    import gradio as gr

    from lora_forge.grid.plan import DEFAULT_NEGATIVE, DEFAULT_STRENGTHS, PROBE, QUALITY_TAGS
    from lora_forge.tagger import registry

    with gr.Row():
        run = gr.Dropdown([NO_RUN], value=NO_RUN, label="Run folder", elem_id="lora_forge_grid_run")
        refresh = gr.Button("🔄", elem_id="lora_forge_grid_refresh", scale=0, min_width=40)
        typed = gr.Textbox(
            label="Or a folder / epoch files (one per line)",
            lines=1,
            placeholder="D:\\sd\\models\\Lora\\mychar",
            elem_id="lora_forge_grid_paths",
        )
    with gr.Row():
        strengths = gr.Textbox(DEFAULT_STRENGTHS, label="Strengths (Y)", elem_id="lora_forge_grid_strengths")
        prompt = gr.Textbox(
            f"{QUALITY_TAGS}, {PROBE}",
            label="Prompt (after the trigger word)",
            elem_id="lora_forge_grid_prompt",
        )
        negative = gr.Textbox(DEFAULT_NEGATIVE, label="Negative prompt", elem_id="lora_forge_grid_negative")
    with gr.Row():
        seed = gr.Number(1234, label="Seed", precision=0, elem_id="lora_forge_grid_seed")
        steps = gr.Number(20, label="Steps", precision=0, elem_id="lora_forge_grid_steps")
        cfg = gr.Number(7.0, label="CFG scale", elem_id="lora_forge_grid_cfg")
        # 0 = the size the run trained at (an SDXL run renders at 1024, as its samples did)
        width = gr.Number(0, label="Width", precision=0, elem_id="lora_forge_grid_width")
        height = gr.Number(0, label="Height", precision=0, elem_id="lora_forge_grid_height")
        sampler = gr.Textbox("Euler a", label="Sampler", elem_id="lora_forge_grid_sampler")
    with gr.Row():
        score = gr.Checkbox(True, label="Score the cells (WD14 tagger)", elem_id="lora_forge_grid_score")
        tagger = gr.Textbox(registry.DEFAULT_MODEL, label="Tagger model or folder", elem_id="lora_forge_grid_tagger")
    with gr.Row():
        go = gr.Button("Render grid", variant="primary", elem_id="lora_forge_grid_go")
        stop = gr.Button("Stop", elem_id="lora_forge_grid_stop")
    status = gr.Markdown("", elem_id="lora_forge_grid_status")
    with gr.Row(elem_id="lora_forge_grid_results"):
        with gr.Column(scale=3):
            picture = gr.Image(label="Grid", type="pil", interactive=False, elem_id="lora_forge_grid_image")
            full = gr.Button("Open full size", elem_id="lora_forge_grid_full")
        # Below the grid when the two would not fit side by side (the score table needs ~760 px for
        # its six columns; at 1400 px the WebUI left it ~530 and "Combined" was cut off).
        with gr.Column(scale=2, min_width=SCORES_MIN_WIDTH):
            advice = gr.Markdown("", elem_id="lora_forge_grid_advice")
            table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="lora_forge_grid_scores")
            heat = gr.Image(label="Scores over the grid", type="pil", interactive=False, elem_id="lora_forge_grid_heat")
    with gr.Row():
        chosen = gr.Dropdown([], label="Keep this file", elem_id="lora_forge_grid_keep_file")
        trash = gr.Checkbox(
            False, label="Move the run's other files to a trash folder", elem_id="lora_forge_grid_trash"
        )
        keep = gr.Button("Keep", elem_id="lora_forge_grid_keep")
    with gr.Row():
        send = gr.Button("Send to txt2img (X/Y/Z plot)", elem_id="lora_forge_grid_send")
    send_info = gr.Markdown("", elem_id="lora_forge_grid_send_info")
    xyz_text = gr.Textbox(visible=False, elem_id="lora_forge_grid_xyz")
    plan_state = gr.State(None)
    dataset_dir = ctx.shared.get("dataset_dir") or gr.Textbox(visible=False)
    shared_scores = ctx.shared.get("grid_scores")  # 优化 reads the last scores from there
    extra = [shared_scores] if shared_scores is not None else []
    current: dict[str, Any] = {}  # this page's latest grid job, for Stop

    refresh.click(lambda: gr.update(choices=run_choices(ctx)), None, [run])

    def do_render(
        run_v, typed_v, str_v, prompt_v, neg_v, seed_v, steps_v, cfg_v, w_v, h_v, sampler_v, score_v, tagger_v, data_v
    ):
        from lora_forge.app import grids
        from lora_forge.tagger import registry

        keep_upd = gr.update()
        more = [gr.update()] * len(extra)
        plan_args = {
            "strengths": str_v,
            "prompt": prompt_v,
            "negative_prompt": neg_v,
            "seed": int(seed_v or 0),
            "steps": int(steps_v or 20),
            "cfg_scale": float(cfg_v or 7),
            "size": (int(w_v), int(h_v)) if w_v and h_v else None,
            "sampler": (sampler_v or "Euler a").strip(),
        }
        tagger = (tagger_v or registry.DEFAULT_MODEL).strip().strip('"') if score_v else ""
        try:
            job = current["job"] = grids.render(
                ctx.host(), ctx.settings(), sources(run_v, typed_v), plan_args, tagger, data_v or ""
            )
        except ForgeError as e:
            yield f"**Error:** {e}", None, "", None, None, gr.update(), None, *more
            return
        for e in job.follow():
            line = (
                e.message
                if e.data.get("said")
                else f"{e.message} ({e.data.get('cells', 0)}/{e.data.get('of', '?')} cells)"
            )
            yield line, gr.update(), gr.update(), gr.update(), gr.update(), keep_upd, gr.update(), *more
        if job.error:
            yield f"**Error:** {job.error}", None, "", None, None, gr.update(), job.info.get("plan"), *more
            return
        out = job.result
        plan = out.result.plan
        notes = "".join(f"\n\n- {html.escape(n)}" for n in [*plan.notes, *out.result.failure_notes])
        text = f"**{out.summary()}**.\n\nPrompt: `{plan.prompt}`{notes}"
        scores = out.scores
        rows = scores.table(plan) if scores else None
        names = [str(f.path) for f in plan.files]
        best = str(scores.recommendation.file.path) if scores and scores.recommendation else names[-1]
        if extra and scores is not None:
            more = [{**scores.to_json(plan), "run_dir": str(plan.folder)}]
        yield (
            text,
            out.image,
            scores_markdown(scores),
            rows,
            out.heatmap,
            gr.update(choices=names, value=best),
            plan,
            *more,
        )

    rendered = go.click(
        do_render,
        inputs=[
            run,
            typed,
            strengths,
            prompt,
            negative,
            seed,
            steps,
            cfg,
            width,
            height,
            sampler,
            score,
            tagger,
            dataset_dir,
        ],
        outputs=[status, picture, advice, table, heat, chosen, plan_state, *extra],
    )
    stop.click(lambda: current["job"].stop() if "job" in current else None, None, None)
    full.click(None, None, None, _js="() => window.loraForgeGrid && window.loraForgeGrid.openFull()")

    def do_keep(plan: Any, keep_v: str, trash_v: bool) -> str:
        from lora_forge.grid.files import keep_only

        try:
            if plan is None or not keep_v:
                raise ForgeError("render a grid first, then pick the file to keep")
            if not trash_v:
                return f"Keeping `{Path(keep_v).name}`; tick the box to move the other files to a trash folder."
            folder, moved = keep_only(plan.files, Path(keep_v), ctx.settings().models_dir / "trash")
            return (
                f"Kept `{Path(keep_v).name}`; moved {len(moved)} other files to `{folder}` (move them back to restore)."
            )
        except ForgeError as e:
            return f"**Error:** {e}"

    keep.click(do_keep, inputs=[plan_state, chosen, trash], outputs=[send_info])

    def do_send(plan: Any) -> tuple[str, str]:
        try:
            return send_settings(ctx, plan)
        except ForgeError as e:
            return "", f"**Error:** {e}"

    send.click(do_send, inputs=[plan_state], outputs=[xyz_text, send_info]).then(
        None,
        inputs=[xyz_text, send_info],
        outputs=[send_info],
        _js="(text, info) => window.loraForgeGrid ? window.loraForgeGrid.sendToTxt2img(text, info) : info",
    )
    return GridHandles(run, rendered)
