"""Prepare training images: ingest folders/zips/files, face-focus crop, buckets, face crops.

`python -m lora_forge preprocess SRC [SRC ...] OUT [--size 512 | --buckets] [--face-crops] [--json]`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_forge.dataset.buckets import SQUARE_SIZES
from lora_forge.dataset.prepare import PrepareOptions, PrepareReport, apply_action, default_workers, prepare
from lora_forge.errors import ForgeError
from lora_forge.events import cli_progress
from lora_forge.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", type=Path, help="image folders (searched recursively), zip files or images")
    p.add_argument("out", type=Path, help="dataset folder to write the prepared images into")
    sizes = "/".join(map(str, SQUARE_SIZES))
    p.add_argument("--size", type=int, default=512, help=f"square side, or the bucket resolution ({sizes})")
    p.add_argument("--buckets", action="store_true", help="aspect-ratio buckets (no upscaling) instead of squares")
    p.add_argument("--min-side", type=int, default=256, help="smallest bucket side (with --buckets)")
    p.add_argument("--max-side", type=int, default=1024, help="largest bucket side (with --buckets)")
    p.add_argument("--face-crops", action="store_true", help="face boost: an extra tighter crop per face (*__face.png)")
    p.add_argument("--format", choices=["jpg", "png", "webp"], default="jpg", help="output files (default jpg q95)")
    p.add_argument("--no-faces", action="store_true", help="do not detect faces; crop on the saliency focal point")
    p.add_argument("--no-download", action="store_true", help="never download the face model (place it by hand)")
    p.add_argument("--max-megapixels", type=float, default=89.4, help="skip images with more pixels than this")
    p.add_argument("--workers", type=int, default=default_workers(), help="threads (default: the CPU cores, max 4)")
    p.add_argument(
        "--action",
        choices=["centre", "face", "whole", "drop"],
        help="redo the prepared images named by SRC (file names in OUT) with this crop, or drop them",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.action:
        records = [apply_action(args.out, src.name, args.action, settings) for src in args.src]
        if args.json:
            print(json.dumps([{"source": r.source, "outputs": [o.file for o in r.outputs]} for r in records]))
        else:
            for r in records:
                print(f"{r.source}: {args.action} -> {', '.join(o.file for o in r.outputs) or 'dropped'}")
        return 0
    options = PrepareOptions(
        size=args.size,
        buckets=args.buckets,
        min_side=args.min_side,
        max_side=args.max_side,
        face_crops=args.face_crops,
        format=args.format,
        detect_faces=not args.no_faces,
        download=not args.no_download,
        max_pixels=int(args.max_megapixels * 1e6),
    )
    update, close = cli_progress("preprocess", disable=args.json or not sys.stderr.isatty())
    try:
        report = prepare(args.src, args.out, options, settings, progress=update, workers=args.workers)
    finally:
        close()
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=1))
        _check_usable(report, args.src)
        return 0
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for s in report.skipped:
        print(f"skipped {s.source}: {s.reason}")
    for source, notes in report.notes.items():
        print(f"note {source}: {'; '.join(notes)}")
    for pair in report.near_duplicates:
        print(f"near duplicates: {pair['a']} ~ {pair['b']} (distance {pair['distance']})")
    for name, flags in report.flagged.items():
        print(f"check {name}: {'; '.join(flags)}")
    print(f"{report.summary()} in {report.seconds:.1f}s -> {report.folder}")
    if report.no_face_model:
        print(f"no face crops: {report.no_face_model}")
    _check_usable(report, args.src)
    return 0


def _check_usable(report: PrepareReport, sources: list[Path]) -> None:
    """Nothing usable in what the user named (missing, empty or every file bad) is their mistake: exit 2."""
    if report.written or report.unchanged or report.stopped:
        return
    named = ", ".join(str(s) for s in sources)
    if report.skipped:
        raise ForgeError(f"no usable image in {named}: all {len(report.skipped)} skipped (reasons above)")
    raise ForgeError(f"no images found in {named} (png, jpg, webp, bmp, gif, zip); check the path")
