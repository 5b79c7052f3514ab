"""A resumable training state: exact fp32 LoRA weights, optimizer, schedule position, step, RNG.

Randomness in the loop is derived from (seed, step) rather than carried in running generators
(see loop.py), so the step number *is* the RNG state; the torch generator state is
saved as well, so anything that draws from the global generator continues where it was.
Written to `<run>/state/` at each saved epoch and on stop (file names: rundir.RunDir); a resume
continues in a new run folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_bytes, atomic_write_text
from lora_forge.rundir import STATE_NAME, RunDir, state_file

STATE_DIR = STATE_NAME


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int  # epoch the next step belongs to (0-based)
    batch: int  # batches of that epoch already consumed
    total_steps: int
    started_at: float
    config_hash: str


def save_state(run_dir: Path, network: Any, optimizer: Any, scheduler: Any, pos: Position) -> Path:
    import io

    import torch
    from safetensors.torch import save

    run = RunDir(run_dir)
    run.state.mkdir(exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write_bytes(run.state_path("weights"), save(weights))
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
    atomic_write_bytes(run.state_path("optimizer"), buf.getvalue())
    atomic_write_text(run.state_path("rng"), json.dumps({"torch": torch.get_rng_state().tolist()}))
    atomic_write_text(run.state_path("position"), json.dumps(asdict(pos), indent=2))
    return run.state


def find_state(path: str | Path) -> Path:
    """A run folder, its state/ folder or the state.json inside → the state folder."""
    p = Path(path)
    for candidate in (p, p / STATE_DIR, p.parent):
        if state_file(candidate, "position").is_file():
            return candidate
    raise ForgeError("no saved training state here (expected a run folder with state/state.json)", path=p)


def resumed_run(path: str | Path) -> Path:
    """The run folder a `resume` setting names (the folder, its state/ folder or the state.json
    in it), by the names alone: the run it came from may have been moved or deleted since."""
    return RunDir.named_by(path).path


def load_position(folder: Path) -> Position:
    data = json.loads(state_file(folder, "position").read_text(encoding="utf-8"))
    return Position(**data)


def load_state(folder: Path, network: Any, optimizer: Any, scheduler: Any) -> Position:
    import torch
    from safetensors.torch import load_file

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
    return load_position(folder)
