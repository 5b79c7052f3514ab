"""What a new user met on the command line (issue 17, "A new user on a fresh HOME")."""

from __future__ import annotations

import re
import sys
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


def test_an_unknown_set_key_names_the_nearest_and_where_the_keys_are_listed(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    _photo(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "a.txt").write_text("zkw", encoding="utf-8")
    code = main(["train", "--ckpt", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "data"), "--name", "x",
                 "--out", str(tmp_path / "out"), "--set", "epochs=2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "epochs (did you mean max_train_epochs?)" in err and "train --help" in err, err


def test_train_help_lists_every_set_key_with_its_type_and_default(capsys):
    import dataclasses

    from lora_forge.train.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(defaults, f.name)
        assert f"  {f.name} ({type(value).__name__}, default " in text, f.name
    assert "  max_train_epochs (int, default 10)" in text and "--threads" in text


def test_default_threads_leave_room_on_a_small_machine():
    from lora_forge.cpu_threads import default_threads

    assert [default_threads(n) for n in (1, 2, 4, 16, 64)] == [1, 1, 2, 8, 8]


def test_the_plan_line_says_the_steps_once_and_the_threads_are_printed(tiny_files, tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        _photo(data / f"{i}.png", i)
        (data / f"{i}.txt").write_text("zkw, red", encoding="utf-8")
    before = torch.get_num_threads()
    try:
        code = main(["train", "--ckpt", str(tiny_files.checkpoint), "--clip-folder", str(tiny_files.clip_folder),
                     "--data", str(data), "--name", "x", "--out", str(tmp_path / "out"), "--dry-run",
                     "--set", "resolution=64", "--set", "min_bucket_reso=64", "--threads", "1"])  # fmt: skip
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert code == 0, out
    plan = next(line for line in out.splitlines() if line.startswith("plan: "))
    assert plan.count(" steps") == 1 and re.search(r", \d+ epochs, \d+ steps$", plan), plan
    assert re.search(r"^CPU threads: 1 of \d+ cores \(--threads", out, re.M), out


def test_selftest_without_out_leaves_nothing_in_tmp(tmp_path, capsys, monkeypatch):
    import tempfile

    from lora_forge import selftest

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def stage(ctx):  # a stage that writes, as the real ones do (the tiny model alone is ~50 MB)
        (ctx.out / "model.bin").write_bytes(b"x" * 1024)
        return "wrote a file"

    monkeypatch.setitem(sys.modules, "lora_forge_fake_stage", type(sys)("lora_forge_fake_stage"))
    sys.modules["lora_forge_fake_stage"].selftest = stage
    monkeypatch.setattr(selftest, "STAGES", [("fake", "lora_forge_fake_stage")])
    monkeypatch.setattr(selftest, "module_exists", lambda name: True)
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "removed at the end; --out FOLDER keeps the files" in out and out.strip().endswith(
        "selftest passed: 1 stages"
    )
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    assert main(["selftest", "--out", str(kept)]) == 0
    assert (kept / "model.bin").is_file()


def test_a_taken_port_is_said_in_one_line_naming_port(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {port} is taken") and "--port" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_set_without_equals_is_a_user_mistake_named_in_both_languages(tmp_path, capsys):
    """The CLI's --set and the 训练 tab's extra-settings box share one parser (train.layering)."""
    from lora_forge import i18n
    from lora_forge.errors import ForgeError
    from lora_forge.train.layering import parse_sets

    given = ["--ckpt", str(tmp_path / "m.safetensors"), "--data", str(tmp_path), "--name", "n", "--out", str(tmp_path)]
    assert main(["train", *given, "--set", "network_dim"]) == 2
    assert "--set needs KEY=VALUE, got 'network_dim'" in capsys.readouterr().err
    assert parse_sets(["network_dim = 8", "unet_lr=1e-4"]) == {"network_dim": "8", "unet_lr": "1e-4"}
    with pytest.raises(ForgeError) as e:
        parse_sets(["=8"])
    assert i18n.translate(str(e.value), "zh_CN") == "--set 需要 KEY=VALUE 的写法，收到的是 '=8'"
