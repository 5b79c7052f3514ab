"""Starts the stand-in WebUI the way webui.py does for the parts we need (see README.md).

    stub = start(root, sd_model, argv=["--lora-dir", ...], extensions={"lora-forge": repo})
    stub.build_ui()        # ui_settings + ui_tabs callbacks (create_ui) -> [(blocks, title, id)]
    stub.app_started(app)  # on_app_started callbacks with a FastAPI app

Needs this folder on sys.path (so `modules` and `launch` resolve to the stand-ins).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STUB_DIR = Path(__file__).resolve().parent


@dataclass
class Stub:
    root: Path

    def build_ui(self) -> list[tuple[Any, str, str]]:
        from modules import script_callbacks

        script_callbacks.ui_settings_callback()
        return script_callbacks.ui_tabs_callback()

    def app_started(self, app: Any, demo: Any = None) -> None:
        from modules import script_callbacks

        script_callbacks.app_started_callback(demo, app)


def start(root: Path, sd_model: Any, argv: list[str] | None = None, extensions: dict[str, Path] | None = None) -> Stub:
    from modules import (
        extra_networks,
        localization,
        options,
        paths_internal,
        script_callbacks,
        scripts,
        shared,
        shared_cmd_options,
        shared_state,
    )

    root = Path(root)
    paths_internal.set_root(str(root))
    paths_internal.extensions_builtin_dir = str(STUB_DIR / "extensions-builtin")
    (root / "extensions").mkdir(parents=True, exist_ok=True)
    for name, path in (extensions or {}).items():
        link = root / "extensions" / name
        if not link.exists():
            os.symlink(path, link, target_is_directory=True)
    cmd_opts = shared_cmd_options.parse(list(argv or []))
    shared.config_filename = cmd_opts.ui_settings_file
    shared.options_templates.clear()
    shared.opts = options.Options(shared.options_templates, set())
    shared.opts.load(shared.config_filename)
    shared.state = shared_state.State()
    shared.sd_model = sd_model
    script_callbacks.errors_reported.clear()
    extra_networks.initialize()
    localization.list_localizations(cmd_opts.localizations_dir)
    scripts.load_scripts()
    if sd_model is not None:
        script_callbacks.model_loaded_callback(sd_model)
    script_callbacks.before_ui_callback()  # webui.py calls it once scripts are loaded, before create_ui
    return Stub(root)
