"""The one owner of a training run folder's layout: every path inside a run comes from `RunDir`.

    <Lora folder>/<run>/            a fresh folder per run (`name`, `name-2`, …; never reused)
        config.toml                 the full config the run trained with (resume reads it back)
        <name>-000001.safetensors   a LoRA file per saved epoch, <name>.safetensors at the end,
        <name>.preview.png          each with its card picture for the WebUI's Lora list
        loss.jsonl, tensorboard/    the loss log
        report.json                 what the run did (steps, epochs, save checks, …)
        samples/step000040-0.png    samples rendered while training
        <grid>.png, <grid>-scores.json   grids rendered from the run and what they measured
        state/                      the resumable state (weights.state, optimizer.state,
                                    rng.json, state.json = the commit record, written last)
        .state-incoming/, .state-previous/   only while a new state is being committed

The resumable state's files end in `.state`, not `.safetensors` / `.pt`: the WebUI lists every
`.pt`, `.ckpt` and `.safetensors` file under its Lora folder (hidden folders too, by default) as a
LoRA, so the old `state/lora.safetensors` and `state/optimizer.pt` showed up there as LoRAs named
"lora" and "optimizer". Runs saved with those old names still resume (`RunDir.state_file`).

A top-floor leaf module (it imports nothing of ours but fsio), so train/, grid/, app/, the faces and
project.py can all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lora_forge.fsio import unused_path

CONFIG_NAME = "config.toml"
STATE_NAME = "state"
_STATE_FILES = {  # kind → (name now, name in runs saved before the state moved out of the Lora list)
    "weights": ("weights.state", "lora.safetensors"),
    "optimizer": ("optimizer.state", "optimizer.pt"),
    "rng": ("rng.json", "rng.json"),
    "position": ("state.json", "state.json"),
}
_SAMPLE = re.compile(r"step(\d+)-(\d+)$")


class RunDir:
    """A run folder (it need not exist yet, or any more)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, out_dir: str | Path, name: str) -> RunDir:
        """A folder that did not exist before this call (mkdir without exist_ok closes the race)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = unused_path(out_dir / name)
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue

    @classmethod
    def named_by(cls, path: str | Path) -> RunDir:
        """The run a path names: the run folder itself, its state folder, or a file in either."""
        p = Path(path)
        if p.suffix and (p.parent.name == STATE_NAME or p.name == CONFIG_NAME):
            p = p.parent
        return cls(p.parent if p.name == STATE_NAME else p)

    # -- what the trainer writes ---------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def report(self) -> Path:
        return self.path / "report.json"

    @property
    def loss_log(self) -> Path:
        return self.path / "loss.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def sample(self, step: int, index: int) -> Path:
        return self.samples / f"step{step:06d}-{index}.png"

    def first_samples(self) -> Iterator[tuple[int, Path]]:
        """(step, file) of the first prompt's samples, oldest first."""
        for p in sorted(self.samples.glob("step*-0.png")):
            m = _SAMPLE.match(p.stem)
            if m:
                yield int(m.group(1)), p

    def epoch_file(self, name: str, epoch: int) -> Path:
        return self.path / f"{name}-{epoch:06d}.safetensors"

    def final_file(self, name: str) -> Path:
        return self.path / f"{name}.safetensors"

    def lora_files(self) -> list[Path]:
        """The run's LoRA files (epoch files and the final one), by name."""
        return sorted(self.path.glob("*.safetensors"))

    @staticmethod
    def preview_of(lora_file: Path) -> Path:
        """The card picture the WebUI's Lora list shows for `lora_file`."""
        return lora_file.with_name(lora_file.stem + ".preview.png")

    # -- grids and their scores ----------------------------------------------------------------
    def grid_file(self, run_name: str, stamp: str, partial: bool = False) -> Path:
        """A grid picture rendered from this run (`stamp`: when; a stopped grid says partial)."""
        return self.path / f"{run_name}-grid-{stamp}{'-partial' if partial else ''}.png"

    def grids(self) -> list[Path]:
        return sorted(p for p in self.path.glob("*-grid-*.png") if not p.stem.endswith("-scores"))

    @staticmethod
    def heatmap_of(grid_image: Path) -> Path:
        """The grid's scores drawn over it."""
        return grid_image.with_name(grid_image.stem + "-scores.png")

    @staticmethod
    def scores_of(grid_image: Path) -> Path:
        """What the grid measured (GridScores.to_json), for 优化 and scripts."""
        return grid_image.with_name(grid_image.stem + "-scores.json")

    def scores_files(self) -> list[Path]:
        return sorted(self.path.glob("*-scores.json"))

    # -- the resumable state -------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.path / STATE_NAME

    @property
    def state_incoming(self) -> Path:
        """Where a new state is written before it replaces `state` (train/state.py's commit)."""
        return self.path / f".{STATE_NAME}-incoming"

    @property
    def state_previous(self) -> Path:
        """Where the replaced state waits, for the moment of the swap, until the new one is in place."""
        return self.path / f".{STATE_NAME}-previous"

    def state_path(self, kind: str) -> Path:
        """Where a state file of `kind` (weights, optimizer, rng, position) is written."""
        return state_file(self.state, kind, new=True)

    def state_file(self, kind: str) -> Path:
        """Where a state file of `kind` is read from: the current name, else the old one."""
        return state_file(self.state, kind)

    @property
    def resumable(self) -> bool:
        return self.state_path("position").is_file()


def state_file(folder: Path, kind: str, new: bool = False) -> Path:
    """A state file of `kind` in a state folder (which a user may have copied elsewhere): the
    current name when `new` or when it is there, else the name older runs saved it under."""
    now, old = (Path(folder) / n for n in _STATE_FILES[kind])
    return now if new or now.is_file() or not old.is_file() else old
