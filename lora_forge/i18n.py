"""Translate the messages the tab builds at run time (status lines, hints, advice, errors).

The WebUI's localization (javascript/localization.js) swaps whole, exact strings in the page, so it
can never translate "Created project “cat” in `D:\\sd\\cat`.": that sentence is not a key. The
catalog (localizations/<lang>.json, the same file the WebUI reads) therefore also holds English
message *templates* such as "Created project “{name}” in `{folder}`.". Each is compiled once into
a regex; a finished English message is matched against them and re-rendered in the user's language
with the captured values. Text that matches nothing stays English: a missing translation never
loses a path or a number and never raises.

Why match finished text instead of passing message ids around: ForgeError messages are built deep
in the core (a path inside, the CLI and the logs read them in English) and the UI only ever sees the
finished string. Matching at the display boundary keeps the core free of languages and needs no
second copy of a sentence: the English text in the code *is* the key.

Rules, in order, for one line:
- a line equal to a key → its value;
- a key with {placeholders} (each may capture any text, even none, but a value never spans a
  sentence: see _plausible_value); when several keys match, the one with the most literal text wins;
- placeholders named in MESSAGE_FIELDS (error, note, reason, …) hold another message and are
  translated in turn; every other placeholder (name, path, n, …) is a value and is kept verbatim,
  so a project called "Train" stays "Train";
- list marks, "⚠ ", a progress count "3/40 " and **bold** around a line are kept and the inside is
  translated;
- "<something>: <message>" (how ForgeError(…, path=…) reads) keeps the part before ": " and
  translates the message;
- "a, b, c" (or "a · b · c", "a; b; c") where every part is a message of its own (a summary such as "3 images
  written, 1 skipped") is translated part by part and joined with the catalog's ", " entry.
Markdown is translated line by line (and table cells one by one); HTML text node by text node and
title attributes, as localization.js does in the browser.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

LOCALIZATIONS = Path(__file__).resolve().parent.parent / "localizations"
ENV_LANG = "LORA_FORGE_LANG"
ENGLISH = "en"
# placeholders that hold a message of their own (translated too); all others are values kept as they are
MESSAGE_FIELDS = frozenset(
    {"error", "message", "note", "reason", "warning", "hint", "state", "detail", "what", "summary", "parts", "step"}
)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PEEL = re.compile(r"^(\s*(?:[-*+] |\d+\. |> )?(?:⚠ ?|✔ ?)?(?:\d+/\d+ )?)(.*?)$", re.S)
HTML_TEXT = re.compile(r">([^<>]+)<")
HTML_TITLE = re.compile(r'title="([^"]*)"')
MAX_DEPTH = 4


def resolve_language(name: str | None) -> str:
    """The catalog for a language setting: the WebUI's `localization` option ("None", "zh_CN", …)
    or --lang / LORA_FORGE_LANG. Any simplified-Chinese name ("zh", "zh-CN", "zh-Hans (Stable)"
    from a Chinese localization extension) uses zh_CN; unknown or English names give English."""
    text = (name or "").strip()
    low = text.lower().replace("-", "_")
    if not text or low in ("none", "english") or low.startswith("en"):
        return ENGLISH
    if re.fullmatch(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]+)*", text) and (LOCALIZATIONS / f"{text}.json").is_file():
        return text  # a catalog of that name (a plain name: the setting never reaches outside the folder)
    if low.startswith("zh") and not any(t in low for t in ("hant", "tw", "hk")):
        return "zh_CN" if (LOCALIZATIONS / "zh_CN.json").is_file() else ENGLISH
    return ENGLISH


def env_language() -> str:
    """The standalone UI's language when --lang is not given: LORA_FORGE_LANG, else English."""
    return os.environ.get(ENV_LANG) or ENGLISH


@dataclass(frozen=True)
class Template:
    regex: re.Pattern[str]
    groups: tuple[str, ...]  # placeholder name per regex group (a name may appear twice)
    anchor: str  # the longest literal piece: a cheap `in` test before the regex
    weight: int  # literal characters: the most specific template wins
    target: str
    leading: bool  # starts with a placeholder


def compile_template(key: str, target: str) -> Template:
    parts = PLACEHOLDER.split(key)  # literal, name, literal, name, …, literal
    literals, names = parts[0::2], parts[1::2]
    pattern = "".join(re.escape(lit) + (f"(?P<g{i}>.*?)" if i < len(names) else "") for i, lit in enumerate(literals))
    return Template(
        re.compile(pattern), tuple(names), max(literals, key=len), sum(map(len, literals)), target, key[:1] == "{"
    )


def _plausible_value(value: str, first: bool) -> bool:
    """A value (a name, path, number) does not span a sentence: no "; ", no bold, no new line, and
    a value the template starts with has no ": " (that is the "<path>: <message>" of an error).
    Without this "{n} prepared images" would claim "**Error:** …; give the folder of prepared images"."""
    return not any(bad in value for bad in ("; ", "**", "\n")) and not (first and ": " in value)


class Translator:
    """One language's catalog, compiled: text() for Markdown and plain text, html() for markup."""

    def __init__(self, catalog: dict[str, str]) -> None:
        self.exact = {k: v for k, v in catalog.items() if isinstance(v, str) and v.strip()}
        self.templates = sorted(
            (compile_template(k, v) for k, v in self.exact.items() if PLACEHOLDER.search(k)),
            key=lambda t: -t.weight,
        )
        self.line = functools.lru_cache(maxsize=8192)(self._line)

    def text(self, text: str) -> str:
        """Markdown or plain text, line by line (a multi-line key of the catalog as a whole)."""
        if not isinstance(text, str) or not text.strip():
            return text
        if "\n" not in text:
            return self.line(text)
        if text in self.exact:
            return self.exact[text]
        return "\n".join(
            self._table_row(line) if line.lstrip().startswith("|") else self.line(line) for line in text.split("\n")
        )

    def html(self, markup: str) -> str:
        """Text nodes and title attributes of HTML built by the tab (markup itself untouched)."""
        if not isinstance(markup, str) or not markup.strip():
            return markup

        def node(m: re.Match[str]) -> str:
            raw = m.group(1)
            if not raw.strip():
                return m.group(0)
            out = self.line(html.unescape(raw))
            return m.group(0) if out == html.unescape(raw) else f">{html.escape(out, quote=False)}<"

        def title(m: re.Match[str]) -> str:
            raw = html.unescape(m.group(1))
            out = self.line(raw)
            return m.group(0) if out == raw else f'title="{html.escape(out)}"'

        return HTML_TITLE.sub(title, HTML_TEXT.sub(node, markup))

    def _table_row(self, line: str) -> str:
        cells = line.split("|")
        return "|".join(self.line(c) if c.strip() else c for c in cells)

    def _line(self, line: str, depth: int = 0) -> str:
        if depth > MAX_DEPTH or not line.strip():
            return line
        stripped = line.strip()
        lead, trail = line[: len(line) - len(line.lstrip())], line[len(line.rstrip()) :]
        found = self._match(stripped, depth)
        if found is not None:
            return lead + found + trail
        peeled = PEEL.match(stripped)
        if peeled and peeled.group(1):
            inner = self._line(peeled.group(2), depth + 1)
            if inner != peeled.group(2):
                return lead + peeled.group(1) + inner + trail
        for open_, close in (("**", "**"), ("*", "*")):
            if len(stripped) > 2 * len(open_) and stripped.startswith(open_) and stripped.endswith(close):
                inner_text = stripped[len(open_) : -len(close)]
                inner = self._line(inner_text, depth + 1)
                if inner != inner_text:
                    return lead + open_ + inner + close + trail
        for sep in (", ", " · ", "; "):
            parts = stripped.split(sep)
            if len(parts) > 1:
                done = [self._match(p, depth + 1) for p in parts]
                if all(d is not None for d in done):
                    return lead + self.exact.get(sep, sep).join(d for d in done if d is not None) + trail
        start = 0
        while (i := stripped.find(": ", start)) > 0:  # "<path>: <message>" from ForgeError(path=…)
            tail = stripped[i + 2 :]
            out = self._match(tail, depth + 1)
            if out is not None:
                return lead + stripped[: i + 2] + out + trail
            start = i + 1
        return line

    def _match(self, text: str, depth: int) -> str | None:
        if text in self.exact:
            return self.exact[text]
        for t in self.templates:  # most literal text first, so the first full match is the best
            if t.anchor not in text:
                continue
            m = t.regex.fullmatch(text)
            if m is None:
                continue
            values: dict[str, str] = {}
            for i, name in enumerate(t.groups):
                value = m.group(f"g{i}")
                if name not in MESSAGE_FIELDS and not _plausible_value(value, i == 0 and t.leading):
                    break
                values.setdefault(name, self._line(value, depth + 1) if name in MESSAGE_FIELDS else value)
            else:
                out = PLACEHOLDER.sub(lambda p, v=values: v.get(p.group(1), p.group(0)), t.target)
                if out != text:  # a match that changes nothing ("{a}/{b} {c}") must not stop the search
                    return out
        return None


class _Identity(Translator):
    def __init__(self) -> None:
        super().__init__({})

    def text(self, text: str) -> str:
        return text

    def html(self, markup: str) -> str:
        return markup


IDENTITY = _Identity()


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> Translator:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return IDENTITY  # a broken catalog must not break the tab: English it is
    return Translator(data if isinstance(data, dict) else {})


def translator(language: str | None) -> Translator:
    """The compiled catalog for a language setting (recompiled only when the file changes)."""
    lang = resolve_language(language)
    if lang == ENGLISH:
        return IDENTITY
    path = LOCALIZATIONS / f"{lang}.json"
    try:
        return _load(path, path.stat().st_mtime_ns)
    except OSError:
        return IDENTITY


def translate(text: str, language: str | None) -> str:
    return translator(language).text(text)
