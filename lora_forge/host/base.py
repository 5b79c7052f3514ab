"""What the stages need from whoever holds the model: the WebUI, or our standalone loader.

Stages in model/, lora/, train/ and grid/ talk to a Host and to the model object it hands out,
never to the WebUI directly, so the same code runs inside the WebUI and headless.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.events import Progress, ProgressFn, no_progress


@dataclass(frozen=True)
class LoraRef:
    """A LoRA file applied at a strength for one render (`<lora:name:strength>`)."""

    path: Path
    strength: float = 1.0


@dataclass
class RenderRequest:
    """One txt2img image. Hosts may batch requests that differ only in seed or LoRA strengths."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"
    loras: list[LoraRef] = field(default_factory=list)


@dataclass
class TrainingContext:
    """What a host hands a training run while it holds its model for it (`Host.training`)."""

    progress: ProgressFn  # the run's progress, relayed into the host's own status display as well
    # run right after each file is saved, with the live modules still injected: '' when the file
    # is fine, else what is wrong with it (the host's load-back check)
    on_saved: Callable[[Path, Any], str] | None = None


class Host(ABC):
    """The small interface every later stage is written against.

    Faces and use cases ask the host, never its name: what it refuses to train and why
    (`training_refusal`), which training values it supplies or forces (`training_defaults`,
    `training_overrides`), how it holds the model while a run trains (`training`), how a saved
    file is checked against it (`loadback_check`) and whether its HTTP routes answer (`api_*`).
    """

    name: str = "host"
    # True when requests that differ only in LoRA strength go through the UNet as one batch (the
    # standalone host); the WebUI renders each `<lora:name:strength>` in its own process_images.
    batches_lora_strengths: bool = False

    @abstractmethod
    def sd_model(self) -> Any:
        """The loaded `ldm` LatentDiffusion / `sgm` DiffusionEngine; ForgeError when none is loaded."""

    @property
    @abstractmethod
    def device(self) -> Any:
        """torch.device the model computes on."""

    @property
    @abstractmethod
    def dtype(self) -> Any:
        """torch dtype of the UNet weights."""

    @abstractmethod
    def txt2img(self, requests: Sequence[RenderRequest], progress: ProgressFn = no_progress) -> list[Any]:
        """Render each request to a PIL image, in order, with whatever LoRA modules are live plus
        the files named in the request."""

    @abstractmethod
    def lora_dir(self) -> Path:
        """Where the host's Lora loader looks for files (the WebUI: models/Lora or --lora-dir)."""

    def refresh_loras(self) -> None:
        """Make newly written LoRA files visible to the host's loader (no-op when it has none)."""

    @abstractmethod
    def exclusive(self, job: str) -> contextlib.AbstractContextManager[None]:
        """Hold the host's GPU lock for `job`, so generation and training never interleave."""

    def interrupted(self) -> bool:
        """True when the user pressed the host's own Interrupt button (besides our Stop)."""
        return False

    def zero_terminal_snr_sampling(self) -> bool:
        """True when the host renders with a zero-terminal-SNR noise schedule (the WebUI's
        Settings → Noise schedule); training's zero_terminal_snr = "auto" follows it."""
        return False

    def report(self, event: Progress) -> None:
        """Mirror a progress event into the host's own progress display."""

    def annotate_grid(self, cells: Sequence[Any], rows: int, x_labels: list[str], y_labels: list[str]) -> Any:
        """The host's own labelled grid of `cells` (row-major), as its users know it, or None when it
        has none (the grid then draws its own labels)."""
        return None

    def save_grid(self, image: Any, infotext: str) -> Path | None:
        """Save a grid picture where the host keeps its grids; None when it keeps none."""
        return None

    def xyz_script(self) -> tuple[list[str], list[str]] | None:
        """(parameter names of its `run`, its txt2img axis labels) of the host's X/Y/Z plot script,
        which grid.xyz lays the grid's settings out for; None when the host has no such script."""
        return None

    @contextlib.contextmanager
    def job(self, job: str) -> Iterator[None]:
        with self.exclusive(job):
            yield

    # -- training ------------------------------------------------------------------------------

    def training_refusal(self, sd_model: Any) -> str | None:
        """Why `sd_model` cannot be trained on in this host, with what to do instead; None when it can.
        Asked before a run starts (and again once the host holds the model for it)."""
        return None

    def training_defaults(self) -> dict[str, Any]:
        """Config values this host supplies when the user left them empty (the WebUI: its clip skip)."""
        return {}

    def training_overrides(self) -> dict[str, Any]:
        """Config values this host forces whatever the user chose (the WebUI with --medvram: caching)."""
        return {}

    def sample_prompts(self, prompts: list[str]) -> list[str] | None:
        """The default sample prompts (tag text) as this host's txt2img must receive them, or None
        when the engine may use them as they are."""
        return None

    @contextlib.contextmanager
    def training(self, name: str, progress: ProgressFn) -> Iterator[TrainingContext]:
        """Hold the model for the training run `name` (the WebUI: its queue lock, the model taken to a
        pristine state and put back after, its status line). The engine takes the host's job lock
        itself, so the default only hands the progress through."""
        yield TrainingContext(progress)

    def loadback_check(self, sd_model: Any, path: Path, muted: Any) -> str:
        """'' when the host's own loader applies the saved `path` as the live modules do (`muted()`
        turns those off); else a message naming the file. Hosts without a loader of their own: ''."""
        return ""

    # -- HTTP ----------------------------------------------------------------------------------

    def api_enabled(self) -> bool:
        """Whether our HTTP routes answer in this host (the WebUI: only with --api / --nowebui)."""
        return True

    def api_access(self, user: str | None, password: str | None) -> bool:
        """Whether these Basic-auth credentials may use our routes (the WebUI: its --api-auth)."""
        return True
