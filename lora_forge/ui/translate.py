"""The display boundary of the tab's runtime messages: every handler's Markdown and HTML outputs,
and the gr.Error messages it raises, go through the user's language (lora_forge.i18n) on their way
to the page.

One wrapper over all handlers, like ui.guard.install, instead of a call in every section: a message
a section (or the core behind it) adds later is translated as soon as the catalog has it, and no
section can forget. Only message components are touched: Markdown (status lines, reports, hints)
and HTML built by the tab. Textboxes, dropdowns and galleries carry paths, names and captions that
must reach the page exactly as they are.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from lora_forge import i18n
from lora_forge.ui.context import UiContext

KINDS = {"Markdown": "text", "HTML": "html"}


def _convert(value: Any, kind: str, tr: i18n.Translator) -> Any:
    """A str, or a gr.update(value=str), in the user's language; anything else as it is."""
    fn = tr.html if kind == "html" else tr.text
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict) and value.get("__type__") == "update" and isinstance(value.get("value"), str):
        return {**value, "value": fn(value["value"])}
    return value


def _outputs(result: Any, kinds: list[str | None], by_block: dict[int, str], tr: i18n.Translator) -> Any:
    if tr is i18n.IDENTITY:
        return result
    if isinstance(result, dict) and result.get("__type__") != "update" and by_block:
        return {k: _convert(v, by_block[id(k)], tr) if id(k) in by_block else v for k, v in result.items()}
    if len(kinds) == 1:
        return _convert(result, kinds[0], tr) if kinds[0] else result
    if isinstance(result, (tuple, list)):
        out = [_convert(v, kinds[i], tr) if i < len(kinds) and kinds[i] else v for i, v in enumerate(result)]
        return tuple(out) if isinstance(result, tuple) else out
    return result


def localize_handlers(blocks: Any, ctx: UiContext) -> int:
    """Wrap every handler with a Markdown or HTML output; returns how many were wrapped."""
    wrapped = 0
    for block_fn in blocks.fns:
        fn = getattr(block_fn, "fn", None)
        if fn is None:
            continue
        kinds = [KINDS.get(type(c).__name__) for c in block_fn.outputs]
        by_block = {id(c): k for c, k in zip(block_fn.outputs, kinds, strict=True) if k}
        block_fn.fn = _wrap(fn, kinds, by_block, ctx)
        wrapped += 1
    return wrapped


def _wrap(fn: Callable[..., Any], kinds: list[str | None], by_block: dict[int, str], ctx: UiContext) -> Any:
    """Same kind of callable as `fn` (gradio looks at generator/async-ness and the signature)."""
    import gradio as gr

    def tr() -> i18n.Translator:
        return i18n.translator(ctx.language())

    def error(e: gr.Error) -> gr.Error:
        return gr.Error(tr().text(str(getattr(e, "message", e))))

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            try:
                async for item in fn(*args, **kwargs):
                    yield _outputs(item, kinds, by_block, tr())
            except gr.Error as e:
                raise error(e) from None

        return agen
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                for item in fn(*args, **kwargs):
                    yield _outputs(item, kinds, by_block, tr())
            except gr.Error as e:
                raise error(e) from None

        return gen
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            try:
                return _outputs(await fn(*args, **kwargs), kinds, by_block, tr())
            except gr.Error as e:
                raise error(e) from None

        return coro

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return _outputs(fn(*args, **kwargs), kinds, by_block, tr())
        except gr.Error as e:
            raise error(e) from None

    return plain


def localize_components(blocks: Any, tr: i18n.Translator) -> int:
    """The built tab's own words (labels, placeholders, infos, button and Markdown texts, tab and
    accordion titles, the shown names of radio choices) in `tr`'s language, for our own page and
    inside the WebUI alike: the WebUI's localization.js would apply our catalog to its whole page
    (host.webui.withdraw_own_localizations keeps it out), so the tab is translated as it is built.
    Values a handler reads (choice values, textbox and dataframe contents) are left alone:
    translating them would change what the handlers get. Returns how many strings changed."""
    if tr is i18n.IDENTITY:
        return 0
    changed = 0
    for block in blocks.blocks.values():
        kind = type(block).__name__
        names = ["label", "placeholder", "info"]
        if kind in ("Button", "Markdown"):
            names.append("value")
        for name in names:
            text = getattr(block, name, None)
            if isinstance(text, str) and text.strip():
                new = tr.text(text)
                if new != text:
                    setattr(block, name, new)
                    changed += 1
        if kind == "Radio":  # (shown name, value) pairs: the name in the user's language, the value kept
            pairs = [tuple(c) for c in getattr(block, "choices", None) or []]
            shown = [(tr.text(n) if isinstance(n, str) else n, v) for n, v in pairs]
            if shown != pairs:
                block.choices = shown
                changed += 1
    return changed


# What the WebUI's javascript/localization.js does with our zh_CN.json, for our own page: exact
# whole strings in text nodes, placeholders and titles (radio and dropdown choices, table headers:
# values the server must keep English). Runs again after every update of the page.
PAGE_L10N_JS = """
(function () {
    var words = %s;
    function swap(text) {
        var key = text.trim();
        return key && Object.prototype.hasOwnProperty.call(words, key) ? text.replace(key, words[key]) : null;
    }
    function run(root) {
        var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        for (var node = walker.nextNode(); node; node = walker.nextNode()) {
            var out = swap(node.nodeValue);
            if (out !== null) node.nodeValue = out;
        }
        root.querySelectorAll("[placeholder], [title]").forEach(function (el) {
            ["placeholder", "title"].forEach(function (attr) {
                var out = el.hasAttribute(attr) ? swap(el.getAttribute(attr)) : null;
                if (out !== null) el.setAttribute(attr, out);
            });
        });
    }
    var app = typeof gradioApp === "function" ? gradioApp() : document;
    run(app);
    onAfterUiUpdate(function () { run(app); });
})();
"""


def page_localization_js(language: str | None) -> str:
    """The script above with the catalog's exact strings ("" for English)."""
    import json

    tr = i18n.translator(language)
    if tr is i18n.IDENTITY:
        return ""
    exact = {k: v for k, v in tr.exact.items() if not i18n.PLACEHOLDER.search(k)}
    return PAGE_L10N_JS % json.dumps(exact, ensure_ascii=False)
