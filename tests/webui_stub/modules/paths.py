"""modules/paths.py re-exports paths_internal; read through the module so set_root() is seen."""

from __future__ import annotations

from modules import paths_internal


def __getattr__(name: str):
    return getattr(paths_internal, name)
