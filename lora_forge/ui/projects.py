"""The project bar above the sections: pick or create a 炼丹 project, see its steps (done / needs
attention / not started) and what to do next, and pick up where you left off after a restart —
including resuming a training run the restart cut short.

Wiring only: the logic is lora_forge.project. The bar reaches the sections' boxes (dataset folder,
prepare's output folder, the training fields) by their elem_ids, so no section had to change.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from lora_forge import i18n
from lora_forge import project as projects
from lora_forge.app import steps
from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext

STATE_LABELS = {"done": "done", "running": "running", "attention": "needs attention", "todo": "not started"}
STATE_ICONS = {"done": "✔", "running": "▶", "attention": "!", "todo": "○"}
# which tab shows which step, and the step a tab stands for when the user opens it
TAB_STEP = {
    "prepare": "images",
    "tagger": "tag",
    "editor": "edit",
    "train": "train",
    "grid": "test",
    "optimise": "test",
}
# the sections' buttons whose work changes a step's state: the bar is recomputed when they finish
WORK_BUTTONS = (
    "lora_forge_prepare_run",
    "lora_forge_tagger_run",
    "lora_forge_editor_save",
    "lora_forge_editor_rollback",
    "lora_forge_grid_go",
)
# (button, its trigger word box): captions written with a trigger word give 训练 that word
TRIGGER_SOURCES = (
    ("lora_forge_tagger_run", "lora_forge_tagger_trigger"),
    ("lora_forge_editor_add_trigger", "lora_forge_editor_trigger"),
)
# 训练's buttons that follow a run until it ends: 测试's run list is refreshed after them
TRAIN_BUTTONS = ("lora_forge_train_start", "lora_forge_train_resume", "lora_forge_train_watch")
RECORD_WAIT_S = 30.0  # how long after Start the bar looks for the new run to record it
FOLLOW_S = 3.0  # how often the steps are refreshed while that run trains


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


def _active_runs() -> set[str]:
    from lora_forge.cli import module_exists

    if not module_exists("lora_forge.app.train"):
        return set()
    from lora_forge.app.train import RUNS

    # a run being resumed counts as training too: its continuation may not have a folder yet
    return {p for r in RUNS.list() if not r.done for p in (r.run_dir, r.resumed_from) if p}


def sync_runs(project: projects.Project) -> None:
    """Record the runs this process trained on the project's dataset (a restart loses RUNS, the
    manifest keeps them)."""
    from lora_forge.cli import module_exists
    from lora_forge.fsio import is_within

    if project.read_only or not module_exists("lora_forge.app.train"):
        return
    from lora_forge.app.train import RUNS

    for r in RUNS.list():
        mine = r.run_dir and r.data_dir and is_within(r.data_dir.strip().strip('"'), project.dataset_dir)
        if mine and Path(r.run_dir).is_dir():
            project.add_run(r.run_dir)


def new_run_values(project: projects.Project) -> dict[str, Any]:
    """The fields a project that has not trained yet starts with: its LoRA named after the project,
    and the trigger word its captions were written with (else none). Set, not left as they were,
    so a project opened after another never trains under the other's name or trigger word."""
    return {
        "output_name": projects.lora_name(project.name),
        "trigger_word": str(project.settings.get("trigger_word") or ""),
    }


def train_values(project: projects.Project) -> dict[str, Any]:
    """The training fields to show: the project's next config (from 优化) when newer than its
    last run, else the last run's config; {} for a new project."""
    from lora_forge.train.config import read_config_file

    candidates = [Path(p) / "config.toml" for p in project.runs]
    next_config = project.settings.get("next_config")
    if next_config:
        candidates.append(Path(next_config))
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        return {}
    newest = max(existing, key=lambda c: c.stat().st_mtime)
    try:
        values = read_config_file(newest)
    except ForgeError:
        return {}
    if values.get("network_train_unet_only"):
        values["text_encoder_lr"] = 0
    return values


def train_status(project: projects.Project) -> str:
    """训练's status line for the project: its run in this process, else its last run on disk (after
    a restart the process knows no runs, but the folder says how the last one ended)."""
    from lora_forge.cli import module_exists
    from lora_forge.ui.train import render

    mine = {str(p) for p in project.runs}
    if module_exists("lora_forge.app.train"):
        from lora_forge.app.train import RUNS

        live = [r for r in RUNS.list() if r.run_dir in mine]
        if live:
            return render(live[-1])[0]
    infos = [i for i in (projects.run_info(p) for p in project.runs) if i is not None]
    if not infos:
        return "No training run yet."
    last = infos[-1]
    if last.final:
        return f"**{last.name}** — finished (the last run of this project, in `{last.folder}`)."
    return f"**{last.name}** — did not finish (the last run of this project, in `{last.folder}`)."


def after(blocks: Any, component: Any, fn: Any, inputs: list[Any], outputs: list[Any]) -> bool:
    """Run `fn` when `component`'s click handler (the section's own, registered first) has finished,
    as a `.then` on it: the bar cannot hold the section's event object, so it finds the listener
    among the Blocks' dependencies. False when the component has no click listener."""
    from gradio.events import EventListenerMethod

    index = next(
        (
            i
            for i, dep in enumerate(blocks.dependencies)
            if dep.get("trigger") == "click" and component._id in dep.get("targets", [])
        ),
        None,
    )
    if index is None:
        return False
    EventListenerMethod(component, "then", trigger_after=index, trigger_only_on_success=False)(fn, inputs, outputs)
    return True


def build_bar(ctx: UiContext) -> dict[str, Any]:
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
        steps = gr.HTML(i18n.translator(ctx.language()).html(steps_html(None)), elem_id="lora_forge_steps")
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
    state = gr.State(None)  # {"folder": str, "data": manifest as loaded}: this browser tab's copy
    ctx.shared["project"] = state
    return {
        "choice": choice,
        "refresh": refresh,
        "open": open_btn,
        "new_name": new_name,
        "create": create_btn,
        "steps": steps,
        "hint": hint,
        "message": message,
        "resume_row": resume_row,
        "resume_md": resume_md,
        "resume": resume_btn,
        "rename_to": rename_to,
        "rename": rename_btn,
        "state": state,
    }


def to_state(project: projects.Project) -> dict[str, Any]:
    return {"folder": str(project.folder), "data": project.data, "read_only": project.read_only}


def from_state(value: Any) -> projects.Project:
    if not value:
        raise ForgeError("open or create a project first (the bar at the top)")
    return projects.Project(Path(value["folder"]), dict(value["data"]), value.get("read_only", ""))


def wire(ctx: UiContext, blocks: Any, bar: dict[str, Any], sections: Any, tabs: dict[str, Any]) -> None:
    import gradio as gr

    from lora_forge.ui.tab import find_component

    state = bar["state"]
    dataset_dir = ctx.shared["dataset_dir"]
    prepare_out = find_component(blocks, "lora_forge_prepare_out")
    train_fields: dict[str, Any] = {}
    for comp in blocks.blocks.values():
        elem_id = getattr(comp, "elem_id", None) or ""
        if elem_id.startswith("lora_forge_train_") and comp.__class__.__name__ in ("Textbox", "Number"):
            train_fields[elem_id.removeprefix("lora_forge_train_")] = comp
    extra_box = train_fields.pop("extra", None)  # keys without a field of their own, as `key = value` lines
    preset_radio = find_component(blocks, "lora_forge_train_preset")
    grid_run = find_component(blocks, "lora_forge_grid_run")
    train_md = find_component(blocks, "lora_forge_train_status")

    def status(project: projects.Project) -> list[Any]:
        """[state, steps, hint, resume_row, resume_md] for `project` as it is on disk now."""
        sync_runs(project)
        bar_state = steps.bar_state(project, _active_runs())
        if bar_state.resume is not None:
            text = (
                f"Run **{bar_state.resume.name}** stopped before it finished (a restart or a crash). "
                "Its saved state can continue it."
            )
            resume = [gr.update(visible=True), text]
        else:
            resume = [gr.update(visible=False), ""]
        return [to_state(project), steps_html(bar_state.steps), bar_state.hint, *resume]

    status_outputs = [state, bar["steps"], bar["hint"], bar["resume_row"], bar["resume_md"]]

    def names() -> list[str]:
        return [p.name for p in projects.list_projects(ctx.projects_root())]

    def show(project: projects.Project, msg: str) -> list[Any]:
        folder = str(project.dataset_dir)
        out = [
            *status(project),
            gr.update(choices=names(), value=project.name),
            msg,
            folder,
            gr.update(selected=projects.STEP_TABS.get(project.step, "prepare")),
        ]
        if prepare_out is not None:
            out.append(folder)
        values = train_values(project)
        shown = values or new_run_values(project)
        out += [gr.update(value=shown[k]) if k in shown else gr.update() for k in train_fields]
        if extra_box is not None:
            from lora_forge.ui.optimise import more_settings

            # against the preset the page opens with (the bar never sets the radio: its change
            # event would refill the fields with that preset's values)
            start_preset = str(getattr(preset_radio, "value", "") or "")
            out.append(more_settings(values, start_preset) if values else "")
        if grid_run is not None:
            from lora_forge.ui.grid import runs_update

            out.append(runs_update(ctx, project.runs, scan=False))
        if train_md is not None:
            out.append(train_status(project))
        trigger = str(project.settings.get("trigger_word") or "")
        out += [trigger for _ in trigger_boxes]
        return out

    show_outputs = [*status_outputs, bar["choice"], bar["message"], dataset_dir, sections]
    if prepare_out is not None:
        show_outputs.append(prepare_out)
    show_outputs += list(train_fields.values())
    if extra_box is not None:
        show_outputs.append(extra_box)
    show_outputs += [c for c in (grid_run, train_md) if c is not None]
    trigger_boxes = [box for _, box_id in TRIGGER_SOURCES if (box := find_component(blocks, box_id)) is not None]
    show_outputs += trigger_boxes

    def unchanged(msg: str) -> list[Any]:
        return [gr.update()] * 6 + [msg] + [gr.update()] * (len(show_outputs) - 7)

    def on_load():
        root = ctx.projects_root()
        project = projects.last_opened(root)
        if project is None:
            out = unchanged("")
            out[5] = gr.update(choices=names())
            return out
        return show(project, f"Reopened project “{project.name}” where you left off.")

    def on_open(name: str):
        try:
            root = ctx.projects_root()
            project = projects.find(root, name or "")
            project = projects.open_project(project.folder)
            projects.remember(root, project.folder)
        except ForgeError as e:
            return unchanged(f"**Error:** {e}")
        msg = f"⚠ {project.read_only}" if project.read_only else f"Opened project “{project.name}”."
        return show(project, msg)

    def on_create(name: str):
        try:
            project = projects.create(ctx.projects_root(), name)
        except ForgeError as e:
            return unchanged(f"**Error:** {e}")
        return show(project, f"Created project “{project.name}” in `{project.folder}`.")

    def on_refresh(value: Any):
        return gr.update(choices=names())

    def on_rename(value: Any, new: str):
        try:
            project = from_state(value)
            display = projects.clean_name(new)
            if any(
                p.name == display and p.folder != project.folder for p in projects.list_projects(project.folder.parent)
            ):
                raise ForgeError(f"a project named “{display}” already exists")
            project.save({"name": display})
        except ForgeError as e:
            return [gr.update()] * 5 + [gr.update(), f"**Error:** {e}"]
        return [*status(project), gr.update(choices=names(), value=project.name), f"Renamed to “{project.name}”."]

    blocks.load(on_load, None, show_outputs)
    bar["open"].click(on_open, [bar["choice"]], show_outputs)
    bar["choice"].select(on_open, [bar["choice"]], show_outputs)
    bar["create"].click(on_create, [bar["new_name"]], show_outputs)
    bar["refresh"].click(on_refresh, [state], [bar["choice"]])
    bar["rename"].click(on_rename, [state, bar["rename_to"]], [*status_outputs, bar["choice"], bar["message"]])

    def make_select(step: str):
        def on_select(value: Any):
            if not value:
                return [gr.update()] * len(status_outputs)
            try:
                project = from_state(value)
                project.set_step(step)
                return status(project)
            except ForgeError as e:
                return [gr.update(), gr.update(), f"**Error:** {e}", gr.update(), gr.update()]

        return on_select

    for key, tab_item in tabs.items():
        if key in TAB_STEP:
            tab_item.select(make_select(TAB_STEP[key]), [state], status_outputs)

    def on_work_done(value: Any):
        """The steps as the finished work left them on disk (crop, captions, an edit, a grid)."""
        if not value:
            return [gr.update()] * len(status_outputs)
        try:
            return status(from_state(value))
        except ForgeError as e:
            return [gr.update(), gr.update(), f"**Error:** {e}", gr.update(), gr.update()]

    for elem_id in WORK_BUTTONS:
        button = find_component(blocks, elem_id)
        if button is not None:
            after(blocks, button, on_work_done, [state], status_outputs)

    def carry_trigger(value: Any, word: str) -> Any:
        """The trigger word the captions were just written with becomes 训练's (and the project
        keeps it for after a restart): training keeps it first when shuffling and its samples and
        测试's prompts start with it, so a trigger word typed in one place only is half a setting."""
        word = (word or "").strip()
        if not word:
            return gr.update()
        if value:
            try:
                from_state(value).remember("trigger_word", word)
            except ForgeError:
                pass  # the bar shows what is wrong with the project; 训练 still gets the word
        return word

    train_trigger = train_fields.get("trigger_word")
    for button_id, word_id in TRIGGER_SOURCES:
        button, word_box = find_component(blocks, button_id), find_component(blocks, word_id)
        if button is not None and word_box is not None and train_trigger is not None:
            after(blocks, button, carry_trigger, [state, word_box], [train_trigger])

    def grid_runs(value: Any):
        """测试's run list once a run has ended: the project's runs first, its newest picked."""
        from lora_forge.app.train import RUNS

        runs: list[Path] = []
        if value:
            try:  # from disk: 训练's second listener recorded the new run there, maybe after `value`
                runs = projects.open_project(Path(value["folder"])).runs
            except ForgeError:
                runs = []
        return runs_update(ctx, runs, scan=RUNS.latest() is not None)  # no run, no host to ask

    if grid_run is not None:
        from lora_forge.ui.grid import runs_update

        for elem_id in TRAIN_BUTTONS:
            button = find_component(blocks, elem_id)
            if button is not None:
                after(blocks, button, grid_runs, [state], [grid_run])

    def on_resume(value: Any):
        from lora_forge.app.train import RUNS

        try:
            project = from_state(value)
            stopped = steps.bar_state(project, _active_runs()).resume
            if stopped is None:
                raise ForgeError("no interrupted run with a saved state in this project")
            run = RUNS.start(ctx.host(), str(project.dataset_dir), resume=str(stopped.folder))
            project.add_run(run.run_dir)
        except ForgeError as e:
            return [gr.update()] * 5 + [f"**Error:** {e}", gr.update()]
        msg = f"Resuming run {stopped.name} as {run.name}; its progress is in Train."
        return [*status(project), msg, gr.update(selected="train")]

    watch_js = (
        "() => { const root = typeof gradioApp === 'function' ? gradioApp() : document;"
        " const b = root.querySelector('#lora_forge_train_watch'); if (b) b.click(); }"
    )

    def follow(project: projects.Project, running: Any):
        """The steps, every FOLLOW_S while `running()`, and once more at the end (so 训练 turns to
        done without a reload)."""
        try:
            while True:
                yield status(project)
                if not running():
                    break
                time.sleep(FOLLOW_S)
            yield status(project)
        except ForgeError as e:
            yield [gr.update(), gr.update(), f"**Error:** {e}", gr.update(), gr.update()]

    def follow_resumed(value: Any):
        if not value:
            yield [gr.update()] * len(status_outputs)
            return
        from lora_forge.app.train import RUNS

        yield from follow(from_state(value), lambda: RUNS.active() is not None)

    resumed = bar["resume"].click(on_resume, [state], [*status_outputs, bar["message"], sections])
    resumed.then(None, None, None, _js=watch_js)
    followed = resumed.then(follow_resumed, [state], status_outputs)  # a .then after a js-only step never runs
    if grid_run is not None:
        followed.then(grid_runs, [state], [grid_run])

    start = find_component(blocks, "lora_forge_train_start")
    if start is not None:

        def record_run(value: Any):
            """A second listener on 训练's Start: record the run the click started in the project
            as soon as its folder exists (a restart may kill it any moment after) and follow it."""
            if not value:
                yield [gr.update()] * len(status_outputs)
                return
            from lora_forge.app.train import RUNS

            project = from_state(value)
            clicked = time.time()
            deadline = time.monotonic() + RECORD_WAIT_S
            while time.monotonic() < deadline:
                mine = [r for r in RUNS.list() if r.started >= clicked - 2]
                if any(r.done or (r.run_dir and Path(r.run_dir).is_dir()) for r in mine):
                    break
                time.sleep(0.2)
            yield from follow(project, lambda: any(r.started >= clicked - 2 and not r.done for r in RUNS.list()))

        start.click(record_run, [state], status_outputs)
