"""The epoch × strength grid for every face: plan it, fetch the tagger when scores are wanted,
render and score it — one app.jobs.Job the 测试 section follows (cli/grid.py runs the same steps
in the foreground). Rendering holds the host's job lock (the WebUI's queue); Stop ends it after
the cell (or batched column) in hand, and a stopped grid is shown and saved as partial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_forge.app.jobs import Job
from lora_forge.host.base import Host
from lora_forge.settings import Settings


def render(
    host: Host,
    settings: Settings,
    sources: list[Path],
    plan_args: dict[str, Any],
    tagger: str = "",
    dataset: str = "",
) -> Job:
    """A grid of the LoRA files in `sources` (`plan_args`: grid.plan.make_plan's strengths, prompt,
    negative, seed, steps, cfg, size, sampler). With `tagger` set (a registered model or a folder)
    the cells are scored against `dataset`. The plan is published as `job.info["plan"]` once made;
    the result is grid.job's GridOutput."""
    from lora_forge.grid.job import make_grid
    from lora_forge.grid.plan import make_plan

    def work(job: Job) -> Any:
        plan = make_plan(sources, **plan_args, sd_model=host.sd_model())
        job.info["plan"] = plan
        files = None
        if tagger:
            from lora_forge.tagger import registry

            files = registry.ready(settings, tagger, announce=lambda f: job.say(f"Downloading the tagger {f.name} …"))
        data = Path(dataset.strip().strip('"')) if (dataset or "").strip() else None
        return make_grid(host, plan, job.emit, job.stop_flag, tagger=files, dataset=data, settings=settings)

    return Job("grid", work).start()
