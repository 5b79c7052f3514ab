"""Probabilities → caption tags: the tag list, thresholds, MCut, and the written form of a tag.

Rules from dataset-tools.md A2/A4: a tag is kept when its probability is strictly above the
threshold; underscores become spaces except in kaomoji (`^_^` would turn into a different face);
parentheses are escaped after that replacement because the WebUI reads `(` `)` as emphasis; user
lists (excludes) are matched on the form the user sees, not on the CSV spelling.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_forge.errors import ForgeError

RATING, GENERAL, CHARACTER = 9, 0, 4
CHARACTER_MCUT_FLOOR = 0.15

KAOMOJI = frozenset(
    [
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    ]
)

_SPECIAL = re.compile(r"([\\()])")
_UNESCAPE = re.compile(r"\\([\\()])")


@dataclass(frozen=True)
class TagList:
    """selected_tags.csv: names and categories, row i ↔ output i."""

    names: list[str]
    categories: np.ndarray  # int per row

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.categories == category)


def load_tags(path: Path) -> TagList:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ForgeError(f"cannot read the tag list ({e}); download selected_tags.csv again", path=path) from e
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ForgeError("not a WD14 selected_tags.csv (needs the columns name and category)", path=path)
    try:
        categories = np.array([int(r["category"]) for r in rows])
    except (TypeError, ValueError) as e:
        raise ForgeError(f"a category in the tag list is not a number ({e}); download it again", path=path) from e
    return TagList([r["name"] for r in rows], categories)


def visible_form(name: str) -> str:
    """What the user sees and types: spaces instead of underscores, kaomoji kept as they are."""
    return name if name in KAOMOJI else name.replace("_", " ")


def escape(tag: str) -> str:
    return _SPECIAL.sub(r"\\\1", tag)


def match_key(tag: str) -> str:
    """One key for the spellings of a tag a user may meet (`Long_Hair`, `long hair`, `star \\(symbol\\)`)."""
    return visible_form(_UNESCAPE.sub(r"\1", tag.strip())).lower()


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut (Largeron et al. 2012): the middle of the biggest gap between sorted probabilities."""
    if len(probs) < 2:
        return 0.0
    ordered = np.sort(probs.astype(np.float64))[::-1]
    gaps = ordered[:-1] - ordered[1:]
    t = int(gaps.argmax())
    return float(ordered[t] + ordered[t + 1]) / 2


@dataclass(frozen=True)
class Thresholds:
    general: float = 0.35
    character: float = 0.85
    mcut: bool = False


@dataclass(frozen=True)
class Prediction:
    """What the model said about one image: every kept tag with its probability, best first."""

    tags: list[tuple[str, float]]  # (CSV name, probability), sorted by probability descending
    rating: tuple[str, float] | None
    general_threshold: float
    character_threshold: float


def predict(probs: np.ndarray, tags: TagList, thresholds: Thresholds) -> Prediction:
    probs = probs.astype(np.float64)
    gen_idx, char_idx, rating_idx = tags.indices(GENERAL), tags.indices(CHARACTER), tags.indices(RATING)
    g_thr, c_thr = thresholds.general, thresholds.character
    if thresholds.mcut:
        g_thr = mcut_threshold(probs[gen_idx])
        c_thr = max(CHARACTER_MCUT_FLOOR, mcut_threshold(probs[char_idx]))
    kept = [i for i in gen_idx if probs[i] > g_thr] + [i for i in char_idx if probs[i] > c_thr]
    kept.sort(key=lambda i: (-probs[i], i))
    rating = None
    if len(rating_idx):
        best = rating_idx[int(probs[rating_idx].argmax())]
        rating = (tags.names[best], float(probs[best]))
    return Prediction([(tags.names[i], float(probs[i])) for i in kept], rating, g_thr, c_thr)


@dataclass(frozen=True)
class CaptionOptions:
    exclude: tuple[str, ...] = ()
    trigger: str = ""
    rating: bool = False
    escape: bool = True


def caption_tags(pred: Prediction, options: CaptionOptions) -> list[str]:
    """The tags to write, in order: trigger word, rating (if asked), then tags by confidence."""
    excluded = {match_key(t) for t in options.exclude if t.strip()}
    out: list[str] = []
    seen: set[str] = set()

    def add(tag: str) -> None:
        key = match_key(tag)
        if key and key not in seen and key not in excluded:
            seen.add(key)
            out.append(tag)

    trigger = options.trigger.strip()
    if trigger:
        out.append(trigger)  # the user's own word, written exactly as typed and never excluded
        seen.add(match_key(trigger))
    names = ([pred.rating[0]] if options.rating and pred.rating else []) + [n for n, _p in pred.tags]
    for name in names:
        tag = visible_form(name)
        add(escape(tag) if options.escape else tag)
    return out
