"""编辑: the tag editor section. Wiring only; the logic is lora_forge.dataset.editor_view.EditorSession.

Each browser session keeps its own EditorSession in a gr.State. Every action returns the same set
of outputs (message, status, current image, ...) and then refreshes the tag list and the history,
so no button can leave part of the page showing an older state. The gallery is only re-sent when
the page or the filter changes: re-sending 48 images after every caption edit would be slow and
would reset the gallery's scroll.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lora_forge.dataset.editor_labels import OPERATIONS, SCOPES
from lora_forge.errors import ForgeError
from lora_forge.ui.context import UiContext

if TYPE_CHECKING:
    from lora_forge.dataset.editor_view import EditorSession

TITLE = "Edit tags"
TAG_HEADERS = ["Tag", "Images", "Translation"]
PREVIEW_HEADERS = ["Image", "Before", "After"]


def message_html(text: str, error: bool = False) -> str:
    return f'<div class="{"lf-error" if error else "lf-ok"}" id="lora_forge_editor_msg_text">{html.escape(text)}</div>'


def table(headers: list[str], rows: list[list]) -> dict[str, Any]:
    """Dataframe value that keeps its headers when empty (a bare [] makes gradio 3.41 number them)."""
    return {"headers": headers, "data": rows}


def with_session(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give the handler this page's EditorSession (made on first use) and hold its lock."""

    @functools.wraps(fn)
    def handler(s, *args):
        if s is None:  # imported here: the editor is loaded on the first click, not at WebUI start
            from lora_forge.dataset.editor_view import EditorSession

            s = EditorSession()
        with s.lock:
            return fn(s, *args)

    return handler


@dataclass(frozen=True)
class EditorHandles:
    """What the tab wires to: the clicks whose work changes the steps (save, roll back), and the
    trigger word with the click that writes it into every caption."""

    saved: Any
    rolled_back: Any
    trigger_added: Any
    trigger: Any


def build(ctx: UiContext) -> EditorHandles:
    import gradio as gr

    folder = ctx.shared.get("dataset_dir")
    state = gr.State(None)

    with gr.Row(elem_classes="lf-toolbar"):
        if folder is None:  # the section on its own (tests); in the tab the shared folder box is used
            folder = gr.Textbox(label="Dataset folder", elem_id="lora_forge_dataset_dir")
        load = gr.Button("Load dataset", variant="primary", elem_id="lora_forge_editor_load")
        undo = gr.Button("Undo", elem_id="lora_forge_editor_undo")
        redo = gr.Button("Redo", elem_id="lora_forge_editor_redo")
        save = gr.Button("Save changes", variant="primary", elem_id="lora_forge_editor_save")
    message = gr.HTML(message_html("Load a dataset to edit its captions."), elem_id="lora_forge_editor_msg")
    status = gr.Markdown("no dataset loaded", elem_id="lora_forge_editor_status")

    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Images",
                columns=6,
                height=480,
                allow_preview=False,
                object_fit="cover",
                show_download_button=False,
                elem_id="lora_forge_editor_gallery",
            )
            with gr.Row(elem_classes="lf-toolbar"):
                prev_page = gr.Button("◀ Page", size="sm", elem_id="lora_forge_editor_prev_page")
                page_label = gr.Markdown("page 1 / 1", elem_id="lora_forge_editor_page")
                next_page = gr.Button("Page ▶", size="sm", elem_id="lora_forge_editor_next_page")
            with gr.Row():
                preview_image = gr.Image(
                    label="Current image", type="filepath", interactive=False, height=320, show_download_button=False
                )
                with gr.Column():
                    current_label = gr.Markdown("no image selected", elem_id="lora_forge_editor_current")
                    caption = gr.Textbox(
                        label="Caption (comma-separated tags)", lines=4, elem_id="lora_forge_editor_caption"
                    )
                    with gr.Row(elem_classes="lf-toolbar"):
                        toggle_sel = gr.Button("Select / unselect", size="sm", elem_id="lora_forge_editor_select")
                        select_shown = gr.Button(
                            "Select all shown", size="sm", elem_id="lora_forge_editor_select_shown"
                        )
                        show_sel = gr.Button("Show selection", size="sm", elem_id="lora_forge_editor_show_selection")
                        clear_sel = gr.Button("Clear selection", size="sm", elem_id="lora_forge_editor_clear_selection")
                    with gr.Row(elem_classes="lf-toolbar"):
                        prev_img = gr.Button("◀ Previous", size="sm", elem_id="lora_forge_editor_prev")
                        apply_caption = gr.Button("Apply caption", size="sm", elem_id="lora_forge_editor_apply_caption")
                        next_img = gr.Button("Next ▶", size="sm", elem_id="lora_forge_editor_next")
                    current_tags = gr.Dataframe(
                        headers=TAG_HEADERS, datatype=["str", "number", "str"], type="array", interactive=False,
                        label="Tags of this image", elem_id="lora_forge_editor_current_tags",
                    )  # fmt: skip
        with gr.Column(scale=2):
            with gr.Row():
                search = gr.Textbox(
                    label="Search tags", placeholder="tag or translation", elem_id="lora_forge_editor_search"
                )
                sort = gr.Radio(["count", "name", "length"], value="count", label="Sort by")
            tag_table = gr.Dataframe(
                headers=TAG_HEADERS, datatype=["str", "number", "str"], type="array", interactive=False,
                label="All tags (click one to filter by it)", elem_id="lora_forge_editor_tags", height=360,
            )  # fmt: skip
            all_of = gr.Textbox(label="Images with all of (AND)", elem_id="lora_forge_editor_all")
            any_of = gr.Textbox(label="… and any of (OR)", elem_id="lora_forge_editor_any")
            none_of = gr.Textbox(label="… and none of (NOT)", elem_id="lora_forge_editor_none")
            with gr.Row(elem_classes="lf-toolbar"):
                apply_filter = gr.Button("Filter", size="sm", elem_id="lora_forge_editor_filter")
                clear_filter = gr.Button("Show all", size="sm", elem_id="lora_forge_editor_clear_filter")
            translations = gr.Textbox(
                label="Translation file (tag,translation CSV)", placeholder="D:\\tags_zh.csv",
                elem_id="lora_forge_editor_translations",
            )  # fmt: skip

    with gr.Accordion("Batch edit", open=True, elem_id="lora_forge_editor_batch"):
        with gr.Row():
            operation = gr.Dropdown(
                list(OPERATIONS), value="Remove tags", label="Operation", elem_id="lora_forge_editor_op"
            )
            op_tags = gr.Textbox(label="Tags / pattern", elem_id="lora_forge_editor_op_tags")
            op_repl = gr.Textbox(label="Replacement", elem_id="lora_forge_editor_op_repl")
            position = gr.Textbox(
                value="back", label="Add at (front, back or a number)", elem_id="lora_forge_editor_pos"
            )
            regex_scope = gr.Radio(["tag", "caption"], value="tag", label="Regex works on each")
            scope = gr.Radio(list(SCOPES), value=SCOPES[0], label="Apply to", elem_id="lora_forge_editor_scope")
        with gr.Row(elem_classes="lf-toolbar"):
            preview_btn = gr.Button("Preview", elem_id="lora_forge_editor_preview")
            apply_btn = gr.Button("Apply", variant="primary", interactive=False, elem_id="lora_forge_editor_apply")
        preview_md = gr.Markdown("", elem_id="lora_forge_editor_preview_text")
        preview_df = gr.Dataframe(
            headers=PREVIEW_HEADERS, type="array", interactive=False, wrap=True,
            elem_id="lora_forge_editor_preview_rows",
        )  # fmt: skip
        with gr.Row(elem_classes="lf-toolbar"):
            trigger = gr.Textbox(label="Trigger word (kept first)", elem_id="lora_forge_editor_trigger")
            add_trigger = gr.Button("Put trigger word first in every caption", elem_id="lora_forge_editor_add_trigger")

    with (
        gr.Accordion(
            "History (saved edits, also from earlier sessions)", open=False, elem_id="lora_forge_editor_history_box"
        ),
        gr.Row(elem_classes="lf-toolbar"),
    ):
        history = gr.Dropdown([], label="Saved edits, newest first", elem_id="lora_forge_editor_history")
        rollback = gr.Button("Roll back this save", elem_id="lora_forge_editor_rollback")

    # ------------------------------------------------------------------ wiring

    view_outputs = [state, message, status, gallery, page_label, current_label, caption, preview_image, current_tags]

    def view(s: EditorSession, msg: str, error: bool, with_gallery: bool) -> list[Any]:
        label, text, image = s.current_view()
        return [
            s,
            message_html(msg, error),
            s.status(),
            s.gallery() if with_gallery and s.ds is not None else gr.update(),
            s.page_label(),
            label,
            text,
            image,
            table(TAG_HEADERS, s.current_tags()),
        ]

    def action(fn: Callable[..., str | None], with_gallery: bool = False) -> Callable[..., list[Any]]:
        """A handler that runs fn(session, *inputs) and shows its message, or its ForgeError."""

        @with_session
        def handler(s, *args):
            try:
                msg = fn(s, *args) or ""
            except ForgeError as e:
                return [s, message_html(str(e), error=True), s.status(), *[gr.update()] * (len(view_outputs) - 3)]
            return view(s, msg, False, with_gallery)

        return handler

    @with_session
    def refresh_lists(s, search_text, sort_key):
        return table(TAG_HEADERS, s.tag_rows(search_text or "", sort_key or "count")), gr.update(
            choices=s.history_choices()
        )

    lists = {"fn": refresh_lists, "inputs": [state, search, sort], "outputs": [tag_table, history]}

    def on(event, fn, inputs, with_gallery=False):
        """The event's handler, then the tag and history lists; returns the handler's event."""
        done = event(action(fn, with_gallery), [state, *inputs], view_outputs)
        done.then(**lists)
        return done

    on(load.click, lambda s, f: s.load(f), [folder], with_gallery=True)
    on(undo.click, lambda s: s.undo(), [])
    on(redo.click, lambda s: s.redo(), [])
    saved = on(save.click, lambda s: s.save(), [])
    on(prev_page.click, lambda s: s.go_page(-1), [], with_gallery=True)
    on(next_page.click, lambda s: s.go_page(1), [], with_gallery=True)
    on(apply_caption.click, lambda s, text: s.edit_current(text), [caption])
    on(apply_filter.click, lambda s, a, o, n: s.set_filter(a, o, n), [all_of, any_of, none_of], with_gallery=True)
    on(none_of.submit, lambda s, a, o, n: s.set_filter(a, o, n), [all_of, any_of, none_of], with_gallery=True)
    on(all_of.submit, lambda s, a, o, n: s.set_filter(a, o, n), [all_of, any_of, none_of], with_gallery=True)
    on(any_of.submit, lambda s, a, o, n: s.set_filter(a, o, n), [all_of, any_of, none_of], with_gallery=True)
    trigger_added = on(add_trigger.click, lambda s, word: s.add_trigger(word), [trigger])
    on(trigger.submit, lambda s, word: s.set_trigger(word), [trigger])
    on(translations.submit, lambda s, path: s.load_translations(path), [translations])
    rolled_back = on(rollback.click, lambda s, choice: s.rollback(choice), [history], with_gallery=True)
    on(toggle_sel.click, lambda s: s.toggle_selected(), [], with_gallery=True)
    on(select_shown.click, lambda s: s.select_shown(), [], with_gallery=True)
    on(show_sel.click, lambda s: s.show_selection(), [], with_gallery=True)
    on(clear_sel.click, lambda s: s.clear_selection(), [], with_gallery=True)
    for event in (search.change, sort.change):
        event(**lists)

    # Moving to another image first applies what was typed in the caption box (keep_typed).
    def step(delta):
        @with_session
        def handler(s, typed):
            msg = s.keep_typed(typed)
            page_changed = s.step(delta)  # the gallery is re-sent only when the step crossed a page
            return view(s, msg, False, page_changed)

        return handler

    prev_img.click(step(-1), [state, caption], view_outputs).then(**lists)
    next_img.click(step(1), [state, caption], view_outputs).then(**lists)

    def select_image(s, typed, evt):
        msg = s.keep_typed(typed)
        s.select_on_page(int(evt.index))
        return view(s, msg, False, False)

    # gradio finds the event argument by this annotation (a string under `from __future__` would not do)
    select_image.__annotations__ = {"evt": gr.SelectData}
    gallery.select(with_session(select_image), [state, caption], view_outputs).then(**lists)

    def clear(s):
        return ["", "", "", *action(lambda s: s.set_filter("", "", ""), with_gallery=True)(s)]

    clear_filter.click(clear, [state], [all_of, any_of, none_of, *view_outputs]).then(**lists)

    def click_tag(s, rows, evt):
        row, col = evt.index if isinstance(evt.index, (list, tuple)) else (int(evt.index), 0)
        # a click on the tag cell names the tag itself (right even after sorting by a column header)
        tag = str(evt.value) if col == 0 else str(rows[row][0]) if rows and row < len(rows) else ""
        if s.ds is None or not tag:
            return [gr.update(), *view(s, "", False, False)]
        text, msg = s.toggle_tag_filter(tag)
        return [text, *view(s, msg, False, True)]

    click_tag.__annotations__ = {"evt": gr.SelectData}
    tag_table.select(with_session(click_tag), [state, tag_table], [all_of, *view_outputs]).then(**lists)

    @with_session
    def preview(s, op, tags, repl, pos, rscope, sc):
        from lora_forge.dataset.editor_view import preview_rows, preview_text

        try:
            p = s.preview(op, tags, repl, pos, rscope, sc)
        except ForgeError as e:
            return s, message_html(str(e), error=True), "", table(PREVIEW_HEADERS, []), gr.update(interactive=False)
        rows = table(PREVIEW_HEADERS, preview_rows(p))
        return s, message_html("preview ready"), preview_text(p), rows, gr.update(interactive=p.changed > 0)

    preview_btn.click(
        preview,
        [state, operation, op_tags, op_repl, position, regex_scope, scope],
        [state, message, preview_md, preview_df, apply_btn],
    )

    def apply(s):
        out = action(lambda s: s.apply_pending())(s)
        return [*out, "", table(PREVIEW_HEADERS, []), gr.update(interactive=False)]

    apply_btn.click(apply, [state], [*view_outputs, preview_md, preview_df, apply_btn]).then(**lists)
    # an edit made after the preview makes it stale: Apply would be refused, so disable it right away
    for button in (undo, redo, apply_caption, add_trigger, rollback, load):
        button.click(lambda: gr.update(interactive=False), None, [apply_btn])
    return EditorHandles(saved, rolled_back, trigger_added, trigger)
