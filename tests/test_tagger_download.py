"""Model download through the real huggingface_hub client, against a hub on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge import cli
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings
from lora_forge.tagger import registry
from lora_forge.tagger.testing import RED, build_test_model, solid_image
from tests.hf_loopback import LoopbackHub

REPO = "SmilingWolf/wd-vit-tagger-v3"


@pytest.fixture
def hub(tmp_path: Path):
    src = build_test_model(tmp_path / "published")
    served = LoopbackHub(
        {
            (REPO, "model.onnx"): (src / "model.onnx").read_bytes(),
            (REPO, "selected_tags.csv"): (src / "selected_tags.csv").read_bytes(),
        }
    )
    served.url = served.start()
    yield served
    served.stop()


def settings_for(tmp_path: Path, endpoint: str) -> Settings:
    return Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets", hf_endpoint=endpoint)


def test_download_uses_the_mirror_endpoint_and_reports_progress(tmp_path: Path, hub: LoopbackHub) -> None:
    settings = settings_for(tmp_path, hub.url)
    files = registry.resolve(settings, "wd-vit-tagger-v3")
    assert registry.download_state(files.folder) == "absent"
    events: list[tuple[str, int, int | None]] = []
    registry.ensure_downloaded(settings, files, lambda f, done, total: events.append((f, done, total)))
    assert registry.download_state(files.folder) == "present"
    assert files.model_path.read_bytes() == hub.files[(REPO, "model.onnx")]
    assert files.folder == tmp_path / "models" / "SmilingWolf--wd-vit-tagger-v3"
    size = len(hub.files[(REPO, "model.onnx")])
    assert ("model.onnx", size, size) in events and ("model.onnx", 0, size) in events
    assert hub.gets("model.onnx") == [None] and hub.gets("selected_tags.csv") == [None]


def test_an_interrupted_download_is_partial_and_resumes(
    tmp_path: Path, hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The client writes what it received in chunks of this size; real models are 300 MB, ours 700 B.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64)
    model = hub.files[(REPO, "model.onnx")]
    hub.cut_after["model.onnx"] = len(model) // 2
    settings = settings_for(tmp_path, hub.url)
    files = registry.resolve(settings, "wd-vit-tagger-v3")
    with pytest.raises(ForgeError, match=r"download again \(what arrived is kept and the download resumes\)"):
        registry.ensure_downloaded(settings, files)
    assert registry.download_state(files.folder) == "partial"
    assert not files.model_path.exists()  # never a half file under the real name
    registry.ensure_downloaded(settings, files)
    assert files.model_path.read_bytes() == model
    ranges = hub.gets("model.onnx")
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(model) // 2


def test_a_mirror_without_the_file_gives_a_clear_message(tmp_path: Path, hub: LoopbackHub) -> None:
    del hub.files[(REPO, "model.onnx")]
    settings = settings_for(tmp_path, hub.url)
    files = registry.resolve(settings, "wd-vit-tagger-v3")
    with pytest.raises(ForgeError, match=r"could not download model\.onnx from SmilingWolf/wd-vit-tagger-v3.*mirror"):
        registry.ensure_downloaded(settings, files, lambda *a: None)
    assert registry.download_state(files.folder) == "partial"  # the tag list arrived, the model did not


def test_cli_downloads_on_first_use_then_tags(
    tmp_path: Path, hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORA_FORGE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    data = tmp_path / "data"
    data.mkdir()
    solid_image(RED).save(data / "a.png")
    assert cli.main(["tag", str(data), "--model", "wd-vit-tagger-v3"]) == 0
    assert "downloading wd-vit-tagger-v3 (379 MB)" in capsys.readouterr().err
    assert (data / "a.txt").read_text(encoding="utf-8").startswith("1girl, long hair")
    n_requests = len(hub.requests)
    (data / "a.txt").unlink()
    assert cli.main(["tag", str(data), "--model", "wd-vit-tagger-v3"]) == 0
    assert len(hub.requests) == n_requests  # present: no request at all the second time
