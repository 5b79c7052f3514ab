"""Stand-in for modules/ui_loadsave.py (WebUI 1.10.1): the ui-config.json defaults registry.

create_ui() renders every tab, then walks it with `add_block(interface, tab_id)`: each labelled
component (and each Button by its value) is registered under "<tab>/<label>/<field>", its current
value recorded as the default or, when ui-config.json holds one, put on the component; a Radio or
Dropdown value that is no longer a choice is left alone. Then `dump_defaults()` writes the file when
something new was seen. The walk and the write are part of the "create ui" time of the WebUI's start
breakdown, so bench/startup.py times them for our tab. Same signatures and keys as 1.10.1; the
WebUI's own ToolButton/InputAccordion classes do not exist here (no extension tab uses them).
"""

from __future__ import annotations

import json
import os
from typing import Any


def radio_choices(comp: Any) -> list[Any]:
    """gradio 3.41 keeps choices as (label, value) pairs; older as plain values."""
    return [c[0] if isinstance(c, tuple) else c for c in getattr(comp, "choices", None) or []]


class UiLoadsave:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.ui_settings: dict[str, Any] = {}
        self.component_mapping: dict[str, Any] = {}
        self.error_loading = False
        self.finalized_ui = False
        try:
            self.ui_settings = self.read_from_file()
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            self.error_loading = True

    def add_component(self, path: str, x: Any) -> None:
        import gradio as gr

        assert not self.finalized_ui

        def apply_field(obj: Any, name: str, condition: Any = None) -> None:
            key = f"{path}/{name}"
            if getattr(obj, "do_not_save_to_config", False):
                return
            saved = self.ui_settings.get(key)
            if saved is None:
                self.ui_settings[key] = getattr(obj, name)
            elif condition is None or condition(saved):
                if isinstance(obj, gr.Textbox) and name == "value":
                    saved = str(saved)
                elif isinstance(obj, gr.Number) and name == "value":
                    try:
                        saved = float(saved)
                    except ValueError:
                        return
                setattr(obj, name, saved)
            if name == "value" and key not in self.component_mapping:
                self.component_mapping[key] = obj

        kind = type(x)
        if kind in (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown, gr.Button) and x.visible:
            apply_field(x, "visible")
        if kind is gr.Slider:
            for name in ("value", "minimum", "maximum", "step"):
                apply_field(x, name)
        if kind is gr.Radio:
            apply_field(x, "value", lambda v: v in radio_choices(x))
        if kind in (gr.Checkbox, gr.Textbox, gr.Number):
            apply_field(x, "value")
        if kind is gr.Dropdown:

            def dropdown_ok(v: Any) -> bool:
                choices = radio_choices(x)
                return all(i in choices for i in v) if getattr(x, "multiselect", False) else v in choices

            apply_field(x, "value", dropdown_ok)
        if kind is gr.Tabs:
            ids = [t.id for t in x.children if isinstance(t, gr.TabItem)]
            apply_field(x, "selected", lambda v: v in ids if isinstance(v, str) else isinstance(v, int))

    def add_block(self, x: Any, path: str = "") -> None:
        import gradio as gr

        if hasattr(x, "children"):
            if isinstance(x, gr.Tabs) and x.elem_id is not None:
                self.add_component(f"{path}/Tabs@{x.elem_id}", x)
            for child in x.children:
                self.add_block(child, path)
        elif getattr(x, "label", None) is not None:
            self.add_component(f"{path}/{x.label}", x)
        elif isinstance(x, gr.Button) and x.value is not None:
            self.add_component(f"{path}/{x.value}", x)

    def read_from_file(self) -> dict[str, Any]:
        with open(self.filename, encoding="utf8") as f:
            return json.load(f)

    def write_to_file(self, current: dict[str, Any]) -> None:
        with open(self.filename, "w", encoding="utf8") as f:
            json.dump(current, f, indent=4, ensure_ascii=False)

    def dump_defaults(self) -> None:
        """Writes ui-config.json unless it could not be read (then it would lose the user's file)."""
        if self.error_loading and os.path.exists(self.filename):
            return
        self.write_to_file(self.ui_settings)
