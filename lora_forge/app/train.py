"""Training runs for every face: start, stop, resume, list, wait — a run is an app.jobs.Job that
the 训练 section, the HTTP API and the CLI all follow through the same `RunStatus`.

Host-agnostic: the host holds its model for the run (`Host.training`: inside the WebUI its queue
lock, a pristine model put back after, its status line and the load-back check), refuses what it
cannot train (`Host.training_refusal`) and supplies its defaults (`Host.training_defaults`). Each
run gets a fresh name in the host's Lora folder (`name`, `name-2`, …), every saved file gets the
latest sample as its card preview (`<file>.preview.png`), and the host's Lora list is refreshed.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.app.jobs import DONE, Job, new_id
from lora_forge.errors import ForgeError
from lora_forge.events import Progress
from lora_forge.host.base import Host
from lora_forge.rundir import RunDir

GOOD_LOSS = (0.07, 0.09)  # what our users' tutorial calls a good loss: guidance, not a target


@dataclass
class RunStatus:
    """What the faces show of a run; the HTTP API returns it as JSON (`as_dict`)."""

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


def build_config(host: Host, preset: str, overrides: dict[str, Any], resume: str = "") -> tuple[Any, frozenset[str]]:
    """The one config layering (train.layering) with this host's defaults; empty values from a
    form or a request mean "not set"."""
    from lora_forge.train.layering import layer_config
    from lora_forge.train.presets import loaded_family

    given = {k: v for k, v in overrides.items() if v is not None and v != ""}
    family, device_type = loaded_family(host)  # an SDXL-family model gets the presets' SDXL values
    layered = layer_config(preset, given, resume, defaults=host.training_defaults(), forced=host.training_overrides(),
                           family=family, device_type=device_type)  # fmt: skip
    return layered.config, layered.user_keys


def _check_trainable(host: Host, sd_model: Any) -> None:
    refusal = host.training_refusal(sd_model)
    if refusal:
        raise ForgeError(refusal)


class Runs:
    """Every run of this process; one may be active at a time (there is one model to train on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunStatus] = {}
        self._jobs: dict[str, Job] = {}

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
        job = self._jobs.get(run_id)
        if job is not None:
            job.wait(timeout)
        return self.get(run_id)

    # ------------------------------------------------------------------ control
    def start(
        self,
        host: Host,
        data_dir: str,
        preset: str = "custom",
        overrides: dict[str, Any] | None = None,
        resume: str = "",
    ) -> RunStatus:
        """Check everything that can be checked without the model lock, then train in a Job."""
        from lora_forge.train.loop import prepare

        if not str(data_dir or "").strip():
            raise ForgeError("choose the dataset folder first (the prepared images with their .txt captions)")
        with self._lock:
            busy = next((r for r in self._runs.values() if not r.done), None)
            if busy is not None:
                raise ForgeError(f"training run “{busy.name}” is still going; stop it or wait for it to finish")
            status = RunStatus(new_id(), "", str(data_dir), message="preparing…")
            self._runs[status.id] = status  # holds the slot while we check
        try:
            _check_trainable(host, host.sd_model())  # no model / Forge 2 / a refusal: before anything else
            config, user_keys = build_config(host, preset, dict(overrides or {}), resume)
            name = unique_name(host.lora_dir(), config.output_name)
            prepared = prepare(config.replace(output_name=name), data_dir, user_keys)
        except BaseException:
            with self._lock:
                self._runs.pop(status.id, None)
            raise
        status.name, status.plan, status.total = name, prepared.plan.note, prepared.plan.total_steps
        status.epochs, status.message = prepared.plan.epochs, "starting…"
        status.run_dir = str(host.lora_dir() / name)  # where the engine's new run folder goes
        status.resumed_from = str(prepared.resume_from.parent) if prepared.resume_from is not None else ""
        job = Job(
            f"training run {name}",
            lambda job: _work(job, status, host, prepared),
            on_event=lambda event: _apply(status, event),
            on_end=lambda job: _ended(status, job),
            job_id=status.id,
        )
        with self._lock:
            self._jobs[status.id] = job
        job.start()
        return status

    def resume(self, host: Host, run_dir: str, data_dir: str = "") -> RunStatus:
        """Continue a stopped run (its folder) in a new run folder, on its dataset unless given."""
        if not run_dir:
            raise ForgeError("Nothing to resume: no stopped run in this session.")
        if not data_dir:
            data_dir = next((r.data_dir for r in self.list() if r.run_dir == str(run_dir)), "")
        return self.start(host, data_dir, resume=str(run_dir))

    def stop(self, run_id: str) -> RunStatus:
        status = self.get(run_id)
        if not status.done:
            self._jobs[run_id].stop("stopped by user")
            status.message = "stopping after the current step…"
        return status


def _work(job: Job, status: RunStatus, host: Host, prepared: Any) -> Any:
    """The run, on the job's thread, inside the host's training context."""
    from lora_forge.train.loop import train
    from lora_forge.train.outputs import default_prompts

    with host.training(prepared.config.output_name, job.emit) as ctx:
        status.state = "running"
        config = prepared.config
        if not config.sample_prompts:
            first = [c.split(",")[0].strip() for c in (it.caption for it in prepared.dataset.items) if c]
            prompts = host.sample_prompts(default_prompts(config, first))
            if prompts is not None:
                prepared.config = config.replace(sample_prompts=prompts)
        result = train(host, prepared, host.lora_dir(), ctx.progress, job.stop_flag, on_saved=ctx.on_saved)
    _finish(status, host, prepared, result)
    job.state = status.state
    return result


def _ended(status: RunStatus, job: Job) -> None:
    """The job's outcome into the status (a failure, or a stop before anything was trained)."""
    if job.state == "failed":
        status.state, status.error, status.message = "failed", job.error, job.error
    elif not status.done:  # stopped while loading, before anything was trained
        status.state, status.message = job.state, job.message or status.message
    status.finished = job.finished


def _finish(status: RunStatus, host: Host, prepared: Any, result: Any) -> None:
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
        status.sample_path = _latest_sample(RunDir(status.run_dir)) if status.run_dir else ""
        status._sample_image = event.image  # type: ignore[attr-defined]  # for the UI, not serialised
    elif "frozen_weights" in d:
        status.estimate = event.message
    if event.message and not event.message.startswith("waiting") and status.state == "waiting":
        status.state = "running"
    if event.message:
        status.message = event.message


def _latest_sample(run: RunDir) -> str:
    samples = list(run.first_samples())
    return str(samples[-1][1]) if samples else ""


def attach_preview(lora_file: Path, run_dir: Path, step: int) -> Path | None:
    """The latest first sample rendered at or before `step`, as `<file>.preview.png` (the WebUI's
    Lora card picture)."""
    import shutil

    best = None
    for at, sample in RunDir(run_dir).first_samples():
        if at <= step:
            best = sample
    if best is None:
        return None
    target = RunDir.preview_of(lora_file)
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


# -- the use cases, as the faces call them ---------------------------------------------------------


def start(
    host: Host, data_dir: str, preset: str = "custom", overrides: dict[str, Any] | None = None, resume: str = ""
) -> RunStatus:
    """Start a run in the background; the returned status is that run's (poll it, `stop` it by id)."""
    return RUNS.start(host, data_dir, preset, overrides, resume)


def resume(host: Host, run_dir: str, data_dir: str = "") -> RunStatus:
    """Continue the stopped run in `run_dir` in a new run folder."""
    return RUNS.resume(host, run_dir, data_dir)


def stop(run_id: str) -> RunStatus:
    """Ask run `run_id` to stop after its current step (it saves a file and resumable state)."""
    return RUNS.stop(run_id)


def get(run_id: str) -> RunStatus:
    return RUNS.get(run_id)


def runs() -> list[RunStatus]:
    """Every run of this process, oldest first."""
    return RUNS.list()


def active() -> RunStatus | None:
    return RUNS.active()


def latest() -> RunStatus | None:
    return RUNS.latest()


def wait(run_id: str, timeout: float | None = None) -> RunStatus:
    return RUNS.wait(run_id, timeout)


def lora_files(host: Host) -> list[dict[str, Any]]:
    """Every LoRA file in the host's Lora folder, with whether it has a card picture."""
    folder = host.lora_dir()
    found = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
    return [
        {"name": p.stem, "path": str(p), "bytes": p.stat().st_size, "preview": RunDir.preview_of(p).is_file()}
        for p in found
    ]


def estimate_memory(host: Host, data_dir: str, preset: str, overrides: dict[str, Any]) -> tuple[Any, Any]:
    """(memory estimate, prepared run) for these settings on the host's model, without training."""
    from lora_forge.train import memory
    from lora_forge.train.loop import prepare
    from lora_forge.train.session import open_session

    config, user_keys = build_config(host, preset, overrides)
    prepared = prepare(config, data_dir, user_keys)
    with host.job("memory estimate"):
        sd_model = host.sd_model()
        _check_trainable(host, sd_model)
        session = open_session(sd_model, prepared.config)
        try:
            est = memory.estimate(sd_model, session.network, prepared.config, prepared.dataset)
        finally:
            session.close()
    return est, prepared
