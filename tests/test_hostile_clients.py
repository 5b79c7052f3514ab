"""A hostile client against the listening page (`python -m lora_forge ui --listen`, served by
ui.app.launch on loopback) and the HTTP API: raw HTTP, httpx and gradio_client, every class of
issue 16 items 1-4. A canary folder lies outside the allowed roots; whatever is tried, its bytes
never appear in a response or a file under the roots, nothing in it is copied, moved or changed,
and a refused path answers exactly as a missing one does (no existence probe). Evidence is
content and listings, never atimes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lora_forge.settings import Settings
from tests.asgi import run
from tests.browser import close_blocks, free_port

TOKEN = f"CANARY-{secrets.token_hex(8)}"
ROOT = Path(__file__).resolve().parent.parent


def _png(colour: tuple[int, int, int], text: bytes = b"") -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("canary", text.decode())
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _safetensors(metadata: dict[str, str]) -> bytes:
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    raw = header.encode()
    return len(raw).to_bytes(8, "little") + raw + b"\0\0\0\0"


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under `folder`: kind, content hash, size, mtime, link target (no atime)."""
    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", sorted(p.name for p in path.iterdir()))
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def _files_holding(folder: Path, needles: list[bytes], since: float = 0.0) -> list[str]:
    hits = []
    for path in folder.rglob("*") if folder.is_dir() else []:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_mtime < since:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if any(n in data for n in needles):
            hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Allowed roots (datasets, models, the model's folder) and an outside canary folder."""
    base = tmp_path_factory.mktemp("hostile")
    allowed = {"datasets": base / "datasets", "models": base / "models", "ckpt": base / "sd"}
    for p in allowed.values():
        p.mkdir()
    outside = base / "outside"
    (outside / "run").mkdir(parents=True)
    (outside / "wd14").mkdir()
    (outside / "photos").mkdir()
    (outside / "notes.txt").write_text(f"secret notes {TOKEN}\n", encoding="utf-8")
    (outside / "photo.png").write_bytes(_png((200, 10, 10), TOKEN.encode()))
    (outside / "photos" / "p.png").write_bytes(_png((10, 200, 10), TOKEN.encode()))
    (outside / "model.safetensors").write_bytes(_safetensors({"canary": TOKEN, "ss_network_dim": "4"}))
    (outside / "run" / "other-lora.safetensors").write_bytes(_safetensors({"canary": TOKEN}))
    (outside / "wd14" / "model.onnx").write_bytes(TOKEN.encode())
    (outside / "wd14" / "selected_tags.csv").write_text(f"tag_id,name\n0,{TOKEN}\n", encoding="utf-8")
    # a dataset inside whose caption is a link to the outside notes
    linked = allowed["datasets"] / "linked"
    linked.mkdir()
    (linked / "a.png").write_bytes(_png((1, 2, 3)))
    (linked / "a.txt").symlink_to(outside / "notes.txt")
    plain = allowed["datasets"] / "plain"
    plain.mkdir()
    (plain / "b.png").write_bytes(_png((4, 5, 6)))
    (plain / "b.txt").write_text("1girl, solo\n", encoding="utf-8")
    yield {"base": base, "outside": outside, "before": _snapshot(outside), "started": time.time(), **allowed}


@pytest.fixture(scope="module")
def page(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The standalone page with --listen's policy, served as `python -m lora_forge ui` serves it."""
    from lora_forge.ui.app import build_app, launch

    settings = Settings(models_dir=world["models"], dataset_dir=world["datasets"])
    demo = build_app(
        world["ckpt"] / "model.safetensors", settings=lambda: settings, listen=True, lora_dir=world["models"] / "Lora"
    )
    port = free_port()
    launch(demo, "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the page did not start"
        time.sleep(0.2)
    seen: list[bytes] = []
    yield {"demo": demo, "url": url, "port": port, "seen": seen}
    close_blocks(demo)


def _fn(demo: Any, trigger_id: str, *input_ids: str) -> int:
    """The index of the handler fired by `trigger_id` that takes all of `input_ids`."""
    for i, dep in enumerate(demo.config["dependencies"]):
        fn = demo.fns[i]
        ids = {getattr(c, "elem_id", None) for c in fn.inputs}
        triggers = {
            getattr(demo.blocks.get(t[0] if isinstance(t, list) else t), "elem_id", None) for t in dep["targets"]
        }
        if fn.fn is not None and trigger_id in triggers and set(input_ids) <= ids:
            return i
    raise AssertionError(f"no handler for {trigger_id} with {input_ids}")


def _predict(page: dict[str, Any], fn_index: int, values: dict[str, Any]) -> httpx.Response:
    """POST /run/predict with every input at its default and `values` (by elem_id) set, raw."""
    demo = page["demo"]
    data = []
    for comp in demo.fns[fn_index].inputs:
        elem_id = getattr(comp, "elem_id", None)
        data.append(values[elem_id] if elem_id in values else getattr(comp, "value", None))
    body = {"fn_index": fn_index, "data": data, "session_hash": secrets.token_hex(5)}
    r = httpx.post(page["url"] + "/run/predict", json=body, timeout=120)
    page["seen"].append(r.content)
    return r


def _error(r: httpx.Response) -> str:
    """The message a refused call showed (gradio's error, or the handler's own **Error:** text)."""
    payload = r.json()
    if payload.get("error"):
        return str(payload["error"])
    return " ".join(str(x) for x in payload.get("data", []) if isinstance(x, str))


def _same_answer(a: httpx.Response, b: httpx.Response, path_a: Path, path_b: Path) -> None:
    assert a.status_code == b.status_code
    assert _error(a).replace(str(path_a), "P") == _error(b).replace(str(path_b), "P") != ""


def test_upload_is_file_trick_is_refused(page: dict[str, Any], world: dict[str, Any]) -> None:
    """{"name": SERVER_PATH, "is_file": true} in File inputs: refused, nothing copied."""
    demo, outside = page["demo"], world["outside"]
    prepare = _fn(demo, "lora_forge_prepare_run", "lora_forge_prepare_files")
    inspect = _fn(demo, "lora_forge_inspect_button", "lora_forge_inspect_files")
    out = world["datasets"] / "from-trick"
    for target in (outside / "notes.txt", outside / "photo.png", Path("/etc/passwd")):
        trick = [{"name": str(target), "is_file": True, "data": None, "orig_name": "x.png"}]
        r = _predict(page, prepare, {"lora_forge_prepare_files": trick, "lora_forge_prepare_out": str(out)})
        assert "uploaded with this request" in _error(r)
    trick = [{"name": str(outside / "model.safetensors"), "is_file": True, "data": None}]
    r = _predict(page, inspect, {"lora_forge_inspect_files": trick})
    assert "uploaded with this request" in _error(r) and TOKEN not in r.text
    # a path shaped like an upload (<upload folder>/<40 hex>/name) that /upload never wrote
    from lora_forge.uploads import default_upload_dir

    fake = default_upload_dir() / ("f" * 40) / "p.png"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_bytes(_png((9, 9, 9), TOKEN.encode()))
    r = _predict(page, prepare, {"lora_forge_prepare_files": [{"name": str(fake), "is_file": True, "data": None}]})
    assert "uploaded with this request" in _error(r) and fake.exists()  # not ours: not removed either
    fake.unlink()
    fake.parent.rmdir()
    assert not out.exists() or not _files_holding(out, [TOKEN.encode()])


def test_a_real_upload_works_and_is_removed_after(page: dict[str, Any], world: dict[str, Any], tmp_path) -> None:
    """gradio_client uploads through /upload as the browser does: accepted once, removed after,
    and the page's gallery images come back through /file= (our outputs are served)."""
    import gradio_client.client as gc

    gc.send_telemetry = lambda *a, **k: None
    photo = tmp_path / f"mine-{secrets.token_hex(4)}.png"
    photo.write_bytes(_png((30, 60, 90)))
    demo = page["demo"]
    prepare = _fn(demo, "lora_forge_prepare_run", "lora_forge_prepare_files")
    out = world["datasets"] / "uploaded"
    client = gc.Client(page["url"] + "/", verbose=False)
    inputs = [c for c in demo.fns[prepare].inputs if c.__class__.__name__ != "State"]
    given = {"lora_forge_prepare_files": [str(photo)], "lora_forge_prepare_out": str(out)}
    given["lora_forge_prepare_face_crops"] = False  # no face model download
    args = [given.get(comp.elem_id, comp.value) for comp in inputs]
    result = client.predict(*args, fn_index=prepare)  # the gallery's images come back through /file=
    assert "**Error:**" not in str(result[0]) and "1 images written" in str(result[0]), result[0]
    assert (out / ".lora_forge" / "uploads").is_dir()
    assert any(p.suffix in (".jpg", ".png") for p in out.iterdir() if p.is_file())
    from lora_forge.uploads import default_upload_dir

    assert not list(default_upload_dir().rglob(photo.name))  # the upload left the temp folder


def test_every_path_input_is_refused_alike_whether_it_exists_or_not(
    page: dict[str, Any], world: dict[str, Any]
) -> None:
    demo, outside, missing = page["demo"], world["outside"], world["outside"] / "no-such"
    cases = [
        (_fn(demo, "lora_forge_prepare_run", "lora_forge_prepare_sources"), "lora_forge_prepare_sources", "photos"),
        (_fn(demo, "lora_forge_prepare_run", "lora_forge_prepare_out"), "lora_forge_prepare_out", "run"),
        (_fn(demo, "lora_forge_tagger_run", "lora_forge_tagger_folder"), "lora_forge_tagger_folder", "wd14"),
        (_fn(demo, "lora_forge_tagger_run", "lora_forge_tagger_model"), "lora_forge_tagger_model", "wd14"),
        (_fn(demo, "lora_forge_grid_go", "lora_forge_grid_run"), "lora_forge_grid_run", "run"),
        (_fn(demo, "lora_forge_grid_go", "lora_forge_grid_tagger"), "lora_forge_grid_tagger", "wd14"),
        (_fn(demo, "lora_forge_grid_go", "lora_forge_grid_paths"), "lora_forge_grid_paths", "model.safetensors"),
        (
            _fn(demo, "lora_forge_inspect_button", "lora_forge_inspect_paths"),
            "lora_forge_inspect_paths",
            "model.safetensors",
        ),
        (
            _fn(demo, "lora_forge_grid_keep", "lora_forge_grid_keep_file"),
            "lora_forge_grid_keep_file",
            "model.safetensors",
        ),
        (_fn(demo, "lora_forge_train_start", "lora_forge_dataset_dir"), "lora_forge_dataset_dir", "photos"),
    ]
    cases.append(
        (
            _fn(demo, "lora_forge_editor_translations", "lora_forge_editor_translations"),
            "lora_forge_editor_translations",
            "notes.txt",
        )
    )
    for fn_index, elem_id, name in cases:
        values: dict[str, Any] = {"lora_forge_dataset_dir": str(world["datasets"] / "plain")}
        if elem_id == "lora_forge_grid_keep_file":
            values["lora_forge_grid_trash"] = True
        there = _predict(page, fn_index, {**values, elem_id: str(outside / name)})
        gone = _predict(page, fn_index, {**values, elem_id: str(missing / name)})
        assert "outside the folders" in _error(there), (elem_id, _error(there))
        _same_answer(there, gone, outside / name, missing / name)


def test_config_keys_naming_files_are_held_to_the_roots(page: dict[str, Any], world: dict[str, Any]) -> None:
    """network_weights and resume in the more-settings box: refused alike, existing or not."""
    demo, outside = page["demo"], world["outside"]
    start = _fn(demo, "lora_forge_train_start", "lora_forge_train_extra")
    data = {"lora_forge_dataset_dir": str(world["datasets"] / "plain")}
    for key, name in (
        ("network_weights", "model.safetensors"),
        ("resume", "run"),
        ("sample_prompts_file", "notes.txt"),
    ):
        there = _predict(page, start, {**data, "lora_forge_train_extra": f"{key} = {outside / name}"})
        gone = _predict(page, start, {**data, "lora_forge_train_extra": f"{key} = {outside / 'x' / name}"})
        assert "outside the folders" in _error(there), _error(there)
        _same_answer(there, gone, outside / name, outside / "x" / name)


def test_a_dataset_linking_outside_is_not_followed(page: dict[str, Any], world: dict[str, Any]) -> None:
    demo = page["demo"]
    linked = str(world["datasets"] / "linked")
    tried = 0
    for trigger, input_id in (
        ("lora_forge_editor_load", "lora_forge_dataset_dir"),
        ("lora_forge_train_start", "lora_forge_dataset_dir"),
        ("lora_forge_tagger_run", "lora_forge_dataset_dir"),
    ):
        try:
            fn_index = _fn(demo, trigger, input_id)
        except AssertionError:
            continue
        r = _predict(page, fn_index, {input_id: linked})
        assert "link to outside" in _error(r) and TOKEN not in r.text
        tried += 1
    assert tried >= 2


def test_file_route_serves_only_our_outputs_and_fetches_no_url(page: dict[str, Any], world: dict[str, Any]) -> None:
    hits: list[str] = []

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(TOKEN.encode())

        def do_HEAD(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url, other_url = page["url"], f"http://127.0.0.1:{other.server_address[1]}"
    try:
        for target in (
            f"/file={url}/config",  # froze the page for good
            f"/file={other_url}/secret",
            f"/file/{other_url}/secret",
            f"/proxy={other_url}/secret",
            f"/file={ROOT / 'README.md'}",
            "/file=README.md",
            f"/file={world['outside'] / 'notes.txt'}",
            f"/file={world['datasets'] / 'plain' / 'b.txt'}",
        ):
            r = httpx.get(url + target, timeout=10)
            page["seen"].append(r.content)
            assert r.status_code in (403, 404), (target, r.status_code)
        assert hits == []
        assert httpx.get(url + "/config", timeout=10).status_code == 200  # the page still answers
    finally:
        other.shutdown()


def test_upload_route_refuses_an_oversized_body_before_reading_it(page: dict[str, Any]) -> None:
    port = page["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 3000000000\r\n\r\n--b\r\n"
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


CONTENT_TYPES = [
    None,
    "application/json",
    "APPLICATION/JSON",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "text/plain",
    "application/x-www-form-urlencoded",
]


def test_api_holds_every_body_to_the_roots_whatever_its_content_type(world: dict[str, Any]) -> None:
    import types

    from fastapi import FastAPI

    from lora_forge import api
    from lora_forge.app import train as train_app
    from lora_forge.safety import PathPolicy

    settings = Settings(models_dir=world["models"], dataset_dir=world["datasets"])
    policy = PathPolicy.build(True, [world["datasets"], world["models"]], [world["ckpt"]])
    app = FastAPI()
    api.register(
        app,
        host=lambda: types.SimpleNamespace(name="test", api_enabled=lambda: True, api_access=lambda u, p: True),
        settings=lambda: settings,
        paths=lambda: policy,
    )
    outside, plain = world["outside"], str(world["datasets"] / "plain")
    bodies = [
        {"data_dir": str(outside / "photos")},
        {"data_dir": plain, "resume": str(outside / "run")},
        {"data_dir": plain, "config": {"network_weights": str(outside / "model.safetensors")}},
        {"data_dir": plain, "config": {"resume": str(outside / "run")}},
        {"data_dir": str(world["datasets"] / "linked")},
    ]
    runs_before = len(train_app.runs())

    async def calls() -> list[httpx.Response]:
        out = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for body in bodies:
                for ctype in CONTENT_TYPES:
                    headers = {"content-type": ctype} if ctype else {}
                    raw = json.dumps(body).encode()
                    r = await client.post(f"{api.PREFIX}/train", content=raw, headers=headers)
                    if ctype is None:  # httpx adds none for raw content; be sure
                        assert "content-type" not in r.request.headers
                    out.append((body, ctype, r))
            for q in (str(outside / "notes.txt"), "/etc/passwd"):
                out.append(({}, "query", await client.get(f"{api.PREFIX}/train/runs/{q}")))
        return out

    answers = run(calls())
    for body, ctype, r in answers:
        assert 400 <= r.status_code < 500, (body, ctype, r.status_code, r.text)
        assert TOKEN not in r.text
    assert len(train_app.runs()) == runs_before

    # an outside file that exists and one that does not: the same answer
    async def probe() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [
                await client.post(
                    f"{api.PREFIX}/train", json={"data_dir": plain, "config": {"network_weights": str(p)}}
                )
                for p in (outside / "model.safetensors", outside / "gone" / "model.safetensors")
            ]

    there, gone = run(probe())
    assert there.status_code == gone.status_code == 400
    assert there.json()["error"].replace(str(outside / "model.safetensors"), "P") == gone.json()["error"].replace(
        str(outside / "gone" / "model.safetensors"), "P"
    )


def test_inside_the_webui_with_listen(world: dict[str, Any], tiny_host: Any, tmp_path: Path) -> None:
    """The stand-in WebUI with --listen --api, its page launched as webui.py launches it and
    on_app_started run afterwards (the app has answered requests by then): the tab's uploads are
    only those the WebUI's /upload wrote, once; the API answers 400 over real HTTP."""
    import sys

    from tests.browser import launch_blocks, webui_like_page
    from tests.test_webui_host import STUB_DIR

    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    import webui_stub

    from lora_forge import uploads

    webui = tmp_path / "webui"
    stub = webui_stub.start(webui, tiny_host.sd_model(), argv=["--listen", "--api"], extensions={"lora-forge": ROOT})
    demo = webui_like_page(stub.build_ui())
    try:
        url = launch_blocks(demo).rstrip("/")
        stub.app_started(demo.server_app, demo)
        page = {"demo": demo, "url": url, "seen": []}
        prepare = _fn(demo, "lora_forge_prepare_run", "lora_forge_prepare_files")
        out = webui / "outputs" / "set"
        trick = [{"name": str(world["outside"] / "photo.png"), "is_file": True, "data": None}]
        r = _predict(page, prepare, {"lora_forge_prepare_files": trick, "lora_forge_prepare_out": str(out)})
        assert "uploaded with this request" in _error(r)
        # shaped like an upload, in the WebUI's upload folder, but not written by its /upload
        fake = Path(demo.server_app.uploaded_file_dir) / ("e" * 40) / "p.png"
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_bytes(_png((9, 9, 9), TOKEN.encode()))
        r = _predict(page, prepare, {"lora_forge_prepare_files": [{"name": str(fake), "is_file": True}]})
        assert "uploaded with this request" in _error(r)
        fake.unlink()
        fake.parent.rmdir()
        # an upload the WebUI's /upload wrote: accepted once, then gone
        up = httpx.post(url + "/upload", files={"files": ("mine.png", _png((7, 8, 9)), "image/png")}, timeout=30)
        name = up.json()[0]
        given = {"lora_forge_prepare_out": str(out), "lora_forge_prepare_face_crops": False}
        ok = _predict(page, prepare, {**given, "lora_forge_prepare_files": [{"name": name, "is_file": True}]})
        assert "1 images written" in _error(ok), _error(ok)
        assert not Path(name).exists()
        again = _predict(page, prepare, {**given, "lora_forge_prepare_files": [{"name": name, "is_file": True}]})
        assert "drop some images" in _error(again)  # the used upload is gone: nothing to prepare
        # the API on the same server, over HTTP, every Content-Type
        for ctype in CONTENT_TYPES:
            body = json.dumps({"data_dir": str(out), "config": {"network_weights": str(world["outside"] / "x")}})
            r = httpx.post(
                url + "/lora_forge/v1/train", content=body, headers={"content-type": ctype} if ctype else {}, timeout=30
            )
            page["seen"].append(r.content)
            assert 400 <= r.status_code < 500, (ctype, r.status_code, r.text)
        assert not any(TOKEN.encode() in seen for seen in page["seen"])
    finally:
        close_blocks(demo)
        uploads._installed = None  # the next test's page is another app
        from modules import shared

        shared.sd_model = None


def test_nothing_outside_was_read_into_copied_to_or_changed(page: dict[str, Any], world: dict[str, Any]) -> None:
    """Runs last in this module: the outside folder is as it was, its bytes are nowhere."""
    from lora_forge.uploads import default_upload_dir

    assert _snapshot(world["outside"]) == world["before"]
    assert not any(TOKEN.encode() in seen for seen in page["seen"])
    needles = [TOKEN.encode()]
    for root in (world["datasets"], world["models"], world["ckpt"]):
        assert _files_holding(root, needles) == []
    assert _files_holding(default_upload_dir(), needles, since=world["started"]) == []
