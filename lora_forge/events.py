"""One small progress event that the UI, the CLI (a tqdm bar) and the HTTP API all render."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    step: int
    total: int
    message: str = ""
    image: Any = None  # a PIL image to show (sample, preview), or None
    data: dict[str, Any] = field(default_factory=dict)  # stage-specific numbers (loss, lr, eta, ...)


ProgressFn = Callable[[Progress], None]


def no_progress(_event: Progress) -> None:
    """Default sink for callers that do not care."""


class StopFlag:
    """A stop request shared between the worker and whoever may ask it to stop (UI, API, Ctrl-C).

    Workers poll `requested` between units of work and finish the unit they are in, so a stop
    never leaves a half-written file behind.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stopped by user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def cli_progress(desc: str = "", disable: bool = False) -> tuple[ProgressFn, Callable[[], None]]:
    """A ProgressFn that drives a tqdm bar on stderr, and a function that closes the bar."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, disable=disable, dynamic_ncols=True)

    def update(event: Progress) -> None:
        if bar.total != event.total:
            bar.total = event.total
        bar.n = event.step
        if event.message:
            bar.set_postfix_str(event.message[:60], refresh=False)
        bar.refresh()

    return update, bar.close
