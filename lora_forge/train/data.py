"""The training set: folders → items with captions and buckets → cached latents → batches.

`scan_dataset` needs no model and no torch: it runs before anything heavy, so a bad folder
(empty, captions without images, images without captions, everything too small) is reported at
once. `cache_latents` encodes each (image, bucket, flip) once, keyed by the image's bytes, the
VAE's weights and the bucket, in `<dataset>/.lora_forge/latents/`, so a re-run skips the VAE.

Text-encoder outputs: cached (and the text encoder leaves the accelerator) only when the text
encoder is frozen *and* every sample's caption is fixed. With shuffle or dropout on, a frozen text
encoder runs every step under no_grad instead: each step sees a new tag order, so a cache would
either be as large as the number of steps or fake the shuffle. Its cost is small next to the UNet's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.dataset.captions import STATE_DIR, caption_path_for, join_tags, read_caption, split_tags
from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, no_progress
from lora_forge.train.config import TrainConfig

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
CACHE_VERSION = "1"  # bump when the pixels → latent recipe changes


@dataclass
class Item:
    path: Path
    caption: str
    size: tuple[int, int]
    bucket: tuple[int, int]
    repeats: int
    folder: str


@dataclass
class Dataset:
    root: Path
    items: list[Item]
    folders: list[tuple[str, int, int | None]]  # (folder, images, repeats from its N_ prefix)
    skipped_small: list[Path] = field(default_factory=list)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        counts: dict[tuple[int, int], int] = {}
        for it in self.items:
            counts[it.bucket] = counts.get(it.bucket, 0) + it.repeats
        return dict(sorted(counts.items()))

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        freq: dict[str, dict[str, int]] = {}
        for it in self.items:
            folder = freq.setdefault(it.folder, {})
            for tag in split_tags(it.caption):
                folder[tag] = folder.get(tag, 0) + 1
        return freq


# --------------------------------------------------------------------------------- scanning
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise ForgeError("cannot read this image; remove it or re-save it as PNG/JPEG", path=path) from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def bucket_of(size: tuple[int, int], config: TrainConfig) -> tuple[int, int] | None:
    """The (width, height) an image trains at, or None when it is too small for any bucket."""
    w, h = size
    rw, rh = config.resolution_wh
    floor = config.min_bucket_reso if config.enable_bucket else 64
    if min(w, h) < floor:
        return None
    if not config.enable_bucket:
        return rw, rh
    if config.bucket_no_upscale:
        from lora_forge.dataset.buckets import bucket_for

        res = math.sqrt(rw * rh)
        return bucket_for(w, h, res, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)  # type: ignore[arg-type]
    return _nearest_bucket(w / h, config)


def _nearest_bucket(aspect: float, config: TrainConfig) -> tuple[int, int]:
    """kohya's predefined buckets (area ≈ resolution², sides in steps) with the closest aspect.

    dataset.buckets never upscales, so the upscaling mode (`bucket_no_upscale = false`) has
    its own list here."""
    rw, rh = config.resolution_wh
    area, step = rw * rh, config.bucket_reso_steps
    buckets = set()
    width = config.min_bucket_reso
    while width <= config.max_bucket_reso:
        height = min(config.max_bucket_reso, (area // width) // step * step)
        if height >= config.min_bucket_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    side = int(math.sqrt(area)) // step * step
    buckets.add((side, side))
    return min(sorted(buckets), key=lambda b: abs(math.log(b[0] / b[1]) - math.log(aspect)))


def with_trigger(caption: str, trigger: str) -> str:
    """The trigger word as the first tag (moved there, or added), so keep_tokens=1 keeps it."""
    if not trigger:
        return caption
    tags = [t for t in split_tags(caption) if t != trigger]
    return join_tags([trigger, *tags])


def scan_dataset(root: str | Path, config: TrainConfig) -> Dataset:
    """Find images, captions and buckets; every problem a user can fix is a ForgeError here."""
    root = Path(root)
    if not root.is_dir():
        raise ForgeError("the dataset folder does not exist", path=root)
    folders: list[tuple[Path, int | None, str]] = []
    if _images_in(root):
        folders.append((root, None, ""))
    seen = {root.resolve()}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name == STATE_DIR or sub.resolve() in seen:  # a link to the dataset itself or a sibling
            continue
        seen.add(sub.resolve())
        m = _REPEAT_DIR.match(sub.name)
        if _images_in(sub):
            folders.append((sub, int(m.group(1)) if m else None, m.group(2) if m else ""))
    if not folders:
        captions = [p for p in root.rglob(f"*{config.caption_extension}") if STATE_DIR not in p.parts]
        if captions:
            raise ForgeError(
                f"found {len(captions)} caption files but no images (png, jpg, webp, bmp); "
                "put the images beside their captions",
                path=root,
            )
        raise ForgeError("no images found (png, jpg, webp, bmp) in the folder or its subfolders", path=root)

    items: list[Item] = []
    uncaptioned: list[Path] = []
    small: list[Path] = []
    summary: list[tuple[str, int, int | None]] = []
    for folder, prefix_repeats, class_name in folders:
        count = 0
        for image in _images_in(folder):
            text = read_caption(caption_path_for(image, config.caption_extension))
            # An empty caption file is the tagger's answer for an image where no tag passed the
            # threshold: it trains on the trigger word alone (or the folder's name), like kohya's
            # class tokens. Only a missing file means "not tagged yet".
            if text is None or not split_tags(text):
                if text is None and not class_name:
                    uncaptioned.append(image)
                    continue
                text = class_name or ""
            size = _image_size(image)
            bucket = bucket_of(size, config)
            if bucket is None:
                small.append(image)
                continue
            name = folder.name if folder != root else root.name
            caption = with_trigger(text, config.trigger_word)
            items.append(Item(image, caption, size, bucket, prefix_repeats or 0, name))
            count += 1
        summary.append((folder.name, count, prefix_repeats))
    if uncaptioned:
        shown = ", ".join(p.name for p in uncaptioned[:3]) + (" …" if len(uncaptioned) > 3 else "")
        raise ForgeError(
            f"{len(uncaptioned)} image(s) have no caption file ({config.caption_extension}): {shown}; "
            "tag them first, or put them in a folder named like 10_trigger whose name is the caption",
            path=root,
        )
    if not items:
        raise ForgeError(
            f"every image is smaller than the minimum bucket side ({config.min_bucket_reso} px); "
            "use larger images or lower min_bucket_reso",
            path=root,
        )
    if small:
        log.warning("%d image(s) smaller than %d px skipped", len(small), config.min_bucket_reso)
    return Dataset(root, items, summary, small)


def apply_repeats(dataset: Dataset, repeats_for_plain: int) -> None:
    for it in dataset.items:
        if not it.repeats or it.repeats <= 0:
            it.repeats = repeats_for_plain


# --------------------------------------------------------------------------------- captions
def caption_for_step(caption: str, config: TrainConfig, rng: random.Random) -> str:
    """Shuffle, tag dropout and caption dropout, keeping the first `keep_tokens` tags in place."""
    if config.caption_dropout_rate and rng.random() < config.caption_dropout_rate:
        return ""
    if not (config.shuffle_caption or config.caption_tag_dropout_rate):
        return caption
    tags = split_tags(caption)
    fixed, rest = tags[: config.keep_tokens], tags[config.keep_tokens :]
    if config.caption_tag_dropout_rate:
        rest = [t for t in rest if rng.random() >= config.caption_tag_dropout_rate]
    if config.shuffle_caption:
        rng.shuffle(rest)
    return join_tags(fixed + rest)


def captions_vary(config: TrainConfig) -> bool:
    return bool(config.shuffle_caption or config.caption_dropout_rate or config.caption_tag_dropout_rate)


# --------------------------------------------------------------------------------- pixels
def load_pixels(path: Path, bucket: tuple[int, int], flip: bool) -> Any:
    """The image resized to cover the bucket, centre-cropped, as a [3, H, W] tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(canvas, im)
        im = im.convert("RGB")
    bw, bh = bucket
    scale = max(bw / im.width, bh / im.height)
    size = (max(bw, round(im.width * scale)), max(bh, round(im.height * scale)))
    if size != im.size:
        im = im.resize(size, Image.LANCZOS)
    left, top = (im.width - bw) // 2, (im.height - bh) // 2
    im = im.crop((left, top, left + bw, top + bh))
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------- latents
def module_fingerprint(module: Any) -> str:
    """A cheap identity of a module's weights: shapes plus a sample of values of every tensor.

    Hashing all of a VAE's weights on each run would cost more than it saves; two different VAEs
    differ in the sampled values too."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:], flat[:: max(1, flat.numel() // 64)]])
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:24]


class LatentCache:
    """Latents per (image bytes, VAE, bucket, flip): in memory, and on disk when allowed."""

    def __init__(self, dataset: Dataset, vae_id: str, to_disk: bool) -> None:
        self.memory: dict[tuple[int, bool], Any] = {}
        self.vae_id = vae_id
        self.folder: Path | None = dataset.root / STATE_DIR / "latents" if to_disk else None
        self.hits = 0
        self.encoded = 0

    def key(self, item: Item, flip: bool) -> str:
        bw, bh = item.bucket
        return f"{_file_hash(item.path)}-{self.vae_id}-{bw}x{bh}-{int(flip)}-v{CACHE_VERSION}"

    def load(self, key: str) -> Any | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["latent"]
        except Exception:  # a damaged cache file is re-encoded, never trusted
            log.warning("ignoring unreadable latent cache %s", path)
            return None

    def store(self, key: str, latent: Any) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save

        from lora_forge.fsio import atomic_write_bytes

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.folder / f"{key}.safetensors", save({"latent": latent.contiguous()}))
        except (OSError, ForgeError) as e:
            log.warning("cannot write the latent cache (%s); keeping latents in memory only", e)
            self.folder = None


def cache_latents(
    dataset: Dataset,
    encode: Any,
    vae_id: str,
    config: TrainConfig,
    progress: ProgressFn = no_progress,
    stop: Any = None,
) -> LatentCache:
    """Encode every (item, flip) that is not cached yet; `encode(pixels[B,3,H,W]) -> latents`."""
    cache = LatentCache(dataset, vae_id, config.cache_latents_to_disk)
    flips = (False, True) if config.flip_aug else (False,)
    jobs = [(i, f) for i in range(len(dataset.items)) for f in flips]
    for n, (i, flip) in enumerate(jobs):
        if stop is not None and stop.requested:
            raise ForgeError("stopped while encoding the images; nothing was trained")
        item = dataset.items[i]
        key = cache.key(item, flip)
        latent = cache.load(key)
        if latent is None:
            latent = encode(load_pixels(item.path, item.bucket, flip)[None])[0].float().cpu()
            cache.store(key, latent)
            cache.encoded += 1
        else:
            cache.hits += 1
        cache.memory[(i, flip)] = latent
        progress(Progress(n + 1, len(jobs), f"encoding images {n + 1}/{len(jobs)}"))
    return cache


# --------------------------------------------------------------------------------- batches
def epoch_batches(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Item indices per batch for one epoch: repeats expanded, one bucket per batch, order
    shuffled by (seed, epoch) alone, so a resumed run sees exactly the same batches."""
    rng = random.Random(seed * 100_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(dataset.items):
        by_bucket.setdefault(it.bucket, []).extend([i] * max(1, it.repeats))
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        ids = by_bucket[bucket]
        rng.shuffle(ids)
        batches += [ids[k : k + batch_size] for k in range(0, len(ids), batch_size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return len(epoch_batches(dataset, batch_size, 0, 0))
