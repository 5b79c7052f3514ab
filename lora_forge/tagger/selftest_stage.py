"""Selftest stage for the tagger: a tiny WD14-shaped ONNX graph captions the prepared dataset.

It tags ctx.shared["dataset_dir"] (the preprocess stage's output) when there is one, else a few
synthetic images, and checks the promise users care most about: captions that were already there
come through a default run byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from lora_forge.dataset.captions import caption_path_for
from lora_forge.tagger.batch import TagOptions, list_images, tag_folder
from lora_forge.tagger.registry import ModelFiles
from lora_forge.tagger.testing import BLUE, GREEN, RED, build_test_model, solid_image


def _synthetic(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("red", RED), ("green", GREEN), ("blue", BLUE)):
        solid_image(colour).save(folder / f"{name}.png")
    caption_path_for(folder / "blue.png").write_text("hand written, keep me", encoding="utf-8")
    return folder


def selftest(ctx) -> str:
    shared = ctx.shared.get("dataset_dir")
    folder = Path(shared) if shared and Path(shared).is_dir() else _synthetic(ctx.out / "tagger_dataset")
    model = build_test_model(ctx.out / "tagger_model", size=64)
    files = ModelFiles("selftest-wd14", model)
    images = list_images(folder)
    before = {p: caption_path_for(p).read_bytes() for p in images if caption_path_for(p).exists()}

    report = tag_folder(folder, files, TagOptions(save_json=True))
    ctx.log(f"{folder}: {report.summary()}")
    assert report.provider, "the provider in use was not reported"
    assert not report.count("failed"), [r.message for r in report.results if r.status == "failed"]
    for p in images:
        cap = caption_path_for(p)
        assert cap.exists(), f"no caption written for {p.name}"
        if p in before:
            assert cap.read_bytes() == before[p], f"the existing caption of {p.name} was changed"
    again = tag_folder(folder, files, TagOptions())
    assert again.count("kept") == len(images), "a second default run touched captions"
    return f"{report.summary()}; existing captions kept ({len(before)}); second run changed nothing"
