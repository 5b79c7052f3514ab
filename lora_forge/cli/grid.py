"""Render the epoch × strength grid of a LoRA run: `python -m lora_forge grid --ckpt M --loras RUN --out F`.

Everything is checked (files of one run, family, strengths, size) before the model is loaded.
With --scores a WD14 tagger scores each cell and the recommended epoch and strength are printed;
--xyz prints the WebUI X/Y/Z plot settings of the same grid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lora_forge.grid.plan import DEFAULT_STRENGTHS

    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file the LoRAs were trained on")
    p.add_argument("--vae", type=Path, help="a separate VAE file")
    p.add_argument("--clip-folder", type=Path, help="CLIP tokenizer/config folder when not in the HF cache")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--loras", type=Path, nargs="+", required=True, help="a run folder, or epoch files of one run")
    p.add_argument("--prompt", help="prompt after the trigger word (default: quality tags + 'white hair, red dress')")
    p.add_argument("--negative", help="negative prompt (default: common quality negatives)")
    p.add_argument("--strengths", default=DEFAULT_STRENGTHS, help="e.g. 0.1,0.5,1 or 0.1-1 (+0.1) (default)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default 7)")
    p.add_argument("--sampler", default="Euler a", help="Euler a, Euler or DDIM")
    p.add_argument("--size", default="auto", help="WIDTHxHEIGHT (default: the size the run trained at)")
    p.add_argument("--out", type=Path, required=True, help="grid PNG to write (a fresh name if it exists)")
    p.add_argument("--scores", action="store_true", help="score the cells and recommend an epoch and strength")
    p.add_argument("--tagger", default="", help="WD14 model name or folder for --scores (default: the tagger default)")
    p.add_argument("--dataset", type=Path, help="the training images (captions + faces for the scores)")
    p.add_argument("--xyz", default="", metavar="VERSION", help="also print X/Y/Z plot settings for this WebUI version")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from lora_forge.events import cli_progress
    from lora_forge.grid import assemble
    from lora_forge.grid.job import make_grid
    from lora_forge.grid.plan import make_plan
    from lora_forge.grid.size import parse_size
    from lora_forge.settings import Settings

    size = parse_size(args.size)
    # checked once without the model (cheap), and again with it for the family
    plan_args = (
        list(args.loras),
        args.strengths,
        args.prompt,
        args.negative,
        args.seed,
        args.steps,
        args.cfg,
        size,
        args.sampler,
    )
    plan = make_plan(*plan_args)
    settings = Settings.from_env()
    tagger = _tagger(settings, args.tagger) if args.scores else None
    xyz = _xyz(plan, args.xyz) if args.xyz else None
    if not args.ckpt.is_file():
        raise ForgeError("checkpoint file not found", path=args.ckpt)
    from lora_forge.host.standalone import StandaloneHost

    host = StandaloneHost(args.ckpt, vae=args.vae, clip_folder=args.clip_folder, device=args.device)
    plan = make_plan(*plan_args, sd_model=host.sd_model())
    update, close = cli_progress("grid", disable=args.json)
    try:
        output = make_grid(host, plan, update, out=args.out, tagger=tagger, dataset=args.dataset, settings=settings)
    finally:
        close()
    if args.json:
        data: dict[str, Any] = {
            "plan": assemble.plan_summary(plan),
            "saved": [str(p) for p in output.saved],
            "cells": output.result.rendered,
            "complete": output.result.complete,
            "seconds": round(output.result.seconds, 2),
        }
        if output.scores is not None:
            data["scores"] = output.scores.to_json(plan)
            data["heatmap"] = str(output.heatmap_path)
        if xyz is not None:
            data["xyz"] = {"prompt": xyz.prompt, "script_args": xyz.script_args, "infotext": xyz.infotext}
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for note in [*plan.notes, *output.result.failure_notes]:
        print(f"note: {note}")
    print(output.summary())
    for path in output.saved[1:]:
        print(f"  also {path}")
    if output.scores is not None:
        s = output.scores
        print(f"scores: {output.heatmap_path}")
        for note in s.notes:
            print(f"  note: {note}")
        if s.recommendation is not None:
            print(f"recommended: {s.recommendation.file.path.name} at {s.recommendation.strength:g}")
            print(f"  {s.recommendation.reason}")
        if s.warning:
            print(f"warning: {s.warning}")
    if xyz is not None:
        print(f"X/Y/Z plot ({xyz.layout}):\n  prompt: {xyz.prompt}\n  script_args: {json.dumps(xyz.script_args)}")
    return 0


def _tagger(settings: Any, name: str) -> Any:
    from lora_forge.tagger import registry

    return registry.ready(settings, name or registry.DEFAULT_MODEL)


def _xyz(plan: Any, version: str) -> Any:
    from lora_forge.grid.xyz import layout_for_version, xyz_settings

    return xyz_settings(plan, [f.path.stem for f in plan.files], layout_for_version(version))
