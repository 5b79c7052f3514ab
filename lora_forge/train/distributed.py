"""Data-parallel training on torch.distributed: one process per device, started by torchrun.

`torchrun --nproc_per_node N -m lora_forge train …` (or `train --gpus N`, which runs exactly
that) trains the same config as one process: `train_batch_size` is per process, each global
batch (N × train_batch_size, the batch the step plan and the learning-rate schedule count) is cut
into N contiguous shards, and every process draws the whole global batch's flips, caption shuffles,
noise and timesteps from the step's seed and keeps its shard's. So N processes with batch b train
what one process with batch N·b trains (same accumulation), up to float summation order. Dropout
inside the LoRA (network/rank/module dropout) draws per process, so with it on the run is the
same in distribution, not bit for bit.

Why torchrun and not accelerate: torchrun is `torch.distributed.run`, part of torch itself, so it
is in every WebUI venv; accelerate is not, and it would only wrap the same torch.distributed calls
(with its own config file to explain). Gradients: after the micro-steps of an optimizer step, the
gradients of every parameter the optimizer steps are summed across processes with one
`torch.distributed.all_reduce` (DDP's own collective, one flat bucket) before clipping and the
optimizer step; each process scaled its loss by 1/len(global batch), so the sum is the global
mean. We do not wrap the UNet in DistributedDataParallel: the LoRA lives in our fast path's
tensors (train/fastlora.py), not in a module whose forward DDP could call, and gradient
accumulation would need DDP's no_sync on every micro-step; the one all-reduce per optimizer step
is the same collective DDP issues, without its hooks. Backend: NCCL on CUDA, gloo on the CPU and on
Windows (torch has no NCCL there; gloo is slower between GPUs, and works).

Caches: every process encodes its shard of the images (item i on rank i mod N) into the on-disk
latent cache (atomic per-file writes, distinct files), all wait on a barrier, then every process
reads all of them from disk — N times faster than rank 0 encoding alone, and nothing is written
twice. With `cache_latents_to_disk = false` each process encodes everything itself. The
text-encoder cache is in memory: each process fills its own (one text-encoder pass per image,
next to nothing beside a UNet step).

Rank 0 alone writes the run folder: config, loss log, samples, LoRA files, state, report. The
state holds every rank's torch generator and the world size; a resume must use the same world
size. A process that dies (OOM, kill) breaks the others' next collective at once (its sockets
close); they end with `PeerLost` naming the run folder to resume, and torchrun's agent tears the
group down. A process that hangs instead is ended by the process-group timeout (TIMEOUT_S).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import ProgressFn, StopFlag, no_progress
from lora_forge.train import outputs
from lora_forge.train.config import TrainConfig
from lora_forge.train.loop import _Loop, _NonFinite, backward, diffusion_loss, encode_latents

TIMEOUT_S = 600  # a collective waiting longer than this (a hung process) ends the job


class PeerLost(ForgeError):
    """Another process of the job died or hung: this one ends too (not a user mistake: exit 1)."""

    exit_code = 1


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # cuda:<local rank> on CUDA

    @property
    def backend(self) -> str:
        import torch.distributed as dist

        if self.device.startswith("cuda") and os.name != "nt" and dist.is_nccl_available():
            return "nccl"
        return "gloo"

    def describe(self, global_batch: int) -> str:
        windows = os.name == "nt" and "cuda" in self.device
        why = " (NCCL does not exist on Windows; gloo carries the gradients)" if windows else ""
        return (
            f"data-parallel: {self.world_size} processes, backend {self.backend}{why}, "
            f"global batch {global_batch} ({global_batch // self.world_size} per process); "
            "the memory plan below is per process"
        )


def world_from_env(device: str) -> World | None:
    """The World torchrun describes, or None for a single process (also a 1-process torchrun, and a
    stray WORLD_SIZE without the rest of torchrun's variables)."""
    env = os.environ
    size = int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE", "").isdigit() else 1
    if size <= 1 or not all(env.get(k) for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        return None
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"  # one device per process, whatever index --device named
    return World(rank, size, local, device)


def check_config(config: TrainConfig) -> None:
    if config.fused_backward_pass:
        raise ForgeError(
            "fused_backward_pass steps each weight during backward, before the processes' gradients are "
            "summed; turn it off for a multi-process run"
        )


class Ranks:
    """This process's side of a data-parallel run: the process group and what `loop.train` asks
    of it (the run folder, the latent cache, the resumed RNG, the loop class)."""

    def __init__(self, world: World) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.world = world
        self.rank, self.size = world.rank, world.world_size
        self.writer = world.rank == 0
        if world.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(world.device))
        dist.init_process_group(world.backend, timeout=timedelta(seconds=TIMEOUT_S), init_method="env://")

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ collectives
    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A collective; a dead or hung peer becomes PeerLost."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # gloo/NCCL: connection closed by peer, timeout (DistBackendError)
            raise PeerLost(
                f"another process of this {self.size}-process job stopped while this one (rank {self.rank}) "
                f"waited on it ({what}: {str(e).splitlines()[0][:200]}); ending this one too. The files saved "
                "so far are usable; resume from the last saved epoch with --resume on the same number of processes"
            ) from e

    def barrier(self, what: str) -> None:
        import torch.distributed as dist

        self.call(what, dist.barrier)

    def gather(self, what: str, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self.call(what, dist.all_gather_object, out, value)
        return out

    def all_reduce(self, what: str, tensor: Any) -> Any:
        """Sum `tensor` over the processes (through the CPU with gloo on CUDA)."""
        import torch.distributed as dist

        staged = tensor.cpu() if self.world.backend == "gloo" and tensor.is_cuda else tensor
        self.call(what, dist.all_reduce, staged, op=dist.ReduceOp.SUM)
        return staged.to(tensor.device)

    # ------------------------------------------------------------------ what loop.train asks
    def new_run_dir(self, out_dir: str | Path, config: TrainConfig) -> Path:
        """Rank 0 creates the run folder and writes its config; every rank learns its path."""
        path = None
        if self.writer:
            path = outputs.new_run_dir(out_dir, config.output_name)
            outputs.write_config(path, config)
        return Path(self.gather("the run folder", str(path) if path else "")[0])

    def encode_latents(
        self, sd_model: Any, dataset: Any, config: TrainConfig, device: Any, progress: ProgressFn, stop: StopFlag
    ) -> Any:
        """Each rank encodes its shard into the disk cache, then all read everything (module doc)."""
        if config.cache_latents_to_disk:
            mine = dataclasses.replace(dataset, items=dataset.items[self.rank :: self.size])
            encode_latents(sd_model, mine, config, device, progress if self.writer else no_progress, stop)
            self.barrier("the latent cache")
        return encode_latents(sd_model, dataset, config, device, no_progress, stop)

    def restore_rng(self, folder: Path) -> None:
        from lora_forge.train.state import load_rank_rng

        load_rank_rng(folder, self.rank)

    def loop_class(self) -> Any:
        return functools.partial(RankLoop, self)


class _NoLog:
    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class RankLoop(_Loop):
    """The training loop of one process of a data-parallel run (see the module docstring)."""

    def __init__(self, ranks: Ranks, *args: Any) -> None:
        super().__init__(*args)
        self.ranks = ranks
        self.world_size = ranks.size
        self.batch_size = self.config.train_batch_size * ranks.size
        self.flags = [0.0, 0.0]  # this optimizer step: a non-finite loss here, a stop asked here

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part of a global batch of `n` (a short last batch: the last
        ranks get fewer, maybe none)."""
        b = self.config.train_batch_size
        return min(n, self.ranks.rank * b), min(n, (self.ranks.rank + 1) * b)

    def micro_step(self, ids: list[int], micro: int) -> Any:
        """The global batch's draws, this rank's shard's forward and backward; the loss is this
        shard's share of the global batch mean."""
        import torch

        gen, flips, x0, captions = self.draw(ids, micro)
        lo, hi = self.shard(len(ids))
        if lo == hi:
            return 0.0
        self.session.begin_step(self.precision.autocast_dtype)
        mine = slice(lo, hi)
        loss = diffusion_loss(
            self.session.unet, x0, lambda: self.conds(ids[mine], captions[mine], flips[mine]), self.schedule,
            self.config, self.precision, gen, mine,
        ) * ((hi - lo) / len(ids))  # fmt: skip
        if not torch.isfinite(loss):
            self.flags[0] = 1.0  # every rank stops at this step's sync, before the optimizer
            return 0.0
        backward(loss, self.config, self.precision)
        return loss.detach()

    def _synced(self, loss: float, params: list[Any], stop: StopFlag) -> float:
        """Sum the gradients, the loss and the flags over the processes: one all-reduce."""
        import torch
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self.flags[1] = 1.0 if (stop.requested or self.host.interrupted()) else 0.0
        present = [float(p.grad is not None) for p in params]  # a tensor no rank touched keeps None
        extra = torch.tensor([loss, *self.flags, *present], dtype=grads[0].dtype, device=grads[0].device)
        flat = self.ranks.all_reduce("the gradients", _flatten_dense_tensors([*grads, extra]))
        *summed, totals = _unflatten_dense_tensors(flat, [*grads, extra])
        for p, g, seen in zip(params, summed, totals[3:].tolist(), strict=True):
            p.grad = g if seen else None
        self.flags = [0.0, 0.0]
        if float(totals[1]) > 0:
            raise _NonFinite()
        self.stop_synced = float(totals[2]) > 0
        return float(totals[0])

    def _stop_reason(self, stop: StopFlag) -> str:
        if not getattr(self, "stop_synced", False):
            return ""  # a stop asked after this step's sync is seen by every rank at the next one
        return stop.reason or "stopped by another process of this job"

    def _loss_log(self) -> Any:
        return super()._loss_log() if self.ranks.writer else _NoLog()

    def _report(self, progress: ProgressFn, *args: Any) -> None:
        if self.ranks.writer:
            super()._report(progress, *args)

    def _samples(self, step: int, progress: ProgressFn) -> None:
        if self.ranks.writer:
            super()._samples(step, progress)

    def _save(self, path: Path, step: int, epoch: int) -> Path:
        return super()._save(path, step, epoch) if self.ranks.writer else path

    def _save_state(self, optimizer: Any, scheduler: Any, pos: Any) -> None:
        import torch

        from lora_forge.train.state import save_state

        states = self.ranks.gather("the random states", torch.get_rng_state())
        if self.ranks.writer:
            save_state(self.run_dir, self.session.network, optimizer, scheduler, pos, ranks_rng=states)

    def _write_report(self, report: dict[str, Any]) -> None:
        peaks = self.ranks.gather("the report", report["peak_memory_bytes"])
        report.update(
            world_size=self.ranks.size,
            global_batch=self.batch_size,
            per_process_batch=self.config.train_batch_size,
            peak_memory_bytes_per_process=peaks,
            estimate_is_per_process=True,
        )
        if self.ranks.writer:
            super()._write_report(report)
