"""Inspector speed: our header-only reader against the two ways a tool usually looks at a model.

Files (in a temp folder): a full-size SD1.5-layout checkpoint (2.1 GB of fp16; its data is a
sparse hole, so it costs no disk, but every byte still has to be read by whoever reads it) and a
kohya SD1 LoRA at rank 32 with real widths (264 modules, alphas and metadata).
Contenders, interleaved per round, medians compared:
  load      - safetensors.torch.load_file, then look at the tensors (what "load it and see" costs);
  safe_open - safetensors' own lazy reader: every key's shape, the metadata, each alpha tensor;
  ours      - lora_forge.inspect.inspect_file (classification, ranks, alphas, metadata summary).
Also printed: the bytes ours reads per file (from /proc/self/io).

    python bench/inspect_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_forge.inspect import inspect_file  # noqa: E402
from tests import inspect_builders as b  # noqa: E402


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def by_load(path: Path) -> int:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return sum(v.numel() for v in sd.values())


def by_safe_open(path: Path) -> int:
    from safetensors import safe_open

    n = 0
    with safe_open(str(path), framework="pt") as f:
        f.metadata()
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            n += len(f.get_slice(key).get_shape())
            if key.endswith(".alpha"):
                f.get_tensor(key).item()
    return n


def by_ours(path: Path) -> int:
    r = inspect_file(path)
    assert r.error is None and r.kind in ("checkpoint", "lora"), r.title
    return r.tensors


def timed(fn: Callable[[Path], int], path: Path) -> float:
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lf-bench-inspect-") as tmp:
        ckpt = Path(tmp) / "sd15-layout.safetensors"
        size = b.write_sparse_safetensors(ckpt, b.sd1_checkpoint_shapes())
        lora = Path(tmp) / "lora-r32.safetensors"
        b.write_kohya(lora, b.sd1_lora_modules(), rank=32, alpha=16, metadata=b.kohya_metadata())
        files = {"checkpoint": ckpt, "lora": lora}
        contenders = {"load": by_load, "safe_open": by_safe_open, "ours": by_ours}
        times: dict[tuple[str, str], list[float]] = {(f, c): [] for f in files for c in contenders}
        for _ in range(args.rounds):
            for fname, path in files.items():
                for cname, fn in contenders.items():
                    times[(fname, cname)].append(timed(fn, path))
        read = {}
        for fname, path in files.items():
            before = rchar()
            by_ours(path)
            read[fname] = rchar() - before
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"checkpoint {size / 1e9:.2f} GB, LoRA {lora.stat().st_size / 1e6:.1f} MB, {args.rounds} rounds")
        for fname in files:
            row = ", ".join(f"{c} {med[(fname, c)] * 1000:.1f} ms" for c in contenders)
            print(f"  {fname:<10} {row}; ours read {read[fname] / 1e3:.0f} KB")
        speed = {f: (med[(f, "load")] / med[(f, "ours")], med[(f, "safe_open")] / med[(f, "ours")]) for f in files}
        print(
            "RESULT inspect_speed "
            f"ckpt_vs_load={speed['checkpoint'][0]:.1f}x ckpt_vs_safe_open={speed['checkpoint'][1]:.2f}x "
            f"lora_vs_load={speed['lora'][0]:.1f}x lora_vs_safe_open={speed['lora'][1]:.2f}x "
            f"ckpt_ms={med[('checkpoint', 'ours')] * 1000:.1f} ckpt_read_kb={read['checkpoint'] / 1e3:.0f}"
        )


if __name__ == "__main__":
    main()
