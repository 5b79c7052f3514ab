"""What a run leaves behind: its own folder, LoRA files, config, loss log, samples, report.

A run folder is created fresh (`name`, `name-2`, …) so no run ever overwrites another's files;
the WebUI also caches LoRAs by file name, so fresh names avoid stale renders.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lora_forge.fsio import atomic_write_text
from lora_forge.host.base import Host
from lora_forge.rundir import RunDir
from lora_forge.train.config import TrainConfig

log = logging.getLogger(__name__)

PROBE = "white hair, red dress"  # a generalisation probe: the subject in clothes it was not shown in


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """A folder that did not exist before this call (its layout: rundir.RunDir)."""
    return RunDir.create(out_dir, name).path


def epoch_file(run_dir: Path, name: str, epoch: int) -> Path:
    return RunDir(run_dir).epoch_file(name, epoch)


def final_file(run_dir: Path, name: str) -> Path:
    return RunDir(run_dir).final_file(name)


def default_prompts(config: TrainConfig, first_tags: list[str]) -> list[str]:
    """The trigger word alone, and with a probe; without a trigger, the dataset's commonest first tag."""
    if config.sample_prompts:
        return list(config.sample_prompts)
    subject = config.trigger_word
    if not subject and first_tags:
        subject = max(set(first_tags), key=first_tags.count)
    subject = subject or "a photo"
    return [subject, f"{subject}, {PROBE}"]


class LossLog:
    """loss.jsonl always; TensorBoard events too when the `tensorboard` package is installed."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).loss_log
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb: Any = None
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(RunDir(run_dir).tensorboard))
        except ImportError:
            pass

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for key in ("loss", "loss_avg", "lr"):
                if key in row:
                    self._tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def write_config(run_dir: Path, config: TrainConfig) -> None:
    atomic_write_text(RunDir(run_dir).config, config.to_toml())


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_text(RunDir(run_dir).report, json.dumps(report, indent=2, ensure_ascii=False))


def render_samples(host: Host, prompts: list[str], config: TrainConfig, step: int, run_dir: Path) -> list[Any]:
    """Render the sample prompts with the live LoRA through the host, save them under samples/."""
    from lora_forge.host.base import RenderRequest

    w, h = config.resolution_wh
    requests = [
        RenderRequest(
            prompt=p,
            seed=config.seed + i,
            steps=config.sample_steps,
            cfg_scale=config.sample_cfg_scale,
            width=w,
            height=h,
            sampler=config.sample_sampler,
        )
        for i, p in enumerate(prompts)
    ]
    images = host.txt2img(requests)
    run = RunDir(run_dir)
    run.samples.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        image.save(run.sample(step, i))
    return images


class Smoother:
    """kohya's `avr_loss`: the mean of the latest loss at each step index of one epoch."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.values: list[float] = []

    def add(self, loss: float) -> float:
        self.values.append(loss)
        if len(self.values) > self.window:
            self.values.pop(0)
        return sum(self.values) / len(self.values)


class Clock:
    """it/s over the recent steps and an ETA, measured after the first (warm-up) step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[float] = []

    def tick(self) -> None:
        self.marks.append(time.perf_counter())
        if len(self.marks) > 21:
            self.marks.pop(0)

    def rate(self) -> float:
        if len(self.marks) < 2:
            return 0.0
        return (len(self.marks) - 1) / max(1e-9, self.marks[-1] - self.marks[0])

    def eta(self, remaining: int) -> float:
        r = self.rate()
        return remaining / r if r else 0.0
