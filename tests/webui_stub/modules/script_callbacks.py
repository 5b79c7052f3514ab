"""modules/script_callbacks.py: registration (`on_*`) and the runners the WebUI calls (`*_callback`).

A callback that raises is reported and the others still run, as in the WebUI.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import traceback
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


callback_map: dict[str, list[ScriptCallback]] = {
    f"callbacks_{c}": []
    for c in (
        "app_started",
        "model_loaded",
        "ui_tabs",
        "ui_settings",
        "script_unloaded",
        "before_ui",
        "on_reload",
    )
}
errors_reported: list[str] = []  # the stand-in's record of what errors.report printed


def _extension_name(filename: str) -> str:
    parts = os.path.normpath(filename).split(os.sep)
    for marker in ("extensions", "extensions-builtin"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].lower()
    return "base"


def add_callback(callbacks: list[ScriptCallback], fun: Callable[..., Any], *, name=None, category="unknown") -> None:
    # the first caller outside this file, as the WebUI finds it (it uses the slower inspect.stack())
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    filename = frame.f_code.co_filename if frame is not None else "unknown file"
    callback_name = f"{_extension_name(filename)}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f"/{name}"
    unique = callback_name
    for index in range(1000):
        if not any(x.name == unique for x in callbacks):
            break
        unique = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def clear_callbacks() -> None:
    for callbacks in callback_map.values():
        callbacks.clear()


def _run(category: str, *args: Any) -> list[Any]:
    results = []
    for c in callback_map[f"callbacks_{category}"]:
        try:
            results.append(c.callback(*args))
        except Exception:
            errors_reported.append(f"Error executing callback {c.name}:\n{traceback.format_exc()}")
            print(errors_reported[-1])
    return results


def app_started_callback(demo: Any, app: Any) -> None:
    _run("app_started", demo, app)


def app_reload_callback() -> None:
    _run("on_reload")


def model_loaded_callback(sd_model: Any) -> None:
    _run("model_loaded", sd_model)


def ui_tabs_callback() -> list[Any]:
    res: list[Any] = []
    for r in _run("ui_tabs"):
        res += r or []
    return res


def ui_settings_callback() -> None:
    _run("ui_settings")


def script_unloaded_callback() -> None:
    for c in reversed(callback_map["callbacks_script_unloaded"]):
        c.callback()


def before_ui_callback() -> None:
    _run("before_ui")


def on_app_started(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_before_reload(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload")


def on_model_loaded(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_script_unloaded(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback: Callable[..., Any], *, name=None) -> None:
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")
