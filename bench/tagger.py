"""Tagger throughput: our batch path against a plain one-image-at-a-time loop, same model, same run.

The model is a ViT-B/16 at 448 px with random weights (the size class of wd-vit-tagger-v3: 12
blocks, width 768, 784 tokens, 10861 sigmoid outputs, ~350 MB), written as ONNX into a temp folder
by lora_forge.tagger.testing's protobuf writer (no `onnx` package needed). Input WD14-style:
[N, 448, 448, 3] float32 BGR 0..255.

Both paths load the same onnxruntime session once, decode with the same exact preprocessing and
write the same captions; the baseline does decode → preprocess → run → write for one image after
the other, ours is lora_forge.tagger.batch.tag_folder (decode threads ahead of the model; on the
CPU single-threaded runs side by side instead of one run over all cores; batches on a GPU).
Rounds alternate baseline/ours and the medians are compared. Images: a dataset as users bring it,
half phone photos (4032x3024 JPEG), half prepared bucket images (832x1216 PNG).

    python bench/tagger.py [--images 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_forge import fsio
from lora_forge.dataset.captions import caption_path_for, join_tags
from lora_forge.tagger import preprocess
from lora_forge.tagger.batch import TagOptions, list_images, tag_folder
from lora_forge.tagger.labels import CaptionOptions, TagList, Thresholds, caption_tags, predict
from lora_forge.tagger.registry import ModelFiles
from lora_forge.tagger.session import TaggerSession
from lora_forge.tagger.testing import model_bytes, node

SIZE, PATCH, WIDTH, DEPTH, HEADS, MLP, TAGS = 448, 16, 768, 12, 12, 3072, 10861


def vit_onnx(path: Path, seed: int = 0) -> None:
    """ViT-B/16 forward pass as ONNX nodes (pre-norm blocks, mean-pooled tokens, sigmoid head)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    tokens = (SIZE // PATCH) ** 2
    inits: dict[str, np.ndarray] = {
        "in_scale": np.array([1 / 127.5], np.float32),
        "one": np.array([1.0], np.float32),
        "half": np.array([0.5], np.float32),
        "inv_sqrt2": np.array([1 / np.sqrt(2)], np.float32),
        "att_scale": np.array([1 / np.sqrt(WIDTH // HEADS)], np.float32),
        "patch_w": w(WIDTH, 3, PATCH, PATCH),
        "patch_b": np.zeros(WIDTH, np.float32),
        "tok_shape": np.array([0, WIDTH, -1], np.int64),
        "qkv_shape": np.array([0, -1, 3, HEADS, WIDTH // HEADS], np.int64),
        "merge_shape": np.array([0, -1, WIDTH], np.int64),
        "pos": w(1, tokens, WIDTH),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "i2": np.array(2, np.int64),
        "ln_g": np.ones(WIDTH, np.float32),
        "ln_b": np.zeros(WIDTH, np.float32),
        "head_w": w(WIDTH, TAGS),
        "head_b": np.full(TAGS, -2.0, np.float32),
    }
    nodes = [
        node("Mul", ["input", "in_scale"], ["x_s"]),
        node("Sub", ["x_s", "one"], ["x_n"]),
        node("Transpose", ["x_n"], ["x_nchw"], perm=[0, 3, 1, 2]),
        node(
            "Conv", ["x_nchw", "patch_w", "patch_b"], ["patches"], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH]
        ),
        node("Reshape", ["patches", "tok_shape"], ["tok_cf"]),
        node("Transpose", ["tok_cf"], ["tok"], perm=[0, 2, 1]),
        node("Add", ["tok", "pos"], ["x0"]),
    ]
    x = "x0"
    for b in range(DEPTH):
        p = f"b{b}_"
        for name, shape in (("qkv_w", (WIDTH, 3 * WIDTH)), ("o_w", (WIDTH, WIDTH)), ("fc1_w", (WIDTH, MLP))):
            inits[p + name] = w(*shape)
        inits[p + "fc2_w"] = w(MLP, WIDTH)
        for name, n in (("qkv_b", 3 * WIDTH), ("o_b", WIDTH), ("fc1_b", MLP), ("fc2_b", WIDTH)):
            inits[p + name] = np.zeros(n, np.float32)
        nodes += [
            node("LayerNormalization", [x, "ln_g", "ln_b"], [p + "ln1"], axis=-1, epsilon=1e-6),
            node("MatMul", [p + "ln1", p + "qkv_w"], [p + "qkv0"]),
            node("Add", [p + "qkv0", p + "qkv_b"], [p + "qkv1"]),
            node("Reshape", [p + "qkv1", "qkv_shape"], [p + "qkv2"]),
            node("Transpose", [p + "qkv2"], [p + "qkv"], perm=[2, 0, 3, 1, 4]),
            node("Gather", [p + "qkv", "i0"], [p + "q"], axis=0),
            node("Gather", [p + "qkv", "i1"], [p + "k"], axis=0),
            node("Gather", [p + "qkv", "i2"], [p + "v"], axis=0),
            node("Transpose", [p + "k"], [p + "kt"], perm=[0, 1, 3, 2]),
            node("MatMul", [p + "q", p + "kt"], [p + "s0"]),
            node("Mul", [p + "s0", "att_scale"], [p + "s1"]),
            node("Softmax", [p + "s1"], [p + "a"], axis=-1),
            node("MatMul", [p + "a", p + "v"], [p + "o0"]),
            node("Transpose", [p + "o0"], [p + "o1"], perm=[0, 2, 1, 3]),
            node("Reshape", [p + "o1", "merge_shape"], [p + "o2"]),
            node("MatMul", [p + "o2", p + "o_w"], [p + "o3"]),
            node("Add", [p + "o3", p + "o_b"], [p + "o4"]),
            node("Add", [x, p + "o4"], [p + "x1"]),
            node("LayerNormalization", [p + "x1", "ln_g", "ln_b"], [p + "ln2"], axis=-1, epsilon=1e-6),
            node("MatMul", [p + "ln2", p + "fc1_w"], [p + "h0"]),
            node("Add", [p + "h0", p + "fc1_b"], [p + "h1"]),
            node("Mul", [p + "h1", "inv_sqrt2"], [p + "g0"]),
            node("Erf", [p + "g0"], [p + "g1"]),
            node("Add", [p + "g1", "one"], [p + "g2"]),
            node("Mul", [p + "h1", p + "g2"], [p + "g3"]),
            node("Mul", [p + "g3", "half"], [p + "h2"]),
            node("MatMul", [p + "h2", p + "fc2_w"], [p + "h3"]),
            node("Add", [p + "h3", p + "fc2_b"], [p + "h4"]),
            node("Add", [p + "x1", p + "h4"], [p + "x2"]),
        ]
        x = p + "x2"
    nodes += [
        node("LayerNormalization", [x, "ln_g", "ln_b"], ["final"], axis=-1, epsilon=1e-6),
        node("ReduceMean", ["final"], ["pooled"], axes=[1], keepdims=0),
        node("MatMul", ["pooled", "head_w"], ["logits0"]),
        node("Add", ["logits0", "head_b"], ["logits"]),
        node("Sigmoid", ["logits"], ["output"]),
    ]
    data = model_bytes(nodes, inits, [("input", ["batch", SIZE, SIZE, 3])], [("output", ["batch", TAGS])], opset=17)
    path.write_bytes(data)


def write_tags(path: Path) -> None:
    rows = ["tag_id,name,category,count"]
    rows += [f"{i},{r},9,1" for i, r in enumerate(("general", "sensitive", "questionable", "explicit"))]
    rows += [f"{i},tag_{i},{4 if i % 50 == 0 else 0},1" for i in range(4, TAGS)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def make_images(folder: Path, n: int) -> None:
    """Smooth random pictures (compress like photos); half big JPEGs, half prepared-size PNGs."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        w, h, ext = (4032, 3024, "jpg") if i % 2 == 0 else (832, 1216, "png")
        small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        im.save(folder / f"img{i:03d}.{ext}", **({"quality": 92} if ext == "jpg" else {}))


def baseline(folder: Path, plain, tags: TagList) -> None:
    """What a simple tagger does: a default onnxruntime session, one image at a time, nothing overlapped."""
    options = CaptionOptions()
    name = plain.get_inputs()[0].name
    for img in list_images(folder):
        arr = preprocess.load(img, SIZE)
        probs = plain.run(None, {name: arr[None]})[0][0]
        tags_out = caption_tags(predict(probs, tags, Thresholds()), options)
        fsio.atomic_write_text(caption_path_for(img), join_tags(tags_out))


def clear_outputs(folder: Path) -> None:
    for p in folder.glob("*.txt"):
        p.unlink()
    shutil.rmtree(folder / ".lora_forge", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lf_bench_tagger_"))
    try:
        t = time.perf_counter()
        model = tmp / "model"
        model.mkdir()
        vit_onnx(model / "model.onnx")
        write_tags(model / "selected_tags.csv")
        data = tmp / "data"
        data.mkdir()
        make_images(data, args.images)
        print(
            f"built ViT-B/16@448 ONNX ({(model / 'model.onnx').stat().st_size / 1e6:.0f} MB) and "
            f"{args.images} images in {time.perf_counter() - t:.1f}s"
        )
        files = ModelFiles("bench-vit-b16-448", model)
        session = TaggerSession(files)
        plain = ort.InferenceSession(str(files.model_path), providers=["CPUExecutionProvider"])
        print(f"provider: {session.provider_label}, {session.parallel_runs} parallel runs")
        options = TagOptions(batch_size=args.batch_size)
        # warm-up outside the timing: first runs allocate the memory arenas
        session.run(np.zeros((1, SIZE, SIZE, 3), np.float32))
        plain.run(None, {plain.get_inputs()[0].name: np.zeros((1, SIZE, SIZE, 3), np.float32)})
        base_t, ours_t = [], []
        for r in range(args.rounds):
            for name, fn, out in (
                ("baseline", lambda: baseline(data, plain, session.tags), base_t),
                ("ours", lambda: tag_folder(data, files, options, session=session), ours_t),
            ):
                clear_outputs(data)
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
                out.append(dt)
                assert len(list(data.glob("*.txt"))) == args.images
                print(f"round {r + 1} {name:8}: {args.images / dt:.3f} images/s ({dt:.1f}s)", flush=True)
        session.close()
        base, ours = statistics.median(base_t), statistics.median(ours_t)
        ratio = base / ours
        print(f"median: baseline {args.images / base:.3f} images/s, ours {args.images / ours:.3f} images/s")
        print(
            f"RESULT tagger speedup={ratio:.2f}x ours_ips={args.images / ours:.3f} "
            f"baseline_ips={args.images / base:.3f} images={args.images} rounds={args.rounds}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
