"""The one config layering every face uses (the CLI, the 训练 tab, the HTTP API), lowest first:

1. the preset's defaults (a `preset` key in a layer above picks the preset),
2. with a resume, the resumed run's own config.toml,
3. a config file (ours, or a kohya / kohya_ss / lora-scripts TOML or JSON),
4. the user's overrides (`--set`, the tab's fields, the request's `config`),
5. what the host supplies when the user left a value empty (the WebUI's clip skip),
6. what the host forces (the WebUI with --medvram caches everything before training).

`user_keys` — what the user set rather than the preset — lets the step planner keep the user's
repeats and epochs (train.presets.plan_steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.rundir import RunDir
from lora_forge.train.config import TrainConfig


@dataclass
class Layered:
    config: TrainConfig
    user_keys: frozenset[str]
    warnings: list[str] = field(default_factory=list)  # from importing a foreign config file


def parse_sets(items: list[str]) -> dict[str, str]:
    """KEY=VALUE lines (the CLI's `--set`, the 训练 tab's extra-settings box) as overrides; the
    values stay text, TrainConfig converts them when the layers are applied."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ForgeError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def layer_config(
    preset: str = "custom",
    overrides: Mapping[str, Any] | None = None,
    resume: str | Path = "",
    config_file: str | Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    forced: Mapping[str, Any] | None = None,
    family: str = "",
    device_type: str = "",
) -> Layered:
    """`family` / `device_type`: the model's (model/family.py) and the device's, which pick the
    preset's SDXL values (train/presets.py); "" for the SD1/SD2 ones."""
    from lora_forge.train.config import read_config_file
    from lora_forge.train.presets import preset_config

    layered: dict[str, Any] = {}
    warnings: list[str] = []
    resumed = ""
    if resume:
        from lora_forge.train.state import find_state

        run = RunDir(find_state(resume).parent)
        layered.update(read_config_file(run.config))
        resumed = str(run.path)
    if config_file:
        from lora_forge.train.importer import import_config

        imported, warnings = import_config(Path(config_file))
        layered.update(imported)
    layered.update(overrides or {})
    for key, value in (defaults or {}).items():
        if not layered.get(key):
            layered[key] = value
    layered.update(forced or {})
    if not layered.get("clip_skip"):  # 0 / empty: the preset's (or the host's) clip skip
        layered.pop("clip_skip", None)
    if resumed:
        layered["resume"] = resumed
    config = preset_config(str(layered.pop("preset", preset) or "custom"), layered, family, device_type)
    return Layered(config, frozenset(layered) - {"output_name", "resume"}, warnings)
