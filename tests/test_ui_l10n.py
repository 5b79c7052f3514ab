"""Every string the tab shows when it opens has a zh_CN translation (localizations/zh_CN.json, the
WebUI's own mechanism). Built from the real Blocks, so a new label without its Chinese fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# shown as they are in every language: names, units, formats, symbols, examples of paths
ALLOWED = {
    "jpg",
    "png",
    "512",
    "768",
    "1024",
    "🔄",
    "count",
    "name",
    "length",
    "tag",
    "caption",
    "back",
    "LoRA Forge (炼丹炉)",
}
NO_WORDS = re.compile(r"^[\W\d_]*$")
PATH_EXAMPLE = re.compile(r"^[A-Z]:\\")  # placeholders showing a Windows path
# values computed from the machine (model folder, page counter): their words are translated where built
COMPUTED = {"Markdown#lora_forge_tagger_info", "Markdown#lora_forge_editor_page"}


def visible_strings(blocks) -> dict[str, str]:
    """string → where it is (elem_id or class), for labels, values, placeholders, infos, choices,
    headers, Markdown and button texts of every component and layout block."""
    out: dict[str, str] = {}

    def add(text, where):
        if isinstance(text, str) and text.strip() and not NO_WORDS.match(text.strip()):
            out.setdefault(text.strip(), where)

    for block in blocks.blocks.values():
        kind = type(block).__name__
        where = f"{kind}#{getattr(block, 'elem_id', None) or '?'}"
        if kind in ("State", "HTML"):
            continue  # HTML is markup built by code; its words are covered where they are built
        if getattr(block, "show_label", True) is not False or kind in ("Tab", "TabItem", "Accordion"):
            add(getattr(block, "label", None), where)
        add(getattr(block, "placeholder", None), where)
        add(getattr(block, "info", None), where)
        if kind in ("Button", "Markdown"):
            add(getattr(block, "value", None), where)
        for choice in getattr(block, "choices", None) or []:
            add(choice[0] if isinstance(choice, (list, tuple)) else choice, where)
        headers = getattr(block, "headers", None)
        if kind == "Dataframe" and isinstance(headers, list):
            for h in headers:
                add(h, where)
    return out


def test_every_visible_string_of_the_tab_is_translated(tmp_path):
    from lora_forge.settings import Settings
    from lora_forge.ui import tab
    from lora_forge.ui.context import UiContext

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets")
    blocks = tab.build(UiContext(host=lambda: None, settings=lambda: settings))
    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    strings = visible_strings(blocks)
    assert len(strings) > 100  # the walk really reached every section
    missing = {
        s: where
        for s, where in strings.items()
        if s not in zh and s not in ALLOWED and not PATH_EXAMPLE.match(s) and where not in COMPUTED
    }
    # the tagger's model list names downloadable models: "name · size · state"
    missing = {s: w for s, w in missing.items() if " · " not in s}
    assert missing == {}, "\n".join(f"{w}: {s!r}" for s, w in sorted(missing.items(), key=lambda x: x[1]))


def test_zh_cn_is_a_flat_object_of_non_empty_strings():
    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    assert zh and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in zh.items())
