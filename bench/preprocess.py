"""Preprocess throughput: the full face-focus pipeline against decode-and-resize alone.

200 large photo-like JPEGs (3000x2000: skimage's astronaut, enlarged, on a noisy gradient, at a
different place in each file) are written to a temp folder. Each round runs, on the same files
and with the same thread count:
  floor - read, decode (the same JPEG draft decode the stage uses), resize to 512x512;
  ours  - `prepare()`: hash, de-duplicate, decode, YuNet, crop, PNG encode, write, manifest.
Rounds are interleaved and the medians compared, in wall time and in CPU time of the process (the
machine is shared, and CPU seconds are what other people's load disturbs least). A single-thread
round of ours shows what the second core buys.

    python bench/preprocess.py [--n 200] [--rounds 3] [--yunet PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_forge.dataset import faces, ingest
from lora_forge.dataset.prepare import PrepareOptions, default_workers, prepare
from lora_forge.settings import Settings

SIZE = 512


def make_photos(folder: Path, n: int, width: int = 3000, height: int = 2000) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    face = Image.fromarray(data.astronaut()).resize((1100, 1100), Image.BICUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bases = []
    for k in range(4):
        grad = np.stack([xx / width * 160 + 40 * k, yy / height * 120 + 60, (xx + yy) / (width + height) * 200], -1)
        noise = rng.normal(0, 6, (height, width, 3))  # sensor noise of a good camera
        bases.append(Image.fromarray(np.clip(grad + noise, 0, 255).astype(np.uint8)))

    def one(i: int) -> None:
        canvas = bases[i % 4].copy()
        x = int(rng.integers(0, width - face.width))
        y = int(rng.integers(0, height - face.height))
        canvas.paste(face, (x, y))
        canvas.save(folder / f"photo_{i:03d}.jpg", quality=90)

    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(one, range(n)))


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds: all threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def floor_round(files: list[Path], workers: int) -> None:
    """Decode and resize only, with the stage's own decode (draft at the same scale)."""
    from PIL import Image

    def one(path: Path) -> None:
        data = path.read_bytes()
        dec = ingest.decode(data, path.name, min_scale=lambda w, h: SIZE / min(w, h))
        w, h = dec.image.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        dec.image.resize((SIZE, SIZE), Image.LANCZOS, box=box, reducing_gap=3.0)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))


def ours_round(src: Path, out: Path, settings: Settings, workers: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    report = prepare([src], out, PrepareOptions(size=SIZE, download=False), settings, workers=workers)
    assert not report.skipped and not report.warnings, (report.skipped[:3], report.warnings)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--yunet", type=Path, help="YuNet onnx file (default: the one in the LoRA Forge models folder)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lf_bench_pre_"))
    try:
        settings = Settings.from_env()
        if args.yunet:
            settings = Settings(tmp / "models", tmp / "datasets")
            folder = tmp / "models" / faces.YUNET_REPO.replace("/", "--")
            folder.mkdir(parents=True)
            shutil.copy(args.yunet, folder / faces.YUNET_FILE)
        faces.yunet_path(settings, download=False)  # fail early without a model
        src = tmp / "src"
        src.mkdir()
        t0 = time.perf_counter()
        make_photos(src, args.n)
        files = sorted(src.iterdir())
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{args.n} JPEGs 3000x2000 ({mb:.0f} MB) made in {time.perf_counter() - t0:.1f}s", flush=True)
        assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == args.n
        workers = default_workers()
        floor_t, ours_t = [], []
        floor_round(files, workers)  # warm the page cache and the imports
        for r in range(args.rounds):
            floor_t.append(timed(floor_round, files, workers))
            ours_t.append(timed(ours_round, src, tmp / "out", settings, workers))
            (fw, fc), (ow, oc) = floor_t[-1], ours_t[-1]
            print(f"round {r + 1}: floor {fw:.2f}s ({fc:.2f} CPU-s)  ours {ow:.2f}s ({oc:.2f} CPU-s)", flush=True)
        single, _ = timed(ours_round, src, tmp / "out", settings, 1)
        f_wall, o_wall = (statistics.median(t[0] for t in ts) for ts in (floor_t, ours_t))
        f_cpu, o_cpu = (statistics.median(t[1] for t in ts) for ts in (floor_t, ours_t))
        for name, wall, cpu in (("floor (decode+resize)", f_wall, f_cpu), ("ours (face-focus crop)", o_wall, o_cpu)):
            print(f"{name}, {workers} threads: {args.n / wall:.1f} images/s, {cpu / args.n * 1e3:.1f} CPU-ms each")
        print(f"ours  (1 thread): {args.n / single:.1f} images/s; {workers} threads are {single / o_wall:.2f}x faster")
        print(
            f"RESULT preprocess images_per_s={args.n / o_wall:.1f} floor_images_per_s={args.n / f_wall:.1f} "
            f"ratio={o_wall / f_wall:.2f} cpu_ratio={o_cpu / f_cpu:.2f} goal=1.5 threads={workers} "
            f"speedup_vs_1_thread={single / o_wall:.2f} cores={os.cpu_count()}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
