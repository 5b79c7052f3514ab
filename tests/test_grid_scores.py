"""Grid scores through a real ONNX tagger graph (onnxruntime) on constructed cells: a cell showing
the probe's attributes scores higher flexibility, one showing the subject's tags higher fidelity;
the recommendation picks the cell that does both; later epochs that lose the probe raise the
overfitting warning; face likeness is cleanly off without the SFace model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.grid import assemble
from lora_forge.grid.job import make_grid
from lora_forge.grid.plan import EpochFile, GridPlan, make_plan
from lora_forge.grid.render import GridResult
from lora_forge.grid.scores import score_grid
from lora_forge.grid.testing import write_run
from lora_forge.settings import Settings
from lora_forge.tagger.registry import ModelFiles
from lora_forge.tagger.session import TaggerSession
from lora_forge.tagger.testing import colour_model_bytes, colour_weights, write_tags_csv

# (tag, category, p on pure red, green, blue): the subject's tags answer to blue, the probe's to red
TAGS = [
    ("general", 9, 0.5, 0.5, 0.5),
    ("1girl", 0, 0.05, 0.05, 0.90),
    ("long_hair", 0, 0.05, 0.05, 0.95),
    ("white_hair", 0, 0.90, 0.05, 0.05),
    ("red_dress", 0, 0.95, 0.05, 0.05),
    ("smile", 0, 0.10, 0.60, 0.10),
]
RED, BLUE, PURPLE, GREEN = (255, 0, 0), (0, 0, 255), (255, 0, 255), (0, 255, 0)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grid-tagger")
    weights, bias = colour_weights(TAGS)
    (folder / "model.onnx").write_bytes(colour_model_bytes(weights, bias, size=64))
    write_tags_csv(folder / "selected_tags.csv", TAGS)
    return folder


@pytest.fixture(scope="module")
def session(tagger_dir):
    with TaggerSession(ModelFiles("grid-test", tagger_dir), cpu_only=True, parallel_runs=1) as s:
        yield s


def _plan(epochs: int, strengths: list[float]) -> GridPlan:
    files = [EpochFile(Path(f"/runs/lfchar-{e:06d}.safetensors"), e, False, "lfchar") for e in range(1, epochs + 1)]
    return GridPlan(
        files,
        strengths,
        "lfchar, white hair, red dress, blue sky",
        probe="white hair, red dress, blue sky",
        trigger="lfchar",
        characteristic_tags=[("1girl", 1.0), ("long_hair", 0.8), ("twintails", 0.6)],
        width=64,
        height=64,
    )


def _result(plan: GridPlan, colours: list[list[tuple[int, int, int]]]) -> GridResult:
    """colours[row = strength][column = epoch]."""
    return GridResult(plan, [[Image.new("RGB", (64, 64), c) for c in row] for row in colours])


def test_scores_move_the_right_way_on_constructed_cells(session):
    plan = _plan(2, [1.0])
    scores = score_grid(_result(plan, [[RED, BLUE]]), session)
    red, blue = scores.cells[0]
    assert red.flexibility > 0.8 > 0.1 > blue.flexibility  # the probe's white hair + red dress are there
    assert blue.fidelity > 0.8 > 0.1 > red.fidelity  # the subject's 1girl + long hair are there
    assert red.face is None and blue.face is None
    assert scores.fidelity_tags == ["1girl", "long_hair"] and scores.probe_tags == ["white hair", "red dress"]
    assert any("twintails" in n for n in scores.notes) and any("blue sky" in n for n in scores.notes)
    assert any("face likeness off" in n for n in scores.notes)


def test_recommendation_and_overfitting_warning(session):
    plan = _plan(3, [0.5, 1.0])
    # epoch 1 draws only the probe, epoch 2 at 0.5 both, epoch 3 only the subject: overfit
    scores = score_grid(_result(plan, [[RED, PURPLE, BLUE], [RED, BLUE, BLUE]]), session)
    rec = scores.recommendation
    assert (rec.file.epoch, rec.strength) == (2, 0.5)
    assert rec.reason.startswith("Epoch 000002 at strength 0.5 keeps the subject")
    assert "Possible overfitting" in scores.warning
    assert "at epoch 000001" in scores.warning and "at epoch 000003" in scores.warning
    steady = score_grid(_result(plan, [[PURPLE, PURPLE, PURPLE], [PURPLE, PURPLE, PURPLE]]), session)
    assert steady.warning == ""
    assert (steady.recommendation.file.epoch, steady.recommendation.strength) == (1, 0.5)  # ties: earliest
    table = scores.table(plan)
    assert len(table) == 6 and table[2][:2] == ["000002", 0.5]


def test_a_grid_where_every_cell_looks_alike_recommends_nothing_and_agrees_with_optimise(session):
    """A LoRA that has learned nothing yet: the grid must not praise a "best" cell that 优化 calls underfit."""
    from lora_forge.optimise import advise

    plan = _plan(2, [0.5, 1.0])
    scores = score_grid(_result(plan, [[RED, RED], [RED, RED]]), session)
    assert scores.recommendation.reason.startswith("No cell stands out")
    assert "underfit" in scores.recommendation.reason
    assert advise(scores.to_json(plan), {"max_train_epochs": 2}).kind == "underfit"
    varied = score_grid(_result(plan, [[RED, PURPLE], [RED, BLUE]]), session)
    assert not varied.recommendation.reason.startswith("No cell stands out")


def test_dataset_captions_and_missing_sface(session, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 180, 160)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("lfchar, long_hair, smile" + (", 1girl" if i == 0 else ""), encoding="utf-8")
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=data)
    plan = _plan(1, [1.0])
    scores = score_grid(_result(plan, [[GREEN]]), session, dataset=data, settings=settings)
    assert scores.fidelity_tags == ["long_hair", "smile"]  # from the captions; 1girl is in only 1 of 3
    assert any("SFace model (face_recognition_sface_2021dec.onnx" in n and "not downloaded" in n for n in scores.notes)
    assert scores.cells[0][0].face is None


def test_heatmap_tints_by_score():
    plan = _plan(2, [1.0])
    picture, layout = assemble.labelled(_result(plan, [[(128, 128, 128), (128, 128, 128)]]))
    heat = np.asarray(assemble.heatmap(picture, layout, [[0.0, 1.0]], [["low", "high"]]), np.int16)
    low, high = (heat[y0 + 40 : y1, x0:x1] for x0, y0, x1, y1 in (layout.box(0, 0), layout.box(1, 0)))
    assert (low[..., 0] - low[..., 1]).mean() > 30 and (high[..., 1] - high[..., 0]).mean() > 30


def test_scored_grid_end_to_end(tiny_host, tagger_dir, tmp_path):
    folder = tmp_path / "lfchar"
    write_run(tiny_host.sd_model(), folder, name="lfchar", epochs=1, final=False, trigger="lfchar")
    plan = make_plan(folder, "0.5,1", "a photo", "", seed=3, steps=2, size=(64, 64))
    output = make_grid(tiny_host, plan, tagger=ModelFiles("grid-test", tagger_dir))
    assert output.heatmap_path.is_file() and output.heatmap_path.name.endswith("-scores.png")
    data = output.scores.to_json(plan)
    assert [(c["epoch"], c["strength"]) for c in data["cells"]] == [(1, 0.5), (1, 1.0)]
    assert all(0 <= c["flexibility"] <= 1 and 0 <= c["fidelity"] <= 1 for c in data["cells"])
    assert data["recommendation"]["file"] == str(folder / "lfchar-000001.safetensors")
    beside = json.loads(output.heatmap_path.with_suffix(".json").read_text(encoding="utf-8"))
    assert beside == {**data, "run_dir": str(folder)}  # what 优化 reads after a restart
