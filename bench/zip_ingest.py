"""Zip ingest cost per entry: it must not grow with the number of entries.

Before, every member read re-opened the zip and re-parsed its whole central directory, so a zip of
N images cost O(N^2): 4,000 entries took 87 s, 19,999 never finished. A zip of 1,000 and one of
16,000 entries (tiny PNGs, each with a caption entry) are built; each round does what the preprocess stage does
before decoding, on both zips: scan, hash every image (one read), read it again and its caption.
Rounds are interleaved and the medians compared: the time per entry at 16,000 over that at 1,000
is the ratio (1.0 = linear; the issue asks for at most 1.5).

    python bench/zip_ingest.py [--small 1000] [--large 16000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_forge.dataset import ingest


def make_zip(path: Path, n: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n // 2):  # n entries: an image and its caption each
            zf.writestr(f"photos/img_{i:05d}.png", png[:-12] + i.to_bytes(4, "big") + png[-8:])
            zf.writestr(f"photos/img_{i:05d}.txt", f"1girl, item {i}")


def ingest_once(path: Path) -> tuple[float, int]:
    """Seconds for scan + hash + read + caption of every entry, and the number of images."""
    t0 = time.perf_counter()
    scan = ingest.scan([path])
    try:
        for item in scan.items:
            hashlib.sha256(item.read()).hexdigest()
            item.read()
            item.read_caption()
    finally:
        scan.close()
    return time.perf_counter() - t0, len(scan.items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=16000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zips = {n: Path(tmp) / f"z{n}.zip" for n in (args.small, args.large)}
        for n, path in zips.items():
            make_zip(path, n)
        per_entry: dict[int, list[float]] = {n: [] for n in zips}
        for r in range(args.rounds):
            for n, path in zips.items():
                seconds, count = ingest_once(path)
                assert count == n // 2, (count, n)
                per_entry[n].append(seconds / n)
                print(f"round {r + 1}: {n:6d} entries {seconds:7.2f} s  {seconds / n * 1e6:7.1f} us/entry", flush=True)
    small, large = (statistics.median(per_entry[n]) for n in (args.small, args.large))
    ratio = large / small
    print(f"median per entry: {small * 1e6:.1f} us at {args.small}, {large * 1e6:.1f} us at {args.large}")
    print(
        f"RESULT zip_ingest per_entry_us_{args.small}={small * 1e6:.1f} per_entry_us_{args.large}={large * 1e6:.1f} "
        f"ratio={ratio:.2f} linear={'yes' if ratio <= 1.5 else 'no'}"
    )


if __name__ == "__main__":
    main()
