"""modules/paths_internal.py: where the WebUI keeps things. webui_stub.start() sets the root."""

from __future__ import annotations

import os

script_path = os.environ.get("LORA_FORGE_STUB_WEBUI_ROOT", os.path.abspath("."))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")


def normalized_filepath(filepath: str) -> str:
    return os.path.abspath(os.path.expanduser(filepath))


def set_root(root: str) -> None:
    """The stand-in's own hook (the real paths come from the command line at import time)."""
    global script_path, data_path, models_path, extensions_dir, extensions_builtin_dir, default_output_dir
    script_path = data_path = root
    models_path = os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
    default_output_dir = os.path.join(data_path, "outputs")
