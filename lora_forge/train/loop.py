"""The training loop: read it top to bottom in `train()`; everything else is a named helper.

Randomness: every micro-step draws its noise, timesteps, caption shuffle, flip and LoRA dropout
from generators seeded by (seed, micro-step). A CPU run is therefore reproducible bit for bit, and
a resumed run continues with exactly the draws the uninterrupted run would have made.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress
from lora_forge.host.base import Host
from lora_forge.train import data, outputs
from lora_forge.train.conditioning import Conditioner
from lora_forge.train.config import TrainConfig
from lora_forge.train.presets import StepPlan, plan_steps

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Checked before any heavy work: config, dataset, step plan."""

    config: TrainConfig
    dataset: data.Dataset
    plan: StepPlan
    resume_from: Path | None = None
    world_size: int = 1  # processes of a data-parallel run (train/distributed.py); batches are global

    @property
    def global_batch(self) -> int:
        return self.config.train_batch_size * self.world_size


@dataclass
class TrainResult:
    run_dir: Path
    final_file: Path
    epoch_files: list[Path]
    steps: int
    total_steps: int
    seconds: float
    stopped: str = ""
    losses: list[float] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def prepare(
    config: TrainConfig, data_dir: str | Path, user_keys: frozenset[str] = frozenset(), world_size: int = 1
) -> Prepared:
    """Validate the config and the dataset and plan the steps; no model, no torch needed.

    `train_batch_size` is per process: with `world_size` processes, steps and the learning-rate
    schedule are planned on the global batch (world_size × train_batch_size)."""
    config.validate()
    dataset = data.scan_dataset(data_dir, config)
    folders = [(n, r) for _, n, r in dataset.folders]
    global_batch = config.train_batch_size * world_size
    planning = config if world_size == 1 else config.replace(train_batch_size=global_batch)
    plan = plan_steps(planning, folders, user_keys)
    data.apply_repeats(dataset, plan.repeats_for_plain)
    batches = len(data.epoch_batches(dataset, global_batch, 0, 0))
    per_epoch = -(-batches // config.gradient_accumulation_steps)
    total = config.max_train_steps or per_epoch * plan.epochs
    epochs = -(-total // per_epoch)
    plan = plan.with_steps(epochs, per_epoch, total)
    resume = None
    if config.resume:
        from lora_forge.train.state import check_world_size, find_state

        resume = find_state(config.resume)
        check_world_size(resume, world_size)
    config = config.replace(max_train_epochs=epochs, num_repeats=plan.repeats_for_plain)
    return Prepared(config, dataset, plan, resume, world_size)


def _config_hash(config: TrainConfig) -> str:
    from lora_forge.train.state import config_hash

    return config_hash(config)


def train(
    host: Host,
    prepared: Prepared,
    out_dir: str | Path,
    progress: ProgressFn = no_progress,
    stop: StopFlag | None = None,
    on_saved: Callable[[Path, Any], str] | None = None,
    dist: Any = None,
) -> TrainResult:
    """Train a LoRA on the host's loaded model; returns where the files went.

    `on_saved(path, session)` runs right after each file is written, while the live modules are
    still injected (in eval mode, samplers' RNG untouched, offloaded parts back on the device):
    a host checks the file against them there (`session.muted()` turns them off). What it returns,
    when not empty, is a problem with that file; the run's report lists them as `save_checks`.

    `dist`: this process's part of a data-parallel run (train/distributed.Ranks), None alone."""
    import torch

    from lora_forge.train import losses, memory, state
    from lora_forge.train.fit import check_before_work, check_fits
    from lora_forge.train.optim import make_scheduler
    from lora_forge.train.session import offloaded, open_session, precision_for

    config, dataset, plan = prepared.config, prepared.dataset, prepared.plan
    stop = stop or StopFlag()
    device = host.device
    check_before_work(config, device)
    with host.job("train"), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        sd_model = host.sd_model()
        precision = precision_for(config, device, next(sd_model.model.diffusion_model.parameters()).dtype)
        if int(getattr(sd_model.model.diffusion_model, "in_channels", 4)) != 4:
            raise ForgeError("inpainting / instruct-pix2pix checkpoints cannot be trained; load a normal model")
        session = open_session(sd_model, config)
        try:
            estimate = memory.estimate(sd_model, session.network, config, dataset)
            progress(Progress(0, plan.total_steps, "memory plan: " + estimate.summary(), data=estimate.as_dict()))
            check_fits(estimate, config)
            if dist is None:
                run_dir = outputs.new_run_dir(out_dir, config.output_name)
                outputs.write_config(run_dir, config)
            else:
                run_dir = dist.new_run_dir(out_dir, config)
            conds = Conditioner(sd_model, config, dataset, device, precision)
            encode = encode_latents if dist is None else dist.encode_latents
            latents = encode(sd_model, dataset, config, device, progress, stop)
            conds.fill_cache(dataset)  # every fixed caption, once
            # Their outputs are cached: the VAE and a frozen text encoder leave the accelerator.
            idle = [sd_model.first_stage_model] + ([conds.encoder.module] if conds.cache else [])
            for module in idle:
                session.stack.enter_context(offloaded(module, device))
            schedule = losses.schedule_for(host, sd_model, config, device, progress, plan.total_steps)
            optimizer, _ = optimizer_for(session, config)
            scheduler = make_scheduler(optimizer, config, plan.total_steps)
            pos = state.Position(0, 0, 0, plan.total_steps, time.time(), _config_hash(config))
            if prepared.resume_from is not None:
                saved = state.load_position(prepared.resume_from)
                if not state.same_config(saved, config, prepared.resume_from) or saved.total_steps != plan.total_steps:
                    raise ForgeError("the config differs from the saved run's; resume with its config.toml")
                pos = state.load_state(prepared.resume_from, session.network, optimizer, scheduler)
                if dist is not None:
                    dist.restore_rng(prepared.resume_from)
            loop_class = _Loop if dist is None else dist.loop_class()
            loop = loop_class(host, config, dataset, plan, session, conds, latents, schedule, precision, run_dir)
            loop.offloaded, loop.on_saved = idle, on_saved
            return loop.run(optimizer, scheduler, pos, progress, stop, estimate)
        finally:
            session.close()


def encode_latents(
    sd_model: Any, dataset: Any, config: TrainConfig, device: Any, progress: ProgressFn, stop: StopFlag
) -> Any:
    """Encode every image of `dataset` once, before the first step (from the disk cache where it
    holds them)."""
    from lora_forge.model.encode import encode_images

    vae_id = data.module_fingerprint(sd_model.first_stage_model)

    def encode(px: Any) -> Any:
        return encode_images(sd_model, px.to(device))

    return data.cache_latents(dataset, encode, vae_id, config, progress, stop)


def optimizer_for(session: Any, config: TrainConfig) -> tuple[Any, list[Any]]:
    """The optimizer over the session's parameter groups, and those parameters."""
    from lora_forge.train.optim import fused_backward, make_optimizer

    optimizer = make_optimizer(config.optimizer_type, session.groups)
    if config.fused_backward_pass:
        session.stack.enter_context(fused_backward(optimizer, config.max_grad_norm))
    return optimizer, [p for g in session.groups for p in g["params"]]


def diffusion_loss(
    unet: Any,
    x0: Any,
    cond_fn: Any,
    schedule: Any,
    config: TrainConfig,
    precision: Any,
    gen: Any,
    part: slice = slice(None),
) -> Any:
    """kohya's loss with kohya's options (train/losses.py): noise, t, UNet prediction, weighted loss.

    Noise and timesteps are drawn for all of `x0`; the UNet runs on, and the mean is over, the
    samples in `part` (a data-parallel process's shard of the global batch; all of it alone)."""
    from lora_forge.model.unet import predict
    from lora_forge.train.losses import Drawn, draw_noise, loss_per_sample

    drawn = draw_noise(x0, gen, schedule, config)
    x0, drawn = x0[part], Drawn(drawn.noise[part], drawn.noisy[part], drawn.t[part])
    with precision.autocast():
        pred = predict(unet, drawn.noisy, drawn.t, cond_fn())
    return loss_per_sample(pred, x0, drawn, schedule, config).mean()


def backward(loss: Any, config: TrainConfig, precision: Any) -> None:
    scaled = loss / config.gradient_accumulation_steps
    (precision.scaler.scale(scaled) if precision.scaler else scaled).backward()


def optimizer_step(optimizer: Any, scheduler: Any, params: list[Any], config: TrainConfig, precision: Any) -> None:
    """Unscale (fp16), clip, step, advance the schedule, drop the grads."""
    import torch

    scaler = precision.scaler
    if getattr(optimizer, "steps_in_backward", False):  # fused backward pass: already stepped, grads freed
        scheduler.step()
        return
    if config.max_grad_norm:
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


class _Loop:
    def __init__(self, host, config, dataset, plan, session, conds, latents, schedule, precision, run_dir) -> None:
        self.host, self.config, self.dataset, self.plan = host, config, dataset, plan
        self.session, self.conds, self.latents = session, conds, latents
        self.schedule, self.precision, self.run_dir = schedule, precision, run_dir
        self.device = host.device
        self.epoch_files: list[Path] = []
        self.offloaded: list[Any] = []
        self.on_saved: Callable[[Path, Any], str] | None = None
        self.save_checks: list[str] = []
        self.optimizer: Any = None
        self.world_size, self.batch_size = 1, config.train_batch_size  # batch: global in a data-parallel run
        first_tags = [c.split(",")[0].strip() for c in (it.caption for it in dataset.items) if c]
        self.prompts = outputs.default_prompts(config, first_tags)

    # ------------------------------------------------------------------ one optimizer step
    def draw(self, ids: list[int], micro: int) -> tuple[Any, list[bool], Any, list[str]]:
        """The micro-step's own generator (its noise and timesteps come from it), flips, latents
        and captions: all from the micro-step's seed, so a resumed run and every process of a
        data-parallel one (train/distributed.py) draw the same."""
        import torch

        c = self.config
        seed = c.seed * 1_000_003 + micro
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # LoRA dropout draws from the global generator
        flips = [c.flip_aug and rng.random() < 0.5 for _ in ids]
        x0 = torch.stack([self.latents.memory[(i, f)] for i, f in zip(ids, flips, strict=True)]).to(self.device)
        captions = [data.caption_for_step(self.dataset.items[i].caption, c, rng) for i in ids]
        return gen, flips, x0, captions

    def micro_step(self, ids: list[int], micro: int) -> Any:
        """Forward + backward of one batch; returns the (unscaled) loss tensor."""
        import torch

        c = self.config
        gen, flips, x0, captions = self.draw(ids, micro)
        self.session.begin_step(self.precision.autocast_dtype)
        loss = diffusion_loss(
            self.session.unet, x0, lambda: self.conds(ids, captions, flips), self.schedule, c, self.precision, gen
        )
        if not torch.isfinite(loss):
            raise _NonFinite()
        backward(loss, c, self.precision)
        return loss.detach()

    # ------------------------------------------------------------------ the loop
    def run(self, optimizer: Any, scheduler: Any, pos: Any, progress: ProgressFn, stop: StopFlag, estimate: Any):
        from lora_forge.train import memory

        c, plan = self.config, self.plan
        params = [p for g in optimizer.param_groups for p in g["params"]]
        log_file = self._loss_log()
        smoother, clock = outputs.Smoother(plan.steps_per_epoch), outputs.Clock()
        losses: list[float] = []
        stopped, start, first_step = "", time.perf_counter(), pos.step
        self.started_at, self.optimizer = pos.started_at, optimizer
        accum = c.gradient_accumulation_steps
        try:
            for epoch in range(pos.epoch, plan.epochs):
                batches = data.epoch_batches(self.dataset, self.batch_size, c.seed, epoch)
                batches = batches[: plan.steps_per_epoch * accum]
                k = pos.batch if epoch == pos.epoch else 0
                while k < len(batches) and pos.step < plan.total_steps and not stopped:
                    group = batches[k : k + accum]
                    loss = sum(float(self.micro_step(ids, pos.step * accum + j)) for j, ids in enumerate(group))
                    loss = self._synced(loss, params, stop)
                    optimizer_step(optimizer, scheduler, params, c, self.precision)
                    self.session.end_step()
                    k += len(group)
                    pos.step, pos.epoch, pos.batch = pos.step + 1, epoch, k
                    losses.append(loss / len(group))
                    clock.tick()
                    self._report(progress, log_file, pos, epoch, losses[-1], smoother.add(losses[-1]), scheduler, clock)
                    if c.sample_every_n_steps and pos.step % c.sample_every_n_steps == 0:
                        self._samples(pos.step, progress)
                    if pos.step < plan.total_steps:  # a stop after the last step: complete, not stopped
                        stopped = self._stop_reason(stop)
                if k >= len(batches):
                    pos.epoch, pos.batch = epoch + 1, 0
                    every = c.save_every_n_epochs
                    if every and ((epoch + 1) % every == 0 or epoch + 1 == plan.epochs):
                        self._save_epoch(epoch + 1, pos.step)
                        if c.save_state and pos.step < plan.total_steps:  # a run killed later resumes here
                            self._save_state(optimizer, scheduler, pos)
                if stopped or pos.step >= plan.total_steps:
                    break
        except _NonFinite:
            stopped = self._nan_message(pos.step)
            log.error(stopped)
        finally:
            log_file.close()
        seconds = time.perf_counter() - start
        epochs_done = pos.epoch + (1 if pos.batch else 0)  # a run stopped mid-epoch is in its next one
        final = self._save(outputs.final_file(self.run_dir, c.output_name), pos.step, epochs_done)
        if c.save_state:
            self._save_state(optimizer, scheduler, pos)
        done = pos.step - first_step
        report = {
            "steps": pos.step,
            "steps_this_run": done,
            "total_steps": plan.total_steps,
            "epochs": plan.epochs,
            "seconds": round(seconds, 2),
            "it_per_s": round(done / seconds, 4) if seconds else 0.0,
            "peak_memory_bytes": memory.peak_bytes(self.device),
            "estimated_peak_bytes": estimate.total,
            "final_loss_avg": round(smoother.add(losses[-1]), 6) if losses else None,
            "stopped": stopped,
            "files": [p.name for p in [*self.epoch_files, final]],
            "save_checks": self.save_checks,
        }
        self._write_report(report)
        if stopped.startswith("loss became"):
            raise ForgeError(stopped + f" (the last good weights are in {final})")
        return TrainResult(
            self.run_dir, final, self.epoch_files, pos.step, plan.total_steps, seconds, stopped, losses, report
        )

    # ------------------------------------------------------------------ hooks (train/distributed.py)
    def _synced(self, loss: float, params: list[Any], stop: StopFlag) -> float:
        """The step's loss once every process's gradients are in (alone: as it is)."""
        return loss

    def _stop_reason(self, stop: StopFlag) -> str:
        if stop.requested or self.host.interrupted():
            return stop.reason or "interrupted"
        return ""

    def _loss_log(self) -> Any:
        return outputs.LossLog(self.run_dir)

    def _save_state(self, optimizer: Any, scheduler: Any, pos: Any) -> None:
        from lora_forge.train.state import save_state

        save_state(self.run_dir, self.session.network, optimizer, scheduler, pos)

    def _write_report(self, report: dict[str, Any]) -> None:
        outputs.write_report(self.run_dir, report)

    def _report(
        self,
        progress: ProgressFn,
        log_file: Any,
        pos: Any,
        epoch: int,
        loss: float,
        avg: float,
        scheduler: Any,
        clock: Any,
    ) -> None:
        from lora_forge.train import memory

        lr = scheduler.get_last_lr()[-1]
        rate = clock.rate()
        eta = clock.eta(self.plan.total_steps - pos.step)
        mem = memory.current_bytes(self.device)
        row = {"step": pos.step, "epoch": epoch + 1, "loss": loss, "loss_avg": avg, "lr": lr, "it_s": rate}
        log_file.write(row)
        message = (
            f"epoch {epoch + 1}/{self.plan.epochs} loss {loss:.4f} avg {avg:.4f} lr {lr:.2e} "
            f"{rate:.2f} it/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        event = Progress(
            pos.step,
            self.plan.total_steps,
            message,
            data={**row, "total": self.plan.total_steps, "epochs": self.plan.epochs, "eta_s": eta, "memory": mem},
        )
        progress(event)
        self.host.report(event)

    def _samples(self, step: int, progress: ProgressFn) -> None:
        import torch

        from lora_forge.train.session import onloaded

        net = self.session.network
        net.eval()
        try:
            with torch.random.fork_rng(devices=[]), onloaded(self.offloaded, self.device):
                images = outputs.render_samples(self.host, self.prompts, self.config, step, self.run_dir)
        finally:
            net.train()
        if images:
            progress(Progress(step, self.plan.total_steps, f"sample at step {step}", image=images[0]))

    def _save(self, path: Path, step: int, epoch: int) -> Path:
        from lora_forge.lora.fileformat import lora_metadata, save_dtype, save_lora
        from lora_forge.model.prediction import file_metadata
        from lora_forge.train.kohya_meta import file_fields

        c = self.config
        net = self.session.network
        dtype = save_dtype("fp32" if c.save_precision == "float" else c.save_precision)
        info = getattr(self.session.sd_model, "sd_checkpoint_info", None)
        fields = file_fields(c, self.dataset, self.plan, step=step, epoch=epoch, optimizer=self.optimizer,
                             checkpoint=info, config_hash=_config_hash(c), world_size=self.world_size)  # fmt: skip
        meta = lora_metadata(
            net,
            output_name=c.output_name,
            **fields,
            resolution=c.resolution_wh,
            clip_skip=c.clip_skip,
            trigger_phrase=c.trigger_word or None,
            timestamp=self.started_at,
        )
        meta.update(file_metadata(self.schedule.parameterization == "v", self.schedule.zero_terminal_snr, net.family))
        saved = save_lora(path, net.kohya_state_dict(dtype), meta)
        self._check_saved(saved)
        return saved

    def _check_saved(self, path: Path) -> None:
        import torch

        from lora_forge.train.session import onloaded

        if self.on_saved is None:
            return
        net = self.session.network
        net.eval()
        try:
            with torch.random.fork_rng(devices=[]), onloaded(self.offloaded, self.device):
                problem = self.on_saved(path, self.session)
        finally:
            net.train()
        if problem:
            self.save_checks.append(problem)

    def _save_epoch(self, epoch: int, step: int) -> None:
        path = outputs.epoch_file(self.run_dir, self.config.output_name, epoch)
        self.epoch_files.append(self._save(path, step, epoch))

    def _nan_message(self, step: int) -> str:
        c = self.config
        causes = [f"the learning rate ({c.unet_learning_rate:g}) is too high"]
        if c.mixed_precision == "fp16":
            causes.insert(0, "fp16 overflow (use bf16, or no mixed precision)")
        causes.append("an fp16 VAE gave NaN latents (start the WebUI with --no-half-vae)")
        return f"loss became NaN/inf at step {step + 1}; likely causes: " + "; ".join(causes)


class _NonFinite(Exception):
    """The loss of a micro-step was NaN/inf: stop before the optimizer spreads it into the weights."""
