"""Open the 炼丹 tab in a browser without the WebUI (`python -m lora_forge ui`).

For headless servers (reach it through an SSH tunnel, or --listen) and for browser tests. The host
is the standalone one over --ckpt; it is only built when a section starts work, so the page opens
instantly and a missing checkpoint is reported where the user pressed the button.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_forge import i18n
from lora_forge.errors import ForgeError
from lora_forge.host.base import Host
from lora_forge.settings import Settings

EXTENSION_ROOT = Path(__file__).resolve().parents[2]
TITLE = "LoRA Forge (炼丹炉)"


# The few WebUI script.js globals extension scripts use, for our own page (defined only if missing).
# Scripts run after gradio has mounted the page, so onUiLoaded callbacks run at once.
WEBUI_JS_SHIMS = """
window.gradioApp = window.gradioApp || function () {
    var app = document.querySelector("gradio-app");
    return app ? (app.shadowRoot || app) : document;
};
window.onUiLoaded = window.onUiLoaded || function (callback) { callback(); };
if (!window.onAfterUiUpdate) {
    var lfUpdateCallbacks = [];
    var lfTimer = null;
    new MutationObserver(function () {
        clearTimeout(lfTimer);
        lfTimer = setTimeout(function () { lfUpdateCallbacks.forEach(function (cb) { cb(); }); }, 200);
    }).observe(document.body, {childList: true, subtree: true});
    window.onAfterUiUpdate = function (callback) { lfUpdateCallbacks.push(callback); };
    window.onUiUpdate = window.onUiUpdate || window.onAfterUiUpdate;
}
"""


def page_assets(root: Path = EXTENSION_ROOT) -> tuple[str, str]:
    """The extension's style.css and javascript/*.js (after the shims), as the WebUI would inject them."""
    css_file = root / "style.css"
    css = css_file.read_text(encoding="utf-8") if css_file.is_file() else ""
    js_dir = root / "javascript"
    scripts = [p.read_text(encoding="utf-8") for p in sorted(js_dir.glob("*.js"))] if js_dir.is_dir() else []
    return css, "\n".join([WEBUI_JS_SHIMS, *scripts])


class StandaloneHosts:
    """The page's host: the checkpoint is loaded on first use, then the same host is returned."""

    def __init__(
        self,
        ckpt: Path | None,
        vae: Path | None = None,
        clip_folder: Path | None = None,
        device: str = "cpu",
        lora_dir: Path | None = None,
    ) -> None:
        self._args = (ckpt, vae, clip_folder, device, lora_dir)
        self._host: Host | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Host:
        with self._lock:  # two sections starting work at once must not load the model twice
            if self._host is None:
                ckpt, vae, clip_folder, device, lora_dir = self._args
                if ckpt is None:
                    raise ForgeError("no model loaded: start the UI with --ckpt FILE (a .safetensors checkpoint)")
                from lora_forge.host.standalone import StandaloneHost

                self._host = StandaloneHost(ckpt, vae=vae, clip_folder=clip_folder, device=device, lora_dir=lora_dir)
            return self._host


def standalone_policy(
    settings: Callable[[], Settings], listen: bool, ckpt: Path | None, lora_dir: Path | None, uploads: Any = None
) -> Callable[[], Any]:
    """--listen plays the WebUI's --listen: only our folders, the model's and the Lora folder.
    `uploads` (an UploadLedger): the files this page's /upload wrote, the only uploads accepted."""
    from lora_forge.safety import PathPolicy

    def policy() -> PathPolicy:
        s = settings()
        model_dir = ckpt.parent if ckpt is not None else None
        loras = lora_dir or (model_dir / "Lora" if model_dir is not None else None)
        return PathPolicy.build(listen, [s.dataset_dir, s.models_dir, loras], [model_dir], uploads=uploads)

    return policy


def build_app(
    ckpt: Path | None,
    vae: Path | None = None,
    clip_folder: Path | None = None,
    device: str = "cpu",
    lora_dir: Path | None = None,
    settings: Callable[[], Settings] = Settings.from_env,
    listen: bool = False,
    language: str | None = None,
) -> Any:
    """The page: the same tab the WebUI shows, plus the extension's css and js. With `listen`
    path inputs are held to our folders, the checkpoint's and the Lora folder (safety.py).
    `language` ("zh_CN"; None = LORA_FORGE_LANG, else English) is what the WebUI's Localization
    setting is inside the WebUI."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext
    from lora_forge.ui.subblocks import rendered_elsewhere
    from lora_forge.ui.translate import localize_components, page_localization_js
    from lora_forge.uploads import UploadLedger

    css, js = page_assets()
    uploads = UploadLedger()
    ctx = UiContext(
        host=StandaloneHosts(ckpt, vae, clip_folder, device, lora_dir),
        settings=settings,
        paths=standalone_policy(settings, listen, ckpt, lora_dir, uploads),
        language=(lambda: language) if language else i18n.env_language,
    )
    with rendered_elsewhere():  # rendered into the page below, which gradio sets up when it launches
        tab_blocks = tab.build(ctx)
    # the WebUI translates the tab's own words in the browser; our page does it here, once, and
    # the choices (values the handlers read) in the browser as the WebUI does
    localize_components(tab_blocks, i18n.translator(ctx.language()))
    js += page_localization_js(ctx.language())
    with gr.Blocks(title=TITLE, css=css, analytics_enabled=False) as demo:
        tab_blocks.render()
        if js.strip():
            # gradio 3.41 has no <head> hook: once the page has loaded, add the scripts as a
            # <script> element, so they run in global scope as the WebUI's <script> tags do.
            inject = "document.head.appendChild(Object.assign(document.createElement('script'), {text: %s}))"
            demo.load(None, None, None, _js="() => { " + inject % json.dumps(js) + "; }")
    demo.lora_forge_uploads = uploads  # launch() puts the ServerGate in front with it
    return demo


def launch(demo: Any, host: str, port: int, block: bool = True) -> Any:
    """Serve the page behind ServerGate (lora_forge.uploads): /file= serves only what gradio made
    for our outputs and fetches no URL, /upload is recorded and size-limited before gradio reads it."""
    from starlette.middleware import Middleware

    from lora_forge.safety import MAX_UPLOAD_BYTES
    from lora_forge.uploads import ServerGate, UploadLedger

    ledger = getattr(demo, "lora_forge_uploads", None) or UploadLedger()
    ledger.recording = True  # every upload this page accepts is one its /upload answered
    gate = Middleware(ServerGate, ledger=ledger, max_bytes=MAX_UPLOAD_BYTES)
    demo = lift_relay_timeout(demo.queue(concurrency_count=4))
    demo.launch(
        server_name=host,
        server_port=port,
        inbrowser=False,
        quiet=True,
        prevent_thread_lock=not block,
        app_kwargs={"middleware": [gate]},
    )
    return demo


def lift_relay_timeout(demo: Any) -> Any:
    """gradio 3.41's queue relays every click to its own /api/predict through an httpx client;
    httpx 0.25+ gives that client a 5 s read timeout, so a click that works longer (Resume loading
    the checkpoint) showed "Error" while the work went on. The WebUI pins httpx 0.24.1, which has
    no such timeout; our own page lifts it the same way. Call after demo.queue()."""
    queue = getattr(demo, "_queue", None)
    if queue is None or not hasattr(queue, "queue_client"):
        return demo
    start = queue.start

    async def start_without_timeout(ssl_verify: bool = True) -> None:
        import httpx

        await start(ssl_verify)
        old, queue.queue_client = queue.queue_client, httpx.AsyncClient(verify=ssl_verify, timeout=None)
        if old is not None:
            await old.aclose()

    queue.start = start_without_timeout
    return demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, help="checkpoint (.safetensors) to train on and render with")
    parser.add_argument("--vae", type=Path, help="a separate VAE file")
    parser.add_argument("--clip-folder", type=Path, help="CLIP tokenizer/config folder when not in the HF cache")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--lora-dir", type=Path, help="where trained LoRA files go (default: Lora/ beside --ckpt)")
    parser.add_argument("--port", type=int, default=7870, help="port (default 7870; another one when it is taken)")
    parser.add_argument(
        "--listen",
        action="store_true",
        help="listen on all interfaces instead of 127.0.0.1 (anyone who can reach the port can use it)",
    )
    parser.add_argument(
        "--lang",
        help=f"language of the tab's messages: zh_CN or en (default: ${i18n.ENV_LANG}, else en)",
    )


def check_port(host: str, port: int) -> None:
    """ForgeError naming --port when something already listens on `port` (gradio's own error is a
    traceback that ends "Cannot find empty port"). No SO_REUSEADDR: on Windows it would let the bind
    succeed over a listening socket."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ForgeError(
                f"port {port} is taken ({e.strerror or e}): another program, or LoRA Forge already running there; "
                f"start with --port N to use another one, e.g. --port {port + 1}"
            ) from e


def run(args: argparse.Namespace) -> int:
    for label, path in (("--ckpt", args.ckpt), ("--vae", args.vae)):
        if path is not None and not path.is_file():
            raise ForgeError(f"{label} {path}: no such file")
    if args.clip_folder is not None and not args.clip_folder.is_dir():
        raise ForgeError(f"--clip-folder {args.clip_folder}: no such folder")
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    check_port(host, args.port)  # before the page is built: a taken port is said in one line, not a traceback
    demo = build_app(
        args.ckpt, args.vae, args.clip_folder, args.device, args.lora_dir, listen=args.listen, language=args.lang
    )
    print(f"LoRA Forge UI on http://{host}:{args.port}/ (Ctrl-C to stop)")
    launch(demo, host, args.port)
    return 0
