"""With an SDXL model loaded in the stand-in WebUI, in real headless Chromium: the 训练 section trains
a LoRA on it, and the Test grid section renders that run's NUM × STRENGTH grid through the WebUI's
txt2img."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_webui_train import start_stub
from tests.test_webui_train_ui import EXTRA, _fill, _result
from tests.train_support import squares


@pytest.fixture
def webui(tmp_path: Path, tiny_sdxl_files):
    from tests.sdxl_support import webui_sdxl_model

    stub = start_stub(tmp_path / "webui", webui_sdxl_model(tiny_sdxl_files))
    yield stub
    from modules import shared

    shared.sd_model = None


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return squares(tmp_path / "data", ("red", "green", "blue"), seed=2, caption="zkw, {name} square")


@pytest.mark.browser
@pytest.mark.slow
def test_sdxl_train_then_grid_in_the_browser(webui, serve_blocks, page, dataset) -> None:
    from modules import shared

    from tests.browser import js_errors, wait_gradio, webui_like_page

    page.goto(serve_blocks(webui_like_page(webui.build_ui())))
    wait_gradio(page)
    page.locator("#tabs button", has_text="炼丹").click()
    page.locator("#lora_forge_sections").get_by_role("button", name="Train", exact=True).click()
    _fill(page, "lora_forge_dataset_dir", str(dataset))
    for elem_id, value in {
        "lora_forge_train_output_name": "xlchar",
        "lora_forge_train_trigger_word": "zkw",
        "lora_forge_train_num_repeats": "1",
        "lora_forge_train_max_train_epochs": "2",
        "lora_forge_train_network_dim": "4",
        "lora_forge_train_network_alpha": "4",
        "lora_forge_train_learning_rate": "0.01",
        "lora_forge_train_resolution": "64",
        "lora_forge_train_sample_every_n_steps": "3",
    }.items():
        _fill(page, elem_id, value)
    page.locator("#lora_forge_train_advanced").click()
    _fill(page, "lora_forge_train_extra", EXTRA)
    page.locator("#lora_forge_train_start").click()
    assert "<lora:xlchar" in _result(page, "Finished", 600)
    run = Path(shared.cmd_opts.lora_dir) / "xlchar"
    assert (run / "xlchar.safetensors").is_file()

    page.locator("#lora_forge_sections").get_by_role("button", name="Test grid", exact=True).click()
    page.click("#lora_forge_grid_refresh")
    option = page.locator("#lora_forge_grid_run li", has_text=str(run))
    picker = page.locator("#lora_forge_grid_run input")
    for _ in range(240):  # open the list until the refreshed choices arrive (see test_grid_ui)
        picker.click()
        if option.count():
            break
        page.keyboard.press("Escape")
        picker.blur()
        page.wait_for_timeout(250)
    option.click()
    for selector, value in (
        ("#lora_forge_grid_strengths textarea", "0,1"),
        ("#lora_forge_grid_prompt textarea", "a photo"),
        ("#lora_forge_grid_steps input", "2"),
        ("#lora_forge_grid_width input", "64"),
        ("#lora_forge_grid_height input", "64"),
    ):
        page.fill(selector, value)
        page.press(selector, "Tab")
    page.locator("#lora_forge_grid_score input").uncheck()
    page.click("#lora_forge_grid_go")
    page.wait_for_function(
        "() => /grid in|Error/.test(document.querySelector('#lora_forge_grid_status').innerText)", timeout=300_000
    )
    assert "grid in" in page.inner_text("#lora_forge_grid_status")
    page.wait_for_selector("#lora_forge_grid_image img")
    assert [p for p in run.glob("xlchar-grid-*.png")]
    assert js_errors(page) == []
