"""modules/options.py: OptionInfo, options_section and the Options store (the parts we use)."""

from __future__ import annotations

import json
from typing import Any

from modules.shared_cmd_options import cmd_opts


class OptionInfo:
    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: Any = None,
        refresh: Any = None,
        comment_before: str = "",
        comment_after: str = "",
        infotext: Any = None,
        restrict_api: bool = False,
        category_id: str | None = None,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label: str, url: str) -> OptionInfo:
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html: str) -> OptionInfo:
        self.comment_after += html
        return self

    def needs_restart(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


def options_section(section_identifier: tuple, options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    for v in options_dict.values():
        v.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            v.category_id = section_identifier[2]
    return options_dict


_BUILTIN = {"data_labels", "data", "restricted_opts", "typemap"}


class Options:
    typemap = {int: float}  # noqa: RUF012 - as in the WebUI

    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts: set[str]) -> None:
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _BUILTIN:
            return super().__setattr__(key, value)
        if key in self.data or key in self.data_labels:
            assert not cmd_opts.freeze_settings, "changing settings is disabled"
            self.data[key] = value
            return None
        return super().__setattr__(key, value)

    def __getattr__(self, item: str) -> Any:
        if item in _BUILTIN:
            return super().__getattribute__(item)
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        old = self.data.get(key, None)
        if old == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save or (is_api and option.restrict_api):
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def save(self, filename: str) -> None:
        assert not cmd_opts.freeze_settings, "saving settings is disabled"
        with open(filename, "w", encoding="utf8") as f:
            json.dump(self.data, f, indent=4, ensure_ascii=False)

    def load(self, filename: str) -> None:
        try:
            with open(filename, encoding="utf8") as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}
        for k, v in self.data_labels.items():
            if k not in self.data and not v.do_not_save:
                self.data[k] = v.default
