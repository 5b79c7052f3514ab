"""Selftest stage for the tag editor: edit real captions, save, roll back through the history.

It works on the captions the tagger stage wrote (ctx.shared["dataset_dir"]) when there are any,
else on a small synthetic dataset, and leaves the captions byte-for-byte as it found them, so
later stages train on what the tagger produced.
"""

from __future__ import annotations

from pathlib import Path

from lora_forge.dataset.captions import list_history, rollback
from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.editor_ops import build_op

TRIGGER = "lfselftest"


def _synthetic(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    captions = ["1girl, solo, smile", "1girl, long hair, smile", "landscape, sky", None]
    for n, text in enumerate(captions):
        Image.new("RGB", (8, 8), (40 * n, 90, 160)).save(folder / f"img{n}.png")
        if text is not None:
            (folder / f"img{n}.txt").write_text(text, encoding="utf-8")
    return folder


def _snapshot(ds: Dataset) -> dict[Path, bytes | None]:
    return {it.caption: it.caption.read_bytes() if it.caption.exists() else None for it in ds.items}


def selftest(ctx) -> str:
    shared_dir = ctx.shared.get("dataset_dir")
    folder = Path(shared_dir) if shared_dir and Path(shared_dir).is_dir() else _synthetic(ctx.out / "editor_dataset")
    ds = Dataset.load(folder)
    if not len(ds):
        raise AssertionError(f"no images found in {folder}")
    before = _snapshot(ds)
    counts = ds.counts()
    victim = max(counts, key=lambda t: (counts[t], t)) if counts else None
    ds.trigger = TRIGGER
    everyone = range(len(ds))
    ds.apply(ds.plan(everyone, *build_op("add", tags=TRIGGER, position="front")))
    if victim:
        with_victim = ds.filter(all_of=[victim])
        edit = ds.plan(with_victim, *build_op("remove", tags=victim))
        assert len(edit) == len(with_victim), "remove did not reach every image that had the tag"
        ds.apply(edit)
    assert ds.undo() is not None and ds.redo() is not None
    written, entry = ds.save(reason="selftest")
    assert entry is not None and written == len(ds)

    reloaded = Dataset.load(folder)
    assert all(tags and tags[0] == TRIGGER for tags in reloaded.tags), "trigger word is not first on disk"
    assert not victim or not reloaded.filter(all_of=[victim]), f"{victim!r} still on disk"
    assert list_history(folder)[0].id == entry.id

    rollback(folder, entry.id)
    after = _snapshot(Dataset.load(folder))
    assert after == before, "rollback did not restore the captions byte for byte"
    ctx.log(f"{folder}: {len(ds)} images, trigger added, {victim!r} removed, saved, rolled back")
    return f"{len(ds)} captions edited, saved ({written} files) and rolled back byte-identical"
