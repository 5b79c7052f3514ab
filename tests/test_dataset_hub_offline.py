"""Offline, the face model's download fails fast, once, in one line that says the host's way to set a mirror.

Walkthrough P6: every prepare waited 20-25 s for huggingface_hub's retries against a dead network,
never remembered the failure, printed the client's multi-line exception text and told standalone
users about a settings page they do not have. These go through the real huggingface_hub client,
against the loopback hub (tests/hf_loopback.py) or a closed port on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_forge import hub, i18n
from lora_forge.dataset import faces
from lora_forge.dataset.prepare import PrepareOptions, prepare
from lora_forge.errors import ForgeError
from lora_forge.host.webui import WEBUI_MIRROR_HINT
from lora_forge.settings import Settings
from lora_forge.tagger import registry
from tests.dataset_support import YUNET, needs_yunet, place_astronaut
from tests.hf_loopback import LoopbackHub

pytestmark = needs_yunet


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing remembered and leaves nothing behind for the others."""
    monkeypatch.setattr(hub, "_failures", {})


@pytest.fixture
def closed_port() -> str:
    """An endpoint where nothing listens: the connection is refused, as with the network down."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def served() -> Iterator[LoopbackHub]:
    server = LoopbackHub({})  # the YuNet file is added by the tests that want it found
    server.url = server.start()  # type: ignore[attr-defined]
    yield server
    server.stop()


def _publish(server: LoopbackHub) -> None:
    server.files[(faces.YUNET_REPO, faces.YUNET_FILE)] = YUNET.read_bytes()


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    image, _face = place_astronaut((900, 600), (500, 100))
    image.save(src / "a.jpg")
    return src


def test_offline_fails_in_seconds_in_one_line_with_the_environment_hint(tmp_path, closed_port) -> None:
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=closed_port)
    t0 = time.monotonic()
    with pytest.raises(ForgeError) as err:
        faces.yunet_path(settings)
    assert time.monotonic() - t0 < 5  # not the client's ~23 s of retries
    msg = str(err.value)
    assert "\n" not in msg and "Request ID" not in msg and "Max retries" not in msg, msg
    assert "ConnectionError" in msg  # the class name stays, so a helper can tell what happened
    # HF_ENDPOINT is already set: the message names that endpoint instead of advising to set one
    assert f"at {closed_port} (" in msg and f"HF_ENDPOINT={closed_port} (unset it" in msg, msg
    assert "hf-mirror.com" not in msg and "LoRA Forge settings" not in msg, msg
    assert f"place the file by hand in {hub.local_folder(settings, faces.YUNET_REPO)}" in msg
    zh = i18n.translate(msg, "zh_CN")
    assert f"HF_ENDPOINT={closed_port}（取消" in zh and "手动把文件放到" in zh, zh


def test_without_hf_endpoint_the_hint_is_to_set_one(tmp_path, closed_port, monkeypatch) -> None:
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=None)
    monkeypatch.setattr(hub, "_endpoint_url", lambda endpoint: closed_port)  # huggingface.co, out of reach
    with pytest.raises(ForgeError) as err:
        faces.yunet_path(settings)
    msg = str(err.value)
    assert f"at {closed_port} (" in msg and "set the environment variable HF_ENDPOINT=https://hf-mirror.com" in msg
    assert "环境变量 HF_ENDPOINT" in i18n.translate(msg, "zh_CN")


def test_the_webui_host_points_at_its_settings(tmp_path, closed_port) -> None:
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=closed_port, mirror_hint=WEBUI_MIRROR_HINT)
    with pytest.raises(ForgeError, match="in Settings → LoRA Forge → Hugging Face mirror") as err:
        faces.yunet_path(settings)
    assert "HF_ENDPOINT" not in str(err.value)
    assert "设置 → 炼丹炉 → 炼丹炉下载用的 Hugging Face 镜像" in i18n.translate(str(err.value), "zh_CN")


def test_a_failed_face_model_download_is_remembered_until_the_endpoint_changes(tmp_path, served) -> None:
    src = _source(tmp_path)
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=served.url)  # type: ignore[attr-defined]
    first = prepare([src], tmp_path / "out1", PrepareOptions(size=256), settings)
    assert first.warnings and "EntryNotFoundError" in first.warnings[0] and "saliency" in first.warnings[0]
    assert "\n" not in first.warnings[0]

    _publish(served)  # the hub has it now, but the failure is remembered: no request, no wait
    asked = len(served.requests)
    t0 = time.monotonic()
    second = prepare([src], tmp_path / "out2", PrepareOptions(size=256), settings)
    assert time.monotonic() - t0 < 5
    assert len(served.requests) == asked
    note = second.warnings[0]
    assert note.startswith(f"{faces.YUNET_FILE} unavailable (offline?), not retried for 5 min"), note
    assert note.endswith("; crops use the saliency focal point instead of faces")
    assert "不会重试" in i18n.translate(note, "zh_CN")

    other = LoopbackHub({(faces.YUNET_REPO, faces.YUNET_FILE): YUNET.read_bytes()})
    try:
        moved = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=other.start())
        third = prepare([src], tmp_path / "out3", PrepareOptions(size=256), moved)
        assert not third.warnings and other.gets(faces.YUNET_FILE)  # a new endpoint is tried at once
    finally:
        other.stop()


def test_the_memory_lasts_minutes_not_the_whole_process(tmp_path, served, monkeypatch) -> None:
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=served.url)  # type: ignore[attr-defined]
    with pytest.raises(ForgeError, match="EntryNotFoundError"):
        faces.yunet_path(settings)
    _publish(served)
    with pytest.raises(ForgeError, match="not retried"):
        faces.yunet_path(settings)
    monkeypatch.setattr(hub, "FAILURE_MEMORY_S", 0.0)
    assert faces.yunet_path(settings).read_bytes() == YUNET.read_bytes()


def test_a_download_the_user_asked_for_is_always_tried_again(tmp_path, closed_port) -> None:
    settings = Settings(tmp_path / "models", tmp_path / "ds", hf_endpoint=closed_port)
    files = registry.resolve(settings, "wd-vit-tagger-v3")
    for _ in range(2):  # the Download button: no "not retried", the hint each time, fast
        t0 = time.monotonic()
        with pytest.raises(ForgeError) as err:
            registry.ensure_downloaded(settings, files)
        assert time.monotonic() - t0 < 5
        assert "ConnectionError" in str(err.value) and "HF_ENDPOINT" in str(err.value)
        assert "not retried" not in str(err.value) and "\n" not in str(err.value)
