"""The project bar's rules (lora_forge.app.steps) on real project folders: no gradio, no browser."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lora_forge import project as pj
from lora_forge.app import steps
from lora_forge.rundir import RunDir


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 100, 50)).save(path)


def _run(folder: Path, name: str, final: bool, state: bool) -> Path:
    run = RunDir(folder)
    folder.mkdir(parents=True)
    run.config.write_text(f'output_name = "{name}"\n', encoding="utf-8")
    if final:
        run.final_file(name).write_bytes(b"x")
    if state:
        run.state.mkdir()
        run.state_path("position").write_text("{}", encoding="utf-8")
    return folder


def _states(p: pj.Project, training: set[str] = frozenset()) -> dict[str, steps.StepState]:
    return {s.key: s for s in steps.bar_state(p, training).steps}


def test_steps_follow_what_is_on_disk(tmp_path):
    p = pj.create(tmp_path / "projects", "steps")
    bar = steps.bar_state(p)
    assert [s.key for s in bar.steps] == list(pj.STEPS) and {s.state for s in bar.steps} == {"todo"}
    assert "bring your images in" in bar.hint and bar.resume is None

    for i in range(3):  # a user who brings their own images and captions
        _image(p.dataset_dir / f"{i}.png")
    (p.dataset_dir / "0.png").with_suffix(".txt").write_text("a, b", encoding="utf-8")
    bar = steps.bar_state(p)
    assert bar.state("images") == "done" and bar.state("crop") == "done"
    assert bar.state("tag") == "attention" and "2 of 3" in _states(p)["tag"].note
    assert bar.hint == "Needs attention — Tag: 2 of 3 images have no caption"
    for i in (1, 2):
        (p.dataset_dir / f"{i}.txt").write_text("a", encoding="utf-8")
    bar = steps.bar_state(p)
    assert bar.state("tag") == "done" and bar.state("train") == "todo" and bar.state("edit") == "todo"
    assert "in Train (Edit tags" in bar.hint

    lora = tmp_path / "Lora"
    cut = _run(lora / "mine", "mine", final=False, state=True)
    p.add_run(cut)
    bar = steps.bar_state(p)
    assert bar.state("train") == "attention" and "did not finish" in _states(p)["train"].note
    assert bar.resume is not None and bar.resume.folder == cut and "Train: run mine did not finish" in bar.hint

    done = _run(lora / "mine-2", "mine-2", final=True, state=True)
    p.add_run(done)
    (done / "mine-2-grid-20260101-000000.png").write_bytes(b"png")
    bar = steps.bar_state(p)
    assert bar.state("train") == "done" and bar.state("test") == "done"
    assert bar.hint.startswith("All steps done")


def test_a_training_run_shows_as_running_not_as_a_problem(tmp_path):
    """Issue 17, WebUI item 5: while one of the project's runs trains, the Train chip said
    "needs attention" and the hint "Needs attention — Train: training now"."""
    p = pj.create(tmp_path / "projects", "running")
    for i in range(2):
        _image(p.dataset_dir / f"{i}.png")
        (p.dataset_dir / f"{i}.txt").write_text("a", encoding="utf-8")
    run = _run(tmp_path / "Lora" / "now", "now", final=False, state=False)  # its folder exists, no file yet
    p.add_run(run)
    bar = steps.bar_state(p, {str(run)})
    assert bar.state("train") == "running" and _states(p, {str(run)})["train"].note == "training now"
    assert "Needs attention" not in bar.hint and bar.hint == steps.RUNNING_HINT
    assert bar.resume is None  # a run still training is not offered for resuming
    # the same folders once the run is no longer training here (a restart): it did not finish
    after = steps.bar_state(p)
    assert after.state("train") == "attention" and after.hint.startswith("Needs attention — Train")
    # another step needing attention comes first in the hint even while training
    _image(p.dataset_dir / "2.png")
    assert steps.bar_state(p, {str(run)}).hint.startswith("Needs attention — Tag")


def test_a_resumed_run_is_offered_again_only_until_its_continuation_gets_further(tmp_path):
    p = pj.create(tmp_path / "projects", "resume")
    lora = tmp_path / "Lora"
    cut = _run(lora / "mine", "mine", final=False, state=True)
    p.add_run(cut)
    assert [r.folder for r in steps.interrupted_runs(p)] == [cut]
    assert steps.interrupted_runs(p, active={str(cut)}) == []  # still training in this process
    # the continuation was killed before it saved anything: the first run is still the one to resume
    cont = lora / "mine-2"
    cont.mkdir()
    RunDir(cont).config.write_text(f'output_name = "mine-2"\nresume = "{RunDir(cut).state}"\n', encoding="utf-8")
    p.add_run(cont)
    assert steps.bar_state(p).resume.folder == cut
    assert steps.interrupted_runs(p, active={str(cut)}) == [pj.run_info(cont)]  # being resumed right now
    resuming = steps.bar_state(p, {str(cut)})
    assert resuming.resume is None and resuming.state("train") == "running"
    RunDir(cont).final_file("mine-2").write_bytes(b"x")  # it finished: nothing is left to resume
    assert steps.interrupted_runs(p) == [] and steps.bar_state(p).resume is None
    assert steps.bar_state(p).state("train") == "done"


def test_missing_prepared_images_an_edit_and_a_read_only_project(tmp_path):
    from lora_forge.dataset.captions import STATE_DIR
    from lora_forge.dataset.manifest import Manifest, OutputRecord, SourceRecord

    p = pj.create(tmp_path / "projects", "crop")
    _image(p.dataset_dir / "a.png")
    source = SourceRecord("a.jpg", "/a.jpg", None, "0", "k", [64, 64], "JPEG", [], [], "centre", "auto", "0", "a", None)
    source.outputs = [OutputRecord(f, "main", [0, 0, 64, 64], [64, 64], [], [], "0") for f in ("a.png", "b.png")]
    Manifest(p.dataset_dir, sources=[source]).save()  # 素材/裁剪 wrote b.png, and it was deleted since
    crop = _states(p)["crop"]
    assert crop.state == "attention" and crop.note == "1 prepared images are missing; prepare again"
    _image(p.dataset_dir / "b.png")
    assert _states(p)["crop"] == steps.StepState("crop", "done", "2 prepared images")
    history = p.dataset_dir / STATE_DIR / "history"
    history.mkdir(parents=True)
    (history / "1.json").write_text("{}", encoding="utf-8")
    assert steps.bar_state(p).state("edit") == "done"

    data = json.loads((p.folder / pj.MANIFEST).read_text(encoding="utf-8"))
    data["schema"] = pj.SCHEMA_VERSION + 1
    (p.folder / pj.MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    bar = steps.bar_state(pj.open_project(p.folder))
    assert bar.read_only and bar.hint.startswith("⚠ project “crop” was saved by a newer LoRA Forge")
