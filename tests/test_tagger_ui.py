"""The 打标 section in real headless Chromium: download a model from a loopback hub, tag, read results."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge.settings import Settings
from lora_forge.tagger.testing import GREEN, RED, build_test_model, solid_image
from tests.browser import js_errors, wait_gradio
from tests.hf_loopback import LoopbackHub

REPO = "SmilingWolf/wd-vit-tagger-v3"


def _text_has(selector: str, text: str) -> str:
    return f"() => (document.querySelector('{selector}') || {{}}).innerText?.includes({text!r})"


@pytest.mark.browser
def test_download_then_tag_shows_provider_captions_and_confidences(serve_blocks, page, tmp_path: Path) -> None:
    from lora_forge.ui.app import build_app

    src = build_test_model(tmp_path / "published")
    hub = LoopbackHub({(REPO, f): (src / f).read_bytes() for f in ("model.onnx", "selected_tags.csv")})
    endpoint = hub.start()
    try:
        settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets", hf_endpoint=endpoint)
        data = tmp_path / "数据 set"
        data.mkdir()
        solid_image(RED).save(data / "red.png")
        solid_image(GREEN).save(data / "green.png")
        (data / "green.txt").write_text("my own caption", encoding="utf-8")

        page.goto(serve_blocks(build_app(ckpt=None, settings=lambda: settings)))
        wait_gradio(page)
        page.locator("#lora_forge_sections button", has_text="Tagging").click()
        info = "#lora_forge_tagger_info"
        assert "not downloaded" in page.inner_text(info) and "379 MB" in page.inner_text(info)

        page.click("#lora_forge_tagger_download")
        page.wait_for_function(_text_has("#lora_forge_tagger_status", "download complete"), timeout=60000)
        page.wait_for_function(f"() => !document.querySelector('{info}').innerText.includes('not downloaded')")
        assert "379 MB, downloaded, batches" in page.inner_text(info)
        assert "wd-vit-tagger-v3 · 379 MB · downloaded" in page.input_value("#lora_forge_tagger_model input")
        assert any(m == "GET" for m, _p, _r in hub.requests)

        page.fill("#lora_forge_dataset_dir textarea", str(data))
        page.fill("#lora_forge_tagger_trigger textarea", "ohwx")
        page.click("#lora_forge_tagger_run")
        page.wait_for_function(_text_has("#lora_forge_tagger_status", "1 written"), timeout=60000)
        status = page.inner_text("#lora_forge_tagger_status")
        assert "on CPU" in status and "1 kept" in status

        expected = r"ohwx, 1girl, long hair, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth, smile"
        assert (data / "red.txt").read_text(encoding="utf-8") == expected
        assert (data / "green.txt").read_text(encoding="utf-8") == "my own caption"
        table = page.inner_text("#lora_forge_tagger_results")
        assert expected in table and "my own caption" in table
        assert "hu_tao_(genshin_impact) 0.92" in table and "1girl 0.98" in table
        assert js_errors(page) == []
    finally:
        hub.stop()


@pytest.mark.browser
def test_missing_dataset_folder_and_bad_model_folder_are_messages(serve_blocks, page, tmp_path: Path) -> None:
    from lora_forge.ui.app import build_app

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    page.goto(serve_blocks(build_app(ckpt=None, settings=lambda: settings)))
    wait_gradio(page)
    page.locator("#lora_forge_sections button", has_text="Tagging").click()
    page.click("#lora_forge_tagger_run")
    page.wait_for_function(_text_has("#lora_forge_tagger_status", "set the dataset folder"))

    data = tmp_path / "d"
    data.mkdir()
    solid_image(RED).save(data / "red.png")
    broken = build_test_model(tmp_path / "m", layout="NCHW")
    page.fill("#lora_forge_dataset_dir textarea", str(data))
    page.fill("#lora_forge_tagger_folder textarea", f'"{broken}"')
    page.click("#lora_forge_tagger_run")
    page.wait_for_function(_text_has("#lora_forge_tagger_status", "unexpected input layout"))
    assert "Traceback" not in page.inner_text("#lora_forge_tagger_status")
    assert not (data / "red.txt").exists()
    assert js_errors(page) == []
