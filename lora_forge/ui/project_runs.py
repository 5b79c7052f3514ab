"""The project bar and training runs: the run 训练's Start launched is recorded in the project and
its Train step followed until it ends; the bar's Resume offer continues a run a restart cut short
and shows it in 训练; 测试's run list is refreshed once a followed run has ended.

Wired by handles, like ui/project_wiring.py: the bar chains onto 训练's own events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lora_forge import project as projects
from lora_forge.app import projects as desk
from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext
from lora_forge.ui.projects import BarHandles, from_state

if TYPE_CHECKING:
    from lora_forge.ui.tab import Sections

FOLLOW_S = 3.0  # how often the steps are refreshed while a run trains


def unchanged(bar: BarHandles) -> dict[Any, Any]:
    """An answer that changes nothing on the page (gradio needs at least one entry)."""
    import gradio as gr

    return {bar.hint: gr.update()}


def follow(bar: BarHandles, project: projects.Project, running: Callable[[], bool]) -> Iterator[dict[Any, Any]]:
    """The steps, every FOLLOW_S while `running()`, and once more at the end (so Train turns to done
    or needs attention without a reload)."""
    try:
        while True:
            yield bar.status(project, desk.bar(project))
            if not running():
                break
            time.sleep(FOLLOW_S)
        yield bar.status(project, desk.bar(project))
    except ForgeError as e:
        yield {bar.hint: f"**Error:** {e}"}


def wire_runs(ctx: UiContext, bar: BarHandles, sections: Sections) -> None:
    import gradio as gr

    train, grid = sections.train, sections.grid

    def record_run(value: Any, run_id: str):
        """After 训练's Start or Resume: record the run it launched (the id app.train returned) in the
        project, then follow the steps until that run ends."""
        if not value or not run_id:
            yield unchanged(bar)
            return
        try:
            project = from_state(value)
            run = desk.record_started(project, run_id)
        except ForgeError as e:  # e.g. the project folder is gone: the run trains on, unrecorded
            yield {bar.hint: f"**Error:** {e}"}
            return
        yield from follow(bar, project, lambda: not run.done)

    def on_resume(value: Any) -> dict[Any, Any]:
        try:
            project = from_state(value)
            stopped, run = desk.resume_interrupted(project, ctx.host())
        except ForgeError as e:
            return {bar.message: f"**Error:** {e}"}
        out = bar.status(project, desk.bar(project))
        out[bar.message] = f"Resuming run {stopped.name} as {run.name}; its progress is in Train."
        out[sections.tabs] = gr.update(selected="train")
        if train is not None:
            out[train.run_id] = run.id
        return out

    def follow_resumed(value: Any):
        if not value:
            yield unchanged(bar)
            return
        yield from follow(bar, from_state(value), desk.is_training)

    def grid_runs(value: Any) -> Any:
        """测试's run list once a run has ended: the project's runs first, its newest picked."""
        from lora_forge.ui.grid import runs_update

        runs = []
        if value:
            try:  # from disk: the run was recorded there after `value` was read
                runs = projects.open_project(value["folder"]).runs
            except ForgeError:
                runs = []
        return runs_update(ctx, runs, scan=desk.has_runs())  # no run, no host to ask

    resume_outputs = [*bar.status_outputs, bar.message, sections.tabs]
    if train is not None:
        resume_outputs.append(train.run_id)
        for launch in train.launches:
            launch.then(record_run, [bar.state, train.run_id], bar.status_outputs)
    resumed = bar.resume.click(on_resume, [bar.state], resume_outputs)
    if train is not None:
        train.follow_after(resumed)  # 训练 shows the continuation's progress, as after its own Start
    followed = resumed.then(follow_resumed, [bar.state], bar.status_outputs)
    if grid is not None:
        for ended in [*(train.run_ended if train is not None else []), followed]:
            ended.then(grid_runs, [bar.state], [grid.run])
