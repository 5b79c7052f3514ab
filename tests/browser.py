"""Shared harness for browser tests: serve any gr.Blocks on loopback and drive it with real Chromium.

tests/conftest.py imports the fixtures from here, so every test module can ask for:

- `serve_blocks`: a function `serve_blocks(blocks) -> url` that launches the Blocks on 127.0.0.1 with a
  free port (gradio runs its server in a background thread) and closes it after the test;
- `browser`: one headless Debian Chromium per session (Playwright never downloads a browser here);
- `page`: a fresh page whose uncaught JS errors and console errors are collected in `page.js_errors`,
  whose requests to anything but loopback are refused (tests never touch the network), and which
  is screenshotted into test-artifacts/<test name>.png when the test ends (pass or fail);
- `tab_url`: the whole 炼丹 tab served on its own, as `python -m lora_forge ui` would.

Helpers `wait_gradio(page)`, `js_errors(page)` and `train_result(page, …)` keep the individual tests short.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("LORA_FORGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}

# Console noise that says nothing about our page: the off-machine requests (gradio's Google fonts)
# that `page` refuses on purpose. A local 404 reads differently and still counts as an error.
_BENIGN_CONSOLE = re.compile(
    r"Failed to load resource: net::ERR_FAILED|Unable to preload CSS for https?://(?!127\.0\.0\.1|localhost)"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_blocks(blocks: Any, port: int | None = None) -> str:
    """Start `blocks` on loopback without blocking; returns the URL. Close with close_blocks(blocks)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = port or free_port()
    from lora_forge.ui.app import lift_relay_timeout

    lift_relay_timeout(blocks.queue(concurrency_count=4)).launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        inbrowser=False,
        share=False,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    return url


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gradio did not answer on {url}")
        time.sleep(0.1)


def wait_gradio(page: Any, timeout_ms: int = 30000) -> None:
    """Wait until gradio has rendered its app (the root container exists and no loader is showing;
    every component keeps a hidden `.wrap.default.full.hide` status box, which does not count)."""
    page.wait_for_selector("gradio-app .gradio-container", state="attached", timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('gradio-app .gradio-container .wrap.default.full:not(.hide)')",
        timeout=timeout_ms,
    )


def webui_like_page(tabs: list[tuple[Any, str, str]]) -> Any:
    """A page shaped like the WebUI's: a txt2img tab with its prompt box, then the tabs our
    on_ui_tabs callback returned, styled with the extension's style.css as the WebUI appends it."""
    import gradio as gr

    css_file = Path(__file__).resolve().parents[1] / "style.css"
    css = css_file.read_text(encoding="utf-8") if css_file.is_file() else None
    with gr.Blocks(analytics_enabled=False, css=css) as demo, gr.Tabs(elem_id="tabs"):
        with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
            gr.Textbox(label="Prompt", elem_id="txt2img_prompt")
        for blocks, title, elem_id in tabs:
            with gr.TabItem(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()
    return demo


def train_result(
    page: Any, text: str, done: Callable[[], bool], timeout_s: float = 300, describe: Callable[[], str] = str
) -> str:
    """The 训练 section's result once it shows `text`. gradio 3.41 drops a generator's stream when
    one websocket send takes over 1 s (a loaded machine; queueing.Queue.send_message), and the page
    then keeps its last update; once the run is over (`done()`), "Show progress" re-attaches, as a
    user would press it. On a timeout the failure says what the section showed, and `describe()`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    result = page.locator("div.prose#lora_forge_train_result")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result.filter(has_text=text).wait_for(timeout=20_000)
            return result.inner_text()
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                shown = {k: page.inner_text(f"div.prose#lora_forge_train_{k}") for k in ("status", "result")}
                pytest.fail(f"no {text!r} in the result after {timeout_s:.0f} s; the page showed {shown}; {describe()}")
            if done():
                page.click("#lora_forge_train_watch")


def js_errors(page: Any) -> list[str]:
    """Uncaught exceptions and console errors seen so far, minus refused off-machine requests."""
    return [e for e in page.js_errors if not _BENIGN_CONSOLE.search(e)]


@pytest.fixture
def serve_blocks() -> Iterator[Callable[[Any], str]]:
    started: list[Any] = []

    def serve(blocks: Any) -> str:
        url = launch_blocks(blocks)
        started.append(blocks)
        return url

    yield serve
    for blocks in started:
        close_blocks(blocks)


def close_blocks(blocks: Any) -> None:
    """Stop a test server without waiting for its open connections: uvicorn's graceful shutdown
    waits for every connection and task to end, and a stream the closed page left behind held the
    last test's teardown for minutes (seen in a full run, stack in Server.close's thread join)."""
    server = getattr(blocks, "server", None)
    if server is not None:
        server.force_exit = True
    blocks.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright python package (pip install playwright)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _refuse_off_machine(route: Any) -> None:
    host = urlparse(route.request.url).hostname or ""
    if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
        route.continue_()
    else:
        route.abort()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.route("**/*", _refuse_off_machine)
    pg = context.new_page()
    pg.set_default_timeout(20000)
    pg.js_errors = []
    pg.on("pageerror", lambda exc: pg.js_errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda msg: msg.type == "error" and pg.js_errors.append(f"console: {msg.text}"))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:120]
    try:
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    except Exception as e:  # a crashed page must not hide the test's own failure
        print(f"screenshot failed: {e}")
    context.close()


@pytest.fixture
def tab_url(serve_blocks: Callable[[Any], str]) -> str:
    """The 炼丹 tab on its own page. No model is loaded: the host is only built when work starts."""
    from lora_forge.ui.app import build_app

    return serve_blocks(build_app(ckpt=None))
