"""`python -m lora_forge <command>`: the headless face of every stage.

Each command is a thin face in this package (cli/<command>.py) that exposes `add_arguments(parser)`
and `run(args) -> int`: it reads its flags, calls the stage (or app) function that does the work and
renders the result. Commands whose module is not there are not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from lora_forge import __version__
from lora_forge.errors import ForgeError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("lora_forge.cli.inspect", "say what a model file is (checkpoint, LoRA, VAE, embedding, ...)"),
    "preprocess": ("lora_forge.cli.preprocess", "ingest images, face-focus crop, buckets, face crops"),
    "tag": ("lora_forge.cli.tag", "caption a dataset with a WD14 tagger"),
    "tags": ("lora_forge.cli.tags", "edit the captions of a dataset (add, remove, replace, ...)"),
    "train": ("lora_forge.cli.train", "train a LoRA on a checkpoint file"),
    "grid": ("lora_forge.cli.grid", "render the epoch x strength grid and recommend an epoch"),
    "ui": ("lora_forge.ui.app", "open the 炼丹 tab in a browser without the WebUI (headless servers)"),
    "selftest": ("lora_forge.selftest", "build a tiny model and run every stage end to end on CPU"),
}


def module_exists(name: str) -> bool:
    """True when `name` can be imported; a missing parent package counts as missing."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def available_commands() -> dict[str, tuple[str, str]]:
    return {k: v for k, v in COMMANDS.items() if module_exists(v[0])}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_forge", description="LoRA Forge (炼丹炉) command line")
    parser.add_argument("--version", action="version", version=f"lora_forge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in available_commands().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


# what the commands need from the environment the WebUI (or tools/env.sh) provides
RUNTIME_PACKAGES = frozenset(
    {"torch", "torchvision", "numpy", "PIL", "cv2", "safetensors", "onnxruntime", "gradio", "ldm", "transformers",
     "huggingface_hub", "omegaconf", "open_clip", "einops", "pytorch_lightning", "lightning_utilities"}
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own INFO lines only: libraries' INFO chatter (matplotlib's "generated new fontManager" on a
    # fresh HOME, …) is not what a user asked to see; their warnings still show, -v shows everything.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("lora_forge").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except ForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in RUNTIME_PACKAGES:
            raise
        # the usual first mistake: a system Python without the WebUI's packages
        print(
            f"error: this Python ({sys.executable}) has no '{e.name}'. Run LoRA Forge with the Python of the "
            "WebUI's venv, or from a checkout with `bash tools/run.sh python -m lora_forge …` (see README).",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        from lora_forge.fsio import NO_SPACE

        if e.errno not in NO_SPACE:
            raise
        print(
            f"error: the disk is full ({e.filename or e}); free some space and run the command again", file=sys.stderr
        )
        return 2
