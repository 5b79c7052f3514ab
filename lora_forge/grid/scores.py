"""Measure the grid: per cell, does it show the subject (fidelity) and does it still follow the
rest of the prompt (flexibility); then the recommended epoch and strength, and an overfitting
warning. Advice shown beside the grid, never instead of it.

Fidelity is the mean WD14 probability of the dataset's characteristic tags (those in at least
half of the training captions, weighted by how often), averaged with face likeness (OpenCV SFace
against the dataset's faces) when that model and a dataset folder are there. Flexibility is the
mean WD14 probability of the probe's attributes ("white hair, red dress": things the subject was
never shown with), which an overfit LoRA stops drawing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lora_forge.errors import ForgeError
from lora_forge.grid.plan import CHARACTERISTIC_SHARE, EpochFile, GridPlan
from lora_forge.grid.render import GridResult
from lora_forge.settings import Settings

log = logging.getLogger(__name__)

SFACE_REPO = "opencv/face_recognition_sface"
SFACE_FILE = "face_recognition_sface_2021dec.onnx"
SFACE_SAME_PERSON = 0.363  # OpenCV's cosine threshold for "same identity"
OVERFIT_DROP = 0.5  # flexibility of the last epoch below half its peak
MAX_REFERENCE_FACES = 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class CellScore:
    fidelity: float | None = None  # tags and face together, 0..1
    tags: float | None = None
    face: float | None = None
    flexibility: float | None = None

    @property
    def combined(self) -> float | None:
        """Geometric mean: a cell must do both to score; None when either is unmeasured."""
        if self.fidelity is None or self.flexibility is None:
            return None
        return float(np.sqrt(max(0.0, self.fidelity) * max(0.0, self.flexibility)))

    def label(self) -> str:
        parts = []
        if self.fidelity is not None:
            parts.append(f"F {self.fidelity:.2f}")
        if self.flexibility is not None:
            parts.append(f"X {self.flexibility:.2f}")
        return "  ".join(parts)


@dataclass
class Recommendation:
    file: EpochFile
    strength: float
    column: int
    row: int
    reason: str


@dataclass
class GridScores:
    cells: list[list[CellScore]]  # [strength row][file column], as GridResult.cells
    fidelity_tags: list[str] = field(default_factory=list)
    probe_tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recommendation: Recommendation | None = None
    warning: str = ""

    def table(self, plan: GridPlan) -> list[list[Any]]:
        """Rows for a table: epoch, strength, fidelity, face, flexibility, combined."""
        rows: list[list[Any]] = []
        for c, f in enumerate(plan.files):
            for r, s in enumerate(plan.strengths):
                cs = self.cells[r][c]
                rows.append([f.label, s, _r(cs.fidelity), _r(cs.face), _r(cs.flexibility), _r(cs.combined)])
        return rows

    def to_json(self, plan: GridPlan) -> dict[str, Any]:
        rec = self.recommendation
        return {
            "cells": [
                {"epoch": f.epoch, "file": f.path.name, "strength": s, **vars(self.cells[r][c])}
                for c, f in enumerate(plan.files)
                for r, s in enumerate(plan.strengths)
            ],
            "fidelity_tags": self.fidelity_tags,
            "probe_tags": self.probe_tags,
            "recommendation": None
            if rec is None
            else {"file": str(rec.file.path), "epoch": rec.file.epoch, "strength": rec.strength, "reason": rec.reason},
            "overfitting_warning": self.warning,
            "notes": self.notes,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# -- tags ----------------------------------------------------------------------------------------


def tag_probabilities(session: Any, images: list[Any]) -> np.ndarray:
    """[N, T] WD14 probabilities, prepared exactly as the tagger stage prepares its inputs."""
    from lora_forge.tagger.preprocess import prepare

    size = session.graph.size
    step = session.batch_limit or 16
    out = []
    for k in range(0, len(images), step):
        batch = np.stack([prepare(im, size) for im in images[k : k + step]])
        out.append(session.run(batch))
    return np.concatenate(out) if out else np.zeros((0, len(session.tags)), np.float32)


def _indices(session: Any, tags: list[str]) -> tuple[list[int], list[str], list[str]]:
    """Tag → output row through match_key (so 'white hair' finds white_hair); (rows, found, missing)."""
    from lora_forge.tagger.labels import match_key

    where = {match_key(n): i for i, n in enumerate(session.tags.names)}
    rows, found, missing = [], [], []
    for t in tags:
        i = where.get(match_key(t))
        if i is None:
            missing.append(t)
        else:
            rows.append(i)
            found.append(t)
    return rows, found, missing


def caption_shares(folder: Path) -> list[tuple[str, float]]:
    """(tag, share of captions) for the .txt captions of a dataset folder, commonest first."""
    from collections import Counter

    from lora_forge.fsio import read_text

    counts: Counter[str] = Counter()
    n = 0
    for path in sorted(folder.rglob("*.txt")):
        tags = {t.strip() for t in read_text(path).split(",") if t.strip()}
        if tags:
            n += 1
            counts.update(tags)
    ordered = sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))
    return [(t, round(c / n, 3)) for t, c in ordered if n and c / n >= CHARACTERISTIC_SHARE]


# -- faces ---------------------------------------------------------------------------------------


def sface_path(settings: Settings, download: bool = False) -> Path | None:
    """OpenCV's SFace recogniser: in our models folder (placed by hand or fetched once), else None
    unless `download` asks for it through the hub (mirror endpoint honoured)."""
    from lora_forge import hub

    folder = hub.local_folder(settings, SFACE_REPO)
    for candidate in (folder / SFACE_FILE, settings.models_dir / SFACE_FILE):
        if candidate.is_file() and candidate.stat().st_size > 10_000:
            return candidate
    if not download:
        return None
    return hub.download(settings, SFACE_REPO, SFACE_FILE)


class FaceLikeness:
    """YuNet finds the face, SFace turns it into a 128-d identity vector; likeness is the cosine
    to the mean vector of the dataset's faces, mapped so OpenCV's same-person threshold ≈ 0.6."""

    def __init__(self, sface: Path, yunet: Path) -> None:
        import cv2

        try:
            self._recognizer = cv2.FaceRecognizerSF.create(str(sface), "")
            self._detector = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.6, 0.3, 50)
        except cv2.error as e:
            raise ForgeError(f"OpenCV cannot load the face models ({str(e).strip().splitlines()[-1]})") from e
        self.reference: np.ndarray | None = None

    def feature(self, image: Any) -> np.ndarray | None:
        """The largest face's identity vector, or None when there is no face."""
        rgb = np.asarray(image.convert("RGB"))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._detector.detect(bgr)
        if faces is None or not len(faces):
            return None
        face = max(faces, key=lambda f: f[2] * f[3])
        aligned = self._recognizer.alignCrop(bgr, face)
        vec = self._recognizer.feature(aligned).reshape(-1).astype(np.float64)
        return vec / (np.linalg.norm(vec) or 1.0)

    def set_reference(self, images: list[Any]) -> int:
        vecs = [v for v in (self.feature(im) for im in images) if v is not None]
        if vecs:
            mean = np.mean(vecs, axis=0)
            self.reference = mean / (np.linalg.norm(mean) or 1.0)
        return len(vecs)

    def likeness(self, image: Any) -> float:
        vec = self.feature(image)
        if vec is None or self.reference is None:
            return 0.0  # no face where the dataset had one: the subject is not there
        cos = float(vec @ self.reference)
        return float(np.clip(cos / (SFACE_SAME_PERSON / 0.6), 0.0, 1.0))


def face_scorer(settings: Settings | None, dataset: Path | None, notes: list[str]) -> FaceLikeness | None:
    """A FaceLikeness with its reference set, or None with a note saying why face likeness is off."""
    if settings is None or dataset is None:
        notes.append("face likeness off: no dataset folder to compare faces with")
        return None
    path = sface_path(settings)
    if path is None:
        notes.append(f"face likeness off: the SFace model ({SFACE_FILE}, from {SFACE_REPO}) is not downloaded")
        return None
    from lora_forge.dataset.faces import yunet_path

    try:
        scorer = FaceLikeness(path, yunet_path(settings, download=False))
    except ForgeError as e:
        notes.append(f"face likeness off: {e}")
        return None
    from PIL import Image

    refs = []
    for p in sorted(q for q in Path(dataset).rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)[:60]:
        try:
            with Image.open(p) as im:
                refs.append(im.convert("RGB"))
        except OSError:
            continue
    found = scorer.set_reference(refs[: MAX_REFERENCE_FACES * 3])
    if found < max(1, len(refs) // 2):
        notes.append(f"face likeness off: faces in only {found} of {len(refs)} dataset images (not a person LoRA?)")
        return None
    return scorer


# -- the whole grid ------------------------------------------------------------------------------


def score_grid(
    result: GridResult,
    session: Any,
    dataset: Path | None = None,
    settings: Settings | None = None,
    faces: FaceLikeness | None = None,
) -> GridScores:
    """Scores for every rendered cell, the recommendation and the overfitting warning.

    `session` is an open TaggerSession (any WD14 model); `faces` a ready FaceLikeness, else one is
    made from `settings` + `dataset` when the SFace model is present.
    """
    plan = result.plan
    notes: list[str] = []
    wanted = caption_shares(dataset) if dataset is not None and Path(dataset).is_dir() else []
    wanted = [(t, s) for t, s in wanted if t.strip().lower() != plan.trigger.strip().lower()] or list(
        plan.characteristic_tags
    )
    fid_rows, fid_found, fid_missing = _indices(session, [t for t, _s in wanted])
    weights = np.array([s for t, s in wanted if t in fid_found], np.float64)
    probe = [t.strip() for t in plan.probe.split(",") if t.strip()]
    probe_rows, probe_found, probe_missing = _indices(session, probe)
    if not wanted:
        notes.append("no characteristic tags: the files carry no ss_tag_frequency and no dataset folder was given")
    elif not fid_rows:
        notes.append("none of the dataset's characteristic tags is in this tagger's vocabulary")
    if fid_missing and fid_rows:
        notes.append(f"not in the tagger's vocabulary, left out of fidelity: {', '.join(fid_missing[:8])}")
    if not probe_rows:
        notes.append(f"the probe ({plan.probe}) has no tag in this tagger's vocabulary: flexibility not measured")
    elif probe_missing:
        notes.append(f"probe attributes the tagger cannot see: {', '.join(probe_missing)}")
    if faces is None:
        faces = face_scorer(settings, dataset, notes)

    positions = [(r, c) for r, row in enumerate(result.cells) for c, im in enumerate(row) if im is not None]
    probs = tag_probabilities(session, [result.cells[r][c] for r, c in positions])
    cells = [[CellScore() for _ in plan.files] for _ in plan.strengths]
    for (r, c), p in zip(positions, probs, strict=True):
        cs = cells[r][c]
        if fid_rows:
            cs.tags = float(np.average(p[fid_rows], weights=weights))
        if faces is not None:
            cs.face = faces.likeness(result.cells[r][c])
        parts = [v for v in (cs.tags, cs.face) if v is not None]
        cs.fidelity = float(np.mean(parts)) if parts else None
        if probe_rows:
            cs.flexibility = float(np.mean(p[probe_rows]))
    scores = GridScores(cells, fid_found, probe_found, notes)
    scores.recommendation = recommend(plan, cells)
    scores.warning = overfit_warning(plan, cells, probe_found)
    return scores


FLAT_FIDELITY = 0.03  # fidelity moving less than this over the whole grid: the LoRA changes nothing yet
STRONG_FIDELITY = 0.8  # ... unless it is this high everywhere (the subject is there at every strength)


def learned_nothing(fids: list[float]) -> bool:
    """Every cell shows the subject about equally and not clearly: the LoRA does not yet change what
    the tagger sees, so whichever cell scores "best" is noise, not a choice to recommend."""
    return len(fids) > 1 and max(fids) - min(fids) < FLAT_FIDELITY and max(fids) < STRONG_FIDELITY


def recommend(plan: GridPlan, cells: list[list[CellScore]]) -> Recommendation | None:
    """The cell with the best geometric mean of fidelity and flexibility (earliest epoch, then
    lowest strength, on a tie); by fidelity alone when flexibility is not measured."""
    best: tuple[float, int, int] | None = None
    for c in range(len(plan.files)):
        for r in range(len(plan.strengths)):
            cs = cells[r][c]
            value = cs.combined if cs.combined is not None else cs.fidelity
            if value is not None and (best is None or value > best[0] + 1e-9):
                best = (value, c, r)
    if best is None:
        return None
    _v, c, r = best
    cs, f, s = cells[r][c], plan.files[c], plan.strengths[r]
    fids = [x.fidelity for row in cells for x in row if x.fidelity is not None]
    if learned_nothing(fids):
        reason = (
            f"No cell stands out: fidelity is {min(fids):.2f}–{max(fids):.2f} in every cell, so this LoRA does "
            "not change the subject yet (underfit); Optimise suggests a longer run."
        )
    elif cs.flexibility is None:
        reason = (
            f"Epoch {f.label} at strength {s:g} shows the subject best (fidelity {cs.fidelity:.2f}); "
            "flexibility could not be measured, so check by eye that the prompt's other details survive."
        )
    else:
        reason = (
            f"Epoch {f.label} at strength {s:g} keeps the subject (fidelity {cs.fidelity:.2f}, grid best "
            f"{max(fids):.2f}) while still drawing the prompt's other details (flexibility "
            f"{cs.flexibility:.2f}): the best balance of the two in this grid."
        )
    return Recommendation(f, s, c, r, reason)


def overfit_warning(plan: GridPlan, cells: list[list[CellScore]], probe: list[str]) -> str:
    """A sentence when flexibility at the working strengths (≥ 0.5) collapses in later epochs."""
    rows = [r for r, s in enumerate(plan.strengths) if s >= 0.5] or list(range(len(plan.strengths)))
    per_epoch = []
    for c in range(len(plan.files)):
        vals = [cells[r][c].flexibility for r in rows if cells[r][c].flexibility is not None]
        per_epoch.append(float(np.mean(vals)) if vals else None)
    measured = [(c, v) for c, v in enumerate(per_epoch) if v is not None]
    if len(measured) < 2:
        return ""
    peak_c, peak = max(measured, key=lambda cv: cv[1])
    last_c, last = measured[-1]
    if peak_c == last_c or peak < 0.2 or last >= peak * OVERFIT_DROP:
        return ""
    attrs = ", ".join(probe) or plan.probe
    return (
        f"Possible overfitting: flexibility falls from {peak:.2f} at epoch {plan.files[peak_c].label} to "
        f"{last:.2f} at epoch {plan.files[last_c].label} ({attrs} stop appearing); prefer an earlier epoch."
    )
