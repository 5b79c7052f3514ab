"""What a new user met on the command line (issue 17, "A new user on a fresh HOME")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.cli import main


@pytest.fixture
def no_models(tmp_path, monkeypatch) -> Path:
    """An empty models folder and no download: no face model, no tagger."""
    models = tmp_path / "models"
    monkeypatch.setenv("LORA_FORGE_MODELS", str(models))
    monkeypatch.setenv("LORA_FORGE_HOME", str(tmp_path / "home"))
    return models


def _photo(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3)).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "all-bad"])
def test_preprocess_with_nothing_usable_is_a_user_mistake(tmp_path, no_models, capsys, case):
    src = tmp_path / "photos"
    if case != "missing":
        src.mkdir()
    if case == "all-bad":
        (src / "a.jpg").write_bytes(b"not a jpeg")
        (src / "b.png").write_bytes(b"")
    code = main(["preprocess", str(src), str(tmp_path / "data" / "10_zkw"), "--no-download", "--no-faces"])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and str(src) in err, err


def test_preprocess_that_made_something_exits_0(tmp_path, no_models, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "a.jpg")
    assert main(["preprocess", str(src), str(tmp_path / "out"), "--no-download", "--no-faces", "--size", "256"]) == 0


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_tag_with_no_images_is_a_user_mistake_before_any_download(tmp_path, no_models, capsys, case):
    folder = tmp_path / "data"
    if case == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("x", encoding="utf-8")
    code = main(["tag", str(folder), "--model", "wd-vit-tagger-v3"])
    captured = capsys.readouterr()
    assert code == 2 and "error:" in captured.err and str(folder) in captured.err
    assert "downloading" not in captured.err and not no_models.exists()


def test_face_crops_without_a_face_model_say_none_were_made_and_why(tmp_path, no_models, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "a.jpg")
    code = main(["preprocess", str(src), str(tmp_path / "out"), "--face-crops", "--no-download", "--size", "256"])
    out = capsys.readouterr().out
    assert code == 0
    assert "0 face crops (no face model)" in out, out
    assert "no face crops:" in out and "saliency" in out, out
