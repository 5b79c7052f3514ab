"""The 模型识别 panel in real headless Chromium: a path typed in, a file dropped, a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import inspect_builders as b
from tests.browser import js_errors, wait_gradio

REPORT = "#lora_forge_inspect_report"


def open_inspector(page, url: str) -> None:
    page.goto(url)
    wait_gradio(page)
    page.locator("#lora_forge_sections button", has_text="Model inspector").click()


def wait_report(page, text: str) -> str:
    page.wait_for_function(
        "t => (document.querySelector('#lora_forge_inspect_report') || {}).innerText?.includes(t)", arg=text
    )
    return page.inner_text(REPORT)


@pytest.mark.browser
def test_paths_and_a_dropped_file_are_reported_and_errors_are_messages(tab_url: str, page, tmp_path: Path) -> None:
    lora = tmp_path / "mychar.safetensors"
    b.write_kohya(lora, b.sd1_lora_modules(), rank=16, alpha=8, metadata=b.kohya_metadata())
    (tmp_path / "empty.safetensors").write_bytes(b"")
    open_inspector(page, tab_url)

    # Windows "Copy as path" quotes, a good file and a broken one in one go
    page.fill("#lora_forge_inspect_paths textarea", f'"{lora}"\n{tmp_path / "empty.safetensors"}')
    page.click("#lora_forge_inspect_button")
    text = wait_report(page, "LoRA (LoRA, kohya) for SD1.x")
    assert "192 UNet + 72 text encoder" in text and "1girl (30)" in text
    assert "Error: is empty" in text
    assert "Traceback" not in text

    # a dropped file is reported under the name the user dropped, not gradio's temp path
    page.fill("#lora_forge_inspect_paths textarea", "")
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(b.malicious_pickle(tmp_path / "pwned.txt"))
    page.set_input_files("#lora_forge_inspect_files input[type=file]", str(evil))
    text = wait_report(page, "unsafe pickle")
    assert "evil.ckpt" in text and "/tmp/gradio" not in text
    assert not (tmp_path / "pwned.txt").exists()
    assert js_errors(page) == []
