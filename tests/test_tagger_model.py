"""The tagger against bad models and bad files: clear messages, the batch goes on, nothing half-written."""

from __future__ import annotations

import gc
import os
import stat
from pathlib import Path

import pytest

from lora_forge import cli
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings
from lora_forge.tagger import registry
from lora_forge.tagger.batch import TagOptions, tag_folder
from lora_forge.tagger.registry import ModelFiles, ModelSpec
from lora_forge.tagger.session import TaggerSession, choose_providers
from lora_forge.tagger.testing import BLUE, GREEN, RED, build_test_model, solid_image

RED_DEFAULT = r"1girl, long hair, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth, smile"
GREEN_DEFAULT = ">_<, smile, open mouth, solo"


def make_dataset(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    colours = [RED, GREEN, BLUE]
    for i in range(n):
        solid_image(colours[i % 3], size=40 + 8 * i).save(folder / f"img{i}.png")
    return folder


def captions(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_input_size_comes_from_the_graph(tmp_path: Path) -> None:
    for size in (32, 72):
        files = ModelFiles("m", build_test_model(tmp_path / f"m{size}", size=size))
        with TaggerSession(files) as s:
            assert s.graph.size == size and s.graph.fixed_batch is None


def test_batches_parallel_runs_and_fixed_batch_graphs_give_the_same_captions(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "a", 7)
    dyn = ModelFiles("dyn", build_test_model(tmp_path / "dyn"))
    fixed = ModelFiles("fixed", build_test_model(tmp_path / "fixed", batch=1))
    got = []
    for files, runs, batch_size in ((dyn, 1, 3), (dyn, 2, 3), (fixed, 1, 3), (fixed, 3, 1)):
        for p in data.glob("*.txt"):
            p.unlink()
        with TaggerSession(files, parallel_runs=runs) as s:
            report = tag_folder(data, files, TagOptions(batch_size=batch_size), session=s)
        assert report.count("written") == 7
        got.append((report.batch_size, captions(data)))
    # a dynamic graph on one runner gets the batch asked for; parallel CPU runners take one image each;
    # a fixed-batch (v2) graph always gets its own batch of 1
    assert [b for b, _c in got] == [3, 1, 1, 1]
    assert all(c == got[0][1] for _b, c in got)
    assert got[0][1]["img0"] == RED_DEFAULT and got[0][1]["img6"] == RED_DEFAULT
    with TaggerSession(fixed) as s:
        assert s.graph.fixed_batch == 1


def test_truncated_model_is_reported_as_damaged(tmp_path: Path) -> None:
    folder = build_test_model(tmp_path / "m")
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    data = make_dataset(tmp_path / "d", 2)
    with pytest.raises(ForgeError, match="incomplete or damaged: delete it and download again"):
        tag_folder(data, ModelFiles("m", folder))
    assert not list(data.glob("*.txt"))


def test_folder_without_the_model_files_is_refused(tmp_path: Path) -> None:
    folder = build_test_model(tmp_path / "m")
    (folder / "model.onnx").unlink()
    with pytest.raises(ForgeError, match=r"lacks model\.onnx"):
        registry.resolve(Settings(tmp_path, tmp_path), str(folder))
    with pytest.raises(ForgeError, match="unknown tagger model 'wd-nope'"):
        registry.resolve(Settings(tmp_path, tmp_path), "wd-nope")


def test_tag_list_that_does_not_match_the_graph(tmp_path: Path) -> None:
    files = ModelFiles("m", build_test_model(tmp_path / "m", csv_rows=10))
    with pytest.raises(ForgeError, match="10 rows but the model outputs 14"):
        TaggerSession(files)


def test_channels_first_graph_is_refused(tmp_path: Path) -> None:
    files = ModelFiles("m", build_test_model(tmp_path / "m", layout="NCHW"))
    with pytest.raises(ForgeError, match=r"NCHW.*\[batch, height, width, 3\]"):
        TaggerSession(files)


def test_too_old_onnxruntime_is_named(tmp_path: Path) -> None:
    spec = ModelSpec("future", "x/future", 1, False, "99.0", None)
    files = ModelFiles("future", build_test_model(tmp_path / "m"), spec)
    with pytest.raises(ForgeError, match=r"needs onnxruntime >= 99.0"):
        TaggerSession(files)


def test_unreadable_images_fail_alone(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", 3)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = data / "img0.png"
    (data / "cut.jpg").write_bytes(good.read_bytes()[:60])
    report = tag_folder(data, ModelFiles("m", build_test_model(tmp_path / "m")))
    failed = {r.image.name: r.message for r in report.results if r.status == "failed"}
    assert set(failed) == {"broken.png", "cut.jpg"}
    assert all("cannot read this image" in m and "skipped" in m for m in failed.values())
    assert report.count("written") == 3 and sorted(captions(data)) == ["img0", "img1", "img2"]
    assert no_temp_files(data)


def test_two_images_with_one_caption_name_do_not_overwrite_each_other(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    solid_image(RED).save(data / "a.jpg", quality=100)
    solid_image(GREEN).save(data / "a.png")
    report = tag_folder(data, ModelFiles("m", build_test_model(tmp_path / "m")))
    by_name = {r.image.name: r for r in report.results}
    assert by_name["a.jpg"].status == "written" and (data / "a.txt").read_text(encoding="utf-8") == RED_DEFAULT
    assert (
        by_name["a.png"].status == "failed" and "shares the caption file a.txt with a.jpg" in by_name["a.png"].message
    )


def test_read_only_caption_is_left_alone_and_the_rest_are_written(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", 3)
    locked = data / "img0.txt"
    locked.write_text("locked words", encoding="utf-8")
    locked.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        report = tag_folder(data, ModelFiles("m", build_test_model(tmp_path / "m")), TagOptions(existing="overwrite"))
    finally:
        locked.chmod(0o644)
    by_name = {r.image.name: r for r in report.results}
    assert by_name["img0.png"].status == "failed" and "read-only" in by_name["img0.png"].message
    assert locked.read_text(encoding="utf-8") == "locked words"
    assert by_name["img1.png"].status == "written" and by_name["img2.png"].status == "written"
    assert no_temp_files(data)


def test_stop_finishes_the_images_in_hand_and_writes_whole_captions(tmp_path: Path) -> None:
    from lora_forge.events import StopFlag

    data = make_dataset(tmp_path / "d", 12)
    flag = StopFlag()
    files = ModelFiles("m", build_test_model(tmp_path / "m"))
    with TaggerSession(files, parallel_runs=1) as s:
        report = tag_folder(data, files, TagOptions(batch_size=2), lambda e: e.step >= 2 and flag.request(), flag, s)
    assert report.stopped and 2 <= len(report.results) < 12
    written = captions(data)
    assert len(written) == report.count("written")
    assert all(text in {RED_DEFAULT, GREEN_DEFAULT, ""} for text in written.values())
    assert no_temp_files(data)


def test_providers_are_tried_cuda_then_directml_then_cpu() -> None:
    everything = ["TensorrtExecutionProvider", "CPUExecutionProvider", "DmlExecutionProvider", "CUDAExecutionProvider"]
    assert choose_providers(everything) == ["CUDAExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(everything, cpu_only=True) == ["CPUExecutionProvider"]


def test_no_session_outlives_the_batch(tmp_path: Path) -> None:
    """Training needs the VRAM: neither a cached model nor a closed TaggerSession keeps onnxruntime's."""
    import onnxruntime as ort

    def live_sessions() -> int:
        gc.collect()
        return sum(isinstance(o, ort.InferenceSession) for o in gc.get_objects())

    before = live_sessions()
    data = make_dataset(tmp_path / "d", 2)
    files = ModelFiles("m", build_test_model(tmp_path / "m"))
    seen_during: list[int] = []
    tag_folder(data, files, progress=lambda e: seen_during.append(live_sessions()))
    assert max(seen_during) == before + 1 and live_sessions() == before
    held = TaggerSession(files)
    assert live_sessions() == before + 1
    held.close()  # the caller still holds the object, the runtime session is gone
    assert live_sessions() == before


def test_registry_lists_the_smilingwolf_models_with_state(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path)
    models = dict((spec.name, (spec, state)) for spec, state in registry.list_models(settings))
    assert len(models) == 10
    for kind in ("moat", "convnext", "convnextv2", "vit", "swinv2"):
        spec, state = models[f"wd-v1-4-{kind}-tagger-v2"]
        assert spec.repo_id == f"SmilingWolf/wd-v1-4-{kind}-tagger-v2" and spec.fixed_batch and state == "absent"
    for kind in ("vit", "swinv2", "convnext", "vit-large", "eva02-large"):
        spec, _state = models[f"wd-{kind}-tagger-v3"]
        assert not spec.fixed_batch and spec.min_onnxruntime == "1.17"
    assert models["wd-eva02-large-tagger-v3"][0].label == "wd-eva02-large-tagger-v3 (1.26 GB)"
    folder = registry.model_folder(settings, models["wd-vit-tagger-v3"][0])
    folder.mkdir(parents=True)
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n", encoding="utf-8")
    assert registry.download_state(folder) == "partial"
    (folder / "model.onnx").write_bytes(b"x")
    assert registry.download_state(folder) == "present"


def test_cli_reports_the_provider_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "d", 3)
    (data / "broken.png").write_bytes(b"nope")
    model = build_test_model(tmp_path / "m")
    argv = ["tag", str(data), "--model", str(model), "--trigger", "ohwx", "--exclude", "long hair,smile", "--json"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "running on CPU" in err and "broken.png: cannot read this image" in err
    assert "1 image(s) could not be captioned" in err
    assert (data / "img0.txt").read_text(encoding="utf-8") == (
        r"ohwx, 1girl, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth"
    )
    assert (data / "img0.wd14.json").is_file()
    (data / "broken.png").unlink()
    (data / "img0.txt").write_text("hand edit", encoding="utf-8")
    assert cli.main(["tag", str(data), "--model", str(model)]) == 0
    assert "3 kept" in capsys.readouterr().out
    assert (data / "img0.txt").read_text(encoding="utf-8") == "hand edit"


def test_cli_bad_option_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "d", 1)
    assert cli.main(["tag", str(data), "--model", str(build_test_model(tmp_path / "m")), "--general", "1.5"]) == 2
    assert "threshold 1.5 is not between 0 and 1" in capsys.readouterr().err
    assert cli.main(["tag", str(tmp_path / "nowhere"), "--model", str(tmp_path / "m")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert os.path.isdir(data)
