"""The 素材 / 裁剪 section in real headless Chromium: drop files, prepare, look, fix one image."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge.dataset.manifest import Manifest
from tests.browser import js_errors, wait_gradio
from tests.dataset_support import place_astronaut, yunet_settings  # noqa: F401

THUMBS = "#lora_forge_prepare_gallery .thumbnail-item"


def _thumb_sources(page) -> list[str]:
    return page.eval_on_selector_all(f"{THUMBS} img", "els => els.map(e => e.getAttribute('src'))")


@pytest.mark.browser
def test_upload_prepare_gallery_and_per_image_actions(serve_blocks, page, tmp_path: Path, yunet_settings) -> None:  # noqa: F811
    from lora_forge.ui.app import build_app

    drop = tmp_path / "drop"
    drop.mkdir()
    for name, size, at in [("wide.jpg", (1800, 1000), (900, 150)), ("tall.jpg", (900, 1600), (50, 700))]:
        image, _ = place_astronaut(size, at, 1.6)
        image.save(drop / name, quality=90)
    (drop / "wide.txt").write_text("1girl, astronaut", encoding="utf-8")
    (drop / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "dataset 数据"

    url = serve_blocks(build_app(ckpt=None, settings=lambda: yunet_settings))
    page.goto(url)
    wait_gradio(page)
    page.locator("#lora_forge_sections button", has_text="Images & crop").click()
    page.set_input_files(
        "#lora_forge_prepare_files input[type=file]",
        [str(drop / n) for n in ("wide.jpg", "tall.jpg", "wide.txt", "broken.jpg")],
    )
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_files') || {}).innerText?.includes('broken.jpg')"
    )
    page.fill("#lora_forge_prepare_out textarea", str(out))
    page.locator("#lora_forge_prepare_face_crops input").check()
    page.click("#lora_forge_prepare_run")
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_report') || {}).innerText?.includes('→')",  # done
        timeout=60000,
    )
    report = page.inner_text("#lora_forge_prepare_report")
    assert "broken.jpg" in report and "Traceback" not in report
    manifest = Manifest.load(out)
    files = [o.file for _, o in manifest.images()]
    assert sorted(files) == ["tall.jpg", "tall__face.jpg", "wide.jpg", "wide__face.jpg"]
    assert (out / "wide.txt").read_text(encoding="utf-8") == "1girl, astronaut"
    page.wait_for_function(f"() => document.querySelectorAll('{THUMBS}').length === 4")
    # the shared dataset folder now points at the result, for the tagger and the editor
    assert page.input_value("#lora_forge_dataset_dir textarea") == str(out)

    # face boxes are drawn on a toggle: the gallery shows other pictures without them
    with_boxes = _thumb_sources(page)
    page.locator("#lora_forge_prepare_boxes input").uncheck()
    page.wait_for_function(
        "old => { const s = [...document.querySelectorAll('#lora_forge_prepare_gallery .thumbnail-item img')]"
        ".map(e => e.getAttribute('src')); return s.length === 4 && s.join() !== old.join(); }",
        arg=with_boxes,
    )

    # pick the wide picture and keep it whole
    index = files.index("wide.jpg")
    page.locator(THUMBS).nth(index).click()
    page.wait_for_function("() => document.querySelector('#lora_forge_prepare_selected textarea').value === 'wide.jpg'")
    page.click("#lora_forge_prepare_whole")
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_message') || {}).innerText?.includes('whole')"
    )
    rec = Manifest.load(out).by_output("wide.jpg")
    assert rec.action == "whole" and "padded" in rec.outputs[0].flags
    # and drop the tall one
    page.locator(THUMBS).nth(files.index("tall.jpg")).click()
    page.wait_for_function("() => document.querySelector('#lora_forge_prepare_selected textarea').value === 'tall.jpg'")
    page.click("#lora_forge_prepare_drop")
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_message') || {}).innerText?.includes('removed')"
    )
    assert not (out / "tall.jpg").exists()
    page.wait_for_function(f"() => document.querySelectorAll('{THUMBS}').length === 2")
    assert js_errors(page) == []


@pytest.mark.browser
def test_a_bad_folder_is_a_message_not_a_traceback(serve_blocks, page, tmp_path: Path, yunet_settings) -> None:  # noqa: F811
    from lora_forge.ui.app import build_app

    url = serve_blocks(build_app(ckpt=None, settings=lambda: yunet_settings))
    page.goto(url)
    wait_gradio(page)
    page.locator("#lora_forge_sections button", has_text="Images & crop").click()
    page.click("#lora_forge_prepare_run")
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_report') || {}).innerText?.includes('Error')"
    )
    assert "drop some images" in page.inner_text("#lora_forge_prepare_report")
    page.fill("#lora_forge_prepare_sources textarea", str(tmp_path / "does-not-exist"))
    page.fill("#lora_forge_prepare_out textarea", str(tmp_path / "out"))
    page.click("#lora_forge_prepare_run")
    page.wait_for_function(
        "() => (document.querySelector('#lora_forge_prepare_report') || {}).innerText?.includes('cannot be read')"
    )
    assert js_errors(page) == []
