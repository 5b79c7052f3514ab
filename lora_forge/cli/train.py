"""Train a LoRA on a checkpoint file: `python -m lora_forge train --ckpt M --data D --name N --out O`.

Config layering (train.layering), lowest first: the preset, with `--resume RUN` the run's own
config, a config file (ours, or a kohya / kohya_ss / lora-scripts TOML or JSON), then each
`--set key=value`. The dataset and config are checked before the model is loaded.

Several GPUs: `torchrun --nproc_per_node N -m lora_forge train …`, or `--gpus N`, which starts
that (train/distributed.py: data-parallel, `train_batch_size` per process).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lora_forge.train.config import describe_keys
    from lora_forge.train.presets import PRESETS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "keys for --set KEY=VALUE (and config files), with their types and defaults:\n" + describe_keys()

    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint (.safetensors/.ckpt): SD1, SD2 or SDXL base")
    p.add_argument("--vae", type=Path, help="a separate VAE file to encode the images with")
    p.add_argument("--clip-folder", type=Path, help="CLIP tokenizer/config folder when not in the HF cache")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (images + .txt captions, N_name folders)")
    p.add_argument("--name", required=True, help="output name: files are NAME-000001.safetensors … NAME.safetensors")
    p.add_argument("--out", type=Path, required=True, help="folder for the run folder (never overwritten)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="custom", help="defaults by subject")
    p.add_argument("--config", type=Path, help="a config file: ours, kohya sd-scripts, kohya_ss or lora-scripts")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    p.add_argument("--trigger", help="trigger word (kept as the first tag of every caption)")
    p.add_argument("--resume", type=Path, help="continue a stopped run from its folder")
    p.add_argument("--device", help="cpu or cuda[:N] (default cpu; cuda with --gpus)")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="train on N GPUs: runs torchrun --nproc_per_node N (data-parallel, batch per GPU)")  # fmt: skip
    choice = {"choices": ("auto", "true", "false"), "type": str.lower}
    p.add_argument("--v-parameterization", **choice, help="v-prediction (auto: as the model loads)")
    p.add_argument("--zero-terminal-snr", **choice, help="rescale the noise schedule to zero terminal SNR (kohya's)")
    p.add_argument("--fp8-base", action="store_true", help="frozen weights stored as FP8, upcast per layer (fp8_base)")
    p.add_argument("--fused-backward-pass", action="store_true",
                   help="Adafactor or AdamW8bit steps each tensor during backward (fused_backward_pass)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads on --device cpu (default: half the cores)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan, do not train")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(_train_parser=p)


def device_of(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if getattr(args, "gpus", None) else "cpu")


def build_config(args: argparse.Namespace) -> tuple[Any, frozenset[str], list[str]]:
    """(config, keys the user set, warnings from importing a foreign config): the flags as
    overrides on the one config layering (train.layering)."""
    from lora_forge.model.family import checkpoint_family, safetensors_shapes
    from lora_forge.train.layering import layer_config, parse_sets

    overrides: dict[str, Any] = dict(parse_sets(args.set))
    if args.trigger is not None:
        overrides["trigger_word"] = args.trigger
    overrides["output_name"] = args.name
    for key in ("v_parameterization", "zero_terminal_snr", "fp8_base", "fused_backward_pass"):
        if getattr(args, key, None):
            overrides[key] = getattr(args, key)
    family = checkpoint_family(safetensors_shapes(args.ckpt))  # "" for a .ckpt: the SD1/SD2 values
    layered = layer_config(args.preset, overrides, args.resume or "", config_file=args.config, family=family,
                           device_type=device_of(args).split(":")[0])  # fmt: skip
    return layered.config, layered.user_keys, layered.warnings


def run(args: argparse.Namespace) -> int:
    from lora_forge.events import StopFlag, cli_progress
    from lora_forge.train.distributed import world_from_env
    from lora_forge.train.interrupt import stop_on_signals
    from lora_forge.train.loop import prepare, train

    args.device = device_of(args)
    world = world_from_env(args.device)  # None alone, also for a stray WORLD_SIZE
    if world is None and args.gpus and args.gpus > 1 and not args.dry_run:
        from lora_forge.cli.train_launch import launch

        return launch(args)
    first = world is None or world.rank == 0  # only one process talks
    config, user_keys, warnings = build_config(args)
    for w in warnings if first else []:
        log.warning("config: %s", w)
    size = world.world_size if world else max(1, args.gpus or 1)  # a --gpus dry run plans for them all
    prepared = prepare(config, args.data, user_keys, size)
    if first:
        print(f"plan: {prepared.plan.note}", flush=True)
    if world is None and size > 1:  # a --gpus dry run
        print(f"data-parallel plan for {size} processes: global batch {prepared.global_batch}; "
              "the memory plan below is per process", flush=True)  # fmt: skip
    if not args.ckpt.is_file():
        raise ForgeError("checkpoint file not found", path=args.ckpt)
    from lora_forge import cpu_threads
    from lora_forge.host.standalone import StandaloneHost

    ranks = None
    if world is not None:
        from lora_forge.train.distributed import Ranks, check_config

        check_config(prepared.config)
        if args.dry_run and not first:
            return 0  # rank 0 prints the plan and the per-process memory estimate
        if first:
            print(world.describe(prepared.global_batch), flush=True)
    if (line := cpu_threads.apply(args.threads, world.device if world else args.device)) and first:
        print(line, flush=True)
    if world is not None and not args.dry_run:
        ranks = Ranks(world)  # the process group is up before the model loads
    host = StandaloneHost(args.ckpt, vae=args.vae, clip_folder=args.clip_folder,
                          device=world.device if world else args.device)  # fmt: skip
    if args.dry_run:
        from lora_forge.train import memory
        from lora_forge.train.fit import check_before_work
        from lora_forge.train.session import open_session

        check_before_work(prepared.config, host.device)
        session = open_session(host.sd_model(), prepared.config)
        try:
            est = memory.estimate(host.sd_model(), session.network, prepared.config, prepared.dataset)
        finally:
            session.close()
        print("memory plan:", est.summary())
        if args.json:
            print(json.dumps({"plan": prepared.plan.__dict__, "memory": est.as_dict()}))
        return 0
    bar, close = cli_progress("train", disable=args.json or not first)

    def progress(event: Any) -> None:
        if not first:
            return
        if event.step == 0 and event.message:
            print(event.message, flush=True)
        bar(event)

    stop = StopFlag()
    try:
        with stop_on_signals(stop, abort_on_second=ranks is None) as received:  # Ctrl-C: finish the step, save
            result = train(host, prepared, args.out, progress=progress, stop=stop, dist=ranks)
    finally:
        close()
        if ranks is not None:
            ranks.close()
    if not first:
        return 130 if received else 0
    summary = {
        "run_dir": str(result.run_dir),
        "final": str(result.final_file),
        "epoch_files": [str(p) for p in result.epoch_files],
        **result.report,
    }
    if received:
        summary["resume_command"] = resume_command(args, result.run_dir, prepared.world_size)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        on = f" on {ranks.size} processes, global batch {prepared.global_batch}" if ranks else ""
        print(f"saved {result.final_file} ({result.steps} steps, {result.seconds:.1f} s{on})")
        if result.stopped:
            print(f"stopped: {result.stopped}; continue with --resume {result.run_dir}")
    if received:  # "stopped": "interrupted (SIGINT)" in the summary; the exit code says it too
        if not args.json:
            print(f"resume with: {summary['resume_command']}", flush=True)
        return 130
    return 0


def resume_command(args: argparse.Namespace, run_dir: Path, world_size: int = 1) -> str:
    """The command that continues `run_dir`, quoted for this system's shell."""
    import shlex
    import subprocess
    import sys

    argv = ["python", "-m", "lora_forge", "train", "--resume", str(run_dir), "--ckpt", str(args.ckpt)]
    argv += ["--data", str(args.data), "--name", args.name, "--out", str(args.out), "--device", args.device]
    if world_size > 1:  # a data-parallel run resumes on as many processes
        argv += ["--gpus", str(world_size)]
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)
