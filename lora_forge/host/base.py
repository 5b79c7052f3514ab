"""What the stages need from whoever holds the model: the WebUI, or our standalone loader.

Stages in model/, lora/, train/ and grid/ talk to a Host and to the model object it hands out,
never to the WebUI directly, so the same code runs inside the WebUI and headless.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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


class Host(ABC):
    """The small interface every later stage is written against."""

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

    @contextlib.contextmanager
    def job(self, job: str) -> Iterator[None]:
        with self.exclusive(job):
            yield
