"""Build a tiny Stable Diffusion model and run every stage that exists end to end, on CPU.

Each stage module exposes `selftest(ctx) -> str` (a one-line summary); the stages run in order
and share one SelftestContext, so later stages use what earlier ones produced.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.cli import module_exists

# In pipeline order. A stage whose module is not there yet is reported as absent, not run.
STAGES: list[tuple[str, str]] = [
    ("tiny model + standalone host", "lora_forge.host.standalone_selftest"),
    ("model inspector", "lora_forge.inspect.selftest_stage"),
    ("preprocess", "lora_forge.dataset.selftest_stage"),
    ("tagger", "lora_forge.tagger.selftest_stage"),
    ("tag editor", "lora_forge.dataset.editor_selftest"),
    ("lora format", "lora_forge.lora.selftest_stage"),
    ("train", "lora_forge.train.selftest_stage"),
    ("grid", "lora_forge.grid.selftest_stage"),
]


@dataclass
class SelftestContext:
    out: Path
    shared: dict[str, Any] = field(default_factory=dict)  # what a stage leaves for later stages

    def log(self, message: str) -> None:
        print(f"  {message}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="folder for everything the selftest writes (default: a temp folder)")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def run(args: argparse.Namespace) -> int:
    """Without --out everything goes to a temporary folder that is removed at the end (it holds
    ~90 MB: the tiny model, datasets, LoRAs, grids), pass or fail; --out keeps the files."""
    if args.out is not None:
        return _run(args, args.out, "")
    with tempfile.TemporaryDirectory(prefix="lora_forge_selftest_", ignore_cleanup_errors=True) as tmp:
        return _run(args, Path(tmp), " (removed at the end; --out FOLDER keeps the files)")


def _run(args: argparse.Namespace, out: Path, note: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    ctx = SelftestContext(out=out)
    print(f"LoRA Forge selftest, writing to {out}{note}")
    results = []
    for title, module_name in STAGES:
        if not module_exists(module_name):
            continue
        print(f"[{title}]", flush=True)
        t0 = time.perf_counter()
        summary = importlib.import_module(module_name).selftest(ctx)
        dt = time.perf_counter() - t0
        print(f"  ok ({dt:.1f}s): {summary}", flush=True)
        results.append({"stage": title, "seconds": round(dt, 2), "summary": summary})
    print(f"selftest passed: {len(results)} stages")
    if args.json:
        print(json.dumps({"out": str(out), "stages": results}, ensure_ascii=False))
    return 0
