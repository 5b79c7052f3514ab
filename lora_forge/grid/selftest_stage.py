"""Selftest stage: a 2 epochs × 2 strengths grid at 64×64 from the train stage's run folder (or
LoRA files made here), the labelled picture saved, and a cell rendered alone compared with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def selftest(ctx: Any) -> str:
    import numpy as np

    from lora_forge.errors import ForgeError
    from lora_forge.grid.job import make_grid
    from lora_forge.grid.plan import collect_files, make_plan
    from lora_forge.grid.testing import write_run

    host = ctx.shared["host"]
    run_dir = ctx.shared.get("run_dir")
    if run_dir is not None and len(collect_files(Path(run_dir))[0]) >= 2:
        files = [f.path for f in collect_files(Path(run_dir))[0]][-2:]
        source = f"the train stage's run {Path(run_dir).name}"
    else:
        files = write_run(host.sd_model(), ctx.out / "grid-run", epochs=2, final=False)
        source = "two LoRA files made here"
    plan = make_plan(
        files, "0.5,1", "a photo", "", seed=7, steps=3, size=(64, 64), cfg_scale=5.0, sd_model=host.sd_model()
    )
    output = make_grid(host, plan)
    if not output.result.complete:
        raise ForgeError(f"the selftest grid is incomplete: {output.result.stopped}")
    alone = host.txt2img([plan.request(plan.files[1], plan.strengths[0])])[0]
    diff = np.abs(np.asarray(alone, np.int16) - np.asarray(output.result.cell(1, 0), np.int16)).max()
    if diff > 3:
        raise ForgeError(f"a cell rendered alone differs from the grid's cell by {diff}/255")
    ctx.log(f"grid saved to {output.saved[0]}")
    return f"2 × 2 grid from {source} in {output.result.seconds:.1f}s; a cell alone matches the grid's (Δ≤{diff})"
