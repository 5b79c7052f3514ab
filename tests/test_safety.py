"""The server's files stay safe: path policy, every path box of the tab guarded, the API refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge.errors import ForgeError
from lora_forge.safety import Kind, PathPolicy, check_request
from tests.asgi import run


def test_policy_when_listening(tmp_path):
    inside = tmp_path / "data"
    (inside / "sets").mkdir(parents=True)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (inside / "link").symlink_to(outside)
    policy = PathPolicy.build(True, [inside], [uploads])
    assert policy.check(inside / "sets", for_write=True) == (inside / "sets").resolve()
    assert policy.check(f'"{inside / "new"}"', for_write=True) == (inside / "new").resolve()
    assert policy.check(uploads / "a.png") == (uploads / "a.png").resolve()
    with pytest.raises(ForgeError, match="may write"):
        policy.check(uploads / "a.png", for_write=True)
    for bad in (outside, inside / "link", inside / "link" / "x", "/etc/passwd"):
        with pytest.raises(ForgeError, match="outside the folders"):
            policy.check(bad)
    with pytest.raises(ForgeError, match=r"“\.\.”"):
        policy.check(f"{inside}/sets/../sets")
    with pytest.raises(ForgeError, match="enable-insecure-extension-access"):
        policy.check_lines(f"{inside}/sets\n{outside}")
    with pytest.raises(ForgeError, match="outside"):
        check_request(policy, {"body": {"data_dir": str(outside), "config": {"network_dim": 4}}})
    check_request(policy, {"body": {"data_dir": str(inside / "sets"), "preset": "/etc"}})
    # refused and missing answer alike: no existence probe
    answers = set()
    for bad in (outside, outside / "missing.safetensors"):
        with pytest.raises(ForgeError) as e:
            policy.check_value(Kind.SETTINGS, f"network_weights = {bad}")
        answers.add(str(e.value).replace(str(bad), "X"))
    assert len(answers) == 1
    # a dataset holding a link to an outside file is refused, whichever file it is
    (inside / "sets" / "a.txt").symlink_to(outside / "notes.txt")
    with pytest.raises(ForgeError, match="link to outside"):
        policy.check_value(Kind.READ, str(inside / "sets"))


def test_local_server_allows_any_path_but_limits_uploads(tmp_path):
    from lora_forge import uploads

    policy = PathPolicy.build(False, [tmp_path / "data"], max_upload_bytes=1000)
    assert policy.check("/etc/hosts") == Path("/etc/hosts")
    ledger = uploads.UploadLedger(tmp_path / "gradio")
    ledger.recording = True
    policy = PathPolicy.build(False, [tmp_path / "data"], max_upload_bytes=1000, uploads=ledger)
    big = tmp_path / "gradio" / ("a" * 40) / "big.zip"
    small = tmp_path / "gradio" / ("b" * 40) / "small.png"
    for p, n in ((big, 2000), (small, 10)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"0" * n)
    ledger.record([str(big), str(small)])
    got = uploads.accept(policy, {"name": str(small), "is_file": True, "orig_name": "mine.png"})
    assert got.name == str(small) and got.orig_name == "mine.png"
    got.discard()
    # used once: the page's File box still shows it, a second press sees no upload (and reads nothing)
    assert uploads.accept(policy, {"name": str(small), "is_file": True}) is None
    small.parent.mkdir()
    small.write_bytes(b"planted after use")
    assert uploads.accept(policy, {"name": str(small), "is_file": True}) is None
    with pytest.raises(ForgeError, match="limit is"):
        uploads.accept(policy, {"name": str(big), "is_file": True})
    assert not big.exists() and not big.parent.exists()  # a refused upload is removed
    with pytest.raises(ForgeError, match="uploaded with this request"):
        uploads.accept(policy, {"name": "/etc/hostname", "is_file": True})
    # any other upload-carrying input (a Gallery, a Video…): every is_file entry, however nested
    uploads.check_payload(policy, [[{"name": "x.png", "data": "data:image/png;base64,AAAA", "is_file": False}, "cap"]])
    with pytest.raises(ForgeError, match="uploaded with this request"):
        uploads.check_payload(policy, [[{"name": "/etc/hostname", "data": None, "is_file": True}, "caption"]])
    with pytest.raises(ForgeError, match="limit is"):  # base64 is measured before it is decoded
        uploads.accept(policy, {"name": "x.zip", "data": "data:application/zip;base64," + "A" * 4000})


def test_every_path_box_of_the_tab_is_guarded(tmp_path, monkeypatch):
    """Build the whole tab as the WebUI would with --listen and run each path handler with a path
    outside: gradio's error, never the handler. Every text-like input is declared in ui.guard."""
    import gradio as gr

    from lora_forge.settings import Settings
    from lora_forge.ui import guard, tab
    from lora_forge.ui.context import UiContext

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    policy = PathPolicy.build(True, [tmp_path / "datasets", tmp_path / "models"])
    ctx = UiContext(host=lambda: pytest.fail("no host needed"), settings=lambda: settings, paths=lambda: policy)
    blocks = tab.build(ctx)
    assert guard.undeclared_inputs(blocks) == []
    guarded = 0
    for fn in blocks.fns:
        for i, comp in enumerate(fn.inputs):
            kind = guard.declared(comp)
            if kind in (None, Kind.TEXT, Kind.UPLOAD) or fn.fn is None:
                continue
            args = [None] * len(fn.inputs)
            args[i] = "network_weights = /etc/x.safetensors" if kind is Kind.SETTINGS else "/etc"
            with pytest.raises(gr.Error, match="outside the folders"):
                result = fn.fn(*args)
                if hasattr(result, "__next__"):
                    next(result)
            guarded += 1
    ids = {getattr(c, "elem_id", None) for c in blocks.blocks.values()}
    assert "lora_forge_dataset_dir" in ids and guarded >= 10


def test_api_refuses_a_path_outside_when_listening(tmp_path):
    """Registered on an app that already answered a request (as the WebUI's has when extensions
    add routes): refusals and a ForgeError from anywhere in a route still answer 400."""
    import types

    import httpx
    from fastapi import FastAPI

    from lora_forge import api
    from lora_forge.app import train as train_app
    from lora_forge.settings import Settings

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    policy = PathPolicy.build(True, [tmp_path / "datasets"])
    app = FastAPI()
    app.get("/ping")(lambda: "pong")
    hosts: list[object] = [types.SimpleNamespace(name="test", api_enabled=lambda: True, api_access=lambda u, p: True)]

    def host():
        if isinstance(hosts[0], Exception):
            raise hosts[0]
        return hosts[0]

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            await client.get("/ping")  # the app's middleware stack is built now
            api.register(app, host=host, settings=lambda: settings, paths=lambda: policy)
            out = [await client.post(f"{api.PREFIX}/train", json={"data_dir": "/etc", "config": {}})]
            out.append(await client.get(f"{api.PREFIX}/version"))
            hosts[0] = ForgeError("no model loaded")
            out.append(await client.get(f"{api.PREFIX}/train/runs"))
            return out

    runs_before = len(train_app.runs())
    refused, fine, no_model = run(calls())
    assert refused.status_code == 400 and "outside the folders" in refused.json()["error"]
    assert len(train_app.runs()) == runs_before
    assert fine.status_code == 200
    assert no_model.status_code == 400 and no_model.json() == {"error": "no model loaded"}


def test_webui_started_with_listen_refuses_paths_outside(tmp_path, tiny_host):
    """The stand-in WebUI with --listen: cmd_opts.disable_extension_access → the policy is on for
    the tab and for the API; --enable-insecure-extension-access would be the WebUI's way out."""
    import sys

    import httpx
    from fastapi import FastAPI

    from tests.test_webui_host import ROOT, STUB_DIR

    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    import webui_stub

    lora_dir = tmp_path / "webui" / "models" / "Lora"
    stub = webui_stub.start(
        tmp_path / "webui",
        tiny_host.sd_model(),
        argv=["--listen", "--api", "--lora-dir", str(lora_dir)],
        extensions={"lora-forge": ROOT},
    )
    try:
        from lora_forge.host import webui

        policy = webui.path_policy()
        assert policy.enforced
        assert policy.check(tmp_path / "webui" / "data-folder", for_write=True)
        with pytest.raises(ForgeError, match="enable-insecure-extension-access"):
            policy.check(tmp_path / "elsewhere")
        app = FastAPI()
        stub.app_started(app)

        async def post():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://webui") as client:
                return await client.post("/lora_forge/v1/train", json={"data_dir": str(tmp_path / "elsewhere")})

        r = run(post())
        assert r.status_code == 400 and "outside the folders" in r.json()["error"]
    finally:
        from modules import shared

        shared.sd_model = None
