"""The listening page as a user sees it behind its gate (ui.app.launch → ServerGate), in real
headless Chromium: a dropped photo is prepared and its thumbnail loads through /file=, the
upload leaves gradio's temp folder, a second press without a new drop says to drop again."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lora_forge.settings import Settings
from tests.browser import close_blocks, free_port, js_errors, wait_gradio, wait_http

THUMBS = "#lora_forge_prepare_gallery .thumbnail-item img"


@pytest.mark.browser
def test_the_gated_page_works_for_a_user(page, tmp_path: Path) -> None:
    from PIL import Image

    from lora_forge.ui.app import build_app, launch
    from lora_forge.uploads import default_upload_dir

    photo = tmp_path / "drop" / "gated-photo.png"
    photo.parent.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (40, 120, 200)).save(buf, format="PNG")
    photo.write_bytes(buf.getvalue())
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    out = tmp_path / "datasets" / "mine"
    demo = build_app(None, settings=lambda: settings, listen=True)
    port = free_port()
    launch(demo, "127.0.0.1", port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url)
        page.goto(url)
        wait_gradio(page)
        page.locator("#lora_forge_sections button", has_text="Images & crop").click()
        page.set_input_files("#lora_forge_prepare_files input[type=file]", [str(photo)])
        page.wait_for_function(
            "() => (document.querySelector('#lora_forge_prepare_files') || {}).innerText?.includes('gated-photo')"
        )
        page.fill("#lora_forge_prepare_out textarea", str(out))
        page.locator("#lora_forge_prepare_face_crops input").uncheck()
        page.click("#lora_forge_prepare_run")
        page.wait_for_function(
            "() => (document.querySelector('#lora_forge_prepare_report') || {}).innerText?.includes('→')",
            timeout=60000,
        )
        # the thumbnail came through /file= and decoded as an image
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{THUMBS}')].some(i => i.complete && i.naturalWidth > 0)",
            timeout=30000,
        )
        src = page.eval_on_selector(THUMBS, "e => e.getAttribute('src')")
        assert "/file=" in src
        assert not list(default_upload_dir().rglob(photo.name))  # the upload was removed once used
        page.click("#lora_forge_prepare_run")  # the File box still shows it; it is gone on the server
        page.wait_for_function(
            "() => (document.querySelector('#lora_forge_prepare_report') || {}).innerText?.includes('drop some')",
            timeout=30000,
        )
        assert js_errors(page) == []
    finally:
        close_blocks(demo)
