"""The grid with an SDXL model: SDXL LoRA files render through the host's txt2img, an SD1 LoRA is
refused in an SDXL grid (the SDXL-in-SD1 case is in test_grid_plan), and the inspector reads the
checkpoint and the LoRA as SDXL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_forge.errors import ForgeError
from lora_forge.grid.job import make_grid
from lora_forge.grid.plan import make_plan
from lora_forge.grid.testing import write_run
from lora_forge.inspect import inspect_file

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sdxl_run(tiny_sdxl_host, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sdxl-grid") / "lfgrid"
    write_run(tiny_sdxl_host.sd_model(), folder, epochs=1, final=True, scale=0.15)
    return folder


def test_sdxl_grid_renders_each_cell_through_txt2img(tiny_sdxl_host, sdxl_run, tmp_path):
    plan = make_plan(
        sdxl_run, "0,1", prompt="a photo", steps=2, size=(64, 64), seed=3, sd_model=tiny_sdxl_host.sd_model()
    )
    out = make_grid(tiny_sdxl_host, plan, out=tmp_path / "grid.png")
    assert out.result.complete and out.saved and Path(out.saved[0]).is_file()
    # strength 0 and 1 of each file differ: the SDXL LoRA acts in the host's txt2img
    for col in range(len(plan.files)):
        off, on = (np.asarray(out.result.cell(col, row).convert("RGB"), dtype=np.int16) for row in (0, 1))
        assert np.abs(on - off).max() > 0


def test_an_sd1_lora_is_refused_in_an_sdxl_grid_naming_both(tiny_sdxl_host, tiny_host, tmp_path):
    sd1_run = tmp_path / "sd1run"
    write_run(tiny_host.sd_model(), sd1_run, epochs=1, final=False)
    with pytest.raises(ForgeError) as e:
        make_plan(sd1_run, "1", sd_model=tiny_sdxl_host.sd_model())
    assert "SD1" in str(e.value) and "SDXL" in str(e.value)


def test_the_inspector_reads_the_sdxl_checkpoint_and_its_lora(tiny_sdxl_files, sdxl_run):
    ckpt = inspect_file(tiny_sdxl_files.checkpoint)
    assert ckpt.error is None and ckpt.kind == "checkpoint"
    assert ckpt.details["family"] == "sdxl" and "SDXL" in ckpt.title
    lora = inspect_file(sdxl_run / "lfgrid.safetensors")
    assert lora.error is None and lora.kind == "lora" and lora.details["base"] == "sdxl"


def test_grid_renders_at_the_size_the_run_trained_at_unless_given(tiny_sdxl_host, sdxl_run, tmp_path):
    from lora_forge.grid.size import parse_size

    model = tiny_sdxl_host.sd_model()
    plan = make_plan(sdxl_run, "1", size=None, sd_model=model)
    assert (plan.width, plan.height) == (64, 64)  # the files' ss_resolution
    (sdxl_run / "config.toml").write_text('resolution = "128,96"\n', encoding="utf-8")
    try:
        auto = make_plan(sdxl_run, "1", size=parse_size("auto"), sd_model=model)
        assert (auto.width, auto.height) == (128, 96)
    finally:
        (sdxl_run / "config.toml").unlink()
    assert make_plan(sdxl_run, "1", size=(80, 80), sd_model=model).width == 80
