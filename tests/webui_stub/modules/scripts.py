"""modules/scripts.py + modules/script_loading.py: how an extension's scripts/*.py get imported.

Each file is loaded from its path under its bare file name, not put in sys.modules, with the
extension folder first on sys.path and basedir() pointing at it only while the file executes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import namedtuple
from types import ModuleType

from modules import paths_internal, script_callbacks

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
current_basedir = paths_internal.script_path
loaded_modules: list[ModuleType] = []


def basedir() -> str:
    return current_basedir


def load_module(path: str) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def list_extension_dirs() -> list[str]:
    dirs = []
    for parent in (paths_internal.extensions_builtin_dir, paths_internal.extensions_dir):
        if os.path.isdir(parent):
            dirs += [os.path.join(parent, d) for d in sorted(os.listdir(parent))]
    return [d for d in dirs if os.path.isdir(d)]


def list_scripts(scriptdirname: str, extension: str, *, include_extensions: bool = True) -> list[ScriptFile]:
    """<webui>/<scriptdirname>/*<extension> first, then each extension's (metadata ordering left out)."""
    found = []
    bases = [paths_internal.script_path] + (list_extension_dirs() if include_extensions else [])
    for base in bases:
        folder = os.path.join(base, scriptdirname)
        if os.path.isdir(folder):
            for filename in sorted(os.listdir(folder)):
                path = os.path.join(folder, filename)
                if os.path.isfile(path) and os.path.splitext(filename)[1].lower() == extension:
                    found.append(ScriptFile(base, filename, path))
    return found


def load_extension_scripts(ext: str) -> None:
    """One extension's scripts/*.py, in name order, as load_scripts() does for each extension."""
    global current_basedir
    folder = os.path.join(ext, "scripts")
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".py") or not os.path.isfile(path):
            continue
        saved_path, saved_base = list(sys.path), current_basedir
        try:
            sys.path = [ext, *sys.path]
            current_basedir = ext
            loaded_modules.append(load_module(path))
        finally:
            sys.path, current_basedir = saved_path, saved_base


def load_scripts() -> None:
    script_callbacks.clear_callbacks()
    loaded_modules.clear()
    for ext in list_extension_dirs():
        load_extension_scripts(ext)
