"""A resumable training state: exact fp32 LoRA weights, optimizer, schedule position, step, RNG.

Randomness in the loop is derived from (seed, step) rather than carried in running generators
(see loop.py), so the step number *is* the RNG state; the torch generator state is
saved as well, so anything that draws from the global generator continues where it was.
Written to `<run>/state/` at each saved epoch and on stop (file names: rundir.RunDir) as one commit
(see save_state); a resume continues in a new run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_bytes, atomic_write_text
from lora_forge.rundir import STATE_NAME, RunDir, state_file

STATE_DIR = STATE_NAME
FORMAT = 2  # state.json carries the commit record (every file's size and sha256)
log = logging.getLogger(__name__)


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int  # epoch the next step belongs to (0-based)
    batch: int  # batches of that epoch already consumed
    total_steps: int
    started_at: float
    config_hash: str


# what may change between a run and its resume (samples and saving)
_FREE = {"resume", "output_name", "sample_every_n_steps", "sample_prompts", "save_every_n_epochs"}


def config_hash(config: Any, keys: Iterable[str] | None = None) -> str:
    """What must not change between a run and its resume: every setting but samples and saving
    (only `keys` of them, when given)."""
    wanted = None if keys is None else set(keys)
    values = {
        k: v
        for k, v in config.to_dict().items()
        if k not in _FREE and not k.startswith("sample_") and (wanted is None or k in wanted)
    }
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:16]


def same_config(saved: Position, config: Any, folder: Path) -> bool:
    """True when `config` trains what the saved run in state `folder` trained. A run saved before
    a release added settings hashed fewer keys: it matches over the keys its own config file
    holds, as long as every setting added since is at its default (the behaviour it trained with)."""
    if saved.config_hash == config_hash(config):
        return True
    from lora_forge.train.config import read_config_file

    try:
        old_keys = set(read_config_file(RunDir(Path(folder).parent).config))
    except (ForgeError, OSError):
        return False
    defaults = type(config)().to_dict()
    added = {k for k in config.to_dict() if k not in old_keys and k not in _FREE and not k.startswith("sample_")}
    if any(config.to_dict()[k] != defaults[k] for k in added):
        return False
    return saved.config_hash == config_hash(config, old_keys)


def save_state(
    run_dir: Path, network: Any, optimizer: Any, scheduler: Any, pos: Position, ranks_rng: list[Any] | None = None
) -> Path:
    """Commit the state as one unit: all files go to a fresh folder, then `state.json` (the commit
    record: position plus every file's size and sha256), then the folder replaces `state/`.

    A crash or a full disk at any moment leaves a complete state in `state/` (the old or the new
    one), or - in the instant of the swap - one in `.state-previous/` or `.state-incoming/`, which
    `find_state` falls back to. Before this, a crash before `state.json` resumed step 12 with
    step-18 weights.

    `ranks_rng`: every process's torch generator state in a data-parallel run (rank order); the
    record then holds the world size, which a resume must match.
    """
    import io

    import torch
    from safetensors.torch import save

    run = RunDir(run_dir)
    incoming = run.state_incoming
    shutil.rmtree(incoming, ignore_errors=True)  # a commit that died half-way
    try:
        incoming.mkdir()
        weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
        blobs = {
            "weights": save(weights),
            "optimizer": buf.getvalue(),
            "rng": json.dumps(_rng_record(ranks_rng)).encode("utf-8"),
        }
        files = {}
        for kind, data in blobs.items():
            target = state_file(incoming, kind, new=True)
            atomic_write_bytes(target, data)
            files[target.name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        record = {**asdict(pos), "format": FORMAT, "files": files}
        if ranks_rng:
            record["world_size"] = len(ranks_rng)
        atomic_write_text(state_file(incoming, "position", new=True), json.dumps(record, indent=2))
        _sync_dir(incoming)
    except Exception:  # a full disk, a write error: the new state is dropped, `state/` is untouched
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    _swap_in(run)
    return run.state


def _rng_record(ranks_rng: list[Any] | None) -> dict[str, Any]:
    import torch

    if not ranks_rng:
        return {"torch": torch.get_rng_state().tolist()}
    return {"torch": ranks_rng[0].tolist(), "ranks": [r.tolist() for r in ranks_rng]}


def saved_world_size(folder: Path) -> int:
    """How many processes trained the state in `folder` (1 for a single-process run)."""
    record = json.loads(state_file(folder, "position").read_text(encoding="utf-8"))
    return int(record.get("world_size", 1))


def check_world_size(folder: Path, world_size: int) -> None:
    """A data-parallel state resumes on the world size it was saved with: the batches and the
    schedule were planned on its global batch, and each process continues its own shard."""
    saved = saved_world_size(folder)
    if saved == world_size:
        return
    how = f"torchrun --nproc_per_node {saved} -m lora_forge train … (or --gpus {saved})" if saved > 1 else "one process"
    raise ForgeError(
        f"this state was saved by a run on {saved} process(es) and this one has {world_size}; "
        f"resume it on the same number: {how}",
        path=folder,
    )


def load_rank_rng(folder: Path, rank: int) -> None:
    """Set this process's torch generator to what `rank` saved (a data-parallel resume)."""
    import torch

    rng = json.loads(state_file(folder, "rng").read_text(encoding="utf-8"))
    ranks = rng.get("ranks") or [rng["torch"]]
    torch.set_rng_state(torch.tensor(ranks[rank], dtype=torch.uint8))


def _swap_in(run: RunDir) -> None:
    """`.state-incoming` becomes `state`; the old `state` is deleted only once the new one is there."""
    previous = run.state_previous
    shutil.rmtree(previous, ignore_errors=True)
    if run.state.exists():
        _rename(run.state, previous)
    _rename(run.state_incoming, run.state)
    _sync_dir(run.path)
    shutil.rmtree(previous, ignore_errors=True)


def _rename(src: Path, dst: Path) -> None:
    """os.replace, retried briefly: on Windows a virus scanner or the indexer may hold a file of the
    folder open for a moment after it was written, and the rename fails with PermissionError."""
    for attempt in range(10):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if attempt == 9:
                raise
            time.sleep(0.2)


def _sync_dir(folder: Path) -> None:
    """Make the renames inside `folder` durable (POSIX; Windows has no directory handles for this)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TornState(ForgeError):
    """A state whose files are not the ones its commit record names (a crash or full disk mid-save)."""


def check_state(folder: Path) -> Position:
    """The position of a complete state, or TornState saying which file does not belong."""
    position = state_file(folder, "position")
    try:
        record = json.loads(position.read_text(encoding="utf-8"))
        pos = Position(**{k: record[k] for k in Position.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TornState(f"{position.name} is missing or unreadable ({e.__class__.__name__})", path=folder) from e
    files = record.get("files")
    if files is None:  # saved before the commit record: state.json was written last, so nothing may be newer
        for kind in ("weights", "optimizer", "rng"):
            f = state_file(folder, kind)
            if not f.is_file():
                raise TornState(f"{f.name} is missing", path=folder)
            if f.stat().st_mtime_ns > position.stat().st_mtime_ns:
                raise TornState(f"{f.name} was written after {position.name} (a save that did not finish)", path=folder)
        return pos
    for name, want in files.items():
        f = folder / name
        if Path(name).name != name:  # a forged record must not make us read outside the folder
            raise TornState(f"{position.name} names a file outside its folder", path=folder)
        try:
            data = f.read_bytes()
        except OSError:
            raise TornState(f"{name} is missing", path=folder) from None
        if len(data) != want["size"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise TornState(
                f"{name} is not the file {position.name} recorded (a save that did not finish)", path=folder
            )
    return pos


def find_state(path: str | Path) -> Path:
    """A run folder, its state/ folder or the state.json inside → the newest complete state folder.

    A torn state is never resumed: when `state/` is torn (or gone in the middle of a commit) and a
    complete one is left from that commit, that one is used and a warning says so; otherwise the
    resume is refused with the reason.
    """
    p = Path(path)
    folder = next((c for c in (p, p / STATE_DIR, p.parent) if state_file(c, "position").is_file()), None)
    run = RunDir.named_by(folder if folder is not None else p)
    candidates = [c for c in (folder, run.state_incoming, run.state_previous) if c is not None]
    problems = []
    for candidate in dict.fromkeys(candidates):
        if not state_file(candidate, "position").is_file():
            continue
        try:
            pos = check_state(candidate)
        except TornState as e:
            problems.append(str(e).removeprefix(f"{candidate}: "))
            continue
        if problems:
            log.warning(
                "the newest saved state of %s is incomplete (%s); resuming from the last complete one, at step %d",
                run.path,
                problems[0],
                pos.step,
            )
        return candidate
    if problems:
        raise TornState(
            f"the saved training state is incomplete ({problems[0]}); a crash or a full disk interrupted its "
            "save, so it cannot be resumed: start the run again, or resume an earlier run",
            path=p,
        )
    raise ForgeError("no saved training state here (expected a run folder with state/state.json)", path=p)


def resumed_run(path: str | Path) -> Path:
    """The run folder a `resume` setting names (the folder, its state/ folder or the state.json
    in it), by the names alone: the run it came from may have been moved or deleted since."""
    return RunDir.named_by(path).path


def load_position(folder: Path) -> Position:
    return check_state(folder)


def load_state(folder: Path, network: Any, optimizer: Any, scheduler: Any) -> Position:
    import torch
    from safetensors.torch import load_file

    pos = check_state(folder)  # never load a torn state, even when handed its folder directly
    # runs saved before the state left the Lora list (lora.safetensors, optimizer.pt) resume too
    weights = load_file(str(state_file(folder, "weights")))
    missing, unexpected = network.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ForgeError("the saved state does not match this network; resume with the same rank and targets")
    blob = torch.load(state_file(folder, "optimizer"), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng = json.loads(state_file(folder, "rng").read_text(encoding="utf-8"))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    return pos
