"""The project bar wired to the sections by the handles their builders return: opening a project
fills the sections (dataset folder, 训练's form, 测试's runs, the trigger word boxes); a section's work
that changes the files refreshes the steps; opening a section's tab is where the user left off.

Each handler reads its inputs, calls one lora_forge.app.projects use case and renders the result
as {component: value} (a component left out keeps what it shows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_forge import project as projects
from lora_forge.app import projects as desk
from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext
from lora_forge.ui.project_runs import unchanged, wire_runs
from lora_forge.ui.projects import BarHandles, from_state

if TYPE_CHECKING:
    from lora_forge.ui.tab import Sections

# which tab shows which step, and the step a tab stands for when the user opens it
TAB_STEP = {
    "prepare": "images",
    "tagger": "tag",
    "editor": "edit",
    "train": "train",
    "grid": "test",
    "optimise": "test",
}


def error(bar: BarHandles, e: ForgeError) -> dict[Any, Any]:
    return {bar.hint: f"**Error:** {e}"}


def train_status(view: desk.View) -> str:
    """训练's status line for the project: its run in this process, else its last run on disk (after
    a restart the process knows no runs, but the folder says how the last one ended)."""
    from lora_forge.ui.train import render

    if view.live is not None:
        return render(view.live)[0]
    last = view.last
    if last is None:
        return "No training run yet."
    if last.final:
        return f"**{last.name}** — finished (the last run of this project, in `{last.folder}`)."
    return f"**{last.name}** — did not finish (the last run of this project, in `{last.folder}`)."


def wire(ctx: UiContext, blocks: Any, bar: BarHandles, sections: Sections) -> None:
    """Every connection between the bar and the sections (a section that is not there is skipped);
    `blocks` is the tab's gr.Blocks, whose page load reopens the last project."""
    wire_opening(ctx, blocks, bar, sections)
    wire_steps(bar, sections)
    wire_trigger(bar, sections)
    wire_runs(ctx, bar, sections)


def _trigger_boxes(sections: Sections) -> list[Any]:
    return [h.trigger for h in (sections.tagger, sections.editor) if h is not None]


def wire_opening(ctx: UiContext, blocks: Any, bar: BarHandles, sections: Sections) -> None:
    """Open, create, reopen on page load, rename, refresh the list."""
    import gradio as gr

    dataset_dir = ctx.shared["dataset_dir"]
    prepare, train, grid = sections.prepare, sections.train, sections.grid
    trigger_boxes = _trigger_boxes(sections)

    def names() -> list[str]:
        return desk.names(ctx.projects_root())

    def show(view: desk.View, msg: str) -> dict[Any, Any]:
        """The project in the bar and the sections: its folder, its step's tab, 训练's form, 测试's runs."""
        project = view.project
        folder = str(project.dataset_dir)
        out = bar.status(project, view.bar)
        out[bar.choice] = gr.update(choices=names(), value=project.name)
        out[bar.message] = msg
        out[dataset_dir] = folder
        out[sections.tabs] = gr.update(selected=projects.STEP_TABS.get(project.step, "prepare"))
        if prepare is not None:
            out[prepare.out] = folder
        if train is not None:
            from lora_forge.ui.optimise import more_settings

            values = view.form.values
            # against the preset the page opens with (the bar never sets the radio: its change event
            # would refill the fields with that preset's values)
            start_preset = str(getattr(train.preset, "value", "") or "")
            out.update(train.fill(values, more_settings(values, start_preset) if view.form.from_config else ""))
            out[train.status] = train_status(view)
        if grid is not None:
            from lora_forge.ui.grid import runs_update

            out[grid.run] = runs_update(ctx, project.runs, scan=False)
        trigger = str(project.settings.get("trigger_word") or "")
        out.update({box: trigger for box in trigger_boxes})
        return out

    outputs = [*bar.status_outputs, bar.choice, bar.message, dataset_dir, sections.tabs]
    outputs += [prepare.out] if prepare is not None else []
    outputs += [*train.form, train.status] if train is not None else []
    outputs += [grid.run] if grid is not None else []
    outputs += trigger_boxes

    def on_load() -> dict[Any, Any]:
        view = desk.reopen(ctx.projects_root())
        if view is None:
            return {bar.choice: gr.update(choices=names())}
        return show(view, f"Reopened project “{view.project.name}” where you left off.")

    def on_open(name: str) -> dict[Any, Any]:
        try:
            view = desk.open_named(ctx.projects_root(), name)
        except ForgeError as e:
            return {bar.message: f"**Error:** {e}"}
        project = view.project
        return show(view, f"⚠ {project.read_only}" if project.read_only else f"Opened project “{project.name}”.")

    def on_create(name: str) -> dict[Any, Any]:
        try:
            view = desk.create(ctx.projects_root(), name)
        except ForgeError as e:
            return {bar.message: f"**Error:** {e}"}
        return show(view, f"Created project “{view.project.name}” in `{view.project.folder}`.")

    def on_rename(value: Any, new: str) -> dict[Any, Any]:
        try:
            project = desk.rename(from_state(value), new)
        except ForgeError as e:
            return {bar.message: f"**Error:** {e}"}
        out = bar.status(project, desk.bar(project))
        out[bar.choice] = gr.update(choices=names(), value=project.name)
        out[bar.message] = f"Renamed to “{project.name}”."
        return out

    blocks.load(on_load, None, outputs)
    bar.open.click(on_open, [bar.choice], outputs)
    bar.choice.select(on_open, [bar.choice], outputs)
    bar.create.click(on_create, [bar.new_name], outputs)
    bar.refresh.click(lambda: gr.update(choices=names()), None, [bar.choice])
    bar.rename.click(on_rename, [bar.state, bar.rename_to], [*bar.status_outputs, bar.choice, bar.message])


def wire_steps(bar: BarHandles, sections: Sections) -> None:
    """The steps follow the sections: the tab opened is where the user left off; the work that
    changes the files (crop, captions, a save or its rollback, a grid) is shown in the chips when it
    is done."""

    def make_select(step: str):
        def on_select(value: Any) -> dict[Any, Any]:
            if not value:
                return unchanged(bar)
            try:
                project = from_state(value)
                return bar.status(project, desk.at_step(project, step))
            except ForgeError as e:
                return error(bar, e)

        return on_select

    for key, tab_item in sections.items.items():
        if key in TAB_STEP:
            tab_item.select(make_select(TAB_STEP[key]), [bar.state], bar.status_outputs)

    def on_work_done(value: Any) -> dict[Any, Any]:
        """The steps as the finished work left them on disk (crop, captions, an edit, a grid)."""
        if not value:
            return unchanged(bar)
        try:
            project = from_state(value)
            return bar.status(project, desk.bar(project))
        except ForgeError as e:
            return error(bar, e)

    for done in sections.work_events():
        done.then(on_work_done, [bar.state], bar.status_outputs)


def wire_trigger(bar: BarHandles, sections: Sections) -> None:
    """A trigger word written into the captions (打标's Tag, 编辑's "put trigger word first") becomes
    训练's, and the project keeps it for after a restart."""
    if sections.train is None:
        return
    train_trigger = sections.train.fields["trigger_word"]

    def carry_trigger(value: Any, word: str) -> Any:
        """Training keeps the trigger word first when shuffling and its samples and 测试's prompts
        start with it, so a trigger word typed in one place only is half a setting."""
        import gradio as gr

        word = (word or "").strip()
        if not word:
            return gr.update()
        if value:
            try:
                desk.remember_trigger(from_state(value), word)
            except ForgeError:
                pass  # the bar shows what is wrong with the project; 训练 still gets the word
        return word

    for done, word_box in sections.trigger_sources():
        done.then(carry_trigger, [bar.state, word_box], [train_trigger])
