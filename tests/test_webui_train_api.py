"""The training HTTP API on the WebUI's FastAPI app (stand-in WebUI, real tiny model): only with
--api, behind --api-auth, start → progress → files; stop; bad input as HTTP 400 with a message."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from tests.asgi import request
from tests.test_webui_train import FAST, dataset, start_stub  # noqa: F401 - fixtures

AUTH = {"Authorization": "Basic " + base64.b64encode(b"cloud:s3cret").decode()}


def call(app, method: str, path: str, **kw):
    return request(app, method, path, **kw)


@pytest.fixture
def api_app(tmp_path: Path, tiny_host):
    from fastapi import FastAPI

    stub = start_stub(tmp_path / "webui", tiny_host.sd_model(), ["--api", "--api-auth", "cloud:s3cret"])
    app = FastAPI()
    stub.app_started(app)
    yield app
    from modules import shared

    shared.sd_model = None
    shared.cmd_opts.api = False
    shared.cmd_opts.api_auth = None


def test_routes_need_api_auth(api_app, dataset):  # noqa: F811
    assert call(api_app, "GET", "/lora_forge/v1/train/runs").status_code == 401
    bad = {"Authorization": "Basic " + base64.b64encode(b"cloud:wrong").decode()}
    assert call(api_app, "GET", "/lora_forge/v1/train/runs", headers=bad).status_code == 401
    assert call(api_app, "GET", "/lora_forge/v1/train/runs", headers=AUTH).status_code == 200


def test_start_poll_files_and_stop_over_http(api_app, dataset):  # noqa: F811
    body = {"data_dir": str(dataset), "preset": "custom", "config": {**FAST, "sample_every_n_steps": 0}}
    r = call(api_app, "POST", "/lora_forge/v1/train", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    again = call(api_app, "POST", "/lora_forge/v1/train", json=body, headers=AUTH)
    assert again.status_code == 400 and "still going" in again.json()["error"]
    deadline = time.time() + 300
    while True:
        status = call(api_app, "GET", f"/lora_forge/v1/train/runs/{run_id}", headers=AUTH).json()
        if status["state"] in ("finished", "stopped", "failed") or time.time() > deadline:
            break
        time.sleep(0.3)
    assert status["state"] == "finished", status
    assert len(status["losses"]) == status["total"] == 8
    files = call(api_app, "GET", "/lora_forge/v1/train/files", headers=AUTH).json()
    assert {f["name"] for f in files} >= {"zkw", "zkw-000001", "zkw-000002"}
    listed = call(api_app, "GET", "/lora_forge/v1/train/runs", headers=AUTH).json()
    assert [r["id"] for r in listed][-1] == run_id and "losses" not in listed[-1]

    body["config"] = {**body["config"], "max_train_epochs": 6}
    run_id = call(api_app, "POST", "/lora_forge/v1/train", json=body, headers=AUTH).json()["id"]
    stopped = call(api_app, "POST", f"/lora_forge/v1/train/runs/{run_id}/stop", headers=AUTH)
    assert stopped.status_code == 200
    from lora_forge.app.train import RUNS

    final = RUNS.wait(run_id, timeout=300)
    assert final.state == "stopped" and final.step < final.total and final.name == "zkw-2"


def test_bad_input_is_http_400_with_the_message(api_app, tmp_path):
    body = {"data_dir": str(tmp_path / "missing"), "config": FAST}
    r = call(api_app, "POST", "/lora_forge/v1/train", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]
    assert call(api_app, "GET", "/lora_forge/v1/train/runs/nope", headers=AUTH).status_code == 400


def test_routes_answer_only_with_api(tmp_path, tiny_host):
    from fastapi import FastAPI

    stub = start_stub(tmp_path / "webui", tiny_host.sd_model())
    app = FastAPI()
    stub.app_started(app)
    try:
        r = call(app, "GET", "/lora_forge/v1/train/runs")
        assert r.status_code == 404 and "--api" in r.json()["detail"]
    finally:
        from modules import shared

        shared.sd_model = None
