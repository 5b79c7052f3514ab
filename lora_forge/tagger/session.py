"""An onnxruntime session over a WD14 graph: the best provider available, checked input and output.

The provider actually in use is read back from the session and shown to the user, because a silent
fall-back to the CPU is the most common "the tagger is slow" report (dataset-tools.md A5/A6).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lora_forge.errors import ForgeError
from lora_forge.tagger.labels import TagList, load_tags
from lora_forge.tagger.registry import ModelFiles

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider")
PROVIDER_NAMES = {"CUDAExecutionProvider": "CUDA", "DmlExecutionProvider": "DirectML", "CPUExecutionProvider": "CPU"}


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def choose_providers(available: list[str], cpu_only: bool = False) -> list[str]:
    """CUDA, then DirectML, then CPU: only those this onnxruntime build has."""
    if cpu_only:
        return ["CPUExecutionProvider"]
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


@dataclass
class GraphInfo:
    input_name: str
    size: int
    fixed_batch: int | None  # 1 for the v2 exports; None when the batch dimension is dynamic
    n_outputs: int | None


def check_graph(inputs: list[Any], outputs: list[Any], model_path: object) -> GraphInfo:
    """Refuse graphs that are not WD14-shaped before any image is read, with a message that says why."""
    if len(inputs) != 1:
        raise ForgeError(f"the graph has {len(inputs)} inputs; a WD14 tagger has one image input", path=model_path)
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type != "tensor(float)":
        raise ForgeError(f"the graph input is {inp.type}; a WD14 tagger takes float32 images", path=model_path)
    if len(shape) != 4 or shape[3] != 3:
        hint = (
            " (channels first, NCHW: a PyTorch export, not a WD14 ONNX model)"
            if len(shape) == 4 and shape[1] == 3
            else ""
        )
        raise ForgeError(
            f"unexpected input layout {shape}{hint}; WD14 models take [batch, height, width, 3]", path=model_path
        )
    h, w = shape[1], shape[2]
    if not (isinstance(h, int) and isinstance(w, int) and h == w and h > 0):
        raise ForgeError(f"the input size {h}x{w} is not a fixed square; is this a WD14 model?", path=model_path)
    out_shape = list(outputs[0].shape) if outputs else []
    n_out = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return GraphInfo(inp.name, h, batch, n_out)


class TaggerSession:
    """One loaded model. Call close() (or use `with`) to give its memory back: training needs the VRAM."""

    def __init__(self, files: ModelFiles, cpu_only: bool = False, parallel_runs: int = 0) -> None:
        import onnxruntime as ort

        if not files.model_path.is_file():
            raise ForgeError("the model file is missing; download the model or pick another", path=files.model_path)
        need = files.spec.min_onnxruntime if files.spec else None
        if need and _version_tuple(ort.__version__) < _version_tuple(need):
            raise ForgeError(
                f"{files.name} needs onnxruntime >= {need} but {ort.__version__} is installed; "
                "update onnxruntime (pip install -U onnxruntime, or onnxruntime-gpu for CUDA)"
            )
        self.tags: TagList = load_tags(files.tags_path)
        requested = choose_providers(ort.get_available_providers(), cpu_only)
        options = ort.SessionOptions()
        # On the CPU, independent single-threaded runs side by side beat one run split over all
        # cores (no per-operator barriers, which also stall badly when other programs load the
        # machine); a GPU gets one runner and batches instead.
        cores = os.cpu_count() or 1
        self.parallel_runs = 1
        if requested[0] == "CPUExecutionProvider":
            self.parallel_runs = parallel_runs or min(4, cores)
            options.intra_op_num_threads = max(1, cores // self.parallel_runs)
        elif requested[0] == "DmlExecutionProvider":
            # DirectML refuses memory patterns and parallel execution (onnxruntime's DirectML notes).
            options.enable_mem_pattern = False
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(files.model_path), options, providers=requested)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
            raise ForgeError(
                f"onnxruntime cannot load the model ({first}); the file is probably incomplete or damaged: "
                "delete it and download again",
                path=files.model_path,
            ) from e
        self.graph = check_graph(self._session.get_inputs(), self._session.get_outputs(), files.model_path)
        if self.graph.n_outputs is not None and self.graph.n_outputs != len(self.tags):
            raise ForgeError(
                f"the tag list has {len(self.tags)} rows but the model outputs {self.graph.n_outputs} "
                "probabilities; model.onnx and selected_tags.csv come from different models: download both again",
                path=files.tags_path,
            )
        self.provider = self._session.get_providers()[0]
        if self.provider != requested[0]:
            log.warning(
                "onnxruntime could not use %s and fell back to %s: tagging will be slow. "
                "Install the onnxruntime-gpu build that matches your CUDA version.",
                requested[0],
                self.provider,
            )
        self.requested = requested[0]

    @property
    def provider_label(self) -> str:
        """'CUDA' / 'DirectML' / 'CPU', plus the fall-back when the preferred one failed to load."""
        name = PROVIDER_NAMES.get(self.provider, self.provider)
        if self.provider != self.requested:
            name += f" (wanted {PROVIDER_NAMES.get(self.requested, self.requested)}, which failed to load)"
        return name

    @property
    def batch_limit(self) -> int | None:
        return self.graph.fixed_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, S, S, 3] BGR 0..255 → [N, T] probabilities."""
        probs = self._session.run(None, {self.graph.input_name: batch})[0]
        if probs.shape[-1] != len(self.tags):
            raise ForgeError(
                f"the model gave {probs.shape[-1]} probabilities for {len(self.tags)} tags; "
                "model.onnx and selected_tags.csv come from different models: download both again"
            )
        return probs

    def close(self) -> None:
        """Drop the session and collect now, so CUDA memory is back before training starts."""
        import gc

        self._session = None
        gc.collect()

    def __enter__(self) -> TaggerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
