"""Training runs started from the 训练 section or the HTTP API: a worker thread per run and a
status both faces poll, so neither blocks gradio's event loop or an HTTP request.

Host-agnostic: inside the WebUI the run goes through webui_train (queue_lock, pristine model,
load-back check); on the standalone host straight through the engine. Either way each run gets a
fresh name in the host's Lora folder (`name`, `name-2`, …), every saved file gets the latest
sample as its card preview (`<file>.preview.png`), and the host's Lora list is refreshed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, StopFlag

log = logging.getLogger(__name__)

GOOD_LOSS = (0.07, 0.09)  # what our users' tutorial calls a good loss: guidance, not a target
DONE = ("finished", "stopped", "failed")


@dataclass
class RunStatus:
    id: str
    name: str
    data_dir: str
    state: str = "waiting"  # waiting → running → finished / stopped / failed
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    eta_s: float = 0.0
    message: str = ""
    plan: str = ""
    estimate: str = ""
    memory_bytes: int = 0
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    sample_step: int = 0
    sample_path: str = ""
    run_dir: str = ""
    resumed_from: str = ""  # the run folder this one continues
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in DONE

    def as_dict(self, with_losses: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_losses:
            d.pop("losses")
            d.pop("smoothed")
        return d


def unique_name(lora_dir: Path, name: str) -> str:
    """`name`, else `name-2`, `name-3`, …: no folder and no LoRA file (epoch files included) in the
    Lora folder has it, so no host can serve a stale cached file under a reused name."""
    stems = {p.stem.lower() for p in lora_dir.rglob("*.safetensors")} if lora_dir.is_dir() else set()

    def taken(candidate: str) -> bool:
        low = candidate.lower()
        epoch = re.compile(re.escape(low) + r"-\d{6}$")
        return (lora_dir / candidate).exists() or low in stems or any(epoch.match(s) for s in stems)

    candidate, n = name, 1
    while taken(candidate):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def build_config(host: Any, preset: str, overrides: dict[str, Any], resume: str = "") -> tuple[Any, frozenset[str]]:
    """Preset ← the saved run's config (resume) ← the user's values; inside the WebUI the clip skip
    is the user's WebUI setting unless given, and --medvram caches everything before training."""
    from lora_forge.train.config import read_config_file
    from lora_forge.train.presets import preset_config

    layered: dict[str, Any] = {}
    if resume:
        from lora_forge.train.state import find_state

        run_dir = find_state(resume).parent
        layered.update(read_config_file(run_dir / "config.toml"))
        layered["resume"] = str(run_dir)
    layered.update({k: v for k, v in overrides.items() if v is not None and v != ""})
    if getattr(host, "name", "") == "webui":
        from lora_forge.host import webui_train

        if not layered.get("clip_skip"):
            layered["clip_skip"] = webui_train.clip_skip()
        layered.update(webui_train.medvram_overrides())
    elif not layered.get("clip_skip"):
        layered.pop("clip_skip", None)
    config = preset_config(str(layered.pop("preset", preset) or "custom"), layered)
    return config, frozenset(layered) - {"output_name", "resume"}


class Runs:
    """Every run of this process; one may be active at a time (there is one model to train on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunStatus] = {}
        self._stops: dict[str, StopFlag] = {}
        self._threads: dict[str, threading.Thread] = {}

    # ------------------------------------------------------------------ queries
    def get(self, run_id: str) -> RunStatus:
        with self._lock:
            if run_id not in self._runs:
                raise ForgeError(f"no training run with id {run_id!r}; list them with GET /lora_forge/v1/train/runs")
            return self._runs[run_id]

    def list(self) -> list[RunStatus]:
        with self._lock:
            return list(self._runs.values())

    def active(self) -> RunStatus | None:
        return next((r for r in self.list() if not r.done), None)

    def latest(self) -> RunStatus | None:
        runs = self.list()
        return runs[-1] if runs else None

    def wait(self, run_id: str, timeout: float | None = None) -> RunStatus:
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(run_id)

    # ------------------------------------------------------------------ control
    def start(
        self,
        host: Any,
        data_dir: str,
        preset: str = "custom",
        overrides: dict[str, Any] | None = None,
        resume: str = "",
    ) -> RunStatus:
        """Check everything that can be checked without the model lock, then train in a thread."""
        from lora_forge.train.loop import prepare

        if not str(data_dir or "").strip():
            raise ForgeError("choose the dataset folder first (the prepared images with their .txt captions)")
        with self._lock:
            busy = next((r for r in self._runs.values() if not r.done), None)
            if busy is not None:
                raise ForgeError(f"training run “{busy.name}” is still going; stop it or wait for it to finish")
            placeholder = RunStatus(uuid.uuid4().hex[:12], "", str(data_dir), message="preparing…")
            self._runs[placeholder.id] = placeholder  # holds the slot while we check
        try:
            sd_model = host.sd_model()  # no model / Forge 2: refused before anything else
            if getattr(host, "name", "") == "webui":
                from lora_forge.host import webui_train

                webui_train.check_trainable(sd_model)
            config, user_keys = build_config(host, preset, dict(overrides or {}), resume)
            name = unique_name(host.lora_dir(), config.output_name)
            prepared = prepare(config.replace(output_name=name), data_dir, user_keys)
        except BaseException:
            with self._lock:
                self._runs.pop(placeholder.id, None)
            raise
        status = placeholder
        status.name, status.plan, status.total = name, prepared.plan.note, prepared.plan.total_steps
        status.epochs, status.message = prepared.plan.epochs, "starting…"
        status.run_dir = str(host.lora_dir() / name)  # where the engine's new_run_dir puts it
        status.resumed_from = str(prepared.resume_from.parent) if prepared.resume_from is not None else ""
        stop = StopFlag()
        thread = threading.Thread(
            target=self._work, args=(status, host, prepared, stop), name=f"lora_forge train {name}", daemon=True
        )
        with self._lock:
            self._stops[status.id] = stop
            self._threads[status.id] = thread
        thread.start()
        return status

    def stop(self, run_id: str) -> RunStatus:
        status = self.get(run_id)
        if not status.done:
            self._stops[run_id].request("stopped by user")
            status.message = "stopping after the current step…"
        return status

    # ------------------------------------------------------------------ the worker
    def _work(self, status: RunStatus, host: Any, prepared: Any, stop: StopFlag) -> None:
        def progress(event: Progress) -> None:
            _apply(status, event)

        out_dir = host.lora_dir()
        try:
            if getattr(host, "name", "") == "webui":
                from lora_forge.host.webui_train import train_in_webui

                result = train_in_webui(host, prepared, out_dir, progress, stop)
            else:
                from lora_forge.train.loop import train

                status.state = "running"
                result = train(host, prepared, out_dir, progress, stop)
            self._finish(status, host, prepared, result)
        except ForgeError as e:
            if stop.requested:  # stopped before anything was trained (while encoding the images)
                status.state, status.message = "stopped", str(e)
            else:
                status.state, status.error = "failed", str(e)
        except Exception as e:  # a bug: loud in the log, one line for the user
            log.exception("training run %s failed", status.name)
            status.state, status.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            status.finished = time.time()
            if status.state == "failed":
                status.message = status.error

    def _finish(self, status: RunStatus, host: Any, prepared: Any, result: Any) -> None:
        files = [*result.epoch_files, result.final_file]
        per_epoch = prepared.plan.steps_per_epoch
        for path in files:
            m = re.search(r"-(\d{6})$", path.stem)
            at = min(int(m.group(1)) * per_epoch, result.steps) if m and path != result.final_file else result.steps
            attach_preview(path, result.run_dir, at)
        try:
            host.refresh_loras()
        except ForgeError as e:
            status.warnings.append(str(e))
        status.run_dir, status.files = str(result.run_dir), [str(p) for p in files]
        status.step = result.steps
        status.state = "stopped" if result.stopped else "finished"
        status.message = finish_message(status, result.stopped)


def _apply(status: RunStatus, event: Progress) -> None:
    """One engine event into the status the faces poll."""
    d = event.data
    if "warning" in d:  # e.g. a saved file that failed the load-back check: shown until the run's end
        status.warnings.append(str(d["warning"]))
    if "loss" in d:
        status.state = "running"
        status.step, status.total = event.step, event.total
        status.epoch, status.epochs = int(d.get("epoch", 0)), int(d.get("epochs", status.epochs))
        status.eta_s = float(d.get("eta_s", 0.0))
        status.memory_bytes = int(d.get("memory", 0) or 0)
        status.losses.append(float(d["loss"]))
        status.smoothed.append(float(d.get("loss_avg", d["loss"])))
    elif event.image is not None:
        status.sample_step = event.step
        status.sample_path = _latest_sample(Path(status.run_dir)) if status.run_dir else ""
        status._sample_image = event.image  # type: ignore[attr-defined]  # for the UI, not serialised
    elif "frozen_weights" in d:
        status.estimate = event.message
    if event.message and not event.message.startswith("waiting") and status.state == "waiting":
        status.state = "running"
    if event.message:
        status.message = event.message


def _latest_sample(run_dir: Path) -> str:
    samples = sorted((run_dir / "samples").glob("step*-0.png"))
    return str(samples[-1]) if samples else ""


def attach_preview(lora_file: Path, run_dir: Path, step: int) -> Path | None:
    """The latest first sample rendered at or before `step`, as `<file>.preview.png` (the WebUI's
    Lora card picture)."""
    import shutil

    best = None
    for sample in sorted((Path(run_dir) / "samples").glob("step*-0.png")):
        m = re.match(r"step(\d+)-0$", sample.stem)
        if m and int(m.group(1)) <= step:
            best = sample
    if best is None:
        return None
    target = lora_file.with_name(lora_file.stem + ".preview.png")
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(best, tmp)
        tmp.replace(target)
    return target


def finish_message(status: RunStatus, stopped: str) -> str:
    names = [Path(f).stem for f in status.files]
    head = f"Stopped ({stopped}) at step {status.step}" if stopped else f"Finished: {status.step} steps"
    try_name = names[-2] if len(names) > 1 else names[-1] if names else status.name
    return (
        f"{head}. {len(names)} LoRA file(s) in {status.run_dir}. Try one in txt2img with "
        f"`<lora:{try_name}:0.8>`, or compare every epoch at several strengths in the Test grid section."
        + (" Press Resume to continue this run." if stopped else "")
    )


RUNS = Runs()  # one per process: survives the WebUI's "Reload UI", shared by the UI and the API
