"""Say what model files are: checkpoint, LoRA, embedding, hypernetwork, VAE, ControlNet, upscaler.

Reads headers and shapes only, never runs code from a file and writes nothing. Every file is
reported even when others fail; the exit code is 2 if any file could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from lora_forge.inspect import inspect_paths, render_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="model files (.safetensors, .ckpt, .pt, .pth, .bin)")
    p.add_argument("--json", action="store_true", help="print a JSON list with one object per file")


def _write(text: str) -> None:
    """Print without dying on a console that cannot show a character (a GBK Windows console and an
    emoji tag): those characters are escaped instead."""
    stream = sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    reports = inspect_paths(args.files)
    if args.json:
        _write(json.dumps([r.to_json() for r in reports], ensure_ascii=False, indent=2))
    else:
        _write("\n\n".join(render_text(r) for r in reports))
    return 2 if any(r.error for r in reports) else 0
