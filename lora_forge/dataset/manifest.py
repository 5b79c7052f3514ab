"""The prepared dataset's memory: one JSON file beside the images.

Per source image: where it came from and its hash, the faces found, and every output image made
from it (crop box in the original's pixels, size, faces in output pixels, flags). Later stages read
it to trace an image back; a re-run uses it to skip sources whose hash and options are unchanged
and to reuse their output names, so re-running never piles up copies.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_forge import fsio
from lora_forge.errors import ForgeError

MANIFEST_NAME = "lora_forge_manifest.json"
FORMAT = "lora_forge.dataset.prepare/1"
FACE_SUFFIX = "__face"  # face crops are `<stem>__face.png`, `<stem>__face2.png`: removable as a group


@dataclass
class OutputRecord:
    file: str  # name inside the dataset folder
    kind: str  # "main" or "face"
    crop_box: list[int]  # x0, y0, x1, y1 in the original's pixels (after EXIF rotation)
    size: list[int]  # width, height of the output image
    faces: list[dict[str, Any]]  # face boxes kept in this image, in output pixels, with scores
    flags: list[str]
    sha256: str  # of the written file: tells our unchanged output from one the user edited


@dataclass
class SourceRecord:
    source: str  # as the user knows it: a relative path or "archive.zip:member"
    origin: str  # absolute path of the file (or of the zip) at the time of the run
    member: str | None
    sha256: str
    key: str  # what the outputs depend on: options + action; same hash and key = nothing to do
    size: list[int]  # original width, height after EXIF rotation
    format: str
    notes: list[str]  # what decoding did: rotated, 16-bit scaled, first frame of an animation, ...
    faces: list[dict[str, Any]]  # every face found, in the original's pixels, with scores
    focal: str  # "faces", "saliency", "centre" or "whole": what placed the crop
    action: str  # "auto", "face", "centre", "whole" or "drop" (the last per-image choice)
    dhash: str
    stem: str  # output name stem reserved for this source
    caption: str | None  # the caption file we carried along, if any
    flags: list[str] = field(default_factory=list)  # "small", "near duplicate of ...", ...
    outputs: list[OutputRecord] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SourceRecord:
        outputs = [OutputRecord(**o) for o in d.get("outputs", [])]
        return cls(**{**d, "outputs": outputs})


@dataclass
class Manifest:
    folder: Path
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[SourceRecord] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # from the last run
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    updated: str = ""

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.exists():
            return cls(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                folder,
                data.get("options", {}),
                [SourceRecord.from_json(s) for s in data.get("sources", [])],
                data.get("skipped", []),
                data.get("near_duplicates", []),
                data.get("updated", ""),
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ForgeError(
                f"the manifest is damaged or from another version ({e}); move it away to start this folder afresh",
                path=path,
            ) from e

    def save(self) -> None:
        self.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = {
            "format": FORMAT,
            "updated": self.updated,
            "options": self.options,
            "sources": [asdict(s) for s in self.sources],
            "skipped": self.skipped,
            "near_duplicates": self.near_duplicates,
        }
        try:
            text = json.dumps(data, ensure_ascii=False, indent=1)
            text.encode("utf-8")
        except UnicodeEncodeError:  # a non-UTF-8 (GBK) source path: \u escapes keep its exact bytes
            text = json.dumps(data, ensure_ascii=True, indent=1)
        fsio.atomic_write_text(self.path, text)

    def replace(self, old: SourceRecord | None, record: SourceRecord) -> None:
        """Put `record` where `old` was (a redone source keeps its place), else append it."""
        if old is not None and old in self.sources:
            self.sources[self.sources.index(old)] = record
        else:
            self.sources.append(record)

    def mark_near_duplicates(self) -> list[dict[str, Any]]:
        """Flag each live source that nearly copies an earlier one (and its main image); the pairs."""
        from lora_forge.dataset.ingest import near_duplicates

        live = [s for s in self.sources if s.action != "drop" and s.outputs]
        for s in live:
            s.flags = [f for f in s.flags if not f.startswith("near duplicate of")]
        by_source = {s.source: s for s in live}
        pairs = near_duplicates([(s.source, int(s.dhash, 16)) for s in live])
        self.near_duplicates = [{"a": a, "b": b, "distance": d} for a, b, d in pairs]
        for a, b, d in pairs:
            by_source[b].flags.append(f"near duplicate of {a} (distance {d})")
            main = by_source[b].outputs[0]
            main.flags = [f for f in main.flags if not f.startswith("near duplicate of")]
            main.flags.append(f"near duplicate of {a} (distance {d})")
        return self.near_duplicates

    def by_output(self, file: str) -> SourceRecord | None:
        return next((s for s in self.sources if any(o.file == file for o in s.outputs)), None)

    def stems(self) -> set[str]:
        return {s.stem for s in self.sources}

    def images(self) -> list[tuple[SourceRecord, OutputRecord]]:
        """Every output image now in the dataset, in source order (main image before its face crops)."""
        return [(s, o) for s in self.sources for o in s.outputs]
