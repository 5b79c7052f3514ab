"""What the bar's use cases (lora_forge.app.projects) give the page for a project: which runs fill 训练's
form, and how a run is recorded; plain Python on real project folders, no gradio."""

from __future__ import annotations

import os
from pathlib import Path

from lora_forge import project as pj
from lora_forge.app import projects as desk
from lora_forge.rundir import RunDir
from lora_forge.train.config import TrainConfig


def _run(folder: Path, age_s: float, **config) -> Path:
    """A run folder whose config was written `age_s` seconds ago."""
    run = RunDir(folder)
    folder.mkdir(parents=True)
    run.config.write_text(TrainConfig(**config).to_toml(), encoding="utf-8")
    os.utime(run.config, (run.config.stat().st_atime - age_s, run.config.stat().st_mtime - age_s))
    return folder


def test_the_form_comes_from_the_pages_runs_never_from_a_run_trained_elsewhere(tmp_path):
    p = pj.create(tmp_path / "projects", "小明")
    p.remember("trigger_word", "xm")
    lora = tmp_path / "Lora"
    assert desk.form(p) == desk.Form({"output_name": "小明", "trigger_word": "xm"}, from_config=False)

    api_only = _run(lora / "api", 10, output_name="api", network_dim=4)  # over HTTP, no trigger word
    p.add_run(api_only, elsewhere=True)
    assert desk.form(p) == desk.Form({"output_name": "小明", "trigger_word": "xm"}, from_config=False)
    assert p.runs == [api_only] and p.runs_elsewhere == [api_only]  # it still counts as the project's run

    page = _run(lora / "page", 100, output_name="page", trigger_word="xm", network_dim=8)
    p.add_run(page)
    form = desk.form(p)  # the older page run, not the newer API one
    assert form.from_config and form.values["output_name"] == "page" and form.values["network_dim"] == 8
    assert form.values["trigger_word"] == "xm"

    nxt = RunDir(tmp_path / "next").config
    nxt.parent.mkdir()
    nxt.write_text(TrainConfig(output_name="page", network_dim=16).to_toml(), encoding="utf-8")
    p.save({"settings": {**p.settings, "next_config": str(nxt)}})
    assert desk.form(p).values["network_dim"] == 16  # 优化's next config is newer than the page run


def test_a_run_first_recorded_as_elsewhere_is_the_pages_once_the_page_records_it(tmp_path):
    """A refresh may see the page's new run in the process's list before Start's own record does."""
    p = pj.create(tmp_path / "projects", "race")
    run = tmp_path / "Lora" / "r"
    p.add_run(run, elsewhere=True)
    other_tab = pj.open_project(p.folder)
    other_tab.add_run(run)  # the page that started it
    for project in (p, pj.open_project(p.folder)):
        project.add_run(run, elsewhere=True)  # a later refresh does not take it back
    on_disk = pj.open_project(p.folder)
    assert on_disk.runs == [run] and on_disk.runs_elsewhere == []
    assert on_disk.revision == 1  # merged saves: another tab's next real change still works
