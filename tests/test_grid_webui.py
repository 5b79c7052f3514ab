"""The grid inside the WebUI (stand-in `modules.*` following 1.10.1, the real tiny ldm model): one
process_images per `<lora:name:strength>` cell in the queue, the WebUI's own image_grid +
draw_grid_annotations, and images.save_image(grid=True) into the txt2img grids folder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lora_forge.grid.job import make_grid
from lora_forge.grid.plan import make_plan
from lora_forge.grid.testing import write_run
from tests.test_webui_host import webui  # noqa: F401  (the started stand-in WebUI)


def test_grid_through_the_webui(webui, tiny_host, monkeypatch):  # noqa: F811
    from modules import images, processing, shared

    from lora_forge.host.webui import WebUIHost

    host = WebUIHost()
    run = host.lora_dir() / "lfgrid"
    write_run(tiny_host.sd_model(), run, epochs=1, final=True, scale=0.15)
    grids = webui.root / "outputs" / "txt2img-grids"
    shared.opts.data["outdir_txt2img_grids"] = str(grids)  # the WebUI's default, relative to its folder
    prompts: list[str] = []
    real = processing.process_images

    def spy(p):
        prompts.append(p.prompt)
        return real(p)

    monkeypatch.setattr(processing, "process_images", spy)
    annotations: list[list[str]] = []
    real_draw = images.draw_grid_annotations

    def draw(im, width, height, hor_texts, ver_texts, margin=0):
        annotations.append([a.text for t in hor_texts for a in t] + [a.text for t in ver_texts for a in t])
        return real_draw(im, width, height, hor_texts, ver_texts, margin)

    monkeypatch.setattr(images, "draw_grid_annotations", draw)
    plan = make_plan(run, "0.5,1", "a photo", "", seed=4, steps=2, size=(64, 64), sd_model=host.sd_model())
    output = make_grid(host, plan)

    assert prompts == [  # one process_images per cell, epoch by epoch
        "lfgrid, a photo <lora:lfgrid-000001:0.5>",
        "lfgrid, a photo <lora:lfgrid-000001:1>",
        "lfgrid, a photo <lora:lfgrid:0.5>",
        "lfgrid, a photo <lora:lfgrid:1>",
    ]
    assert annotations == [["000001", "000002 (final)", "0.5", "1"]]
    saved_in_webui = [p for p in output.saved if p.parent == grids]
    assert len(saved_in_webui) == 1 and output.saved[0].parent == run
    on_disk = Image.open(saved_in_webui[0])
    assert 'X Values: "lfgrid-000001, lfgrid"' in on_disk.text["parameters"]
    assert np.array_equal(np.asarray(on_disk), np.asarray(output.image))
    assert shared.state.job == ""  # the queue job ended


def test_a_nan_cell_is_marked_with_its_reason_and_the_others_render(webui, tiny_host):  # noqa: F811
    """One file whose weights are NaN (as a model that NaNs on a negative prompt, or an fp16 VAE):
    the WebUI's NaN check stops those cells only; the grid renders the rest and says why."""
    from safetensors.torch import load_file, save_file

    from lora_forge.host.webui import WebUIHost
    from lora_forge.lora.fileformat import read_metadata

    host = WebUIHost()
    run = host.lora_dir() / "lfnan"
    paths = write_run(tiny_host.sd_model(), run, name="lfnan", epochs=1, final=True, trigger="lfnan", scale=0.15)
    broken = paths[-1]
    tensors, meta = load_file(str(broken)), read_metadata(broken)
    tensors = {k: (v * float("nan") if k.endswith("lora_up.weight") else v) for k, v in tensors.items()}
    broken.unlink()
    save_file(tensors, str(broken), metadata=meta)
    plan = make_plan(run, "0.5,1", "a photo", "", seed=4, steps=2, size=(64, 64), sd_model=host.sd_model())
    output = make_grid(host, plan)

    result = output.result
    assert result.rendered == 2 and set(result.failed) == {(0, 1), (1, 1)}  # the NaN file's column
    assert all(result.cell(0, r) is not None for r in (0, 1))
    assert all("NaN in the UNet" in why and "--no-half-vae" in why for why in result.failed.values())
    assert "partial: 2 of 4 cells, 2 could not be rendered" in output.summary()
    assert any("strength 0.5 not rendered: NaN" in n for n in result.failure_notes)
    assert output.saved and output.image is not None
    # the NaN cells are drawn as crossed boxes with "NaN" in red; the rendered ones are the pictures
    from lora_forge.grid.assemble import filled_cells

    cells = filled_cells(result)
    marked = np.asarray(cells[0][1])
    assert ((marked[..., 0] > 150) & (marked[..., 1] < 80)).any()  # the red word
    assert cells[0][0] is result.cell(0, 0)
