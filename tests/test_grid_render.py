"""Grid rendering on the tiny model: the picture's cells are in the right place (a cell rendered
alone equals the grid's cell), each epoch file's strengths go through the UNet as one batch, and a
stop or the host's Interrupt gives a grid marked partial, never a silently incomplete one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.errors import ForgeError
from lora_forge.events import StopFlag
from lora_forge.grid import assemble
from lora_forge.grid.job import make_grid
from lora_forge.grid.plan import make_plan
from lora_forge.grid.render import render_grid
from lora_forge.grid.testing import write_run

STEPS = 2


@pytest.fixture(scope="module")
def run_dir(tiny_host, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grid-render") / "lfgrid"
    write_run(tiny_host.sd_model(), folder, epochs=1, final=True, scale=0.15)
    return folder


def _plan(run_dir: Path, strengths: str = "0.2,1", **kw):
    kw = {"prompt": "a photo", "negative_prompt": "", "seed": 11, "steps": STEPS, "size": (64, 64), **kw}
    return make_plan(run_dir, strengths, **kw)


def _arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_cells_in_place_and_equal_to_a_cell_rendered_alone(tiny_host, run_dir, monkeypatch):
    plan = _plan(run_dir, cfg_scale=3.0)
    batches: list[int] = []
    real = tiny_host._render

    def counting(batch, on_step):
        batches.append(len(batch))
        return real(batch, on_step)

    monkeypatch.setattr(tiny_host, "_render", counting)
    output = make_grid(tiny_host, plan)
    # one UNet batch per epoch file holding all of its strengths
    assert batches == [len(plan.strengths)] * len(plan.files)
    monkeypatch.undo()

    result = output.result
    assert result.complete and result.stopped == ""
    cells = {(c, r): _arr(result.cell(c, r)) for c in range(2) for r in range(2)}
    # the four cells differ (file and strength both matter), so a swap would show
    for a in cells:
        for b in cells:
            if a < b:
                assert np.abs(cells[a] - cells[b]).mean() > 0.5, (a, b)
    # the saved picture holds each cell at its (column = epoch, row = strength) place
    saved = Image.open(output.saved[0])
    _picture, layout = assemble.labelled(result)
    assert saved.size == _picture.size
    for (c, r), arr in cells.items():
        assert np.array_equal(_arr(assemble.cell_from_picture(saved, layout, c, r)), arr)
    # the final file (column 1) at strength 0.2 (row 0), rendered on its own
    alone = _arr(tiny_host.txt2img([plan.request(plan.files[1], 0.2)])[0])
    assert np.abs(alone - cells[(1, 0)]).max() <= 3
    assert min(np.abs(alone - cells[k]).mean() for k in cells if k != (1, 0)) > 0.5
    # the infotext names the axes in the drawn order
    text = saved.text["parameters"]
    assert text.startswith("lfgrid, a photo\nNegative prompt: \nSteps: 2, Sampler: Euler a, CFG scale: 3, Seed: 11")
    assert 'X Values: "lfgrid-000001, lfgrid", Y Type: LoRA strength, Y Values: "0.2, 1"' in text
    assert output.saved[0].parent == run_dir and output.saved[0].name.startswith("lfgrid-grid-")


def test_stop_keeps_finished_cells_and_marks_the_grid_partial(tiny_host, run_dir, tmp_path):
    plan = _plan(run_dir, "1")
    flag = StopFlag()

    def progress(event):
        if event.data.get("cells") == 1:
            flag.request("stopped by test")

    output = make_grid(tiny_host, plan, progress, flag, out=tmp_path / "grid.png")
    result = output.result
    assert result.stopped == "stopped by test"
    assert result.rendered == 1 and result.cell(0, 0) is not None and result.cell(1, 0) is None
    assert output.saved[0].name.endswith("-partial.png")
    saved = Image.open(tmp_path / "grid.png")
    assert 'Grid: "partial, 1 of 2 cells (stopped by test)"' in saved.text["parameters"]
    _p, layout = assemble.labelled(result)
    missing = _arr(assemble.cell_from_picture(saved, layout, 1, 0))
    assert np.array_equal(missing, _arr(assemble.missing_cell(64, 64)))


def test_host_interrupt_stops_and_nothing_rendered_saves_nothing(tiny_host, run_dir, monkeypatch):
    plan = _plan(run_dir, "1")
    monkeypatch.setattr(tiny_host, "interrupted", lambda: True)
    before = set(run_dir.iterdir())
    with pytest.raises(ForgeError, match=r"stopped before its first cell \(interrupted in the WebUI\)"):
        make_grid(tiny_host, plan)
    assert set(run_dir.iterdir()) == before
    assert render_grid(tiny_host, plan).rendered == 0


def test_one_cell_per_call_on_hosts_that_do_not_batch(tiny_host, run_dir, monkeypatch):
    """The WebUI renders one <lora:…> per process_images: a stop there loses no finished cell."""
    plan = _plan(run_dir, "0.2,1")
    calls: list[int] = []
    real = tiny_host.txt2img
    monkeypatch.setattr(tiny_host, "batches_lora_strengths", False)
    monkeypatch.setattr(tiny_host, "txt2img", lambda reqs, progress=None: calls.append(len(reqs)) or real(reqs))
    flag = StopFlag()
    result = render_grid(tiny_host, plan, lambda e: e.data["cells"] == 3 and flag.request(), flag)
    assert calls == [1, 1, 1]
    assert result.rendered == 3 and result.cell(1, 1) is None
