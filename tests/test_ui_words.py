"""An English page speaks English: messages name the sections by the titles the page shows, and the
Chinese page names them by the titles it shows (issue 17: "Next: caption the images in 打标")."""

from __future__ import annotations

import importlib
import re
import tokenize
from pathlib import Path

from lora_forge import i18n
from lora_forge.app import steps
from lora_forge.ui import tab

ROOT = Path(__file__).resolve().parent.parent / "lora_forge"
CJK = re.compile(r"[\u4e00-\u9fff]")
# Chinese on purpose in the English UI: the tab's own name, the product's name, an example that a
# Chinese name is accepted, and the glyph probe that checks a CJK font renders.
ALLOWED = {"炼丹", "炼丹炉", "我的角色", "字"}


def _runtime_strings(path: Path) -> list[tuple[int, str]]:
    """String literals that are not docstrings (a string alone on its line right after a block start)."""
    with path.open(encoding="utf-8") as f:
        toks = list(tokenize.generate_tokens(f.readline))
    out = []
    for i, t in enumerate(toks):
        if t.type != tokenize.STRING:
            continue
        before = toks[i - 1].type if i else tokenize.NEWLINE
        after = toks[i + 1].type if i + 1 < len(toks) else tokenize.NEWLINE
        standalone = before in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL, tokenize.DEDENT)
        if standalone and after == tokenize.NEWLINE:
            continue  # a docstring
        out.append((t.start[0], t.string))
    return out


def test_no_chinese_words_in_english_messages():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for line, text in _runtime_strings(path):
            words = set(re.findall(r"[\u4e00-\u9fff]+", text))
            if words - ALLOWED:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {text[:80]}")
    assert not found, "Chinese words in English runtime text (name sections by their English titles):\n" + "\n".join(
        found
    )


def _section_titles() -> list[str]:
    titles = []
    for name in tab.SECTIONS:
        if tab.module_exists(name):
            titles.append(importlib.import_module(name).TITLE)
    return titles


def test_hints_name_sections_as_the_page_titles_them_in_both_languages():
    titles = _section_titles()
    zh = i18n.translator("zh_CN")
    hints = [*steps.NEXT_HINTS.values(), steps.RUNNING_HINT, steps.DONE_HINT]
    for hint in hints:
        named = [t for t in titles if t in hint]
        assert named, f"names no section the page shows: {hint!r}"
        chinese = zh.text(hint)
        assert chinese != hint and not any(t in chinese for t in titles), chinese
        for title in named:
            zh_title = zh.text(title)
            assert CJK.search(zh_title), f"no Chinese title for section {title!r}"
            assert all(part in chinese for part in re.split(r"\s*/\s*", zh_title)), (title, zh_title, chinese)
