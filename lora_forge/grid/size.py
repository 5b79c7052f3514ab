"""How big a grid may be: its picture's megapixels and the memory it takes to assemble, checked
before anything renders; and the size a user types (`WIDTHxHEIGHT`, one number, or auto).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from lora_forge.errors import ForgeError

if TYPE_CHECKING:
    from lora_forge.grid.plan import GridPlan

MAX_MEGAPIXELS = 200.0  # the WebUI's default img_max_size_mp for X/Y/Z grids


def available_memory() -> int | None:
    """Bytes of RAM free now, where the platform says (Linux sysconf, else psutil when installed)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def grid_bytes(cols: int, rows: int, width: int, height: int) -> tuple[float, int]:
    """(megapixels of the labelled grid, bytes held while assembling: the cells, the grid, its
    heat-map copy and the PNG encoder's working copy)."""
    pad_w, pad_h = width * 3 // 4, max(32, height // 6)
    pixels = (cols * width + pad_w) * (rows * height + pad_h)
    return pixels / 1e6, cols * rows * width * height * 3 + 3 * pixels * 3


def check_size(plan: GridPlan, max_megapixels: float = MAX_MEGAPIXELS, available: int | None = -1) -> str:
    """Refuse before rendering a grid whose picture is too large; returns the size as words."""
    mp, need = grid_bytes(len(plan.files), len(plan.strengths), plan.width, plan.height)
    words = (
        f"{len(plan.files)} × {len(plan.strengths)} cells of {plan.width}×{plan.height} = "
        f"{mp:.1f} megapixels (about {need / 2**20:.0f} MB of memory)"
    )
    if mp > max_megapixels:
        raise ForgeError(
            f"the grid would be {words}, over the {max_megapixels:g} megapixel limit; "
            "use fewer epochs or strengths, or a smaller image size"
        )
    free = available_memory() if available == -1 else available
    if free is not None and need > free * 0.5:
        raise ForgeError(
            f"the grid would be {words}, but only {free / 2**20:.0f} MB of memory is free; "
            "use fewer epochs or strengths, or a smaller image size"
        )
    return words


def parse_size(text: str) -> tuple[int, int] | None:
    """WIDTHxHEIGHT, one number for a square, or "auto"/"" (None: the size the run trained at)."""
    if (text or "").strip().lower() in ("", "auto"):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[x×*,]\s*(\d+)\s*", text or "")
    if m is None:
        m2 = re.fullmatch(r"\s*(\d+)\s*", text or "")
        if m2 is None:
            raise ForgeError(f"cannot read the size {text!r}; write it as WIDTHxHEIGHT, e.g. 512x768")
        return int(m2[1]), int(m2[1])
    return int(m[1]), int(m[2])
