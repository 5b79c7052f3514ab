"""The 炼丹 tab served on its own (`python -m lora_forge ui`), in real headless Chromium."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lora_forge.cli import module_exists
from lora_forge.errors import ForgeError
from lora_forge.ui import tab
from tests.browser import free_port, js_errors, wait_gradio, wait_http

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.browser
def test_tab_opens_with_every_present_section_and_no_js_errors(tab_url: str, page) -> None:
    page.goto(tab_url)
    wait_gradio(page)
    root = page.locator("#lora_forge")
    assert root.count() == 1 and root.is_visible()
    assert page.locator("#lora_forge_dataset_dir textarea").is_visible()
    present = [name for name in tab.SECTIONS if module_exists(name)]
    for name in present:
        title = importlib.import_module(name).TITLE
        button = page.locator(
            "#lora_forge_sections .tab-nav button", has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")
        )
        assert button.count() == 1, f"no tab button for {name} ({title!r})"
        button.click()
        assert page.locator(f"#lora_forge_tab_{name.rsplit('.', 1)[1]}").is_visible()
    # our js namespace was loaded with the page, as the WebUI would load javascript/*.js
    assert page.evaluate("() => typeof window.loraForge === 'object' && !!window.loraForge.root()")
    # the WebUI globals extension scripts rely on exist on our own page too
    assert page.evaluate("() => typeof gradioApp().querySelector === 'function' && typeof onUiLoaded === 'function'")
    assert js_errors(page) == []


@pytest.mark.browser
def test_css_is_applied_inside_the_tab(tab_url: str, page) -> None:
    page.goto(tab_url)
    wait_gradio(page)
    # style.css rules are scoped under #lora_forge: a hint placed there takes the subdued colour,
    # the same element outside the tab does not.
    colours = page.evaluate(
        """() => {
            const inside = document.createElement('p'); inside.className = 'lf-hint';
            const outside = document.createElement('p'); outside.className = 'lf-hint';
            document.querySelector('#lora_forge').appendChild(inside);
            document.body.appendChild(outside);
            return [getComputedStyle(inside).fontFamily + '|' + getComputedStyle(inside).color,
                    getComputedStyle(outside).fontFamily + '|' + getComputedStyle(outside).color];
        }"""
    )
    assert colours[0] != colours[1]


def test_ui_command_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_forge",
            "ui",
            "--ckpt",
            str(tmp_path / "none.safetensors"),
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "no such file" in r.stderr


def test_the_host_is_loaded_once_on_first_use(tiny_files) -> None:
    from lora_forge.ui.app import StandaloneHosts

    host = StandaloneHosts(tiny_files.checkpoint, clip_folder=tiny_files.clip_folder)
    first = host()
    assert first.sd_model().is_sd1
    assert host() is first
    with pytest.raises(ForgeError, match="--ckpt"):
        StandaloneHosts(None)()


def test_ui_command_serves_the_tab(tiny_files, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_forge", "ui", "--ckpt", str(tiny_files.checkpoint), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=90)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text
        assert "lora_forge" in page and "LoRA Forge" in page
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
