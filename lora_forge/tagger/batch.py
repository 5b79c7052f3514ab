"""Caption a whole folder: decode ahead of the model, run it in batches, merge, save safely.

Hand-edited captions are the user's work (kawalain#67: "It zapped all my hard work"): an image that
already has a caption is left alone unless the user chose overwrite/append/prepend, and every
caption we change goes through dataset.captions.save_captions, which keeps the old text in the
dataset's history folder so the run can be rolled back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lora_forge import fsio
from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress
from lora_forge.tagger import preprocess
from lora_forge.tagger.labels import CaptionOptions, Prediction, Thresholds, caption_tags, match_key, predict
from lora_forge.tagger.registry import ModelFiles
from lora_forge.tagger.session import TaggerSession

log = logging.getLogger(__name__)

EXISTING_ACTIONS = ("skip", "overwrite", "append", "prepend")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
JSON_SUFFIX = ".wd14.json"
# Captions per history entry: a usual dataset (20-50 images) is one undo step; a long run still
# keeps what it finished if it is interrupted.
SAVE_EVERY = 64


@dataclass(frozen=True)
class TagOptions:
    thresholds: Thresholds = field(default_factory=Thresholds)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    existing: str = "skip"
    save_json: bool = False
    batch_size: int = 4  # for graphs with a dynamic batch dimension; fixed-batch graphs get theirs
    workers: int = 2  # decoding threads running ahead of the model

    def __post_init__(self) -> None:
        if self.existing not in EXISTING_ACTIONS:
            raise ForgeError(f"existing-caption action must be one of {', '.join(EXISTING_ACTIONS)}")
        for label, value in (("general", self.thresholds.general), ("character", self.thresholds.character)):
            if not 0.0 <= value <= 1.0:
                raise ForgeError(f"the {label} threshold {value} is not between 0 and 1")


@dataclass
class ImageResult:
    image: Path
    status: str  # "written" | "unchanged" | "kept" (had a caption, skip) | "failed"
    caption: str | None = None  # the caption file's text after the run
    tags: list[tuple[str, float]] = field(default_factory=list)  # kept tags with probabilities
    rating: tuple[str, float] | None = None
    message: str = ""
    untagged: bool = False  # the model ran and no tag passed the thresholds (the caption is empty or the trigger)


@dataclass
class TagReport:
    model: str
    provider: str
    input_size: int
    batch_size: int
    results: list[ImageResult]
    seconds: float
    history_ids: list[str] = field(default_factory=list)
    stopped: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("written", "unchanged", "kept", "failed") if self.count(s)]
        tail = " (stopped)" if self.stopped else ""
        head = (
            f"{len(self.results)} images in {self.seconds:.1f}s on {self.provider}: {', '.join(parts) or 'nothing'}"
            f"{tail}"
        )
        # Said aloud because their caption file is (nearly) empty: a lower threshold may be wanted.
        untagged = sum(r.untagged for r in self.results)
        note = f"{untagged} images had no tag above the threshold"
        return "; ".join([head, note]) if untagged else head


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ForgeError("no such folder; give the folder of prepared images", path=folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def merge_caption(new_tags: list[str], existing: str | None, action: str, trigger: str = "") -> str | None:
    """The caption text to write, or None to leave the file as it is.

    No new tags still gives a text ("" or the trigger alone): every image gets its caption file, so
    training never takes a tagged image for an untagged one."""
    from lora_forge.dataset.captions import join_tags, split_tags

    if existing is not None and action == "skip":
        return None
    if existing is None or action == "overwrite":
        tags = list(new_tags)
    else:
        old = split_tags(existing)
        tags = old + new_tags if action == "append" else new_tags + old
    trigger = trigger.strip()
    if trigger:
        tags = [trigger, *(t for t in tags if match_key(t) != match_key(trigger))]
    seen: set[str] = set()
    unique = []
    for t in tags:
        key = match_key(t)
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return join_tags(unique)


def _writable(path: Path) -> bool:
    if not path.exists():
        return os.access(path.parent, os.W_OK)
    return bool(path.stat().st_mode & stat.S_IWUSR) and os.access(path, os.W_OK)


def _prefetch(paths: list[Path], size: int, pool: ThreadPoolExecutor, ahead: int) -> Iterator[tuple[Path, Future]]:
    """Yield (path, future array) in order while the pool keeps `ahead` images decoding."""
    queue: deque[tuple[Path, Future]] = deque()
    it = iter(paths)
    for p in it:
        queue.append((p, pool.submit(preprocess.load, p, size)))
        if len(queue) >= ahead:
            break
    while queue:
        yield queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(preprocess.load, nxt, size)))


def _json_record(pred: Prediction, probs: np.ndarray, names: list[str], model: str) -> str:
    order = np.argsort(-probs)
    every = {names[i]: round(float(probs[i]), 4) for i in order if probs[i] >= 0.05}
    record = {
        "model": model,
        "general_threshold": round(pred.general_threshold, 4),
        "character_threshold": round(pred.character_threshold, 4),
        "tags": dict(pred.tags),
        "confidences": every,
    }
    return json.dumps(record, ensure_ascii=False, indent=1)


class _CaptionWriter:
    """Collects caption changes and saves them in groups; a file that cannot be saved fails alone."""

    def __init__(self, root: Path, reason: str) -> None:
        self.root = root
        self.reason = reason
        self.pending: dict[Path, tuple[str, ImageResult]] = {}
        self.history_ids: list[str] = []

    def add(self, caption_path: Path, text: str, result: ImageResult) -> None:
        if not _writable(caption_path):
            result.status = "failed"
            result.message = f"{caption_path.name} is read-only; make it writable and run again"
            return
        self.pending[caption_path] = (text, result)
        if len(self.pending) >= SAVE_EVERY:
            self.flush()

    def flush(self) -> None:
        from lora_forge.dataset.captions import save_captions

        if not self.pending:
            return
        groups = [self.pending]
        try:
            self._save(save_captions, self.pending)
        except ForgeError:
            # Something the checks above could not see: save one by one so the others still land.
            groups = [{p: v} for p, v in self.pending.items()]
            for g in groups:
                try:
                    self._save(save_captions, g)
                except ForgeError as e:
                    (_text, result) = next(iter(g.values()))
                    result.status = "failed"
                    result.message = str(e)
        self.pending = {}

    def _save(self, save_captions, group: dict[Path, tuple[str, ImageResult]]) -> None:
        entry = save_captions({p: text for p, (text, _r) in group.items()}, self.root, self.reason)
        if entry is not None:
            self.history_ids.append(entry.id)
        changed = {self.root / f.path for f in entry.files} if entry else set()
        for p, (text, result) in group.items():
            result.caption = text
            result.status = "written" if any(p.resolve() == c.resolve() for c in changed) else "unchanged"


def tag_folder(
    folder: Path,
    files: ModelFiles,
    options: TagOptions | None = None,
    progress: ProgressFn = no_progress,
    stop: StopFlag | None = None,
    session: TaggerSession | None = None,
) -> TagReport:
    """Caption every image of `folder` (not its sub-folders). The session is released at the end
    unless the caller passed its own.

    The run holds the dataset's write lock (dataset/lock.py) from reading the old captions to saving
    the new ones, so an edit saved meanwhile from the tab or `tags` waits instead of being
    overwritten with a merge of what was there before it."""
    from lora_forge.dataset.lock import dataset_lock

    folder = Path(folder)
    with dataset_lock(folder) if folder.is_dir() else contextlib.nullcontext():
        return _tag_folder(folder, files, options, progress, stop, session)


def _tag_folder(
    folder: Path,
    files: ModelFiles,
    options: TagOptions | None,
    progress: ProgressFn,
    stop: StopFlag | None,
    session: TaggerSession | None,
) -> TagReport:
    from lora_forge.dataset.captions import caption_path_for, read_caption

    options = options or TagOptions()
    t0 = time.perf_counter()
    folder = Path(folder)
    images = list_images(folder)
    results: dict[Path, ImageResult] = {}
    todo: list[Path] = []
    existing: dict[Path, str | None] = {}
    owner: dict[Path, Path] = {}
    for img in images:
        cap = caption_path_for(img)
        if cap in owner:  # a.png and a.jpg: one caption file cannot describe both
            msg = f"shares the caption file {cap.name} with {owner[cap].name}; rename one of them"
            results[img] = ImageResult(img, "failed", message=msg)
            continue
        owner[cap] = img
        try:
            text = read_caption(cap)
        except ForgeError as e:
            results[img] = ImageResult(img, "failed", message=str(e))
            continue
        if text is not None and options.existing == "skip":
            results[img] = ImageResult(img, "kept", caption=text, message="has a caption (skip)")
            continue
        existing[img] = text
        todo.append(img)

    own = session is None
    if todo and session is None:
        session = TaggerSession(files)
    provider = session.provider_label if session else "not needed"
    size = session.graph.size if session else 0
    batch_size = 0
    if session is not None:
        # Parallel CPU runners each take one image: batching buys nothing there and would leave a
        # runner idle at the end of a small dataset.
        batch_size = session.batch_limit or (1 if session.parallel_runs > 1 else max(1, options.batch_size))
    writer = _CaptionWriter(folder, f"WD14 tagger {files.name} ({options.existing})")
    done = len(results)
    total = len(images)
    progress(Progress(done, total, f"tagging on {provider}", data={"provider": provider}))

    def finish(batch: list[tuple[Path, np.ndarray]], running: Future) -> None:
        nonlocal done
        assert session is not None
        probs = running.result()
        for (img, _a), row in zip(batch, probs, strict=True):
            pred = predict(row, session.tags, options.thresholds)
            result = ImageResult(img, "unchanged", tags=pred.tags, rating=pred.rating, untagged=not pred.tags)
            results[img] = result
            new_tags = caption_tags(pred, options.caption)
            text = merge_caption(new_tags, existing[img], options.existing, options.caption.trigger)
            result.caption = existing[img]  # until the new text is safely on disk
            if text is not None:
                writer.add(caption_path_for(img), text, result)
            if options.save_json:
                record = _json_record(pred, row, session.tags.names, files.name)
                try:
                    fsio.atomic_write_text(img.with_name(img.stem + JSON_SUFFIX), record)
                except (OSError, ForgeError) as e:
                    log.warning("could not write the confidences of %s: %s", img.name, e)
            done += 1
            progress(Progress(done, total, img.name, data={"provider": provider}))

    stopped = False
    runs = session.parallel_runs if session else 1
    pool = ThreadPoolExecutor(max(1, options.workers), thread_name_prefix="lf-tagger-decode")
    runner = ThreadPoolExecutor(runs, thread_name_prefix="lf-tagger-run")
    inflight: deque[tuple[list[tuple[Path, np.ndarray]], Future]] = deque()

    def launch(batch: list[tuple[Path, np.ndarray]]) -> None:
        assert session is not None
        inflight.append((batch, runner.submit(session.run, np.stack([a for _p, a in batch]))))
        while len(inflight) > runs + 1:  # every runner busy plus one batch waiting, no more
            finish(*inflight.popleft())

    try:
        batch: list[tuple[Path, np.ndarray]] = []
        for img, fut in _prefetch(todo, size, pool, ahead=batch_size * (runs + 2) + options.workers):
            if stop is not None and stop.requested:
                stopped = True
                break
            try:
                batch.append((img, fut.result()))
            except ForgeError as e:
                results[img] = ImageResult(img, "failed", message=str(e))
                done += 1
                progress(Progress(done, total, f"{img.name}: unreadable", data={"provider": provider}))
                continue
            if len(batch) >= batch_size:
                launch(batch)
                batch = []
        if batch and not stopped:
            launch(batch)
        while inflight:
            finish(*inflight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        runner.shutdown(wait=True, cancel_futures=True)
        writer.flush()
        if own and session is not None:
            session.close()
    ordered = [results[i] for i in images if i in results]
    return TagReport(
        files.name, provider, size, batch_size, ordered, time.perf_counter() - t0, writer.history_ids, stopped
    )
