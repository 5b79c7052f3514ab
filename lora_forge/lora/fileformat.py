"""The kohya `.safetensors` LoRA file: tensors, metadata, hashes, cover images.

Written so that every loader reads it as a kohya file: only `lora_down.weight`/`lora_up.weight`/
`alpha` tensors (Forge drops files with unknown keys), kohya's metadata keys with their string
conventions (the WebUI's card page reads `ss_output_name`, `ss_base_model_version`,
`ss_tag_frequency`, `ss_dataset_dirs`, `ss_bucket_info`, `ssmd_cover_images`), and
`sshs_model_hash` precomputed as the WebUI computes it (sha256 of the bytes after the header),
so the WebUI shows our hash without hashing the file itself.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_bytes, display_name
from lora_forge.lora.loader import LORA_PARTS

if TYPE_CHECKING:
    import torch

    from lora_forge.lora.network import LoraNetwork

NETWORK_MODULE = "networks.lora"  # kohya's module name; the WebUI shows it, tools branch on it
MODELSPEC_VERSION = "1.0.1"  # the spec version kohya writes; 1.0.1 added implementation_version
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURE = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}
IMPLEMENTATION = {"sd1": "diffusers", "sd2": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}
SAVE_DTYPES = ("fp16", "bf16", "fp32")
COVER_MAX_SIDE = 512  # ComfyUI reads at most 8 MB of header: keep covers small JPEGs
OLD_HASH_OFFSET, OLD_HASH_LENGTH = 0x100000, 0x10000
CHUNK = 1 << 20


def save_dtype(name: str) -> torch.dtype:
    """ "fp16" (default everywhere users share LoRAs), "bf16" or "fp32" → torch dtype."""
    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name not in dtypes:
        raise ForgeError(f"unknown save precision {name!r}; use one of {', '.join(SAVE_DTYPES)}")
    return dtypes[name]


def _version_key(family: str) -> str:
    return "sd2-v" if family == "sd2-v" else {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}[_base(family)]


def _base(family: str) -> str:
    from lora_forge.model.family import base_family

    return base_family(family)


def meta_value(value: Any) -> str:
    """kohya's convention: `str(v)` for scalars ("True", "None", "0.0001"), JSON for dicts/lists."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def minimal_metadata(network: LoraNetwork) -> dict[str, str]:
    """The keys kohya writes even with `--no_metadata`; the WebUI sorts LoRAs by family with them."""
    key = _version_key(network.family)
    meta = {
        "ss_v2": str(_base(network.family) == "sd2"),
        "ss_base_model_version": BASE_MODEL_VERSION[key],
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(network.rank),
        "ss_network_alpha": str(float(network.alpha)),
    }
    args = network.network_args()
    if args:  # kohya writes the key only when network_args were given
        meta["ss_network_args"] = json.dumps(args)
    return meta


def lora_metadata(
    network: LoraNetwork,
    *,
    output_name: str,
    training: Mapping[str, Any] | None = None,
    tag_frequency: Mapping[str, Mapping[str, int]] | None = None,
    dataset_dirs: Mapping[str, Mapping[str, int]] | None = None,
    bucket_info: Mapping[str, Any] | None = None,
    sd_model_name: str | None = None,
    sd_model_hash: str | None = None,
    new_sd_model_hash: str | None = None,
    resolution: tuple[int, int] = (512, 512),
    clip_skip: int | None = None,
    trigger_phrase: str | None = None,
    title: str | None = None,
    description: str | None = None,
    cover_images: Sequence[Any] = (),
    timestamp: float | None = None,
) -> dict[str, str]:
    """Everything kohya writes about a LoRA, as strings.

    `training` holds the trainer's parameters with or without the `ss_` prefix (`{"learning_rate":
    1e-4, "ss_seed": 42}`); `tag_frequency` is `{image dir: {tag: count}}`, `dataset_dirs`
    `{dir: {"n_repeats": r, "img_count": n}}`, `bucket_info` `{"buckets": {...}, "mean_img_ar_error": x}`.
    `cover_images` are encoded image bytes or PIL images (shrunk to small JPEGs). `timestamp` is
    when training started (`time.time()`; the WebUI shows it as "Date trained"), default now.
    """
    now = time.time() if timestamp is None else timestamp
    key = _version_key(network.family)
    meta = minimal_metadata(network)
    meta["ss_output_name"] = output_name
    # fixed width (kohya writes str(time.time()), whose length varies with trailing digits): the
    # header's length then does not depend on the clock, and neither does `sshs_legacy_hash`, which
    # reads the bytes at 1 MiB of a serialization that includes these keys (save_lora)
    meta["ss_training_started_at"] = f"{now:.6f}"
    meta["ss_training_finished_at"] = f"{time.time():.6f}"
    for k, v in (training or {}).items():
        meta[k if k.startswith("ss_") else f"ss_{k}"] = meta_value(v)
    optional = {
        "ss_tag_frequency": tag_frequency,
        "ss_dataset_dirs": dataset_dirs,
        "ss_bucket_info": bucket_info,
        "ss_sd_model_name": sd_model_name,
        "ss_sd_model_hash": sd_model_hash,
        "ss_new_sd_model_hash": new_sd_model_hash,
        "ss_clip_skip": clip_skip,
    }
    meta.update({k: meta_value(v) for k, v in optional.items() if v is not None})
    meta.update(
        {
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.implementation_version": implementation_version(),
            "modelspec.architecture": f"{ARCHITECTURE[key]}/lora",
            "modelspec.implementation": IMPLEMENTATION[_base(network.family)],
            "modelspec.title": title or output_name,
            "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
            "modelspec.date": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
            "modelspec.prediction_type": "v" if network.family.endswith("-v") else "epsilon",
        }
    )
    if clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(clip_skip)
    if trigger_phrase:
        meta["modelspec.trigger_phrase"] = trigger_phrase
    if description:
        meta["modelspec.description"] = description
    if cover_images:
        meta["ssmd_cover_images"] = json.dumps([_cover_b64(img) for img in cover_images])
    return meta


def implementation_version() -> str:
    """Which trainer wrote the file, as kohya writes "sd-scripts/<commit>"."""
    from lora_forge import __version__

    return f"lora-forge/{__version__}"


def _cover_b64(image: Any) -> str:
    """Base64 of the image bytes, no data-URL prefix: what the WebUI and ComfyUI decode."""
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode("ascii")
    small = image.convert("RGB")
    small.thumbnail((COVER_MAX_SIDE, COVER_MAX_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_lora(path: str | os.PathLike[str], state_dict: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write a kohya LoRA file atomically and return its path; never replaces an existing file.

    A file already at `path` is a ForgeError (the trainer picks fresh names with
    `fsio.unused_path`): the WebUI caches merged weights by LoRA name, so reusing a name would
    also show stale results. `sshs_model_hash`/`sshs_legacy_hash` are added here.
    """
    import safetensors.torch

    path = Path(path)
    if path.exists():
        raise ForgeError(
            "a file with this name already exists; LoRA Forge never overwrites one, pick another name",
            path=path,
        )
    for key, tensor in state_dict.items():
        if key.partition(".")[2] not in LORA_PARTS:
            raise ValueError(f"not a kohya LoRA key: {key}")
        if key.endswith(".alpha") and tensor.dim() != 0:
            raise ValueError(f"alpha must be a 0-d tensor: {key}")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata values must be strings: {k}={v!r}")
    # a dataset folder or caption with a non-UTF-8 (GBK) name reaches us as surrogate escapes, which
    # no safetensors header can hold: kept as its maker reads it instead of failing the save
    metadata = {k: display_name(v) for k, v in metadata.items()}
    # kohya hashes a serialization with the ss_* keys only; the data region does not depend on the
    # header, so its hash is the final file's, while the legacy hash (bytes at 1 MiB) is kohya's quirk.
    first = safetensors.torch.save(
        dict(state_dict), metadata={k: v for k, v in metadata.items() if k.startswith("ss_")}
    )
    header_len = int.from_bytes(first[:8], "little")
    header = json.loads(first[8 : 8 + header_len])
    data = memoryview(first)[8 + header_len :]
    final_meta = dict(metadata)
    final_meta["sshs_model_hash"] = hashlib.sha256(data).hexdigest()
    final_meta["sshs_legacy_hash"] = hashlib.sha256(
        first[OLD_HASH_OFFSET : OLD_HASH_OFFSET + OLD_HASH_LENGTH]
    ).hexdigest()[:8]
    header["__metadata__"] = final_meta
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, len(raw).to_bytes(8, "little") + raw + bytes(data))
    return path


def load_lora(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a `.safetensors` LoRA file, with a readable error for a bad file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ForgeError("no such LoRA file", path=path)
    if path.suffix.lower() != ".safetensors":
        raise ForgeError("only .safetensors LoRA files can be loaded; convert .pt/.ckpt files first", path=path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise ForgeError(f"not a readable safetensors file ({e}); the file is damaged or incomplete", path=path) from e
    return tensors, metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Only the header's metadata, without reading the tensors (fast for listings)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > 100 * CHUNK:
            raise ForgeError("not a safetensors file (header too large)", path=path)
        try:
            return dict(json.loads(f.read(n)).get("__metadata__", {}))
        except (ValueError, RecursionError, AttributeError, TypeError) as e:  # forged or damaged header
            raise ForgeError("not a safetensors file (its header is not a JSON object of strings)", path=path) from e


def old_model_hash(path: str | os.PathLike[str]) -> str:
    """The WebUI's old 8-hex checkpoint hash (`ss_sd_model_hash`): sha256 of 64 KiB at 1 MiB."""
    with open(path, "rb") as f:
        f.seek(OLD_HASH_OFFSET)
        return hashlib.sha256(f.read(OLD_HASH_LENGTH)).hexdigest()[:8]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a whole file (`ss_new_sd_model_hash`); the WebUI caches it as the checkpoint's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
