"""Where our downloads and datasets live, and which huggingface endpoint to use.

The standalone host reads these from the environment; the WebUI host fills them from the
WebUI's settings (the LoRA Forge section). Stages receive a Settings object and never look at
the environment themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_MIRROR_HINT = (
    "check the network, or set the environment variable HF_ENDPOINT=https://hf-mirror.com (a mirror) and start again"
)


def _default_home() -> Path:
    return Path(os.environ.get("LORA_FORGE_HOME") or Path.home() / ".cache" / "lora_forge")


@dataclass
class Settings:
    models_dir: Path
    dataset_dir: Path
    hf_endpoint: str | None = None  # e.g. https://hf-mirror.com for users in China
    # How a user of this host changes the endpoint (said when a download fails): the standalone page
    # and the command line have no settings page, the WebUI host passes its own (its Settings section).
    mirror_hint: str = ENV_MIRROR_HINT

    @classmethod
    def from_env(cls) -> Settings:
        home = _default_home()
        return cls(
            models_dir=Path(os.environ.get("LORA_FORGE_MODELS") or home / "models"),
            dataset_dir=Path(os.environ.get("LORA_FORGE_DATASETS") or home / "datasets"),
            hf_endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
