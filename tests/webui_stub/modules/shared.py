"""modules/shared.py: the WebUI's global objects. webui_stub.start() fills them like the real start."""

from __future__ import annotations

import os
from typing import Any

from modules import options, shared_cmd_options, shared_state

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser
parallel_processing_allowed = True
config_filename: str | None = None
demo: Any = None
device: Any = None
state = shared_state.State()
options_templates: dict[str, options.OptionInfo] = {}
opts = options.Options(options_templates, set())
sd_model: Any = None  # a property over sd_models.model_data in the WebUI; a plain attribute here
loaded_hypernetworks: list[Any] = []
hf_endpoint = os.getenv("HF_ENDPOINT", "https://huggingface.co")

OptionInfo = options.OptionInfo
options_section = options.options_section


def walk_files(path: str, allowed_extensions: list[str] | None = None) -> Any:
    """modules/util.walk_files: every file under `path` (links followed), hidden dirs skipped."""
    if not os.path.isdir(path):
        return
    allowed = {e.lower() for e in allowed_extensions} if allowed_extensions else None
    for root, _dirs, files in sorted(os.walk(path, followlinks=True)):
        if "/." in root.replace("\\", "/") and not opts.data.get("list_hidden_files", True):
            continue
        for name in sorted(files):
            if allowed is None or os.path.splitext(name)[1].lower() in allowed:
                yield os.path.join(root, name)
