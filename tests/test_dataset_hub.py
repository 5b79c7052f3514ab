"""The face model arrives through the real huggingface_hub client, from a loopback stand-in for the hub.

The server answers the two requests hf_hub_download makes for one file (HEAD for the metadata, GET
with an optional Range for the bytes) with the headers the hub sends: X-Repo-Commit, ETag,
Content-Length, Accept-Ranges; 206 + Content-Range for a resumed transfer.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lora_forge import hub
from lora_forge.dataset import faces
from lora_forge.dataset.manifest import Manifest
from lora_forge.dataset.prepare import PrepareOptions, prepare
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings
from tests.dataset_support import YUNET, contains, needs_yunet, place_astronaut

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PATH = f"/{faces.YUNET_REPO}/resolve/main/{faces.YUNET_FILE}"


class FakeHub:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.etag = hashlib.sha256(payload).hexdigest()
        self.requests: list[tuple[str, str, str | None]] = []
        self.missing = False  # answer 404, as a mirror without the repo does
        hub_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                hub_self.requests.append((self.command, self.path, self.headers.get("Range")))
                if hub_self.missing or self.path.split("?")[0] != PATH:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, start = hub_self.payload, 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub_self.etag}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if body:
                    self.wfile.write(data[start:])

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    if not YUNET.is_file():
        pytest.skip(f"YuNet test model not found at {YUNET}")
    server = FakeHub(YUNET.read_bytes())
    yield server
    server.close()


def test_download_through_the_configured_endpoint(tmp_path, fake_hub):
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    path = faces.yunet_path(settings)
    assert path == hub.local_folder(settings, faces.YUNET_REPO) / faces.YUNET_FILE
    assert path.read_bytes() == YUNET.read_bytes()
    assert ("HEAD", PATH, None) in fake_hub.requests and any(r[0] == "GET" for r in fake_hub.requests)
    # the second time it is there: no download
    n = len(fake_hub.requests)
    assert faces.yunet_path(settings) == path and len(fake_hub.requests) == n


def test_hf_endpoint_from_the_environment_is_honoured(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("LORA_FORGE_MODELS", str(tmp_path / "env-models"))
    path = faces.yunet_path(Settings.from_env())
    assert path.is_relative_to(tmp_path / "env-models") and path.read_bytes() == YUNET.read_bytes()


def test_partial_download_is_resumed(tmp_path, fake_hub):
    from huggingface_hub._local_folder import get_local_download_paths

    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    folder = hub.local_folder(settings, faces.YUNET_REPO)
    folder.mkdir(parents=True)
    half = len(fake_hub.payload) // 2
    partial = get_local_download_paths(folder, faces.YUNET_FILE).incomplete_path(fake_hub.etag)
    partial.write_bytes(fake_hub.payload[:half])
    path = faces.yunet_path(settings)
    assert path.read_bytes() == fake_hub.payload
    assert ("GET", PATH, f"bytes={half}-") in fake_hub.requests, fake_hub.requests


def test_missing_on_the_hub_says_where_to_put_the_file(tmp_path, fake_hub):
    # (404, not a dead endpoint: huggingface_hub retries connection errors for ~20 s before giving up)
    fake_hub.missing = True
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    with pytest.raises(ForgeError, match="place the file by hand in"):
        faces.yunet_path(settings)
    with pytest.raises(ForgeError, match="is not there"):
        faces.yunet_path(settings, download=False)


def test_a_git_lfs_pointer_is_not_taken_for_the_model(tmp_path, fake_hub):
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    folder = hub.local_folder(settings, faces.YUNET_REPO)
    folder.mkdir(parents=True)
    (folder / faces.YUNET_FILE).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 232589\n")
    assert faces.yunet_path(settings).read_bytes() == YUNET.read_bytes()


@needs_yunet
def test_prepare_fetches_the_model_once_then_crops_on_faces(tmp_path, fake_hub):
    src = tmp_path / "src"
    src.mkdir()
    image, face = place_astronaut((1600, 800), (1000, 200))
    image.save(src / "a.jpg")
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    report = prepare([src], tmp_path / "out", PrepareOptions(size=512), settings)
    assert not report.warnings
    (rec,) = Manifest.load(tmp_path / "out").sources
    assert rec.focal == "faces" and rec.faces and contains(rec.outputs[0].crop_box, face)
    fake_hub.missing = True
    offline = Settings(tmp_path / "no-models", tmp_path / "ds", hf_endpoint=fake_hub.url)
    report = prepare([src], tmp_path / "out2", PrepareOptions(size=512), offline)
    assert report.warnings and "saliency" in report.warnings[0]
    assert Manifest.load(tmp_path / "out2").sources[0].focal == "saliency"


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"\0" * 20000)
    with pytest.raises(ForgeError, match="not a YuNet face model"):
        faces.FaceDetector(bad)


def test_model_path_with_non_ascii_folder(tmp_path):
    if not YUNET.is_file():
        pytest.skip(f"YuNet test model not found at {YUNET}")
    folder = tmp_path / "用户" / "模型"
    folder.mkdir(parents=True)
    target = folder / faces.YUNET_FILE
    target.write_bytes(YUNET.read_bytes())
    det = faces.FaceDetector(Path(target))
    image, _ = place_astronaut((800, 600), (100, 50))
    assert det.find(image)
