"""What one user's editor page holds between clicks: the dataset, the filtered view, the page, the
current image, the previewed edit. Plain Python, so lora_forge/ui/editor.py stays pure wiring and
this logic is tested without a browser.

Every method that a button calls returns a one-line message for the status bar; problems the user
can fix arrive as ForgeError and leave the session as it was.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lora_forge.dataset import captions
from lora_forge.dataset.captions import split_tags
from lora_forge.dataset.editor import Dataset, Edit, Preview, load_translations, tag_table, translate
from lora_forge.dataset.editor_labels import OPERATIONS
from lora_forge.dataset.editor_ops import build_op, parse_tag_list
from lora_forge.dataset.editor_thumbs import PREVIEW_SIZE, cache_dir, thumbnail
from lora_forge.errors import ForgeError

PAGE_SIZE = 48
TAG_ROWS = 500  # the tag list shows the first rows of the sorted, searched list; search narrows it


class EditorSession:
    def __init__(self) -> None:
        # gradio runs events of one page in parallel threads (a double click, Save pressed while a
        # batch edit runs): the UI holds this lock around every call so they happen one at a time.
        self.lock = threading.RLock()
        self.ds: Dataset | None = None
        self.view: list[int] = []
        self.page = 0
        self.current: int | None = None
        self.pending: Edit | None = None
        self.pending_preview: Preview | None = None
        self.translations: dict[str, str] = {}
        self.filters: tuple[list[str], list[str], list[str]] = ([], [], [])
        self.selection: set[int] = set()  # images picked one by one, for "Selected images"
        self.thumbs: Path | None = None

    # ------------------------------------------------------------------ dataset

    def require(self) -> Dataset:
        if self.ds is None:
            raise ForgeError("load a dataset first (type its folder above and press Load)")
        return self.ds

    def load(self, folder: str) -> str:
        if not folder or not folder.strip():
            raise ForgeError("type the dataset folder first")
        if self.ds is not None and self.ds.dirty():
            raise ForgeError(f"{len(self.ds.dirty())} unsaved caption(s): save or undo them before loading again")
        return self._open(Path(folder.strip()))

    def _open(self, folder: Path) -> str:
        ds = Dataset.load(folder)
        self.ds, self.view, self.page, self.pending = ds, list(range(len(ds))), 0, None
        self.current = 0 if len(ds) else None
        self.filters = ([], [], [])
        self.selection = set()
        self.thumbs = cache_dir(ds.root)
        return "; ".join(ds.report.notes())

    def load_translations(self, path: str) -> str:
        self.translations = load_translations(path.strip()) if path.strip() else {}
        return f"{len(self.translations)} translations loaded" if self.translations else "translations off"

    def status(self) -> str:
        if self.ds is None:
            return "no dataset loaded"
        ds = self.ds
        dirty = len(ds.dirty())
        parts = [
            f"{len(ds)} images",
            f"{len(self.view)} shown",
            *([f"{len(self.selection)} selected"] if self.selection else []),
            f"{len(ds.index)} tags",
            f"{dirty} unsaved" if dirty else "all saved",
            f"undo {len(ds.undo_stack)} / redo {len(ds.redo_stack)}",
        ]
        if ds.trigger:
            parts.append(f"trigger: {ds.trigger}")
        return " · ".join(parts)

    # ------------------------------------------------------------------ view, pages, current image

    def set_filter(self, all_of: str, any_of: str, none_of: str) -> str:
        ds = self.require()
        self.filters = (parse_tag_list(all_of), parse_tag_list(any_of), parse_tag_list(none_of))
        self.view = ds.filter(*self.filters)
        self.page = 0
        self.current = self.view[0] if self.view else None
        return f"{len(self.view)} of {len(ds)} images match the filter"

    def toggle_tag_filter(self, tag: str) -> tuple[str, str]:
        """Clicking a tag in the list adds it to the AND filter (or takes it out again) and shows the
        images that have it. Returns the new AND filter text and a message."""
        all_of, any_of, none_of = self.filters
        all_of = [t for t in all_of if t != tag] if tag in all_of else [*all_of, tag]
        message = self.set_filter(", ".join(all_of), ", ".join(any_of), ", ".join(none_of))
        return ", ".join(all_of), message

    def pages(self) -> int:
        return max(1, -(-len(self.view) // PAGE_SIZE))

    def go_page(self, delta: int) -> None:
        self.page = min(max(0, self.page + delta), self.pages() - 1)

    def page_ids(self) -> list[int]:
        return self.view[self.page * PAGE_SIZE : (self.page + 1) * PAGE_SIZE]

    def page_label(self) -> str:
        return f"page {self.page + 1} / {self.pages()}"

    def gallery(self) -> list[tuple[str, str]]:
        ds = self.require()
        assert self.thumbs is not None
        return [
            (str(thumbnail(self.thumbs, ds.items[i].image)), ("✓ " if i in self.selection else "") + ds.items[i].rel)
            for i in self.page_ids()
        ]

    def toggle_selected(self) -> str:
        if self.current is None:
            raise ForgeError("click an image first")
        self.selection ^= {self.current}
        return f"{len(self.selection)} image(s) selected"

    def select_shown(self) -> str:
        self.require()
        self.selection |= set(self.view)
        return f"{len(self.selection)} image(s) selected"

    def clear_selection(self) -> str:
        self.selection = set()
        return "selection cleared"

    def show_selection(self) -> str:
        self.require()
        if not self.selection:
            raise ForgeError("no image selected yet: click an image, then Select / unselect")
        self.view, self.page = sorted(self.selection), 0
        self.current = self.view[0]
        return f"showing the {len(self.view)} selected image(s)"

    def select_on_page(self, index: int) -> None:
        ids = self.page_ids()
        if 0 <= index < len(ids):
            self.current = ids[index]

    def step(self, delta: int) -> bool:
        """Previous/next image within the view; returns True when the page changed."""
        if not self.view:
            return False
        pos = self.view.index(self.current) + delta if self.current in self.view else 0
        pos = min(max(0, pos), len(self.view) - 1)
        self.current = self.view[pos]
        old_page, self.page = self.page, pos // PAGE_SIZE
        return old_page != self.page

    def current_view(self) -> tuple[str, str, str | None]:
        """(label, caption text, preview image path) of the current image."""
        if self.ds is None or self.current is None:
            return "no image selected", "", None
        ds, i = self.ds, self.current
        assert self.thumbs is not None
        pos = self.view.index(i) + 1 if i in self.view else 0
        label = f"{ds.items[i].rel} ({pos} / {len(self.view)})" if pos else ds.items[i].rel
        if ds.disk_text[i] is None:
            label += " (no caption file yet)"
        return label, ds.caption(i), str(thumbnail(self.thumbs, ds.items[i].image, PREVIEW_SIZE))

    # ------------------------------------------------------------------ edits

    def keep_typed(self, text: str | None) -> str:
        """Before moving to another image, apply what the user typed into the caption box, so a
        caption is never lost by clicking the next image without pressing Apply (DTE does the same)."""
        if self.ds is None or self.current is None or text is None:
            return ""
        if tuple(split_tags(text)) == self.ds.tags[self.current]:
            return ""
        return self.edit_current(text)

    def edit_current(self, text: str) -> str:
        ds = self.require()
        if self.current is None:
            raise ForgeError("select an image first")
        edit = ds.plan_caption(self.current, text)
        if not edit:
            return "caption unchanged"
        ds.apply(edit)
        self.pending = None
        return f"caption of {ds.items[self.current].rel} changed (not saved yet)"

    def _scope_ids(self, scope: str) -> list[int]:
        ds = self.require()
        if scope == "Current image":
            if self.current is None:
                raise ForgeError("select an image first")
            return [self.current]
        if scope == "All images":
            return list(range(len(ds)))
        if scope == "Selected images":
            if not self.selection:
                raise ForgeError("no image selected yet: click an image, then Select / unselect")
            return sorted(self.selection)
        return list(self.view)

    def preview(self, operation: str, tags: str, replacement: str, position: str, regex_scope: str, scope: str):
        """Plan a batch edit and keep it for Apply; returns the Preview (count + before/after samples)."""
        ds = self.require()
        if operation not in OPERATIONS:
            raise ForgeError(f"choose an operation ({', '.join(OPERATIONS)})")
        name, fixed = OPERATIONS[operation]
        pos: str | int = (position or "back").strip().lower()
        if pos not in ("front", "back"):
            try:
                pos = int(pos)
            except ValueError:
                raise ForgeError("position must be front, back or a number (0 = first)") from None
        op, label = build_op(
            name,
            tags=tags,
            old=tags,
            new=replacement,
            pattern=tags,
            repl=replacement,
            scope=regex_scope,
            position=pos,
            counts=ds.counts(),
            **fixed,
        )
        ids = self._scope_ids(scope)
        self.pending = ds.plan(ids, op, f"{label} on {scope.lower()}")
        self.pending_preview = ds.preview(self.pending, considered=len(ids))
        return self.pending_preview

    def apply_pending(self) -> str:
        ds = self.require()
        if self.pending is None:
            raise ForgeError("preview an edit first; Apply runs the edit you previewed")
        edit, self.pending = self.pending, None
        n = ds.apply(edit)
        return f"{edit.label}: {n} caption(s) changed (not saved yet)"

    def undo(self) -> str:
        edit = self.require().undo()
        self.pending = None
        return f"undone: {edit.label}" if edit else "nothing to undo"

    def redo(self) -> str:
        edit = self.require().redo()
        self.pending = None
        return f"redone: {edit.label}" if edit else "nothing to redo"

    def set_trigger(self, word: str) -> str:
        ds = self.require()
        words = parse_tag_list(word)
        if len(words) > 1:
            raise ForgeError("the trigger word is one tag (no commas)")
        ds.trigger = words[0] if words else None
        return f"trigger word: {ds.trigger}" if ds.trigger else "no trigger word"

    def add_trigger(self, word: str) -> str:
        ds = self.require()
        self.set_trigger(word)
        if not ds.trigger:
            raise ForgeError("type the trigger word first")
        edit = ds.plan(range(len(ds)), *build_op("add", tags=ds.trigger, position="front"))
        ds.apply(edit)
        self.pending = None
        return f"trigger word {ds.trigger!r} first in {len(edit)} more caption(s) (not saved yet)"

    # ------------------------------------------------------------------ saving and history

    def save(self) -> str:
        written, entry = self.require().save(reason="tag editor")
        if entry is None:
            return "nothing to save"
        return f"saved {written} caption file(s); history {entry.id}"

    def history_choices(self) -> list[str]:
        if self.ds is None:
            return []
        return [
            f"{e.id} · {e.reason} · {len(e.files)} file(s)" + ("" if e.state == "done" else f" · {e.state}")
            for e in captions.list_history(self.ds.root)
        ]

    def rollback(self, choice: str) -> str:
        ds = self.require()
        if not choice:
            raise ForgeError("choose a saved edit in the history list")
        if ds.dirty():
            raise ForgeError("save or undo your unsaved edits before rolling back")
        entry_id = choice.split(" · ", 1)[0]
        entry = captions.rollback(ds.root, entry_id)
        filters, current, trigger = self.filters, self.current, ds.trigger
        self._open(ds.root)  # the files changed under us: reload, keep what the user was looking at
        self.set_filter(*(", ".join(f) for f in filters))
        self.require().trigger = trigger
        if current is not None and current < len(self.require()):
            self.current = current
        return f"rolled back {entry_id}: {len(entry.files) if entry else 0} caption file(s) restored"

    # ------------------------------------------------------------------ tag list

    def tag_rows(self, search: str = "", sort: str = "count") -> list[list]:
        if self.ds is None:
            return []
        rows = tag_table(self.ds, sort=sort, search=search, translations=self.translations, limit=TAG_ROWS)
        return [[tag, count, tr] for tag, count, tr in rows]

    def current_tags(self) -> list[list]:
        if self.ds is None or self.current is None:
            return []
        counts = self.ds.counts()
        return [[t, counts.get(t, 0), translate(t, self.translations)] for t in self.ds.tags[self.current]]


def preview_rows(preview: Preview) -> list[list[str]]:
    return [[name, before, after] for name, before, after in preview.samples]


def preview_text(preview: Preview) -> str:
    if not preview.changed:
        return f"{preview.label}: no caption would change (of {preview.considered})"
    return (
        f"{preview.label}: {preview.changed} of {preview.considered} caption(s) would change; "
        "press Apply to make the change"
    )
