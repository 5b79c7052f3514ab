"""Open a model file without trusting it: what is inside, as key → shape/dtype, and nothing more.

Model files come from strangers (Civitai, QQ groups, cloud drives), so the inspector must never run
code from one and must stay cheap on a 7 GB checkpoint. Safetensors headers are parsed by hand with
size limits checked before anything is allocated, and a tensor's bytes are read only on request
(an alpha is 2 bytes at a known offset). Pickles go only through `torch.load(weights_only=True)`;
a pickle that asks for anything beyond tensors and plain containers is refused, not loaded.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError

# safetensors itself refuses headers above 100 MB; no real model comes close (an SDXL checkpoint's is ~200 KB).
MAX_HEADER_BYTES = 100_000_000
# A tensor read for its value (alpha, scale) is a scalar; anything bigger is not read.
MAX_VALUE_ELEMENTS = 64

# safetensors dtype → (torch-style name, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "BOOL": ("bool", 1),
}
_STRUCT_CODES = {"F64": "d", "F32": "f", "F16": "e", "I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B"}

# Classes that old but harmless checkpoints pickle besides tensors. They are rebuilt as inert
# stand-ins (attributes only, no methods of theirs run), which is how the WebUI's own restricted
# unpickler treats the first one: SD1.4/1.5 `.ckpt` files carry a Lightning ModelCheckpoint,
# original textual-inversion embeddings a ParameterDict.
_INERT_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "torch.nn.modules.container.ParameterDict",
)


class InertObject:
    """What an allowlisted non-tensor object in a pickle becomes: a bag of its attributes."""


@dataclass
class TensorTable:
    """The part of a model file the classifiers look at."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)
    # the values of small tensors (alpha, scale) by key; keys that are not small numeric tensors are left out
    values: Callable[[list[str]], dict[str, list[float]]] = lambda _keys: {}


@dataclass
class Opened:
    """A file after opening: its container, its tensors, and (pickles) the raw object for layouts
    that are not a flat state dict (embeddings, hypernetworks)."""

    container: str  # "safetensors", "pickle (zip)", "pickle (legacy)", "torchscript"
    table: TensorTable
    raw: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # non-tensor top-level entries (global_step, ...)


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable form of any path: bytes that are not UTF-8 become \\xNN instead of crashing print/json."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sniff(head: bytes) -> str:
    """Name what a file that is not a model actually is, from its first bytes."""
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    card = " (an embedding saved inside an image goes in the WebUI's embeddings folder as it is)"
    if head.startswith(b"\x89PNG"):
        return "a PNG image" + card
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image" + card
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"GGUF"):
        return "a GGUF file (llama.cpp quantized format), which the WebUI does not load"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model itself (download the real file, e.g. with git lfs pull)"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "a web page (a failed download? download the file again)"
    if head.startswith((b"Rar!", b"7z\xbc\xaf")):
        return "a RAR/7z archive (extract it first)"
    return ""


def open_model_file(path: Path) -> Opened:
    """Open any supported file by its content (the extension may lie), or raise ForgeError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except OSError as e:
        raise _fail(path, f"cannot read it ({e.strerror}); check the path and permissions") from e
    if path.is_dir():
        raise _fail(path, "is a folder; give a model file (.safetensors, .ckpt, .pt, .pth, .bin)")
    if st.st_size == 0:
        raise _fail(path, "is empty (0 bytes); the download or copy did not finish, get the file again")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise _fail(path, f"cannot read it ({e.strerror}); check permissions") from e
    if head.startswith(b"PK\x03\x04"):
        return _open_zip(path)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return _open_pickle(path, zip_format=False)
    what = _sniff(head)
    if what:
        raise _fail(path, f"is not a model file: it is {what}")
    return Opened("safetensors", read_safetensors(path, st.st_size))


# ----------------------------------------------------------------------------------------- safetensors


@dataclass
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _fail(path: Path, message: str) -> ForgeError:
    return ForgeError(message, path=display_path(path))


def _bad(path: Path, why: str) -> ForgeError:
    return _fail(path, f"not a valid safetensors file ({why}); the file is damaged or not a model")


def read_safetensors(path: Path, file_size: int) -> TensorTable:
    """Parse the header (8-byte little-endian length + JSON) and check every entry against the file size."""
    if file_size < 8:
        raise _bad(path, f"only {file_size} bytes")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise _bad(path, f"header claims {_human_bytes(n)}, more than any model has")
        if 8 + n > file_size:
            raise _bad(path, f"header claims {_human_bytes(n)} but the file has {_human_bytes(file_size)}; truncated?")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(path, "header is not JSON") from None
    except RecursionError:  # [[[[…]]]] 200,000 deep: a forged header, and Python's parser recurses
        raise _bad(path, "header is nested far deeper than any model header") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_size = file_size - 8 - n
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _bad(path, "__metadata__ is not an object")
    entries: dict[str, _Entry] = {}
    for key, info in header.items():
        entries[key] = _check_entry(path, key, info)
    needed = max((e.end for e in entries.values()), default=0)
    if needed > data_size:
        raise _fail(
            path,
            f"is truncated: its header lists {_human_bytes(needed)} of tensors but the file holds "
            f"{_human_bytes(data_size)}; the download did not finish, get the file again",
        )
    data_start = 8 + n

    def values(keys: list[str]) -> dict[str, list[float]]:
        wanted = {}
        for key in keys:
            e = entries.get(key)
            if e and (e.dtype in _STRUCT_CODES or e.dtype == "BF16") and math.prod(e.shape) <= MAX_VALUE_ELEMENTS:
                wanted[key] = e
        out = {}
        with open(path, "rb", buffering=0) as f:  # unbuffered: read the few bytes asked for, not 8 KB each
            for key, e in sorted(wanted.items(), key=lambda kv: kv[1].begin):
                f.seek(data_start + e.begin)
                out[key] = _decode(e.dtype, f.read(e.end - e.begin))
        return out

    return TensorTable(
        shapes={k: e.shape for k, e in entries.items()},
        dtypes={k: SAFETENSORS_DTYPES[e.dtype][0] for k, e in entries.items()},
        metadata={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
        values=values,
    )


def _decode(dtype: str, buf: bytes) -> list[float]:
    if dtype == "BF16":  # the upper half of a float32
        return [struct.unpack("<f", b"\x00\x00" + buf[i : i + 2])[0] for i in range(0, len(buf), 2)]
    code = _STRUCT_CODES[dtype]
    return [float(v) for v in struct.unpack(f"<{len(buf) // struct.calcsize(code)}{code}", buf)]


def _check_entry(path: Path, key: str, info: Any) -> _Entry:
    if not isinstance(info, dict):
        raise _bad(path, f"entry {key!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise _bad(path, f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(path, f"tensor {key!r} has a bad shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _bad(path, f"tensor {key!r} has bad data offsets")
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]:
        raise _bad(path, f"tensor {key!r} has offsets that do not match its shape")
    return _Entry(dtype, tuple(shape), begin, end)


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- pickles


def _open_zip(path: Path) -> Opened:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # zipfile raises several types on hostile or cut-off directories
        raise _fail(path, "is a damaged zip/PyTorch archive (truncated?); get the file again") from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return Opened("torchscript", TensorTable({}, {}), extras={"archive_files": len(names)})
    if not any(n.endswith("data.pkl") for n in names):
        raise _fail(path, "is a zip archive, not a PyTorch checkpoint (extract it first?)")
    return _open_pickle(path, zip_format=True)


def _open_pickle(path: Path, *, zip_format: bool) -> Opened:
    import pickle

    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    if zip_format and "mmap" in inspect.signature(torch.load).parameters:  # torch >= 2.1
        kwargs["mmap"] = True  # shapes without reading the tensors' bytes
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; older ones refuse these files
    inert = [(type(name.rsplit(".", 1)[1], (InertObject,), {}), name) for name in _INERT_GLOBALS]
    try:
        with allow(inert) if allow else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd pickle protocols etc.: the outcome is reported instead
            obj = torch.load(path, **kwargs)
    except pickle.UnpicklingError as e:
        wanted = sorted(set(re.findall(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(e))))
        needs = f" (it asks for {', '.join(wanted)})" if wanted else ""
        raise _fail(
            path,
            f"unsafe pickle: loading it would need more than plain tensors{needs}, so it was NOT loaded; "
            "use a .safetensors version of this model",
        ) from None
    except Exception as e:  # torch.load on damaged bytes raises almost any type; the file is the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(path, f"cannot be read as a PyTorch file ({first}); truncated or damaged?") from None
    container = "pickle (zip)" if zip_format else "pickle (legacy)"
    tensors, extras = _main_state_dict(obj)
    table = TensorTable(
        shapes={k: tuple(v.shape) for k, v in tensors.items()},
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        values=lambda keys: {k: v for k in keys if (v := _tensor_values(tensors.get(k))) is not None},
    )
    return Opened(container, table, raw=obj, extras=extras | {"tensor_count": _count_tensors(obj)})


def _count_tensors(obj: Any, depth: int = 0) -> int:
    if is_tensor(obj):
        return 1
    if depth > 6:  # embeddings and hypernetworks nest two or three levels; nothing real goes deeper
        return 0
    if isinstance(obj, InertObject):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v, depth + 1) for v in obj)
    return 0


def _tensor_values(t: Any) -> list[float] | None:
    if t is None or not hasattr(t, "numel") or t.numel() > MAX_VALUE_ELEMENTS:
        return None
    return [float(v) for v in t.detach().float().flatten().tolist()]


# Where training scripts put the weights inside a pickled dict, most specific first.
_WRAPPERS = ("state_dict", "params_ema", "params", "model", "module", "net", "generator", "ema")


def is_tensor(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "numel")


def _main_state_dict(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flat key → tensor dict of a pickled object, and its scalar top-level extras."""
    if not isinstance(obj, Mapping):
        return {}, {}
    extras = {str(k): v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and not isinstance(k, int)}
    if sum(is_tensor(v) for v in obj.values()) >= max(1, len(obj) // 2):
        return {str(k): v for k, v in obj.items() if is_tensor(v)}, extras
    for name in _WRAPPERS:
        inner = obj.get(name)
        if isinstance(inner, Mapping) and any(is_tensor(v) for v in inner.values()):
            return {str(k): v for k, v in inner.items() if is_tensor(v)}, extras
    return {}, extras
