"""The project bar's state as plain data: each step's chip (done / running / needs attention / not
started), the one-sentence "what next" hint and the offer to resume a run a restart cut short.

Computed from what is on disk (so it is right after a restart, a manual copy or another tab's
work) plus the run folders training in this process right now. No gradio here: the bar renders a
BarState, and the tests check the rules without a browser.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.project import STEPS, Project, RunInfo, run_info

STATES = ("done", "running", "attention", "todo")
STEP_LABELS = {
    "images": "Images",
    "crop": "Crop",
    "tag": "Tag",
    "edit": "Edit",
    "train": "Train",
    "test": "Test",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NEXT_HINTS = {
    "images": "Next: bring your images in (Images & crop): drop 20–50 pictures of the subject or a zip.",
    "crop": "Next: prepare (crop) the images in Images & crop.",
    "tag": "Next: caption the images in Tagging (or copy your own .txt captions beside them).",
    "train": "Next: train in Train (Edit tags first if you want to clean up tags).",
    "test": "Next: compare the epochs at several strengths in Test grid.",
}
RUNNING_HINT = "Training now: follow its progress in Train."
DONE_HINT = "All steps done. Optimise below suggests what to change if the recommended LoRA is not right yet."


@dataclass(frozen=True)
class StepState:
    key: str
    state: str  # one of STATES
    note: str = ""


@dataclass(frozen=True)
class BarState:
    """Everything the project bar shows for one project at one moment."""

    steps: list[StepState]
    hint: str
    resume: RunInfo | None = None  # the newest run a restart or crash cut short, with a saved state
    read_only: str = ""  # why the project cannot be saved (a newer extension made it)

    def state(self, key: str) -> str:
        return next(s.state for s in self.steps if s.key == key)


def bar_state(project: Project, training: Iterable[str] = ()) -> BarState:
    """The bar for `project`; `training` holds the run folders training in this process now and the
    folders they resume (a continuation may not have a folder of its own yet)."""
    active = {str(p) for p in training}
    states = step_states(project, active)
    hint = next_hint(states)
    if project.read_only:
        hint = f"⚠ {project.read_only}\n\n{hint}"
    stopped = [r for r in interrupted_runs(project, active) if r.resumable]
    return BarState(states, hint, stopped[-1] if stopped else None, project.read_only)


def interrupted_runs(project: Project, active: set[str] = frozenset()) -> list[RunInfo]:
    """Runs with no final file that are not training now: stopped by a restart or a crash.

    `active` holds the folders training in this process and the folders they resume. A run that a
    later run continued is left out once that one got further (finished, or saved a state of its
    own), so a finished resume no longer offers to resume the run it came from."""
    infos = [info for info in (run_info(run) for run in project.runs) if info is not None]
    continued = {
        os.path.realpath(info.resumed_from) for info in infos if info.resumed_from and (info.final or info.resumable)
    }
    return [
        info
        for info in infos
        if not info.final and str(info.folder) not in active and os.path.realpath(info.folder) not in continued
    ]


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and ".lora_forge" not in p.parts)


def _missing_outputs(folder: Path) -> int:
    from lora_forge.dataset.manifest import Manifest

    try:
        return sum(1 for _, out in Manifest.load(folder).images() if not (folder / out.file).is_file())
    except (ForgeError, OSError, ValueError):
        return 0


def _images_and_crop(data: Path, images: list[Path]) -> tuple[StepState, StepState]:
    from lora_forge.dataset.manifest import MANIFEST_NAME

    has_manifest = (data / MANIFEST_NAME).is_file()
    if not images and not has_manifest:
        note = "drop images or a zip in Images & crop, or copy them into the dataset folder"
        return StepState("images", "todo", note), StepState("crop", "todo", "")
    got = StepState("images", "done", f"{len(images)} images")
    if not images:
        return got, StepState("crop", "todo", "")
    if not has_manifest:
        return got, StepState("crop", "done", "your own images (not cropped here)")
    missing = _missing_outputs(data)
    if missing:
        return got, StepState("crop", "attention", f"{missing} prepared images are missing; prepare again")
    return got, StepState("crop", "done", f"{len(images)} prepared images")


def _tag(images: list[Path]) -> StepState:
    captioned = [p for p in images if p.with_suffix(".txt").is_file()]
    if not images:
        return StepState("tag", "todo", "")
    if len(captioned) == len(images):
        return StepState("tag", "done", f"all {len(images)} images have captions")
    if captioned:
        missing_n = len(images) - len(captioned)
        return StepState("tag", "attention", f"{missing_n} of {len(images)} images have no caption")
    return StepState("tag", "todo", "no captions yet")


def _train(runs: list[RunInfo], active: set[str]) -> StepState:
    """Running while one of the project's runs trains in this process (a run being trained is not a
    problem to attend to), else done once a run finished, else attention for a run that did not."""
    if any(str(r.folder) in active for r in runs):
        return StepState("train", "running", "training now")
    finished = [r for r in runs if r.final]
    if finished:
        return StepState("train", "done", f"{len(finished)} finished run(s)")
    if runs:
        return StepState("train", "attention", f"run {runs[-1].name} did not finish")
    return StepState("train", "todo", "")


def step_states(project: Project, active: set[str] = frozenset()) -> list[StepState]:
    """Each step's state, from what is on disk (so it is right after a restart or a manual copy)."""
    from lora_forge.dataset.captions import STATE_DIR

    data = project.dataset_dir
    images = _images(data)
    states: dict[str, StepState] = {}
    states["images"], states["crop"] = _images_and_crop(data, images)
    states["tag"] = _tag(images)
    history = data / STATE_DIR / "history"
    edited = history.is_dir() and any(history.iterdir())
    states["edit"] = StepState("edit", "done" if edited else "todo", "optional")
    runs = [r for r in (run_info(p) for p in project.runs) if r is not None]
    states["train"] = _train(runs, active)
    grids = [g for r in runs for g in r.grids] + _images(project.grids_dir)
    states["test"] = StepState("test", "done", f"{len(grids)} grid(s)") if grids else StepState("test", "todo", "")
    return [states[k] for k in STEPS]


def next_hint(states: list[StepState]) -> str:
    """One sentence: what needs attention first, else that a run is training, else the first step
    not done (编辑 is optional)."""
    for s in states:
        if s.state == "attention":
            return f"Needs attention — {STEP_LABELS[s.key]}: {s.note}"
    if any(s.state == "running" for s in states):
        return RUNNING_HINT
    for s in states:
        if s.state != "done" and s.key != "edit":
            return NEXT_HINTS[s.key]
    return DONE_HINT
