"""Exact captions under every tagger option, on a real ONNX graph run by onnxruntime.

The graph (lora_forge/tagger/testing.py) gives each tag a known probability for a pure red, green
or blue picture; the expected captions below are worked out by hand from that table:

    tag                      red   green  blue
    1girl                    .98   .20    .02
    long_hair                .95   .30    .02
    ^_^                      .90   .02    .02
    star_(symbol)            .55   .02    .02
    open_mouth               .50   .60    .02
    smile                    .40   .70    .02
    solo                     .30   .36    .02
    >_<                      .10   .90    .02
    hu_tao_(genshin_impact)  .92   .02    .02   (character)
    hatsune_miku             .50   .14    .02   (character)
    ratings general/sensitive/questionable/explicit: red .10/.70/.15/.02, green .80/.10/.05/.02
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lora_forge.dataset.captions import list_history, rollback
from lora_forge.tagger.batch import JSON_SUFFIX, TagOptions, tag_folder
from lora_forge.tagger.labels import CaptionOptions, Thresholds
from lora_forge.tagger.registry import ModelFiles
from lora_forge.tagger.testing import BLUE, GREEN, RED, solid_image

RED_DEFAULT = r"1girl, long hair, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth, smile"
GREEN_DEFAULT = ">_<, smile, open mouth, solo"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    solid_image(RED).save(folder / "red.png")
    solid_image(GREEN).save(folder / "green.png")
    solid_image(BLUE).save(folder / "blue.png")
    return folder


def caption(folder: Path, stem: str) -> str:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8")


def run(folder: Path, wd14_model: ModelFiles, **kw):
    thresholds = Thresholds(**{k: kw.pop(k) for k in ("general", "character", "mcut") if k in kw})
    cap = CaptionOptions(**{k: kw.pop(k) for k in ("exclude", "trigger", "rating") if k in kw})
    return tag_folder(folder, wd14_model, TagOptions(thresholds=thresholds, caption=cap, **kw))


def test_default_captions_are_sorted_by_confidence_with_spaces_kaomoji_and_escapes(dataset, wd14_model) -> None:
    report = run(dataset, wd14_model)
    assert report.count("written") == 3
    assert caption(dataset, "red") == RED_DEFAULT
    assert caption(dataset, "green") == GREEN_DEFAULT
    assert caption(dataset, "blue") == ""  # nothing above the thresholds: an empty caption, not a crash
    assert report.provider.startswith("CPU")
    red = next(r for r in report.results if r.image.name == "red.png")
    assert [n for n, _p in red.tags][:3] == ["1girl", "long_hair", "hu_tao_(genshin_impact)"]
    assert red.tags[0][1] == pytest.approx(0.98, abs=1e-4)


def test_thresholds_are_strict_and_per_category(dataset, wd14_model) -> None:
    run(dataset, wd14_model, general=0.45, character=0.95)
    # smile (.40) drops under 0.45; the character (.92) under 0.95
    assert caption(dataset, "red") == r"1girl, long hair, ^_^, star \(symbol\), open mouth"
    assert caption(dataset, "green") == ">_<, smile, open mouth"


def test_a_probability_equal_to_the_threshold_is_not_kept(dataset, wd14_model) -> None:
    red = next(r for r in run(dataset, wd14_model).results if r.image.name == "red.png")
    smile = dict(red.tags)["smile"]  # the model's own float32 value, about 0.40
    run(dataset, wd14_model, existing="overwrite", general=math.nextafter(smile, 0.0))
    assert caption(dataset, "red").endswith(", smile")
    run(dataset, wd14_model, existing="overwrite", general=smile)
    assert caption(dataset, "red") == RED_DEFAULT.removesuffix(", smile")


def test_mcut_per_image_and_character_floor(dataset, wd14_model) -> None:
    run(dataset, wd14_model, mcut=True)
    # red: biggest gap .90 -> .55 among general, .92 -> .50 among characters
    assert caption(dataset, "red") == r"1girl, long hair, hu tao \(genshin impact\), ^_^"
    # green: biggest general gap .60 -> .36; characters .14/.02 cut at .08 but the floor is 0.15
    assert caption(dataset, "green") == ">_<, smile, open mouth"


def test_trigger_first_rating_and_excludes_in_the_visible_form(dataset, wd14_model) -> None:
    run(dataset, wd14_model, trigger="ohwx", rating=True, exclude=("long_hair", "Star (symbol)", "^_^", " "))
    assert caption(dataset, "red") == r"ohwx, sensitive, 1girl, hu tao \(genshin impact\), open mouth, smile"
    assert caption(dataset, "green") == "ohwx, general, >_<, smile, open mouth, solo"
    assert caption(dataset, "blue") == "ohwx, general"


def test_escaping_can_be_turned_off(dataset, wd14_model) -> None:
    tag_folder(dataset, wd14_model, TagOptions(caption=CaptionOptions(escape=False)))
    assert caption(dataset, "red") == "1girl, long hair, hu tao (genshin impact), ^_^, star (symbol), open mouth, smile"


def test_trigger_equal_to_a_predicted_tag_is_written_once(dataset, wd14_model) -> None:
    run(dataset, wd14_model, trigger="smile")
    assert caption(dataset, "green") == "smile, >_<, open mouth, solo"


def test_hand_edited_captions_survive_a_second_default_run(dataset, wd14_model) -> None:
    run(dataset, wd14_model)
    (dataset / "red.txt").write_text("my own words, ohwx", encoding="utf-8")
    gbk = "中文标签, smile".encode("gbk")
    (dataset / "green.txt").write_bytes(gbk)
    history_before = len(list_history(dataset))
    report = run(dataset, wd14_model)
    assert report.count("kept") == 3 and report.count("written") == 0
    assert caption(dataset, "red") == "my own words, ohwx"
    assert (dataset / "green.txt").read_bytes() == gbk
    assert len(list_history(dataset)) == history_before  # nothing was saved at all


def test_overwrite_keeps_the_previous_text_recoverable(dataset, wd14_model) -> None:
    (dataset / "red.txt").write_text("hand made caption", encoding="utf-8")
    gbk = "中文标签, smile".encode("gbk")
    (dataset / "green.txt").write_bytes(gbk)
    report = run(dataset, wd14_model, existing="overwrite")
    assert caption(dataset, "red") == RED_DEFAULT
    assert caption(dataset, "green") == GREEN_DEFAULT
    assert len(report.history_ids) == 1
    rollback(dataset, report.history_ids[0])
    assert caption(dataset, "red") == "hand made caption"
    assert (dataset / "green.txt").read_bytes() == gbk
    assert not (dataset / "blue.txt").exists()  # it had no caption before the run


def test_append_and_prepend_merge_without_duplicates(dataset, wd14_model) -> None:
    (dataset / "red.txt").write_text("my tag, long_hair, Smile", encoding="utf-8")
    (dataset / "green.txt").write_bytes("中文标签, smile".encode("gbk"))
    run(dataset, wd14_model, existing="append")
    assert (
        caption(dataset, "red")
        == r"my tag, long_hair, Smile, 1girl, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth"
    )
    assert caption(dataset, "green") == "中文标签, smile, >_<, open mouth, solo"  # GBK read, UTF-8 written
    assert caption(dataset, "blue") == ""

    (dataset / "red.txt").write_text("my tag, long_hair", encoding="utf-8")
    run(dataset, wd14_model, existing="prepend", trigger="ohwx")
    assert (
        caption(dataset, "red")
        == r"ohwx, 1girl, long hair, hu tao \(genshin impact\), ^_^, star \(symbol\), open mouth, smile, my tag"
    )


def test_append_moves_the_trigger_word_to_the_front(dataset, wd14_model) -> None:
    (dataset / "red.txt").write_text("my tag, ohwx, 1girl", encoding="utf-8")
    run(dataset, wd14_model, existing="append", trigger="ohwx", general=0.92)
    assert caption(dataset, "red") == r"ohwx, my tag, 1girl, long hair, hu tao \(genshin impact\)"


def test_json_confidences_hold_ratings_and_tags(dataset, wd14_model) -> None:
    run(dataset, wd14_model, save_json=True)
    record = json.loads((dataset / f"green{JSON_SUFFIX}").read_text(encoding="utf-8"))
    assert record["model"] == "test-wd14"
    assert record["confidences"]["general"] == pytest.approx(0.80, abs=1e-3)
    assert list(record["tags"]) == [">_<", "smile", "open_mouth", "solo"]
    assert record["tags"]["solo"] == pytest.approx(0.36, abs=1e-3)
