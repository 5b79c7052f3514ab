"""Training in the WebUI stand-in with an SDXL base model loaded (the sgm DiffusionEngine with the
WebUI's additions and hijacked text embedders, tests/sdxl_support.py): the run trains the loaded
model, its file loads through the built-in Lora with every key, and the model (state dict, flags,
modes) and a fixed render are identical after a finished, a stopped and a failed run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lora_forge.errors import ForgeError
from tests.test_webui_train import FAST, host, snapshot, start_stub
from tests.train_support import SYNTAX_CAPTION, squares

torch = pytest.importorskip("torch")

SDXL = {**FAST, "sample_every_n_steps": 4, "max_train_epochs": 1, "learning_rate": 1e-2, "conv_dim": 2, "conv_alpha": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return squares(tmp_path_factory.mktemp("webui-sdxl-data"), seed=1, caption=SYNTAX_CAPTION)


@pytest.fixture
def runs():
    from lora_forge.app.train import Runs

    return Runs()


@pytest.fixture(scope="module")
def sdxl_model(tiny_sdxl_files):
    from tests.sdxl_support import webui_sdxl_model

    return webui_sdxl_model(tiny_sdxl_files)


@pytest.fixture
def webui(tmp_path: Path, sdxl_model):
    stub = start_stub(tmp_path / "webui", sdxl_model)
    yield stub
    networks = sys.modules.get("networks")
    if networks is not None:
        networks.load_networks([])
    from modules import shared

    shared.sd_model = None
    shared.cmd_opts.medvram_sdxl = False
    sdxl_model.lowvram = False


def run_to_end(runs, dataset, **changes):
    status = runs.start(host(), str(dataset), "custom", {**SDXL, **changes})
    return runs.wait(status.id, timeout=600)


def test_sdxl_run_trains_the_loaded_model_and_leaves_it_as_it_was(webui, runs, dataset):
    from modules import shared

    before = snapshot()
    status = run_to_end(runs, dataset)
    assert status.state == "finished", status.error
    assert status.warnings == []  # the load-back check: the WebUI's Lora applies the file as trained
    assert snapshot()[0] == before[0]
    assert np.array_equal(snapshot()[1], before[1])
    run_dir = Path(status.run_dir)
    assert (run_dir / "zkw.safetensors").is_file() and status.sample_path
    from lora_forge.lora.fileformat import read_metadata

    assert read_metadata(run_dir / "zkw.safetensors")["ss_base_model_version"] == "sdxl_base_v1-0"
    from tests.test_webui_train import render

    assert np.abs(render("a photo of a cat <lora:zkw:1>") - before[1]).max() > 0  # usable in txt2img at once
    assert np.array_equal(render(), before[1])
    assert shared.sd_model.is_sdxl


def test_stopped_and_failed_sdxl_runs_leave_the_model_as_it_was(webui, runs, dataset, monkeypatch):
    from modules import shared

    from lora_forge.train import loop

    before = snapshot()
    original = loop.optimizer_step
    calls = {"n": 0}

    def step_then_interrupt(*a, **k):
        original(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            shared.state.interrupt()

    monkeypatch.setattr(loop, "optimizer_step", step_then_interrupt)
    stopped = run_to_end(runs, dataset, sample_every_n_steps=0)
    assert stopped.state == "stopped" and stopped.step == 2
    assert snapshot()[0] == before[0] and np.array_equal(snapshot()[1], before[1])

    def fails(*a, **k):
        raise RuntimeError("boom in the middle of a step")

    monkeypatch.setattr(loop, "optimizer_step", fails)
    failed = run_to_end(runs, dataset, sample_every_n_steps=0)
    assert failed.state == "failed"
    assert snapshot()[0] == before[0] and np.array_equal(snapshot()[1], before[1])


def test_refiner_inpainting_and_medvram_sdxl_are_refused_before_anything_changes(webui, runs, dataset, monkeypatch):
    from modules import shared

    before = snapshot()
    model = shared.sd_model
    monkeypatch.setattr(shared.cmd_opts, "medvram_sdxl", True, raising=False)
    model.lowvram = True  # what lowvram.apply sets when --medvram-sdxl is active for an SDXL model
    with pytest.raises(ForgeError, match="--medvram-sdxl"):
        runs.start(host(), str(dataset), "custom", SDXL)
    monkeypatch.setattr(shared.cmd_opts, "medvram_sdxl", False)
    model.lowvram = False
    model.is_sdxl_inpaint = True
    try:
        with pytest.raises(ForgeError, match="inpainting"):
            runs.start(host(), str(dataset), "custom", SDXL)
    finally:
        model.is_sdxl_inpaint = False
    embedders = model.conditioner.embedders
    monkeypatch.setattr(model.conditioner, "embedders", torch.nn.ModuleList([embedders[1], *embedders[2:]]))
    with pytest.raises(ForgeError, match="refiner"):
        runs.start(host(), str(dataset), "custom", SDXL)
    monkeypatch.undo()
    assert runs.list() == []
    assert snapshot()[0] == before[0]


def test_clip_skip_reaches_sdxl_only_through_the_webuis_sdxl_option(webui):
    from modules import shared

    from lora_forge.host.webui_train import clip_skip

    shared.opts.data["CLIP_stop_at_last_layers"] = 3
    try:
        assert clip_skip() == 1  # the WebUI renders SDXL with sgm's CLIP-L layer whatever Clip skip says
        shared.opts.data["sdxl_clip_l_skip"] = True
        assert clip_skip() == 3
    finally:
        shared.opts.data.pop("CLIP_stop_at_last_layers")
        shared.opts.data.pop("sdxl_clip_l_skip", None)
