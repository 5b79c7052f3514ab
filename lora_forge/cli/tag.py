"""Caption a folder of images with a WD14 tagger (SmilingWolf v2/v3 ONNX models).

`python -m lora_forge tag DIR --model wd-vit-tagger-v3` downloads the model on first use (mirror:
HF_ENDPOINT) into our models folder; `--model FOLDER` uses a folder with model.onnx + selected_tags.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.settings import Settings
from lora_forge.tagger import registry
from lora_forge.tagger.batch import EXISTING_ACTIONS, TagOptions, list_images, tag_folder
from lora_forge.tagger.labels import CaptionOptions, Thresholds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="folder of images to caption (a .txt is written beside each)")
    p.add_argument(
        "--model",
        default=registry.DEFAULT_MODEL,
        help=f"model name (default {registry.DEFAULT_MODEL}; see --list), or a folder with model.onnx and "
        "selected_tags.csv",
    )
    p.add_argument("--list", action="store_true", help="list the models with their size and download state, and exit")
    p.add_argument("--general", type=float, help="general tag threshold (kept when above; default 0.35)")
    p.add_argument("--character", type=float, help="character tag threshold (default 0.85)")
    p.add_argument("--mcut", action="store_true", help="choose the thresholds per image with MCut instead")
    p.add_argument("--rating", action="store_true", help="add the rating tag (general/sensitive/questionable/explicit)")
    p.add_argument("--trigger", default="", help="trigger word written first in every caption")
    p.add_argument("--exclude", default="", help="comma-separated tags never to write (e.g. 'solo,simple background')")
    p.add_argument(
        "--existing",
        choices=EXISTING_ACTIONS,
        default="skip",
        help="what to do with an image that already has a caption (default skip: never touch it)",
    )
    p.add_argument(
        "--no-escape",
        action="store_true",
        help="write ( ) as they are instead of \\( \\) (the WebUI reads ( ) as emphasis)",
    )
    p.add_argument("--json", action="store_true", help="also write IMAGE.wd14.json with every confidence")
    p.add_argument("--batch-size", type=int, default=4, help="images per model call for dynamic-batch models")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU provider is available")


def _print_models(settings: Settings) -> None:
    for spec, state in registry.list_models(settings):
        print(f"{spec.name:32} {spec.label.split('(')[-1].rstrip(')'):>8}  {state:8} {spec.repo_id}")


def _download_bar():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def report(filename: str, done: int, total: int | None) -> None:
        bar = bars.get(filename)
        if bar is None:
            bar = bars[filename] = tqdm(total=total, desc=filename, unit="B", unit_scale=True, file=sys.stderr)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return report, close


def run(args: argparse.Namespace) -> int:
    from lora_forge.events import cli_progress
    from lora_forge.tagger.session import TaggerSession

    settings = Settings.from_env()
    if args.list:
        _print_models(settings)
        return 0
    images = list_images(args.dir)  # before any download: a wrong folder is the user's to fix first
    if not images:
        raise ForgeError(
            "no images (png, jpg, webp, bmp) in this folder; give the folder of prepared images", path=args.dir
        )
    files = registry.resolve(settings, args.model)
    usual = Thresholds()  # a user's folder gets the usual defaults, a registered model its own
    if files.spec is not None:
        usual = Thresholds(files.spec.general_threshold, files.spec.character_threshold)
    general = usual.general if args.general is None else args.general
    character = usual.character if args.character is None else args.character
    options = TagOptions(
        thresholds=Thresholds(general, character, args.mcut),
        caption=CaptionOptions(
            exclude=tuple(t for t in args.exclude.split(",") if t.strip()),
            trigger=args.trigger,
            rating=args.rating,
            escape=not args.no_escape,
        ),
        existing=args.existing,
        save_json=args.json,
        batch_size=args.batch_size,
    )
    if registry.missing(files):
        print(f"downloading {files.spec.label} into {files.folder}", file=sys.stderr)
        report, close_bars = _download_bar()
        try:
            registry.ensure_downloaded(settings, files, report)
        finally:
            close_bars()
    session = TaggerSession(files, cpu_only=args.cpu)
    print(f"model {files.name}: input {session.graph.size}px, running on {session.provider_label}", file=sys.stderr)
    update, close = cli_progress("tagging")
    try:
        report = tag_folder(args.dir, files, options, update, session=session)
    finally:
        close()
        session.close()
    for r in report.results:
        if r.status == "failed":
            print(f"failed: {r.message}", file=sys.stderr)
    print(report.summary())
    if report.history_ids:
        print(
            f"previous captions saved in history {', '.join(report.history_ids)} "
            "(undo: python -m lora_forge tags DIR --rollback ID)"
        )
    if report.count("failed"):
        raise ForgeError(f"{report.count('failed')} image(s) could not be captioned (see above); the rest were done")
    return 0
