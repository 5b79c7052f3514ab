"""What every section of the tab gets: the host, the settings, the path policy and the components
they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge import i18n
from lora_forge.errors import ForgeError
from lora_forge.host.base import Host
from lora_forge.safety import PathPolicy
from lora_forge.settings import Settings


@dataclass
class UiContext:
    host: Callable[[], Host]  # called when work starts, so building the UI never loads a model
    settings: Callable[[], Settings]
    # Components created once by the tab and shared by the sections (e.g. "dataset_dir": the folder
    # of prepared images that 裁剪 writes and 打标/编辑/训练 read). Sections add their own entries.
    # "grid_scores" (a gr.State): a section that scores a grid may put GridScores.to_json(plan) plus
    # {"run_dir": …} there; 优化 reads it (it also finds <grid>-scores.json files in run folders).
    shared: dict[str, Any] = field(default_factory=dict)
    # Where path inputs may point: the tab checks every handler input with it before the handler
    # runs (lora_forge.ui.guard: declare a new input there); sections may call ctx.paths().check(...).
    paths: Callable[[], PathPolicy] = PathPolicy
    # The user's language ("zh_CN", "None", …): the WebUI's Localization setting, or --lang /
    # LORA_FORGE_LANG for `python -m lora_forge ui`. Read per use, like the settings.
    language: Callable[[], str] = i18n.env_language

    def host_or_none(self) -> Host | None:
        """The host, or None where no model can be had (the standalone page without --ckpt): for
        what a page shows whether or not a model is there, e.g. which preset values fit it."""
        try:
            return self.host()
        except ForgeError:
            return None

    def tr(self, text: str) -> str:
        """A message built at run time, in the user's language (lora_forge.i18n)."""
        return i18n.translator(self.language()).text(text)

    def projects_root(self) -> Path:
        """Projects live in the settings' dataset folder (Settings → LoRA Forge)."""
        return Path(self.settings().dataset_dir)
