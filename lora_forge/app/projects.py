"""What the project bar does with a project, as plain use cases the page calls: open, create, rename,
reopen after a restart, record the runs trained on its dataset, what 训练 shows for it, and resume
the run a restart cut short. The bar's handlers read their inputs, call one of these and render.

The runs of this process come from the run service (one per process, shared by the page and the
HTTP API); the rest is on disk (lora_forge.project), so everything here is right after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge import project as pj
from lora_forge.app import steps, train
from lora_forge.errors import ForgeError
from lora_forge.fsio import is_within
from lora_forge.host.base import Host
from lora_forge.rundir import RunDir


def _runs() -> list[train.RunStatus]:
    """This process's runs (page and HTTP API alike), oldest first."""
    return train.runs()


def training_folders() -> set[str]:
    """Folders training in this process now, and the folders those runs resume (a continuation may
    not have a folder of its own yet)."""
    return {p for r in _runs() if not r.done for p in (r.run_dir, r.resumed_from) if p}


def is_training() -> bool:
    return any(not r.done for r in _runs())


def has_runs() -> bool:
    """Whether this process trained at all (then the host exists and can be asked for its Lora folder)."""
    return bool(_runs())


def record_runs(project: pj.Project) -> None:
    """Record the runs this process trained on the project's dataset that the page did not start
    (the HTTP API): a restart loses the process's runs, the manifest keeps them."""
    if project.read_only:
        return
    for r in _runs():
        mine = r.run_dir and r.data_dir and is_within(r.data_dir.strip().strip('"'), project.dataset_dir)
        if mine and Path(r.run_dir).is_dir():
            project.add_run(r.run_dir, elsewhere=True)


def bar(project: pj.Project) -> steps.BarState:
    """The bar as the project stands now, with this process's runs recorded first."""
    record_runs(project)
    return steps.bar_state(project, training_folders())


# -- opening ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """Everything the page shows for an opened project: the bar, 训练's form, and its last run (the
    live status while this process knows it, else what its folder says)."""

    project: pj.Project
    bar: steps.BarState
    form: Form
    live: train.RunStatus | None
    last: pj.RunInfo | None


def view(project: pj.Project) -> View:
    state = bar(project)  # records this process's runs on the dataset first: the rest reads them
    live, last = last_run(project)
    return View(project, state, form(project), live, last)


def names(root: Path) -> list[str]:
    return [p.name for p in pj.list_projects(root)]


def open_named(root: Path, name: str) -> View:
    """The project the user picked in the list, remembered as the one to reopen after a restart."""
    project = pj.open_project(pj.find(root, name or "").folder)
    pj.remember(root, project.folder)
    return view(project)


def create(root: Path, name: str) -> View:
    return view(pj.create(root, name))


def reopen(root: Path) -> View | None:
    """The project the user had open before a restart, if it is still there."""
    project = pj.last_opened(root)
    return None if project is None else view(project)


def at_step(project: pj.Project, step: str) -> steps.BarState:
    """The user opened the section of `step`: that is where they left off."""
    project.set_step(step)
    return bar(project)


def rename(project: pj.Project, new: str) -> pj.Project:
    display = pj.clean_name(new)
    if any(p.name == display and p.folder != project.folder for p in pj.list_projects(project.folder.parent)):
        raise ForgeError(f"a project named “{display}” already exists")
    project.save({"name": display})
    return project


# -- what 训练 shows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """训练's fields for a project: `values` by config key; `from_config` when they are a whole run
    config (the last page run's or 优化's next one), else only the name and trigger word a project
    that has not trained here starts with."""

    values: dict[str, Any]
    from_config: bool


def form(project: pj.Project) -> Form:
    """The project's next config (from 优化) when newer than its last run started on the page, else
    that run's config; a project with neither trains under its own name and with the trigger word its
    captions were written with (set, not left as they were, so a project opened after another never
    trains under the other's name or trigger word). Runs trained elsewhere on the dataset (the HTTP
    API) are not the page's: their settings never replace the project's."""
    from lora_forge.train.config import read_config_file

    elsewhere = set(project.runs_elsewhere)
    candidates = [RunDir(p).config for p in project.runs if Path(p) not in elsewhere]
    next_config = project.settings.get("next_config")
    if next_config:
        candidates.append(Path(next_config))
    existing = [c for c in candidates if c.is_file()]
    if existing:
        newest = max(existing, key=lambda c: c.stat().st_mtime)
        try:
            values = read_config_file(newest)
        except ForgeError:
            values = {}
        if values:
            if values.get("network_train_unet_only"):
                values["text_encoder_lr"] = 0
            return Form(values, True)
    trigger = str(project.settings.get("trigger_word") or "")
    return Form({"output_name": pj.lora_name(project.name), "trigger_word": trigger}, False)


def remember_trigger(project: pj.Project, word: str) -> str:
    """The trigger word the captions were just written with, kept by the project for after a
    restart (a merged save: another tab's next change still works); returns it cleaned."""
    word = (word or "").strip()
    if word:
        project.remember("trigger_word", word)
    return word


# -- runs the page starts ---------------------------------------------------------------------------


def record_started(project: pj.Project, run_id: str) -> train.RunStatus:
    """Record the run a Start click launched (the id the run service returned) in the project at
    once, before its folder exists (the WebUI may hold it in its queue; a restart may kill it any
    moment after); returns its status. A run that never made its folder is left out by every view."""
    run = train.get(run_id)
    if run.run_dir:
        project.add_run(run.run_dir)
    return run


def resume_interrupted(project: pj.Project, host: Host) -> tuple[pj.RunInfo, train.RunStatus]:
    """Continue the newest run a restart or crash cut short, in a new folder the project records."""
    stopped = steps.bar_state(project, training_folders()).resume
    if stopped is None:
        raise ForgeError("no interrupted run with a saved state in this project")
    run = train.resume(host, str(stopped.folder), str(project.dataset_dir))
    project.add_run(run.run_dir)
    return stopped, run


def last_run(project: pj.Project) -> tuple[train.RunStatus | None, pj.RunInfo | None]:
    """The project's run in this process (its live status), else None and its last run on disk."""
    mine = {str(p) for p in project.runs}
    live = [r for r in _runs() if r.run_dir in mine]
    if live:
        return live[-1], None
    infos = [i for i in (pj.run_info(p) for p in project.runs) if i is not None]
    return None, infos[-1] if infos else None
