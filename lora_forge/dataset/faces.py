"""Where to look in a picture: YuNet faces, and a saliency focal point when there is no face.

YuNet runs through `cv2.FaceDetectorYN` (every WebUI has OpenCV) on a copy whose long side is at
most DETECT_SIDE. The model is read from bytes, not from a path, because OpenCV cannot open
non-ASCII paths on Windows and our models folder often sits under a Chinese user name.

Anime: YuNet alone, at a 0.6 threshold: in our research notes YuNet scored a drawn face 0.83-0.84,
which A1111's 0.9 misses and 0.6 keeps. The LBP anime cascade was left out on purpose: it is a
second model to fetch (it is on no model hub we can rely on), OpenCV 5 drops CascadeClassifier from
the main wheel, and cascades add false positives on photos; a picture where no face is found still
gets the saliency focal point, and the per-image actions fix the rest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge import hub
from lora_forge.errors import ForgeError
from lora_forge.settings import Settings

YUNET_REPO = "opencv/face_detection_yunet"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
# Long side of the copies YuNet sees. First 320 px: it finds every face bigger than ~6 % of the
# long side (portraits, half-body shots: the training pictures) at a third of the cost of 640
# (5 ms vs 15 ms CPU, measured). When that finds nothing, or only faces near YuNet's limit (so
# others of that size may have been missed), a second look at 640 px catches faces down to ~2 %
# (full-body shots, groups). Face-less pictures pay for both looks.
FIRST_SIDE = 320
DETECT_SIDE = 640
SMALL_FACE_PX = 20
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
_MIN_MODEL_BYTES = 10_000  # a Git-LFS pointer (131 bytes) is not a model


@dataclass(frozen=True)
class Face:
    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def scaled(self, s: float) -> Face:
        return Face(self.x * s, self.y * s, self.w * s, self.h * s, self.score)

    def to_json(self) -> dict[str, Any]:
        box = [round(v, 1) for v in (self.x, self.y, self.w, self.h)]
        return {"box": box, "score": round(self.score, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Face:
        return cls(*map(float, d["box"]), float(d["score"]))


def yunet_path(settings: Settings, download: bool = True) -> Path:
    """The YuNet model: placed by hand in our models folder, or fetched once through huggingface_hub."""
    folder = hub.local_folder(settings, YUNET_REPO)
    for candidate in (folder / YUNET_FILE, settings.models_dir / YUNET_FILE):
        if candidate.is_file() and candidate.stat().st_size >= _MIN_MODEL_BYTES:
            return candidate
    if not download:
        raise ForgeError(
            f"the face detector {YUNET_FILE} is not there; download it from the hub repo {YUNET_REPO} "
            f"and place it in {folder}"
        )
    # Fetched on first use by every prepare: offline, a failure is remembered so the next prepare
    # falls back to saliency crops at once instead of waiting for the network again.
    path = hub.download(settings, YUNET_REPO, YUNET_FILE, remember_failure=True)
    if path.stat().st_size < _MIN_MODEL_BYTES:
        raise ForgeError(f"{path} is not a model (only {path.stat().st_size} bytes); delete it and download again")
    return path


class FaceDetector:
    """YuNet, one OpenCV detector per thread (a detector holds its input size, so it is not shareable)."""

    def __init__(self, model_path: Path, score_threshold: float = SCORE_THRESHOLD) -> None:
        import numpy as np

        self.model_path = model_path
        self.score_threshold = score_threshold
        self._model = np.fromfile(str(model_path), dtype=np.uint8)
        self._local = threading.local()
        self._make((64, 64))  # fail now, with a clear message, if the file is not a YuNet model

    def _make(self, size: tuple[int, int]) -> Any:
        import cv2
        import numpy as np

        try:
            det = cv2.FaceDetectorYN.create(
                "onnx", self._model, np.array([], np.uint8), size, self.score_threshold, NMS_THRESHOLD, 5000
            )
        except cv2.error as e:
            raise ForgeError(
                f"{self.model_path} is not a YuNet face model OpenCV can load ({str(e).strip().splitlines()[-1]}); "
                "delete it and download it again"
            ) from e
        self._local.detector = det
        return det

    def find(self, image: Any, first: Any = None) -> list[Face]:
        """Faces in a PIL image, in its pixels: a look at FIRST_SIDE, then at DETECT_SIDE if none was found.

        `first` may be the FIRST_SIDE copy the caller already made (see detection_copy).
        """
        small, s = first if first is not None else detection_copy(image, FIRST_SIDE)
        seen = self.detect(small)
        found = [f.scaled(1 / s) for f in seen]
        near_limit = any(f.h < SMALL_FACE_PX for f in seen)
        if (not found or near_limit) and max(image.size) > FIRST_SIDE * 1.25:
            big, s = detection_copy(image, DETECT_SIDE)
            found = [f.scaled(1 / s) for f in self.detect(big)]
        return found

    def detect(self, rgb: Any) -> list[Face]:
        """Faces in an RGB uint8 array (at most DETECT_SIDE on the long side), in its pixel coordinates."""
        import numpy as np

        h, w = rgb.shape[:2]
        det = getattr(self._local, "detector", None) or self._make((w, h))
        det.setInputSize((w, h))
        _, found = det.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        if found is None:
            return []
        faces = [Face(float(f[0]), float(f[1]), float(f[2]), float(f[3]), float(f[-1])) for f in found]
        return sorted(faces, key=lambda f: -f.score)


def detection_copy(image: Any, side: int = FIRST_SIDE) -> tuple[Any, float]:
    """A small RGB array of `image` (long side <= `side`) and its scale relative to `image`."""
    import numpy as np
    from PIL import Image

    w, h = image.size
    small = image
    factor = -(-max(w, h) // side)
    if factor > 1:  # a box reduce is 5x cheaper than resampling the whole decode
        small = small.reduce(factor)
    if max(small.size) > side:
        s = side / max(small.size)
        small = small.resize((max(1, round(small.size[0] * s)), max(1, round(small.size[1] * s))), Image.BILINEAR)
    return np.asarray(small), small.size[0] / w


def saliency_map(rgb: Any) -> Any:
    """Spectral-residual saliency (Hou & Zhang 2007): what stands out from the picture's own statistics.

    Cheap (a 64x64 FFT), needs no model, and prefers the subject over flat background and over
    repetitive texture, which is what the crop needs when no face is found. Returned at the input's
    size as float32 summing to 1.
    """
    import cv2
    import numpy as np

    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    small -= small.mean()  # without this the mean's huge residual drowns the map in a constant
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-6)
    residual = log_amp - cv2.blur(log_amp, (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), 2.5)
    # a gentle pull to the centre: at equal interest the middle of the picture wins
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 63.0 - 0.5
    sal *= 1.0 - 0.6 * (xx**2 + yy**2)
    sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
    total = float(sal.sum())
    return sal / total if total > 0 else np.full((h, w), 1.0 / (w * h), np.float32)
