"""`train --gpus N`: start the same command under torchrun, one process per GPU.

It runs `python -m torch.distributed.run` (torchrun, shipped with torch) with this Python, so it
needs neither a shell nor fork (Windows starts the processes the same way) and the exact flags the
user gave. The rendezvous is static on 127.0.0.1 with a port free at launch; on Windows torch's
TCP store is told not to use libuv (the Windows wheels lack it, and torchrun would refuse to start).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from typing import Any


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """The train flags as given, minus --gpus (every flag the parser has, so new ones follow)."""
    parser: Any = args._train_parser
    out: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "gpus"):
            continue
        flag, value = action.option_strings[-1], getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            out += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            out += [x for v in value or [] for x in (flag, str(v))]
        elif value is not None and value != action.default:
            out += [flag, str(value)]
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(args: argparse.Namespace) -> list[str]:
    head = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(args.gpus)]
    head += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "lora_forge"]
    device = [] if args.device else ["--device", "cuda"]  # --gpus means CUDA unless --device says otherwise
    return [*head, *(["-v"] if getattr(args, "verbose", False) else []), "train", *forwarded_args(args), *device]


def launch(args: argparse.Namespace) -> int:
    """Run the job and return its exit code; Ctrl-C reaches every process, which save and end."""
    command = torchrun_command(args)
    env = dict(os.environ)
    if os.name == "nt":
        env.setdefault("USE_LIBUV", "0")
    print("starting:", subprocess.list2cmdline(command) if os.name == "nt" else " ".join(command), flush=True)
    proc = subprocess.Popen(command, env=env)
    interrupted = False
    while True:
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the processes got it too: they finish the step and save
            interrupted = True
            continue
        # torchrun reports a Ctrl-C as its own failure (a traceback, exit 1); the run saved and
        # printed its resume command, so the exit code is the CLI's for a stop: 130
        return 130 if interrupted else code
