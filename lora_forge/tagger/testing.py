"""A tiny WD14-shaped ONNX model, written without the `onnx` package, for the selftest and the tests.

The real taggers are 300 MB+ downloads; this graph has their exact signature (one float32 input
`[N, H, W, 3]`, BGR, 0-255; one output of sigmoid probabilities `[N, T]`, row i = CSV row i), and its
outputs are a known function of the image's mean colour, so a test can paint an image that must get
known tags. The ONNX protobuf is written by hand (a dozen fields) because `onnx` is not a product
dependency and its wheels want a newer protobuf than the WebUI's 3.20.

Colour rule: p_i = sigmoid(bias_i + B*wb_i + G*wg_i + R*wr_i) with B, G, R the channel means in 0..1.
The weights are chosen so that a pure red, green or blue picture gives exactly the probabilities listed
in TEST_TAGS, and a black one gives FLOOR for every tag.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FLOOR = 0.01

# (name, category, p on a pure red image, on pure green, on pure blue). Category 9 = rating,
# 0 = general, 4 = character (selected_tags.csv). Names are Danbooru style, with underscores.
TEST_TAGS: list[tuple[str, int, float, float, float]] = [
    ("general", 9, 0.10, 0.80, 0.60),
    ("sensitive", 9, 0.70, 0.10, 0.20),
    ("questionable", 9, 0.15, 0.05, 0.05),
    ("explicit", 9, 0.02, 0.02, 0.02),
    ("1girl", 0, 0.98, 0.20, 0.02),
    ("long_hair", 0, 0.95, 0.30, 0.02),
    ("^_^", 0, 0.90, 0.02, 0.02),
    ("star_(symbol)", 0, 0.55, 0.02, 0.02),
    ("open_mouth", 0, 0.50, 0.60, 0.02),
    ("smile", 0, 0.40, 0.70, 0.02),
    ("solo", 0, 0.30, 0.36, 0.02),
    (">_<", 0, 0.10, 0.90, 0.02),
    ("hu_tao_(genshin_impact)", 4, 0.92, 0.02, 0.02),
    ("hatsune_miku", 4, 0.50, 0.14, 0.02),
]

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)

# ---------------------------------------------------------------- protobuf wire format (ONNX subset)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _len(field: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _f32(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


_FLOAT, _INT64 = 1, 7  # TensorProto.DataType


def _tensor(name: str, array: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[array.dtype]
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, dtype) + _len(8, name) + _len(9, np.ascontiguousarray(array).tobytes())


def _value_info(name: str, shape: Sequence[int | str]) -> bytes:
    dims = b"".join(_len(1, _len(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, _FLOAT) + _len(2, dims)
    return _len(1, name) + _len(2, _len(1, tensor_type))


def _attribute(name: str, value: int | float | Sequence[int]) -> bytes:
    if isinstance(value, bool | int):
        return _len(1, name) + _int(3, int(value)) + _int(20, 2)  # INT
    if isinstance(value, float):
        return _len(1, name) + _f32(2, value) + _int(20, 1)  # FLOAT
    return _len(1, name) + b"".join(_int(8, v) for v in value) + _int(20, 7)  # INTS


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: int | float | Sequence[int]) -> bytes:
    """One NodeProto; attributes are ints, floats or lists of ints (all our graphs need)."""
    body = b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs)
    body += _len(3, f"{op}_{outputs[0]}") + _len(4, op)
    return body + b"".join(_len(5, _attribute(k, v)) for k, v in attrs.items())


def model_bytes(
    nodes: Sequence[bytes],
    initializers: dict[str, np.ndarray],
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    outputs: Sequence[tuple[str, Sequence[int | str]]],
    opset: int = 17,
) -> bytes:
    """A whole ModelProto (float32 inputs and outputs) from nodes made by `node`."""
    graph = (
        b"".join(_len(1, n) for n in nodes)
        + _len(2, "lora_forge_graph")
        + b"".join(_len(5, _tensor(k, v)) for k, v in initializers.items())
        + b"".join(_len(11, _value_info(n, s)) for n, s in inputs)
        + b"".join(_len(12, _value_info(n, s)) for n, s in outputs)
    )
    opset_id = _len(1, "") + _int(2, opset)
    return _int(1, 8) + _len(2, "lora_forge.tagger.testing") + _len(7, graph) + _len(8, opset_id)


def colour_model_bytes(
    weights: np.ndarray,
    bias: np.ndarray,
    size: int = 64,
    batch: int | str = "batch",
    layout: str = "NHWC",
    input_name: str = "input_1",
) -> bytes:
    """An ONNX model: probs = sigmoid(mean_colour_bgr / 255 @ weights + bias); weights is [3, T].

    `batch` is an int for a fixed-batch export (as the v2 models) or a name for a dynamic one (v3).
    `layout="NCHW"` makes the wrong kind of graph that a non-WD14 export would be, for error tests.
    """
    weights = np.asarray(weights, np.float32)
    bias = np.asarray(bias, np.float32)
    if layout == "NHWC":
        in_shape: list[int | str] = [batch, size, size, 3]
        axes = [1, 2]
    else:
        in_shape = [batch, 3, size, size]
        axes = [2, 3]
    nodes = [
        node("ReduceMean", [input_name], ["mean"], axes=axes, keepdims=0),
        node("Mul", ["mean", "scale"], ["unit"]),
        node("MatMul", ["unit", "weights"], ["logits0"]),
        node("Add", ["logits0", "bias"], ["logits"]),
        node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    inits = {"scale": np.array([1 / 255], np.float32), "weights": weights, "bias": bias}
    out = [("predictions_sigmoid", [batch, weights.shape[1]])]
    return model_bytes(nodes, inits, [(input_name, in_shape)], out, opset=13)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def colour_weights(tags: Sequence[tuple[str, int, float, float, float]] = TEST_TAGS) -> tuple[np.ndarray, np.ndarray]:
    """Rows B, G, R of the weight matrix and the bias, from the per-colour probabilities."""
    bias = np.array([_logit(FLOOR)] * len(tags), np.float32)
    rows = {
        ch: np.array([_logit(t[col]) - _logit(FLOOR) for t in tags], np.float32)
        for ch, col in (("r", 2), ("g", 3), ("b", 4))
    }
    return np.stack([rows["b"], rows["g"], rows["r"]]), bias


def write_tags_csv(path: Path, tags: Sequence[tuple[str, int, float, float, float]] = TEST_TAGS) -> None:
    lines = ["tag_id,name,category,count"]
    lines += [f"{1000 + i},{name},{cat},{100 - i}" for i, (name, cat, *_rest) in enumerate(tags)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_test_model(
    folder: Path,
    size: int = 64,
    batch: int | str = "batch",
    layout: str = "NHWC",
    csv_rows: int | None = None,
) -> Path:
    """Write model.onnx + selected_tags.csv into `folder` (a model folder as the user would have it).

    `csv_rows` writes only that many CSV rows, to make the mismatch a user gets from mixing files
    of two model versions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    weights, bias = colour_weights()
    (folder / "model.onnx").write_bytes(colour_model_bytes(weights, bias, size=size, batch=batch, layout=layout))
    write_tags_csv(folder / "selected_tags.csv", TEST_TAGS[:csv_rows] if csv_rows is not None else TEST_TAGS)
    return folder


def solid_image(colour: tuple[int, int, int], size: int = 96, mode: str = "RGB"):
    """A square picture of one colour: its mean colour survives the padding and resize unchanged."""
    from PIL import Image

    return Image.new(mode, (size, size), colour if mode == "RGB" else (*colour, 255))
