"""Tag editor on 5,000 captions: load, filter, batch replace, regex, undo, save, gallery page.

Baseline: reading the 5,000 caption files once with plain Python (open, read, decode), which any
editor must do at least once. Each editor step is reported in milliseconds and as a ratio to that
read. Rounds interleave baseline and editor steps; the figures are medians.

    python bench/tag_editor.py [--images 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_forge.dataset.editor import Dataset
from lora_forge.dataset.editor_ops import build_op
from lora_forge.dataset.editor_thumbs import cache_dir, thumbnail

VOCAB = 2000
TAGS_PER_IMAGE = 25
PAGE = 48


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    """Tags follow a Zipf-like law, as booru tags do: a few in most captions, a long tail."""
    from PIL import Image

    rng = random.Random(seed)
    vocab = ["1girl", "solo", "smile", "long hair", "sks"] + [f"tag {k}" for k in range(VOCAB - 5)]
    weights = [1 / (k + 1) for k in range(VOCAB)]
    for i in range(n):
        tags = list(dict.fromkeys(rng.choices(vocab, weights, k=TAGS_PER_IMAGE)))
        (root / f"{i:05d}.txt").write_text(", ".join(tags), encoding="utf-8")
        if i < PAGE:  # a real first gallery page; the editor never decodes the other images
            Image.new("RGB", (512, 768), (i * 5, 80, 160)).save(root / f"{i:05d}.png")
        else:
            (root / f"{i:05d}.png").write_bytes(b"\x89PNG not decoded by the editor")


def plain_read(root: Path) -> float:
    t0 = time.perf_counter()
    for p in sorted(root.glob("*.txt")):
        with open(p, encoding="utf-8") as f:
            f.read()
    return time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lf_bench_tags_") as tmp:
        root = Path(tmp)
        make_dataset(root, args.images)
        plain_read(root)  # warm the page cache for both sides
        rows: dict[str, list[float]] = {}

        def add(key: str, seconds: float) -> None:
            rows.setdefault(key, []).append(seconds)

        thumbs = cache_dir(root)
        for r in range(args.rounds):
            add("read", plain_read(root))
            dt, ds = timed(lambda: Dataset.load(root))
            add("load", dt)
            dt, ids = timed(
                lambda ds=ds: ds.filter(all_of=["1girl", "smile"], any_of=["long hair", "solo"], none_of=["tag 3"])
            )
            add("filter", dt)
            dt, _ = timed(lambda ds=ds: ds.counts())
            add("tag counts", dt)
            op, label = build_op("replace", old="smile", new="grin")
            dt, edit = timed(lambda ds=ds, op=op, label=label: ds.plan(range(len(ds)), op, label))
            dt2, _ = timed(lambda ds=ds, edit=edit: ds.apply(edit))
            add("replace all (plan+apply)", dt + dt2)
            op, label = build_op("regex", pattern=r"^tag (\d)(\d*)$", repl=r"t\1_\2", scope="tag")
            dt, edit2 = timed(lambda ds=ds, ids=ids, op=op, label=label: ds.plan(ids, op, label))
            dt2, _ = timed(lambda ds=ds, edit=edit2: ds.apply(edit))
            add("regex on filtered", dt + dt2)
            add("undo x2", timed(lambda ds=ds: (ds.undo(), ds.undo()))[0])
            op, label = build_op("remove", tags="long hair")
            ds.apply(ds.plan(ds.filter(all_of=["long hair"]), op, label))
            dt, (written, _) = timed(lambda ds=ds: ds.save(reason="bench"))
            add("save changed files", dt)
            ds.undo()
            ds.save(reason="bench undo")
            if r == 0:
                for p in thumbs.glob("*.jpg"):
                    p.unlink()
                add(
                    "gallery page cold",
                    timed(lambda ds=ds: [thumbnail(thumbs, ds.items[i].image) for i in range(PAGE)])[0],
                )
            add(
                "gallery page cached",
                timed(lambda ds=ds: [thumbnail(thumbs, ds.items[i].image) for i in range(PAGE)])[0],
            )

        med = {k: statistics.median(v) for k, v in rows.items()}
        base = med["read"]
        print(f"{args.images} captions, {TAGS_PER_IMAGE} tags each (vocabulary {VOCAB}); {args.rounds} rounds, medians")
        print(f"filtered set: {len(ids)} images; long-hair save wrote {written} files")
        for k, v in med.items():
            print(f"  {k:28} {v * 1000:9.1f} ms   {v / base:6.2f} x read")
        edit_ms = max(med["filter"], med["replace all (plan+apply)"], med["regex on filtered"], med["undo x2"])
        print(
            f"RESULT tag_editor images={args.images} read_ms={base * 1000:.1f} load_ms={med['load'] * 1000:.1f} "
            f"filter_ms={med['filter'] * 1000:.2f} replace_ms={med['replace all (plan+apply)'] * 1000:.1f} "
            f"regex_ms={med['regex on filtered'] * 1000:.1f} undo_ms={med['undo x2'] * 1000:.1f} "
            f"save_ms={med['save changed files'] * 1000:.0f} load_vs_read={med['load'] / base:.2f} "
            f"slowest_edit_vs_read={edit_ms / base:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
