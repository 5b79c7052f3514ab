"""What every section of the tab gets: the host, the settings, and the components they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lora_forge.host.base import Host
from lora_forge.settings import Settings


@dataclass
class UiContext:
    host: Callable[[], Host]  # called when work starts, so building the UI never loads a model
    settings: Callable[[], Settings]
    # Components created once by the tab and shared by the sections (e.g. "dataset_dir": the folder
    # of prepared images that 裁剪 writes and 打标/编辑/训练 read). Sections add their own entries.
    shared: dict[str, Any] = field(default_factory=dict)
