"""An image where no tag passes the threshold still gets its caption file, and training takes it.

Walkthrough P7: the blue picture of the test graph (every tag at .02, see test_tagger_captions.py)
got no .txt, so training said "have no caption file; tag them first" right after tagging.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_forge import i18n
from lora_forge.dataset.captions import list_history, rollback
from lora_forge.errors import ForgeError
from lora_forge.tagger.batch import TagOptions, tag_folder
from lora_forge.tagger.labels import CaptionOptions
from lora_forge.tagger.testing import BLUE, RED, solid_image
from lora_forge.train.config import TrainConfig
from lora_forge.train.data import scan_dataset

TRAIN = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    solid_image(RED).save(folder / "red.png")
    solid_image(BLUE).save(folder / "cell.jpg")
    solid_image(BLUE).save(folder / "cell2.png")
    return folder


def test_no_tag_above_the_threshold_still_writes_a_caption_and_trains(dataset, wd14_model) -> None:
    report = tag_folder(dataset, wd14_model, TagOptions())
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == ""
    assert (dataset / "cell2.txt").read_text(encoding="utf-8") == ""
    assert report.count("written") == 3
    summary = report.summary()
    assert summary.endswith("; 2 images had no tag above the threshold"), summary
    zh = i18n.translate(summary, "zh_CN")
    assert "2 张图片没有任何标签高于阈值" in zh and "had no tag" not in zh, zh

    ds = scan_dataset(dataset, TrainConfig(**TRAIN, trigger_word="ohwx"))
    captions = {it.path.name: it.caption for it in ds.items}
    assert captions["cell.jpg"] == "ohwx" and captions["cell2.png"] == "ohwx"
    assert captions["red.png"].startswith("ohwx, 1girl")
    plain = scan_dataset(dataset, TrainConfig(**TRAIN))
    assert {it.path.name: it.caption for it in plain.items}["cell.jpg"] == ""


def test_a_missing_caption_file_is_still_refused_by_training(dataset, wd14_model) -> None:
    tag_folder(dataset, wd14_model, TagOptions())
    (dataset / "cell2.txt").unlink()
    with pytest.raises(ForgeError, match=r"1 image\(s\) have no caption file \(\.txt\): cell2\.png"):
        scan_dataset(dataset, TrainConfig(**TRAIN))


def test_the_trigger_alone_when_nothing_passes(dataset, wd14_model) -> None:
    report = tag_folder(dataset, wd14_model, TagOptions(caption=CaptionOptions(trigger="ohwx")))
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == "ohwx"
    assert "2 images had no tag above the threshold" in report.summary()


def test_existing_caption_modes_and_history_with_no_new_tags(dataset, wd14_model) -> None:
    (dataset / "cell.txt").write_text("my own words", encoding="utf-8")
    report = tag_folder(dataset, wd14_model, TagOptions(existing="skip"))
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == "my own words"
    assert (dataset / "cell2.txt").read_text(encoding="utf-8") == ""
    kept = next(r for r in report.results if r.image.name == "cell.jpg")
    assert kept.status == "kept"
    # only cell2 was looked at by the model and found nothing
    assert "1 images had no tag above the threshold" in report.summary()

    for action in ("append", "prepend"):
        tag_folder(dataset, wd14_model, TagOptions(existing=action))
        assert (dataset / "cell.txt").read_text(encoding="utf-8") == "my own words"
    tag_folder(dataset, wd14_model, TagOptions(existing="prepend", caption=CaptionOptions(trigger="ohwx")))
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == "ohwx, my own words"

    report = tag_folder(dataset, wd14_model, TagOptions(existing="overwrite"))
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == ""
    assert report.history_ids and list_history(dataset)[0].id == report.history_ids[-1]
    rollback(dataset, report.history_ids[-1])
    assert (dataset / "cell.txt").read_text(encoding="utf-8") == "ohwx, my own words"


def test_the_summary_says_nothing_when_every_image_got_tags(tmp_path, wd14_model) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    solid_image(RED).save(folder / "red.png")
    assert "no tag above" not in tag_folder(folder, wd14_model, TagOptions()).summary()
