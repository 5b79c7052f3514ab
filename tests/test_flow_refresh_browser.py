"""The project bar, 测试's run list and 训练's status follow the work without a reload: after
处理图片, 打标 and a saved edit the steps say done and the hint moves on; opening a project picks its
newest run in 测试 and shows how its last run ended in 训练 (also after a restart, when the process
knows no runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lora_forge.settings import Settings
from lora_forge.tagger.testing import GREEN, RED, build_test_model, solid_image
from tests.browser import js_errors, wait_gradio
from tests.dataset_support import yunet_settings  # noqa: F401  (fixture)
from tests.test_flow_browser import _fill, _tab, _upload, _wait_text


def _finished_run(folder: Path, name: str, age_s: float) -> Path:
    """A run folder as training leaves it: its config, an epoch file and the final file."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'output_name = "{name}"\n', encoding="utf-8")
    stamp = time.time() - age_s
    for file in (f"{name}-000001.safetensors", f"{name}.safetensors"):
        save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(folder / file))
        os.utime(folder / file, (stamp, stamp))
    return folder


def _grid_run(page) -> str:
    return page.input_value("#lora_forge_grid_run input")


@pytest.mark.browser
def test_bar_grid_runs_and_train_status_follow_the_work(yunet_settings, serve_blocks, page, tmp_path) -> None:  # noqa: F811
    from lora_forge import project as pj
    from lora_forge.ui.app import build_app

    settings = Settings(
        models_dir=yunet_settings.models_dir, dataset_dir=tmp_path / "projects", hf_endpoint="http://127.0.0.1:9"
    )
    lora_dir = tmp_path / "Lora"
    old = pj.create(settings.dataset_dir, "旧项目")
    for run in (_finished_run(lora_dir / "older", "older", 3600), _finished_run(lora_dir / "newer", "newer", 60)):
        old.add_run(run)  # in the order they were trained
    tagger = build_test_model(tmp_path / "tagger")
    photos = []
    for i, colour in enumerate([RED, GREEN, RED]):
        path = tmp_path / "photos" / f"p{i}.png"
        path.parent.mkdir(exist_ok=True)
        image = solid_image(colour, size=96)
        image.putpixel((i, i), (0, 0, 255))
        image.save(path)
        photos.append(str(path))

    # as after a restart: the process has no runs, the project on disk has two finished ones
    page.goto(serve_blocks(build_app(ckpt=None, lora_dir=lora_dir, settings=lambda: settings)))
    wait_gradio(page)
    _wait_text(page, "#lora_forge_project_msg", "Reopened project")
    assert _grid_run(page) == str(lora_dir / "newer")  # the newest run, picked without 🔄
    status = page.inner_text("#lora_forge_train_status")
    assert "newer" in status and "finished" in status and "No training run yet" not in status

    # a new project: nothing picked, nothing trained; then each step's work updates the bar in place
    _fill(page, "lora_forge_project_new", "新项目")
    page.click("#lora_forge_project_create")
    _wait_text(page, "#lora_forge_project_msg", "Created project")
    assert "No training run yet" in page.inner_text("#lora_forge_train_status")
    assert _grid_run(page) != str(lora_dir / "newer")
    _tab(page, "Images & crop")
    assert "not started" in page.inner_text("#lora_forge_step_images")
    _upload(page, "lora_forge_prepare_files", photos)
    page.click("#lora_forge_prepare_run")
    _wait_text(page, "#lora_forge_prepare_report", "→")
    _wait_text(page, "#lora_forge_step_images", "done", timeout=20_000)
    _wait_text(page, "#lora_forge_step_crop", "done", timeout=20_000)
    _wait_text(page, "#lora_forge_next", "caption the images in Tagging", timeout=20_000)
    assert "not started" in page.inner_text("#lora_forge_step_tag")

    # one caption typed in 编辑 and saved: 打标 needs attention (the others have none), 编辑 is done
    _tab(page, "Edit tags")
    page.click("#lora_forge_editor_load")
    _wait_text(page, "#lora_forge_editor_status", "3")
    page.fill("#lora_forge_editor_caption textarea", "sks, red")
    page.click("#lora_forge_editor_apply_caption")
    _wait_text(page, "#lora_forge_editor_status", "1 unsaved")
    page.click("#lora_forge_editor_save")
    _wait_text(page, "#lora_forge_editor_status", "all saved")
    _wait_text(page, "#lora_forge_step_tag", "needs attention", timeout=20_000)
    _wait_text(page, "#lora_forge_step_edit", "done", timeout=20_000)
    _wait_text(page, "#lora_forge_next", "2 of 3 images have no caption", timeout=20_000)

    _tab(page, "Tagging")
    _fill(page, "lora_forge_tagger_folder", str(tagger))
    page.click("#lora_forge_tagger_run")
    _wait_text(page, "#lora_forge_tagger_status", "written")
    _wait_text(page, "#lora_forge_step_tag", "done", timeout=20_000)
    _wait_text(page, "#lora_forge_next", "train in Train", timeout=20_000)

    # opening the old project again picks its newest run and its last run's status
    page.locator("#lora_forge_project input").first.click()
    page.locator("ul.options li", has_text="旧项目").first.click()
    _wait_text(page, "#lora_forge_project_msg", "Opened project", timeout=20_000)
    page.wait_for_function(
        "(v) => document.querySelector('#lora_forge_grid_run input').value === v", arg=str(lora_dir / "newer")
    )
    _wait_text(page, "#lora_forge_train_status", "newer")
    assert js_errors(page) == []
