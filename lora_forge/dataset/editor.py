"""The tag editor's model: a loaded dataset (image → tags), a tag index, previewable edits, undo/redo.

The UI and the CLI are thin faces over this. A batch edit is planned first (`plan`): that gives an
`Edit` holding only the captions that change, with before/after, which is what the preview shows;
`apply` commits it and pushes it on the undo stack. Nothing touches the disk until `save`, which
writes only the captions that differ from the disk through `captions.save_captions` (atomic files,
history folder, refusal when another tool changed a file meanwhile).

Speed on thousands of images comes from the index `tag → set of image ids`: counts are set sizes,
filters are set algebra, and an edit updates the index only for the captions it changes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lora_forge.dataset import captions
from lora_forge.dataset.captions import STATE_DIR, join_tags, read_caption, split_tags
from lora_forge.dataset.editor_ops import Op, Tags, trigger_first
from lora_forge.dataset.lock import tidy
from lora_forge.errors import ForgeError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".jfif", ".avif", ".tif", ".tiff"})
SAMPLE_SIZE = 8
UNDO_LIMIT = 200  # each step holds only the changed captions, so this stays small even at 5,000 images


@dataclass(frozen=True)
class Item:
    """One image and its caption file, both named relative to the dataset root (strings, not
    Paths, because building 10,000 Path objects was a third of the load time)."""

    id: int
    root: Path
    rel: str  # image, relative, with forward slashes: what the gallery shows
    caption_rel: str

    @property
    def image(self) -> Path:
        return self.root / self.rel

    @property
    def caption(self) -> Path:
        return self.root / self.caption_rel


@dataclass
class Edit:
    """The captions one action changes: id → (tags before, tags after). Only real changes are kept."""

    label: str
    changes: dict[int, tuple[Tags, Tags]]
    version: int  # the dataset version it was planned on; applying it later is refused

    def __len__(self) -> int:
        return len(self.changes)


@dataclass
class Preview:
    label: str
    changed: int
    considered: int
    samples: list[tuple[str, str, str]]  # (image, before, after)


@dataclass
class LoadReport:
    images: int = 0
    captioned: int = 0
    orphans: list[str] = field(default_factory=list)  # caption files without an image, left alone
    skipped: list[str] = field(default_factory=list)  # images sharing a caption with another image
    unreadable: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = [f"{self.images} images, {self.captioned} with a caption"]
        if self.orphans:
            out.append(f"{len(self.orphans)} caption file(s) have no image and are left alone: {_few(self.orphans)}")
        if self.skipped:
            out.append(
                f"{len(self.skipped)} image(s) share a caption file with another image of the same name and are "
                f"not shown (rename them): {_few(self.skipped)}"
            )
        if self.unreadable:
            out.append(
                f"{len(self.unreadable)} caption file(s) could not be read and are not shown: {_few(self.unreadable)}"
            )
        return out


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (" …" if len(names) > n else "")


def _natural_key(rel: str) -> list:
    return [int(p) if p.isdigit() else p.casefold() for p in re.split(r"(\d+)", rel)]


def scan(root: Path, recursive: bool = True) -> tuple[list[str], dict[str, str]]:
    """Images (relative paths) and caption files (relative path without extension → relative path)
    under root, skipping hidden entries (our `.lora_forge`, temp files of interrupted writes, `.git`).
    One os.scandir pass per folder, no stat calls."""
    images: list[str] = []
    texts: dict[str, str] = {}
    stack = [(str(root), "")]
    seen: set[tuple[int, int]] = set()  # folders by (device, inode): a link back up is listed once
    with contextlib.suppress(OSError):
        st = os.stat(root)
        seen.add((st.st_dev, st.st_ino))
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError as e:
            raise ForgeError("the dataset folder does not exist; check the path", path=folder) from e
        except NotADirectoryError as e:
            raise ForgeError("this is a file, not a folder; give the folder of the images", path=folder) from e
        except PermissionError as e:
            raise ForgeError("cannot list this folder; check its permissions", path=folder) from e
        for e in entries:
            if e.name.startswith("."):
                continue
            if _is_dir(e):
                if recursive and e.name != STATE_DIR and _first_visit(e, seen):
                    stack.append((e.path, f"{prefix}{e.name}/"))
                continue
            if not _is_file(e):  # a named pipe would block the first read for ever; a looping link
                continue
            stem, ext = os.path.splitext(e.name)
            ext = ext.lower()
            if ext in IMAGE_EXTS:
                images.append(prefix + e.name)
            elif ext == captions.CAPTION_EXT:
                texts[prefix + stem] = prefix + e.name  # IMG.TXT pairs with IMG.PNG too
    return images, texts


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link that loops
        return False


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file (links followed); no stat call for plain files (DirEntry's type)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _first_visit(entry: os.DirEntry, seen: set[tuple[int, int]]) -> bool:
    """False for a folder already listed: a link to a parent ("self -> .") would never end."""
    try:
        st = entry.stat()
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


class Dataset:
    """One dataset as the editor holds it. Ids are positions in `items` and never change."""

    def __init__(self, root: Path, items: list[Item], texts: list[str | None], report: LoadReport) -> None:
        self.root = root
        self.items = items
        self.report = report
        self.disk_text = list(texts)  # what the caption files held when loaded / last saved
        self.disk_tags: list[Tags] = [tuple(split_tags(t)) for t in texts]
        self.tags: list[Tags] = list(self.disk_tags)
        self.index: dict[str, set[int]] = {}
        for i, tags in enumerate(self.tags):
            for t in tags:
                self.index.setdefault(t, set()).add(i)
        self.trigger: str | None = None
        self.version = 0
        self.undo_stack: list[Edit] = []
        self.redo_stack: list[Edit] = []

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, root: str | os.PathLike[str], recursive: bool = True) -> Dataset:
        root = Path(root).expanduser()
        if not str(root).strip() or not root.exists():
            raise ForgeError("the dataset folder does not exist; check the path", path=root)
        tidy(root)  # temp files of a save that was killed half-way
        images, texts = scan(root, recursive)
        images.sort(key=_natural_key)
        report = LoadReport()
        items: list[Item] = []
        loaded: list[str | None] = []
        claimed: set[str] = set()
        for rel in images:
            stem = os.path.splitext(rel)[0]
            if stem in claimed:
                report.skipped.append(rel)
                continue
            claimed.add(stem)
            cap_rel = texts.get(stem)
            text = None
            if cap_rel is not None:
                try:
                    text = read_caption(root / cap_rel)
                except ForgeError as e:
                    report.unreadable.append(f"{cap_rel} ({e})")
                    continue
            items.append(Item(len(items), root, rel, cap_rel or stem + captions.CAPTION_EXT))
            loaded.append(text)
        report.orphans = sorted(rel for stem, rel in texts.items() if stem not in claimed)
        report.images = len(items)
        report.captioned = sum(t is not None for t in loaded)
        return cls(root, items, loaded, report)

    # ------------------------------------------------------------------ looking

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """How many images carry each tag (an image counts once even if the tag repeats)."""
        return {t: len(ids) for t, ids in self.index.items()}

    def having(self, tag: str) -> set[int]:
        return set(self.index.get(tag, ()))

    def filter(self, all_of: Iterable[str] = (), any_of: Iterable[str] = (), none_of: Iterable[str] = ()) -> list[int]:
        """Images with every tag of `all_of` (AND), at least one of `any_of` (OR) and none of
        `none_of` (NOT); empty groups do not restrict. Ids come back in gallery order."""
        all_of, any_of, none_of = list(all_of), list(any_of), list(none_of)
        if not (all_of or any_of or none_of):
            return list(range(len(self.items)))
        result: set[int] | None = None
        for t in sorted(all_of, key=lambda t: len(self.index.get(t, ()))):  # smallest set first
            result = self.having(t) if result is None else result & self.index.get(t, set())
            if not result:
                return []
        if any_of:
            union = set().union(*(self.index.get(t, set()) for t in any_of))
            result = union if result is None else result & union
        if result is None:
            result = set(range(len(self.items)))
        for t in none_of:
            result -= self.index.get(t, set())
        return sorted(result)

    def caption(self, i: int) -> str:
        return join_tags(self.tags[i])

    def dirty(self) -> list[int]:
        """Captions whose tags differ from the disk (an unchanged tag list is never rewritten, even if
        the file's spacing or separators differ from ours)."""
        return [i for i, (now, disk) in enumerate(zip(self.tags, self.disk_tags, strict=True)) if now != disk]

    # ------------------------------------------------------------------ editing

    def plan(self, ids: Iterable[int], op: Op, label: str) -> Edit:
        changes: dict[int, tuple[Tags, Tags]] = {}
        for i in ids:
            before = self.tags[i]
            after = trigger_first(op(before), self.trigger)
            if after != before:
                changes[i] = (before, after)
        return Edit(label, changes, self.version)

    def plan_caption(self, i: int, text: str) -> Edit:
        """The per-image edit: the user's text for one caption, parsed like a file."""
        return self.plan([i], lambda _t: tuple(split_tags(text)), f"edit {self.items[i].rel}")

    def preview(self, edit: Edit, considered: int, sample: int = SAMPLE_SIZE) -> Preview:
        samples = [
            (self.items[i].rel, join_tags(before), join_tags(after))
            for i, (before, after) in list(edit.changes.items())[:sample]
        ]
        return Preview(edit.label, len(edit), considered, samples)

    def apply(self, edit: Edit) -> int:
        if edit.version != self.version:
            raise ForgeError("the captions changed since this preview; preview the edit again")
        if not edit.changes:
            return 0
        for i, (_before, after) in edit.changes.items():
            self._set(i, after)
        self.undo_stack.append(edit)
        del self.undo_stack[:-UNDO_LIMIT]
        self.redo_stack.clear()
        self.version += 1
        return len(edit)

    def undo(self) -> Edit | None:
        if not self.undo_stack:
            return None
        edit = self.undo_stack.pop()
        for i, (before, _after) in edit.changes.items():
            self._set(i, before)
        self.redo_stack.append(edit)
        self.version += 1
        return edit

    def redo(self) -> Edit | None:
        if not self.redo_stack:
            return None
        edit = self.redo_stack.pop()
        for i, (_before, after) in edit.changes.items():
            self._set(i, after)
        self.undo_stack.append(edit)
        self.version += 1
        return edit

    def _set(self, i: int, new: Tags) -> None:
        old = self.tags[i]
        old_set, new_set = set(old), set(new)
        for t in old_set - new_set:
            ids = self.index[t]
            ids.discard(i)
            if not ids:
                del self.index[t]
        for t in new_set - old_set:
            self.index.setdefault(t, set()).add(i)
        self.tags[i] = new

    # ------------------------------------------------------------------ saving

    def save(self, reason: str = "tag editor") -> tuple[int, captions.HistoryEntry | None]:
        """Write the changed captions; returns (files written, history entry). An image that had no
        caption file and still has no tags gets none; one whose tags were all removed gets an
        empty file, so that "no tags" stays distinguishable from "never tagged"."""
        ids = self.dirty()
        if not ids:
            return 0, None
        saved = {i: self.tags[i] for i in ids}
        changes = {self.items[i].caption: join_tags(tags) for i, tags in saved.items()}
        expected = {self.items[i].caption: self.disk_text[i] for i in ids}
        entry = captions.save_captions(changes, self.root, reason, expected=expected)
        for i, tags in saved.items():  # what was written, even if an edit landed meanwhile
            self.disk_text[i] = join_tags(tags)
            self.disk_tags[i] = tags
        return (len(entry.files) if entry else 0), entry


def tag_table(
    ds: Dataset,
    sort: str = "count",
    search: str = "",
    translations: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> list[tuple[str, int, str]]:
    """(tag, images with it, translation) for the tag list; search matches the tag or its translation."""
    tr = translations or {}
    needle = search.strip().casefold()
    rows = []
    for tag, ids in ds.index.items():
        t = translate(tag, tr)
        if needle and needle not in tag.casefold() and needle not in t.casefold():
            continue
        rows.append((tag, len(ids), t))
    if sort == "count":
        rows.sort(key=lambda r: (-r[1], r[0].casefold()))
    elif sort == "name":
        rows.sort(key=lambda r: (r[0].casefold(), r[0]))
    elif sort == "length":
        rows.sort(key=lambda r: (len(r[0]), r[0].casefold()))
    else:
        raise ForgeError(f"unknown sort {sort!r}; use count, name or length")
    return rows[:limit] if limit else rows


def translate(tag: str, translations: Mapping[str, str]) -> str:
    """Dictionaries are keyed either way (`long_hair` or `long hair`); try both."""
    return (
        translations.get(tag)
        or translations.get(tag.replace(" ", "_"))
        or translations.get(tag.replace("_", " "))
        or ""
    )


def load_translations(path: str | os.PathLike[str]) -> dict[str, str]:
    """A `tag,translation` CSV the user provides (UTF-8 or GBK). Extra columns are ignored, so the
    tag-autocomplete extension's CSV files work too; a header row is harmless."""
    import csv
    import io

    p = Path(path).expanduser()
    if not p.is_file():
        raise ForgeError("translation file not found; give a tag,translation CSV file", path=p)
    from lora_forge.fsio import read_text

    table: dict[str, str] = {}
    for row in csv.reader(io.StringIO(read_text(p))):
        if len(row) >= 2 and row[0].strip() and row[1].strip():
            table.setdefault(row[0].strip(), row[1].strip())
    if not table:
        raise ForgeError("no `tag,translation` rows found in the translation file", path=p)
    return table
