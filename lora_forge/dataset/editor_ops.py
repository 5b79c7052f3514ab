"""Tag operations as pure functions: a tuple of tags in, a new tuple out.

The editor maps one of these over the chosen images to build a previewable, undoable Edit; the
functions themselves know nothing about files, images or history, so each is tested on its own.
Every operation keeps the first occurrence's position and never duplicates a tag it adds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from lora_forge.dataset.captions import join_tags, split_tags
from lora_forge.errors import ForgeError

Tags = tuple[str, ...]
Op = Callable[[Tags], Tags]

POSITIONS = ("front", "back")
REGEX_SCOPES = ("tag", "caption")
SORT_KEYS = ("name", "count", "length")


def parse_tag_list(text: str | Iterable[str]) -> list[str]:
    """What the user typed in a "tags" box (comma separated) or passed as a list, deduplicated."""
    items = split_tags(text) if isinstance(text, str) else [t for s in text for t in split_tags(s)]
    return list(dict.fromkeys(items))


def dedupe(tags: Tags) -> Tags:
    return tuple(dict.fromkeys(tags))


def add_tags(tags: Tags, new: Iterable[str], position: str | int = "back") -> Tags:
    """Insert the tags that are not there yet, at the front, the back or before index `position`."""
    missing = [t for t in dict.fromkeys(new) if t not in tags]
    if not missing:
        return tags
    if position == "front":
        at = 0
    elif position == "back":
        at = len(tags)
    elif isinstance(position, int):
        at = max(0, min(len(tags), position))
    else:
        raise ForgeError(f"unknown position {position!r}; use front, back or a number")
    return (*tags[:at], *missing, *tags[at:])


def remove_tags(tags: Tags, remove: Iterable[str]) -> Tags:
    gone = set(remove)
    return tuple(t for t in tags if t not in gone)


def replace_tag(tags: Tags, old: str, new: str | Iterable[str]) -> Tags:
    """`old` → `new` in place; `new` may be several tags ("a, b") or none (delete).

    Replacing a tag with itself changes nothing (BDTM #100 deleted it). A replacement the caption
    already has elsewhere is not inserted again; other tags, even repeated ones, are left as they are.
    """
    if old not in tags:
        return tags
    repl = parse_tag_list(new)
    if repl == [old]:
        return tags
    return _splice(tags, {old: repl})


def _splice(tags: Tags, replacements: Mapping[str, list[str]]) -> Tags:
    """Swap each tag that has an entry for its replacement pieces, skipping pieces that would
    duplicate a tag the caption keeps or a piece already placed."""
    kept = {t for t in tags if t not in replacements}
    out: list[str] = []
    placed: set[str] = set()
    for t in tags:
        if t not in replacements:
            out.append(t)
            continue
        for piece in replacements[t]:
            if piece not in kept and piece not in placed:
                out.append(piece)
                placed.add(piece)
    return tuple(out)


def move_to_front(tags: Tags, front: Iterable[str]) -> Tags:
    """The named tags that the caption has go first, once each, in the order given; the rest keep
    their order."""
    first = [t for t in dict.fromkeys(front) if t in tags]
    return (*first, *(t for t in tags if t not in first))


def sort_tags(tags: Tags, key: str = "name", counts: Mapping[str, int] | None = None) -> Tags:
    """Alphabetical, by how many images have the tag (most common first), or by length (shortest first)."""
    if key == "name":
        return tuple(sorted(tags, key=lambda t: (t.casefold(), t)))
    if key == "count":
        c = counts or {}
        return tuple(sorted(tags, key=lambda t: (-c.get(t, 0), t.casefold())))
    if key == "length":
        return tuple(sorted(tags, key=lambda t: (len(t), t.casefold())))
    raise ForgeError(f"unknown sort key {key!r}; use one of {', '.join(SORT_KEYS)}")


def compile_regex(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise ForgeError("the search pattern is empty; type what to search for")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ForgeError(f"the pattern {pattern!r} is not a valid regular expression ({e}); fix it") from e


def regex_replace(
    tags: Tags, pattern: re.Pattern[str], repl: str, scope: str = "tag", memo: dict[str, list[str] | None] | None = None
) -> Tags:
    """re.sub on each tag, or on the whole caption text; the result is re-split, so a replacement
    that yields "" deletes the tag and one that yields "a, b" makes two tags. Per tag, a result the
    caption already has is not added twice; on the whole caption the user gets exactly the text the
    expression makes. `memo` (tag → its pieces, None when unchanged) lets a batch compute each distinct
    tag once: 5,000 captions hold ~100,000 tags but only a few thousand different ones."""
    try:
        if scope == "tag":
            memo = {} if memo is None else memo
            changed = {}
            for t in tags:
                if t not in memo:
                    new = pattern.sub(repl, t)
                    memo[t] = None if new == t else split_tags(new)
                pieces = memo[t]
                if pieces is not None:
                    changed[t] = pieces
            return _splice(tags, changed) if changed else tags
        if scope == "caption":
            text = join_tags(tags)
            new_text = pattern.sub(repl, text)
            return tags if new_text == text else tuple(split_tags(new_text))
    except (re.error, IndexError) as e:  # a bad group reference in the replacement shows up only here
        raise ForgeError(f"the replacement {repl!r} does not fit the pattern ({e}); fix it") from e
    raise ForgeError(f"unknown regex scope {scope!r}; use 'tag' or 'caption'")


_LETTER_PAIR = re.compile(r"[^\W\d_]{2}")


def underscores_to_spaces(tags: Tags) -> Tags:
    """`long_hair` → `long hair` as WebUI prompts write it; kaomoji such as `^_^`, `o_o`, `>_<` keep
    their underscore (a tag without two letters in a row is taken for a face, not words)."""
    changed = {t: [t.replace("_", " ")] for t in tags if "_" in t and _LETTER_PAIR.search(t)}
    return _splice(tags, changed) if changed else tags


def trigger_first(tags: Tags, trigger: str | None) -> Tags:
    """The trigger word, when the caption has it, is the first tag: kohya's keep_tokens and caption
    shuffling rely on that position."""
    if not trigger or trigger not in tags or tags[0] == trigger:
        return tags
    return (trigger, *(t for t in tags if t != trigger))


def build_op(name: str, **kw) -> tuple[Op, str]:
    """A named operation with its arguments, checked once (e.g. the regex compiled), and a label
    for the undo list. Keeps the UI and the CLI from each re-implementing argument handling."""
    if name == "add":
        new = parse_tag_list(kw.get("tags", ""))
        if not new:
            raise ForgeError("type the tag(s) to add")
        position = kw.get("position", "back")
        return (lambda t: add_tags(t, new, position)), f"add {join_tags(new)} ({position})"
    if name == "remove":
        gone = parse_tag_list(kw.get("tags", ""))
        if not gone:
            raise ForgeError("type the tag(s) to remove")
        return (lambda t: remove_tags(t, gone)), f"remove {join_tags(gone)}"
    if name == "replace":
        old = split_tags(kw.get("old", ""))
        if len(old) != 1:
            raise ForgeError("type exactly one tag to replace (the replacement may be several, or empty to delete)")
        new = kw.get("new", "")
        return (lambda t: replace_tag(t, old[0], new)), f"replace {old[0]} → {new or '(nothing)'}"
    if name == "regex":
        pattern = compile_regex(kw.get("pattern", ""))
        repl, scope = kw.get("repl", ""), kw.get("scope", "tag")
        if scope not in REGEX_SCOPES:
            raise ForgeError(f"unknown regex scope {scope!r}; use 'tag' or 'caption'")
        try:
            pattern.sub(repl, "")  # checks the replacement's group references without needing a match
        except (re.error, IndexError) as e:
            raise ForgeError(f"the replacement {repl!r} does not fit the pattern ({e}); fix it") from e
        memo: dict[str, list[str] | None] = {}
        return (lambda t: regex_replace(t, pattern, repl, scope, memo)), f"regex {pattern.pattern} → {repl} ({scope})"
    if name == "front":
        front = parse_tag_list(kw.get("tags", ""))
        if not front:
            raise ForgeError("type the tag(s) to move to the front")
        return (lambda t: move_to_front(t, front)), f"move to front {join_tags(front)}"
    if name == "dedupe":
        return dedupe, "remove duplicate tags"
    if name == "sort":
        key, counts = kw.get("key", "name"), kw.get("counts")
        if key not in SORT_KEYS:
            raise ForgeError(f"unknown sort key {key!r}; use one of {', '.join(SORT_KEYS)}")
        return (lambda t: sort_tags(t, key, counts)), f"sort tags by {key}"
    if name == "underscores":
        return underscores_to_spaces, "underscores → spaces"
    raise ForgeError(f"unknown operation {name!r}")
