"""The whole path in real Chromium on the tiny model: new project → upload → crop → tag (tiny ONNX)
→ edit → train a few steps → grid with scores → 优化 advice → "train again"; then a restart (a new
app over the same folders) reopens the project where the user left off."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lora_forge.settings import Settings
from lora_forge.tagger.testing import GREEN, RED, build_test_model, solid_image
from lora_forge.train.config import read_config_file
from tests.browser import js_errors, wait_gradio
from tests.dataset_support import yunet_settings  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def _value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()


def _scored_grid(page, tagger: Path, **fields: str) -> None:
    """Render a 2 × 2 grid at 64 px in 2 steps, scored with `tagger`, and wait for the scores;
    `fields` fills more 测试 boxes (by elem_id suffix)."""
    values = {"strengths": "0.5, 1", "steps": "2", "width": "64", "height": "64", "tagger": str(tagger), **fields}
    for key, value in values.items():
        _fill(page, f"lora_forge_grid_{key}", value)
    page.locator("#lora_forge_grid_score input").check()
    page.click("#lora_forge_grid_go")
    page.locator("#lora_forge_grid_heat img").wait_for(timeout=300_000)


def _upload(page, elem_id: str, files: list[str]) -> None:
    """Drop files on a File box and wait until each has arrived (a click on Prepare while a file
    still says "Uploading…" hands the server an empty file; seen on a loaded machine)."""
    page.set_input_files(f"#{elem_id} input[type=file]", files)
    page.wait_for_function(
        "([s, names]) => { const e = document.querySelector(s); const t = e ? e.innerText : '';"
        " return names.every((n) => t.includes(n)) && !t.includes('Uploading'); }",
        arg=[f"#{elem_id}", [Path(f).name for f in files]],
        timeout=60_000,
    )


def _tab(page, title: str) -> None:
    page.locator("#lora_forge_sections .tab-nav button", has_text=title).first.click()


def _wait_text(page, selector: str, text: str, timeout: int = 120_000) -> str:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return !!e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )
    return page.inner_text(selector)


def _shot(page, name: str) -> None:
    """The tab in test-artifacts/; with LORA_FORGE_SCREENSHOTS=1 also a small copy (< 200 KB) for the README."""
    from PIL import Image

    from tests.browser import ARTIFACTS

    ARTIFACTS.mkdir(exist_ok=True)
    full = ARTIFACTS / f"flow-{name}"
    page.locator("#lora_forge").screenshot(path=str(full))
    if not os.environ.get("LORA_FORGE_SCREENSHOTS"):  # README pictures change only when asked
        return
    IMG.mkdir(parents=True, exist_ok=True)
    image = Image.open(full)
    if image.width > 900:
        image = image.resize((900, round(image.height * 900 / image.width)))
    image.convert("P", palette=Image.ADAPTIVE, colors=96).save(IMG / name, optimize=True)
    assert (IMG / name).stat().st_size < 200_000


@pytest.mark.browser
@pytest.mark.slow
def test_images_to_grid_and_advice_in_one_project(tiny_files, yunet_settings, serve_blocks, page, tmp_path) -> None:  # noqa: F811
    from lora_forge.ui.app import build_app

    # the YuNet face model placed where a download would put it; nothing is downloaded
    settings = Settings(
        models_dir=yunet_settings.models_dir, dataset_dir=tmp_path / "projects", hf_endpoint="http://127.0.0.1:9"
    )
    lora_dir = tmp_path / "Lora"
    tagger = build_test_model(tmp_path / "tagger")
    photos = []
    for i, colour in enumerate([RED, GREEN, RED, GREEN]):
        path = tmp_path / "photos" / f"照片{i}.png"
        path.parent.mkdir(exist_ok=True)
        image = solid_image(colour, size=96)
        image.putpixel((i, i), (0, 0, 255))  # four different files (identical ones are merged)
        image.save(path)
        photos.append(str(path))

    def app():
        return build_app(
            ckpt=tiny_files.checkpoint, clip_folder=tiny_files.clip_folder, lora_dir=lora_dir, settings=lambda: settings
        )

    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(serve_blocks(app()))
    wait_gradio(page)
    _fill(page, "lora_forge_project_new", "我的角色")
    page.click("#lora_forge_project_create")
    _wait_text(page, "#lora_forge_project_msg", "Created project")
    project = tmp_path / "projects" / "project"
    assert json.loads((project / "lora_forge_project.json").read_text(encoding="utf-8"))["name"] == "我的角色"
    assert page.input_value("#lora_forge_dataset_dir textarea") == str(project / "dataset")
    assert "not started" in page.inner_text("#lora_forge_step_images")

    # 素材/裁剪: upload, prepare into the project's dataset folder
    _tab(page, "Images & crop")
    _upload(page, "lora_forge_prepare_files", photos)
    page.click("#lora_forge_prepare_run")
    _wait_text(page, "#lora_forge_prepare_report", "→")
    assert len(list((project / "dataset").glob("*.jpg"))) == 4
    _shot(page, "flow-1-prepare.png")

    # 打标 with the tiny ONNX tagger
    _tab(page, "Tagging")
    _wait_text(page, "#lora_forge_next", "caption the images in Tagging")
    _fill(page, "lora_forge_tagger_folder", str(tagger))
    _fill(page, "lora_forge_tagger_trigger", "zkw")
    page.click("#lora_forge_tagger_run")
    _wait_text(page, "#lora_forge_tagger_status", "written")
    assert len(list((project / "dataset").glob("*.txt"))) == 4

    # 编辑: load and save (the captions are usable as they are)
    _tab(page, "Edit tags")
    page.click("#lora_forge_editor_load")
    _wait_text(page, "#lora_forge_editor_status", "4")

    # 训练: a few steps at 64 px; the LoRA is named after the project, the trigger word is the tagger's
    _tab(page, "Train")
    assert _value(page, "lora_forge_train_output_name") == "我的角色"
    assert _value(page, "lora_forge_train_trigger_word") == "zkw"
    for elem_id, value in {
        "lora_forge_train_num_repeats": "1",
        "lora_forge_train_max_train_epochs": "2",
        "lora_forge_train_network_dim": "4",
        "lora_forge_train_network_alpha": "2",
        "lora_forge_train_learning_rate": "0.001",
        "lora_forge_train_resolution": "64",
        "lora_forge_train_sample_every_n_steps": "0",
    }.items():
        _fill(page, elem_id, value)
    page.locator("#lora_forge_train_advanced").click()
    _fill(page, "lora_forge_train_mixed_precision", "no")
    _fill(page, "lora_forge_train_extra", "min_bucket_reso = 64\nmax_bucket_reso = 64\nsample_steps = 2")
    page.click("#lora_forge_train_start")
    page.locator("div.prose#lora_forge_train_result", has_text="d").wait_for(timeout=400_000)
    result = page.inner_text("#lora_forge_train_result")
    assert "Finished" in result, result
    run = lora_dir / "我的角色"
    assert (run / "我的角色.safetensors").is_file()
    assert read_config_file(run / "config.toml")["trigger_word"] == "zkw"
    _wait_text(page, "#lora_forge_step_train", "done")

    # 测试: the grid with scores, of the run just trained (picked in the run list without 🔄)
    _tab(page, "Test grid")
    page.wait_for_function(
        "(v) => document.querySelector('#lora_forge_grid_run input').value === v", arg=str(run), timeout=20_000
    )
    _scored_grid(page, tagger)
    assert list(run.glob("*-scores.json"))
    _wait_text(page, "#lora_forge_step_test", "done", timeout=20_000)  # the bar follows the grid
    _shot(page, "flow-2-grid.png")

    # 优化: advice from the scores, then a new config from the previous run's
    _tab(page, "Optimise")
    page.click("#lora_forge_optimise_advise")
    advice = _wait_text(page, "#lora_forge_optimise_advice", "From the grid of run")
    assert any(word in advice for word in ("Underfit", "Overfit", "Looks right"))
    if page.locator("#lora_forge_optimise_again").is_enabled():
        page.click("#lora_forge_optimise_again")
        _wait_text(page, "#lora_forge_optimise_advice", "previous run is kept")
        assert list((project / "configs").glob("我的角色-next*.toml"))
        assert (run / "我的角色.safetensors").is_file()
    _shot(page, "flow-3-optimise.png")
    assert js_errors(page) == []

    # a restart: a new app over the same folders reopens the project and its step
    page.goto(serve_blocks(app()))
    wait_gradio(page)
    _wait_text(page, "#lora_forge_project_msg", "Reopened project")
    assert page.input_value("#lora_forge_dataset_dir textarea") == str(project / "dataset")
    for key in ("images", "crop", "tag", "train", "test"):
        assert "done" in page.inner_text(f"#lora_forge_step_{key}"), key
    assert "我的角色" in page.inner_text("#lora_forge_train_status")  # not "No training run yet"
    assert _value(page, "lora_forge_tagger_trigger") == "zkw"  # kept by the project
    assert page.input_value("#lora_forge_grid_run input") == str(run)


@pytest.mark.browser
def test_light_and_dark_at_1280(serve_blocks, page, tmp_path) -> None:
    from lora_forge import project as pj
    from lora_forge.ui.app import build_app

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "projects")
    p = pj.create(tmp_path / "projects", "look")
    solid_image(RED).save(p.dataset_dir / "a.png")
    url = serve_blocks(build_app(ckpt=None, settings=lambda: settings))
    page.set_viewport_size({"width": 1280, "height": 800})
    for theme, query in (("light", ""), ("dark", "?__theme=dark")):
        page.goto(url + query)
        wait_gradio(page)
        _wait_text(page, "#lora_forge_project_msg", "Reopened")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 1280, f"{theme}: the page scrolls sideways ({width} px)"
        chip = page.locator("#lora_forge_step_tag")
        box = chip.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 1280
        _shot(page, f"look-{theme}.png")
    assert js_errors(page) == []


@pytest.mark.browser
def test_two_tabs_a_vanished_project_and_a_refused_path(serve_blocks, browser, page, tmp_path) -> None:
    """Two browser tabs on one project: the second save is refused with a message and nothing is
    overwritten; a deleted project folder is a message; with --listen a path outside is refused."""
    from lora_forge import project as pj
    from lora_forge.ui.app import build_app

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "projects")
    p = pj.create(tmp_path / "projects", "两个标签页")
    url = serve_blocks(build_app(ckpt=None, settings=lambda: settings, listen=True))
    other = page.context.new_page()
    for pg in (page, other):
        pg.goto(url)
        wait_gradio(pg)
        _wait_text(pg, "#lora_forge_project_msg", "Reopened")
        pg.locator("#lora_forge_project_settings").click()
    _fill(page, "lora_forge_project_rename_to", "first tab's name")
    page.click("#lora_forge_project_rename")
    _wait_text(page, "#lora_forge_project_msg", "Renamed")
    _fill(other, "lora_forge_project_rename_to", "second tab's name")
    other.click("#lora_forge_project_rename")
    _wait_text(other, "#lora_forge_project_msg", "another browser tab")
    assert pj.open_project(p.folder).name == "first tab's name"

    # --listen: the prepare section refuses a folder outside the allowed ones, as gradio's error
    _tab(page, "Images & crop")
    _fill(page, "lora_forge_prepare_sources", "/etc")
    page.click("#lora_forge_prepare_run")
    page.locator(".toast-body", has_text="outside the folders").wait_for(timeout=20_000)

    import shutil

    shutil.rmtree(p.folder)
    _fill(other, "lora_forge_project_rename_to", "after delete")
    other.click("#lora_forge_project_rename")
    _wait_text(other, "#lora_forge_project_msg", "is gone")
    assert list((tmp_path / "projects" / pj.RECOVERED).glob("*.json"))
    other.close()
