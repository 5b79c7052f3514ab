"""The project bar above the sections: pick or create a 炼丹 project, see its steps (done / running /
needs attention / not started) and what to do next, and pick up where you left off after a restart —
including resuming a training run the restart cut short.

This module builds the bar and renders its state; the rules are lora_forge.app.steps and the use
cases lora_forge.app.projects. ui/project_wiring.py connects the bar to the sections by the handles
their builders return.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge import i18n
from lora_forge import project as projects
from lora_forge.app import steps
from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext

STATE_LABELS = {"done": "done", "running": "running", "attention": "needs attention", "todo": "not started"}
STATE_ICONS = {"done": "✔", "running": "▶", "attention": "!", "todo": "○"}


def steps_html(states: list[steps.StepState] | None) -> str:
    """The path as a row of chips; each says its state in words too (not by colour alone)."""
    if not states:
        return '<div class="lf-steps lf-steps-empty">Open or create a project to see its steps.</div>'
    chips = []
    for i, s in enumerate(states, 1):
        label = steps.STEP_LABELS[s.key]
        chips.append(
            f'<div class="lf-step lf-step-{s.state}" id="lora_forge_step_{s.key}" title="{html.escape(s.note)}">'
            f'<span class="lf-step-icon">{STATE_ICONS[s.state]}</span><span class="lf-step-num">{i}</span>'
            f'<b>{label}</b><span class="lf-step-state">{STATE_LABELS[s.state]}</span>'
            f'<span class="lf-step-note">{html.escape(s.note)}</span></div>'
        )
    return f'<div class="lf-steps">{"".join(chips)}</div>'


def resume_text(run: projects.RunInfo) -> str:
    return f"Run **{run.name}** stopped before it finished (a restart or a crash). Its saved state can continue it."


@dataclass(frozen=True)
class BarHandles:
    choice: Any
    refresh: Any
    open: Any
    new_name: Any
    create: Any
    steps: Any
    hint: Any
    message: Any
    resume_row: Any
    resume_md: Any
    resume: Any
    rename_to: Any
    rename: Any
    state: Any  # gr.State: {"folder", "data", "read_only"}, this browser tab's copy of the project

    @property
    def status_outputs(self) -> list[Any]:
        """What status() updates: the project state, the chips, the hint and the resume offer."""
        return [self.state, self.steps, self.hint, self.resume_row, self.resume_md]

    def status(self, project: projects.Project, bar: steps.BarState) -> dict[Any, Any]:
        import gradio as gr

        offer = bar.resume
        return {
            self.state: to_state(project),
            self.steps: steps_html(bar.steps),
            self.hint: bar.hint,
            self.resume_row: gr.update(visible=offer is not None),
            self.resume_md: resume_text(offer) if offer is not None else "",
        }


def build_bar(ctx: UiContext) -> BarHandles:
    import gradio as gr

    with gr.Group(elem_id="lora_forge_project_bar"):
        with gr.Row(elem_classes="lf-toolbar"):
            choice = gr.Dropdown([], label="Project", elem_id="lora_forge_project", scale=3)
            refresh = gr.Button("🔄", elem_id="lora_forge_project_refresh", scale=0, min_width=40)
            open_btn = gr.Button("Open", elem_id="lora_forge_project_open", scale=1)
            new_name = gr.Textbox(
                label="New project name",
                placeholder="any name, e.g. 我的角色",
                elem_id="lora_forge_project_new",
                scale=3,
            )
            create_btn = gr.Button("Create project", variant="primary", elem_id="lora_forge_project_create", scale=1)
        steps_box = gr.HTML(i18n.translator(ctx.language()).html(steps_html(None)), elem_id="lora_forge_steps")
        hint = gr.Markdown("", elem_id="lora_forge_next")
        message = gr.Markdown("", elem_id="lora_forge_project_msg")
        with gr.Row(visible=False, elem_id="lora_forge_resume_row") as resume_row:
            resume_md = gr.Markdown("", elem_id="lora_forge_resume_text")
            resume_btn = gr.Button("Resume interrupted run", elem_id="lora_forge_resume", scale=0)
        with (
            gr.Accordion("Project settings", open=False, elem_id="lora_forge_project_settings"),
            gr.Row(elem_classes="lf-toolbar"),
        ):
            rename_to = gr.Textbox(label="Rename the project to", elem_id="lora_forge_project_rename_to")
            rename_btn = gr.Button("Rename", elem_id="lora_forge_project_rename")
    state = gr.State(None)
    ctx.shared["project"] = state
    return BarHandles(
        choice=choice,
        refresh=refresh,
        open=open_btn,
        new_name=new_name,
        create=create_btn,
        steps=steps_box,
        hint=hint,
        message=message,
        resume_row=resume_row,
        resume_md=resume_md,
        resume=resume_btn,
        rename_to=rename_to,
        rename=rename_btn,
        state=state,
    )


def to_state(project: projects.Project) -> dict[str, Any]:
    return {"folder": str(project.folder), "data": project.data, "read_only": project.read_only}


def from_state(value: Any) -> projects.Project:
    if not value:
        raise ForgeError("open or create a project first (the bar at the top)")
    return projects.Project(Path(value["folder"]), dict(value["data"]), value.get("read_only", ""))
