"""How many CPU threads torch uses for a CPU run, chosen and said aloud.

torch starts one intra-op thread per core. On a machine that is busy with anything else (a 2-core
cloud box running a second job, a desktop with the WebUI open) those threads spin-wait on each
other and a training step gets many times slower than with one thread: the new user's README run
took 12 s/step with 2 threads and a fraction of that with `OMP_NUM_THREADS=1`. Half the cores
(at least 1, at most 8) leaves room for the rest of the machine; `--threads N`, or
OMP_NUM_THREADS when the user set it, decides instead.
"""

from __future__ import annotations

import os

MAX_DEFAULT = 8


def default_threads(cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT, cores // 2))


def apply(requested: int | None, device: str) -> str | None:
    """Set torch's thread count for a CPU run; returns the line to print (None on a GPU)."""
    if not device.startswith("cpu"):
        return None
    import torch

    cores = os.cpu_count() or 1
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested:
        n, why = requested, "--threads"
    elif from_env.isdigit() and int(from_env) > 0:
        n, why = int(from_env), "OMP_NUM_THREADS"
    else:
        n, why = default_threads(cores), "default: half the cores"
    torch.set_num_threads(n)
    return f"CPU threads: {n} of {cores} cores ({why}; --threads N to change)"
