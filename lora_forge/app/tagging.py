"""Tagging for every face: download a tagger model, caption a dataset folder — each an
app.jobs.Job the 打标 section follows (the CLI runs the same steps in the foreground).

A tagging job publishes the ONNX provider it really runs on (`job.info["provider"]`) as soon as
the model is loaded: a silent CPU fall-back is what users complain about most.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_forge.app.jobs import Job
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings


def mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def download(settings: Settings, name: str) -> Job:
    """Download the registered model `name` (what is missing of it); its events say the bytes."""
    from lora_forge.tagger import registry

    def work(job: Job) -> Any:
        return registry.ready(settings, name, lambda f, d, t: job.say(f"{f}: {mb(d)} / {mb(t)}"))

    return Job(f"download {name}", work).start()


def tag(settings: Settings, data_dir: str, model: str, options: Any) -> Job:
    """Caption the images in `data_dir` with `model` (a registered name or a folder), downloading
    it first when needed; the result is the tagger's report (tagger.batch.TagReport)."""
    from lora_forge.tagger import registry
    from lora_forge.tagger.batch import tag_folder
    from lora_forge.tagger.session import TaggerSession

    def work(job: Job) -> Any:
        if not (data_dir or "").strip():
            raise ForgeError("set the dataset folder at the top first (the folder of prepared images)")
        files = registry.ready(settings, model, lambda f, d, t: job.say(f"Downloading {f}: {mb(d)} / {mb(t)}"))
        job.say("Loading the model …")
        with TaggerSession(files) as session:  # closed at the end: training wants the memory
            job.info["provider"] = session.provider_label
            folder = Path(data_dir.strip().strip('"'))
            return tag_folder(folder, files, options, job.emit, job.stop_flag, session=session)

    return Job("tagging", work).start()
