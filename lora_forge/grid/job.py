"""One grid from plan to saved files, as the CLI, the UI and the selftest all run it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress
from lora_forge.fsio import atomic_write_text
from lora_forge.grid import assemble
from lora_forge.grid.plan import GridPlan
from lora_forge.grid.render import GridResult, render_grid
from lora_forge.grid.scores import GridScores, score_grid
from lora_forge.host.base import Host
from lora_forge.rundir import RunDir
from lora_forge.settings import Settings


@dataclass
class GridOutput:
    result: GridResult
    image: Any  # the labelled grid
    infotext: str
    saved: list[Path]
    scores: GridScores | None = None
    heatmap: Any = None
    heatmap_path: Path | None = None

    def summary(self) -> str:
        r = self.result
        where = self.saved[0] if self.saved else "nowhere"
        why = r.stopped or f"{len(r.failed)} could not be rendered"
        state = "" if r.complete else f" (partial: {r.rendered} of {r.plan.cells} cells, {why})"
        return f"{len(r.plan.files)} × {len(r.plan.strengths)} grid in {r.seconds:.1f}s{state}, saved to {where}"


def model_name(host: Host) -> str:
    try:
        info = getattr(host.sd_model(), "sd_checkpoint_info", None)
    except ForgeError:
        return ""
    return str(getattr(info, "name_for_extra", "") or "")


def make_grid(
    host: Host,
    plan: GridPlan,
    progress: ProgressFn = no_progress,
    stop: StopFlag | None = None,
    out: Path | None = None,
    tagger: Any = None,
    dataset: Path | None = None,
    settings: Settings | None = None,
) -> GridOutput:
    """Render, assemble, save; score when `tagger` (ModelFiles or an open TaggerSession) is given
    (then also <grid>-scores.png, the heat map, and <grid>-scores.json beside the grid).

    A stopped grid is saved with its missing cells marked and '-partial' in the name; a grid
    stopped before its first cell saves nothing and says so.
    """
    result = render_grid(host, plan, progress, stop)
    if result.rendered == 0:
        raise ForgeError(f"the grid was stopped before its first cell ({result.stopped}); nothing was saved")
    image, _layout = assemble.grid_picture(result, host)
    text = assemble.infotext(result, model_name(host))
    saved = assemble.save_grid(result, image, text, out, host)
    output = GridOutput(result, image, text, saved)
    if tagger is not None:
        progress(Progress(plan.cells, plan.cells, "scoring the cells"))
        output.scores = _score(result, tagger, dataset, settings)
        own, layout = assemble.labelled(result)
        values = [[c.combined if c.combined is not None else c.fidelity for c in row] for row in output.scores.cells]
        labels = [[c.label() for c in row] for row in output.scores.cells]
        output.heatmap = assemble.heatmap(own, layout, values, labels)
        heat_path = RunDir.heatmap_of(saved[0])
        output.heatmap_path = assemble.save_png(output.heatmap, heat_path, text)
        # beside the grid for 优化 (ui/optimise.py) and scripts, also after a restart
        data = {**output.scores.to_json(plan), "run_dir": str(plan.folder)}
        atomic_write_text(RunDir.scores_of(saved[0]), json.dumps(data, ensure_ascii=False))
    return output


def _score(result: GridResult, tagger: Any, dataset: Path | None, settings: Settings | None) -> GridScores:
    from lora_forge.tagger.session import TaggerSession

    if isinstance(tagger, TaggerSession):
        return score_grid(result, tagger, dataset, settings)
    with TaggerSession(tagger) as session:
        return score_grid(result, session, dataset, settings)
