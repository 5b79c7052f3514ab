"""Render a plan's cells through any Host, one epoch file at a time, stoppable between units.

A unit is a whole column of the picture (one file × every strength) on a host that batches
strengths (the standalone host: one UNet batch with per-sample LoRA multipliers), and a single
cell elsewhere (the WebUI: one process_images per `<lora:name:strength>`), so a stop or the
host's Interrupt never throws away a finished cell. A stopped grid keeps what it has and says
so; the missing cells are marked when it is assembled. A cell the host could not make (the WebUI's
NaN check: RenderFailed) is marked with its reason and the grid goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lora_forge.errors import ForgeError, RenderFailed
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress
from lora_forge.grid.plan import GridPlan
from lora_forge.host.base import Host


@dataclass
class GridResult:
    plan: GridPlan
    cells: list[list[Any]] = field(default_factory=list)  # [strength row][file column] → PIL image or None
    stopped: str = ""  # why rendering ended early; "" when every cell is there
    seconds: float = 0.0
    failed: dict[tuple[int, int], str] = field(default_factory=dict)  # (strength row, file column) → why

    @property
    def failure_notes(self) -> list[str]:
        """One line per cell that could not be rendered: which cell and why."""
        plan = self.plan
        return [
            f"cell epoch {plan.files[col].label} at strength {plan.y_labels()[row]} not rendered: {reason}"
            for (row, col), reason in sorted(self.failed.items())
        ]

    @property
    def rendered(self) -> int:
        return sum(c is not None for row in self.cells for c in row)

    @property
    def complete(self) -> bool:
        return self.rendered == self.plan.cells

    def cell(self, file_index: int, strength_index: int) -> Any:
        return self.cells[strength_index][file_index]

    def flat(self) -> list[Any]:
        """Row-major (a row = one strength), the order grids are drawn in."""
        return [c for row in self.cells for c in row]


def render_grid(
    host: Host,
    plan: GridPlan,
    progress: ProgressFn = no_progress,
    stop: StopFlag | None = None,
) -> GridResult:
    """Every cell of `plan`, in the host's job lock (nothing else renders in between)."""
    stop = stop or StopFlag()
    result = GridResult(plan, [[None] * len(plan.files) for _ in plan.strengths])
    total = plan.cells * plan.steps  # sampling steps: smooth progress inside a batched column
    t0 = time.perf_counter()

    def emit(done_steps: float, message: str, image: Any = None) -> None:
        event = Progress(int(done_steps), total, message, image, {"cells": result.rendered, "of": plan.cells})
        progress(event)
        host.report(event)

    def halted() -> str:
        if stop.requested:
            return stop.reason or "stopped by user"
        if host.interrupted():
            return "interrupted in the WebUI"
        return ""

    with host.job("grid"):
        for col, file in enumerate(plan.files):
            units = [list(range(len(plan.strengths)))]
            if not host.batches_lora_strengths:
                units = [[i] for i in range(len(plan.strengths))]
            for rows in units:
                reason = halted()
                if reason:
                    result.stopped = reason
                    break
                base = result.rendered * plan.steps
                label = f"epoch {file.label} ({col + 1}/{len(plan.files)})"

                def sub(e: Progress, base: int = base, n: int = len(rows), label: str = label) -> None:
                    if e.total:
                        emit(base + n * plan.steps * min(1.0, e.step / e.total), f"{label}: sampling")

                requests = [plan.request(file, plan.strengths[r]) for r in rows]
                try:
                    images = host.txt2img(requests, sub)
                except RenderFailed as e:  # this cell only (e.g. NaN): mark it, render the others
                    for r in rows:
                        result.failed[(r, col)] = str(e)
                    continue
                except ForgeError:
                    if host.interrupted() or stop.requested:
                        result.stopped = halted() or "interrupted"
                        break
                    raise
                for r, image in zip(rows, images, strict=True):
                    result.cells[r][col] = image
                emit(result.rendered * plan.steps, f"{label}: {result.rendered}/{plan.cells} cells", images[-1])
            if result.stopped:
                break
    result.seconds = time.perf_counter() - t0
    return result
