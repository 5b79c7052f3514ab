"""modules/localization.py (1.7+): every localizations/<stem>.json is merged, core first."""

from __future__ import annotations

import json
import os

from modules import scripts

localizations: dict[str, list[str]] = {}


def list_localizations(dirname: str) -> None:
    localizations.clear()
    if os.path.isdir(dirname):
        for file in sorted(os.listdir(dirname)):
            stem, ext = os.path.splitext(file)
            if ext.lower() == ".json":
                localizations[stem] = [os.path.join(dirname, file)]
    for ext_dir in scripts.list_extension_dirs():
        folder = os.path.join(ext_dir, "localizations")
        if os.path.isdir(folder):
            for file in sorted(os.listdir(folder)):
                stem, ext = os.path.splitext(file)
                if ext.lower() == ".json":
                    localizations.setdefault(stem, []).append(os.path.join(folder, file))


def localization_js(current_localization_name: str) -> str:
    data: dict[str, str] = {}
    for fn in localizations.get(current_localization_name, []):
        with open(fn, encoding="utf8") as f:
            data.update(json.load(f))
    return f"window.localization = {json.dumps(data)}"
