"""The preprocess stage: sources in, prepared images + captions + manifest out.

    scan (folders, zips, files) -> hash + de-duplicate -> per image, in a thread pool:
    decode (JPEG draft at the needed scale) -> YuNet on a small copy -> plan crop -> render -> write

Threads, not processes: Pillow's decoders and resampling, OpenCV and hashlib release the GIL, a
thread pool needs no pickling of images and, unlike a process pool on Windows, does not re-import
the WebUI in every worker. The manifest is saved as results arrive, so an interrupted run loses
nothing and a re-run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lora_forge import fsio
from lora_forge.dataset import crop, faces, ingest
from lora_forge.dataset.buckets import SizeRule
from lora_forge.dataset.captions import STATE_DIR
from lora_forge.dataset.lock import dataset_lock
from lora_forge.dataset.manifest import FACE_SUFFIX, Manifest, OutputRecord, SourceRecord
from lora_forge.dataset.names import output_stem
from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress
from lora_forge.settings import Settings

PREVIOUS_DIR = "previous"  # <dataset>/.lora_forge/previous/<time>/: outputs replaced or dropped
# Output formats. JPEG at quality 95 without chroma subsampling is the default: the sources are
# mostly JPEGs already, its error is far below what the VAE's 8x latent keeps, and it encodes 10x
# faster than PNG (2.6 ms vs 27-56 ms for a noisy 512 px photo, measured). PNG is there for whoever
# wants lossless files (zlib level 1: 2x faster than 6 for ~7 % more bytes).
FORMATS = {"jpg": ".jpg", "png": ".png", "webp": ".webp"}
OUTPUT_EXTS = tuple(FORMATS.values())


@dataclass(frozen=True)
class PrepareOptions:
    size: int = 512  # square side, or bucket resolution
    buckets: bool = False
    min_side: int = 256
    max_side: int = 1024
    face_crops: bool = False
    format: str = "jpg"  # "jpg", "png" or "webp" (lossless)
    detect_faces: bool = True
    download: bool = True  # fetch the face model if it is not there
    max_pixels: int = ingest.MAX_PIXELS

    def rule(self) -> SizeRule:
        return SizeRule(self.size, self.buckets, min(self.min_side, self.size), max(self.max_side, self.size))

    def key(self, action: str, detector: str) -> str:
        """What an output depends on; the same source hash and key means the output is up to date."""
        d = asdict(self)
        for k in ("download", "max_pixels"):
            d.pop(k)
        d.update(action=action, detector=detector)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PrepareReport:
    folder: Path
    written: list[str] = field(default_factory=list)  # output files made in this run
    unchanged: list[str] = field(default_factory=list)  # sources already done with the same options
    skipped: list[ingest.Skipped] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    flagged: dict[str, list[str]] = field(default_factory=dict)  # output file -> flags worth a look
    notes: dict[str, list[str]] = field(default_factory=dict)  # source -> what decoding did (rotated, 1st frame...)
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    # with face crops asked for: why there are none when no face model could be used ("" otherwise)
    face_crops: bool = False
    no_face_model: str = ""

    def summary(self) -> str:
        parts = [f"{len(self.written)} images written", f"{len(self.unchanged)} sources unchanged"]
        if self.face_crops:
            parts.append(self.face_crop_line())
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.near_duplicates:
            parts.append(f"{len(self.near_duplicates)} near-duplicate pairs")
        if self.flagged:
            parts.append(f"{len(self.flagged)} flagged")
        return ", ".join(parts) + (" (stopped)" if self.stopped else "")

    def face_crop_line(self) -> str:
        """ "3 face crops", or "0 face crops (no face model: …)" / "(no faces found)" saying why."""
        n = sum(FACE_SUFFIX in Path(name).stem for name in self.written)
        if n or not self.written:
            return f"{n} face crops"
        reason = "no face model" if self.no_face_model else "no faces found"
        return f"0 face crops ({reason})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"] = str(self.folder)
        return d


@dataclass
class _Job:
    item: ingest.SourceItem
    sha256: str
    action: str
    stem: str
    old: SourceRecord | None


class _Stage:
    """One run's shared state: options, detector, the folder, and the lock around the manifest."""

    def __init__(self, out: Path, options: PrepareOptions, settings: Settings, warnings: list[str]) -> None:
        self.out = out
        self.options = options
        self.rule = options.rule()
        self.detector: faces.FaceDetector | None = None
        if options.detect_faces:
            try:
                self.detector = faces.FaceDetector(faces.yunet_path(settings, download=options.download))
            except ForgeError as e:
                warnings.append(f"{e}; crops use the saliency focal point instead of faces")
        self.detector_name = "yunet" if self.detector else "none"
        self.previous: Path | None = None  # made on first use, one per run
        self.lock = threading.Lock()

    def put_away(self, names: Sequence[str]) -> None:
        """Move files of ours that a new result replaces (or a drop removes) out of the dataset, not delete them."""
        for name in names:
            src = self.out / name
            if src.exists():
                with self.lock:
                    if self.previous is None:
                        stamp = time.strftime("%Y%m%d-%H%M%S")
                        self.previous = fsio.unused_path(self.out / STATE_DIR / PREVIOUS_DIR / stamp)
                        self.previous.mkdir(parents=True)
                os.replace(src, fsio.unused_path(self.previous / name))

    def process(self, job: _Job) -> SourceRecord:
        """Decode, detect, crop and write one source; raises ForgeError for a bad file."""
        options, rule = self.options, self.rule
        data = job.item.read()
        dec = ingest.decode(data, job.item.label, min_scale=crop.cover_scale(rule), max_pixels=options.max_pixels)
        width, height = dec.size
        first = faces.detection_copy(dec.image)
        small = first[0]
        found: list[faces.Face] = []
        if self.detector is not None:
            found = [f.scaled(1 / dec.scale) for f in self.detector.find(dec.image, first)]
        saliency = None
        focal = {"centre": "centre", "whole": "whole"}.get(job.action, "faces" if found else "saliency")
        if focal == "saliency":
            saliency = faces.saliency_map(small)
        plan = crop.plan_main(width, height, rule.target(width, height), found, saliency, job.action)
        plans = [("main", plan)]
        notes = list(dec.notes)
        if options.face_crops and found:
            face_plans, face_notes = crop.plan_face_crops(
                width, height, found, options.size, rule.min_side, no_upscale=options.buckets
            )
            notes += face_notes
            plans += [("face", p) for p in face_plans]
        if max(p.scale for _, p in plans) > dec.scale * 1.001 and dec.scale < 1.0:
            # a face crop needs more detail than the reduced decode holds: decode again, larger
            need = max(p.scale for _, p in plans)
            dec = ingest.decode(data, job.item.label, min_scale=need, max_pixels=options.max_pixels)
        del data
        if job.old is not None:
            self.put_away([o.file for o in job.old.outputs])
        flags = []
        short = min(width, height)
        if short < options.size:
            half = " (less than half)" if short * 2 < options.size else ""
            flags.append(f"small: short side {short} px < {options.size}{half}")
        caption_text = job.item.read_caption()
        outputs = [
            self._write(job.stem, n, kind, p, dec, found, caption_text, flags if kind == "main" else [])
            for n, (kind, p) in enumerate(plans)
        ]
        return SourceRecord(
            source=job.item.label,
            origin=str(job.item.path.resolve()),
            member=job.item.member,
            sha256=job.sha256,
            key=self.options.key(job.action, self.detector_name),
            size=[width, height],
            format=dec.format,
            notes=notes,
            faces=[f.to_json() for f in found],
            focal=focal,
            action=job.action,
            dhash=f"{ingest.dhash(crop.to_pil(small)):016x}",
            stem=job.stem,
            caption=f"{job.stem}.txt" if caption_text is not None else None,
            flags=flags,
            outputs=outputs,
        )

    def _write(
        self,
        stem: str,
        n: int,
        kind: str,
        plan: crop.CropPlan,
        dec: ingest.Decoded,
        found: list[faces.Face],
        caption: str | None,
        flags: list[str],
    ) -> OutputRecord:
        """Render, encode and write one output image (and its caption copy); describe it."""
        ext = FORMATS[self.options.format]
        name = f"{stem}{ext}" if kind == "main" else f"{stem}{FACE_SUFFIX}{'' if n == 1 else n}{ext}"
        target = self.out / name
        if target.exists():  # not ours (ours were put away before): never overwrite it
            target = fsio.unused_path(target)
        encoded = crop.encode(crop.render(dec.image, dec.scale, plan), self.options.format)
        # not fsynced: the manifest (durable) is the record, and a re-run redoes an output that a
        # power cut left missing or empty
        fsio.atomic_write_bytes(target, encoded, durable=False)
        if caption is not None and not target.with_suffix(".txt").exists():
            fsio.atomic_write_text(target.with_suffix(".txt"), caption)
        inside = [f for f in found if plan.box.contains(crop.face_box(f), 1.0)]
        return OutputRecord(
            file=target.name,
            kind=kind,
            crop_box=plan.box.rounded(),
            size=list(plan.out_size),
            faces=[f.to_json() for f in crop.faces_in_output(plan, inside)],
            flags=list(plan.flags) + flags,
            sha256=hashlib.sha256(encoded).hexdigest(),
        )


def _sha256_of(item: ingest.SourceItem) -> str:
    return hashlib.sha256(item.read()).hexdigest()


@contextlib.contextmanager
def _cv2_single_threaded(enabled: bool) -> Iterator[None]:
    """Our workers already keep every core busy; OpenCV's own thread pool on top of them only adds
    spinning (YuNet cost 8.6 CPU-ms per image with it, 5.5 without). The setting is global to the
    process, so it is put back afterwards."""
    if not enabled:
        yield
        return
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: PrepareOptions | None = None,
    settings: Settings | None = None,
    progress: ProgressFn = no_progress,
    stop: StopFlag | None = None,
    workers: int | None = None,
) -> PrepareReport:
    """Prepare every image under `inputs` into the dataset folder `out` (see the module docstring)."""
    t0 = time.perf_counter()
    options = options or PrepareOptions()
    try:
        options.rule()
    except ValueError as e:
        raise ForgeError(f"bad size options: {e}") from e
    if options.format not in FORMATS:
        raise ForgeError(f"unknown output format {options.format!r}; use one of {', '.join(FORMATS)}")
    settings = settings or Settings.from_env()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ForgeError(f"cannot create the output folder ({e.strerror}); choose another one", path=out) from e
    ingest.register_plugins()
    report = PrepareReport(out)
    scan = ingest.scan(inputs, exclude=out)
    with dataset_lock(out), contextlib.closing(scan):  # one writer per dataset; each zip read once, then closed
        total = _run(scan, Manifest.load(out), options, settings, report, progress, stop, workers or default_workers())
    report.seconds = round(time.perf_counter() - t0, 2)
    progress(Progress(total, total, report.summary()))
    return report


def _run(
    scan: ingest.Scan,
    manifest: Manifest,
    options: PrepareOptions,
    settings: Settings,
    report: PrepareReport,
    progress: ProgressFn,
    stop: StopFlag | None,
    workers: int,
) -> int:
    out = manifest.folder
    report.skipped += scan.skipped
    stage = _Stage(out, options, settings, report.warnings)
    report.face_crops = options.face_crops
    if options.face_crops and stage.detector is None:
        report.no_face_model = report.warnings[-1] if report.warnings else "face detection is off (--no-faces)"
    progress(Progress(0, len(scan.items), "reading"))

    with _cv2_single_threaded(workers > 1), ThreadPoolExecutor(workers, thread_name_prefix="lf_prepare") as pool:
        hashed = list(pool.map(_try_hash, scan.items))
        jobs = _plan_jobs(scan.items, hashed, manifest, stage, report)
        total = len(jobs)
        progress(Progress(0, total, f"{total} images to prepare, {len(report.unchanged)} unchanged"))
        futures = {}
        for job in jobs:
            futures[pool.submit(_run_job, stage, job, stop)] = job
        done, last_save = 0, time.monotonic()
        for fut in as_completed(futures):
            job = futures[fut]
            done += 1
            result = fut.result()
            if isinstance(result, fsio.DiskFull):  # every next image would fail the same way: stop here
                for f in futures:
                    f.cancel()
                with contextlib.suppress(ForgeError):
                    manifest.save()
                raise fsio.DiskFull(
                    f"the disk filled up after {len(report.written)} prepared images; free some space and run the "
                    "preparation again (it continues where it stopped)",
                    path=out,
                )
            if isinstance(result, ForgeError):
                report.skipped.append(ingest.Skipped(job.item.label, _reason(result)))
            elif result is None:
                report.stopped = True
                continue
            else:
                manifest.replace(job.old, result)
                report.written += [o.file for o in result.outputs]
                if result.notes:
                    report.notes[result.source] = result.notes
                first = result.outputs[0].file if result.outputs else ""
                progress(Progress(done, total, job.item.label, data={"file": first, "folder": str(out)}))
            if time.monotonic() - last_save > 2.0:
                manifest.save()
                last_save = time.monotonic()
    manifest.sources.sort(key=lambda s: s.source)  # workers finish in any order; the file should not
    report.near_duplicates = manifest.mark_near_duplicates()
    for rec in manifest.sources:
        for o in rec.outputs:
            if o.flags:
                report.flagged[o.file] = o.flags
    manifest.options = asdict(options)
    manifest.skipped = [asdict(s) for s in report.skipped]
    manifest.save()
    return total


def _reason(e: ForgeError) -> str:
    """The message without the "path: " prefix (the report names the source itself)."""
    text = str(e)
    prefix = f"{e.path}: "
    return text[len(prefix) :] if e.path is not None and text.startswith(prefix) else text


def _try_hash(item: ingest.SourceItem) -> str | ForgeError:
    try:
        return _sha256_of(item)
    except ForgeError as e:
        return e
    except OSError as e:
        return ForgeError(f"cannot be read ({e.strerror or e}); check its permissions", path=item.label)
    except Exception as e:  # a corrupt zip member raises BadZipFile, zlib.error, EOFError, ...
        return ForgeError(f"cannot be read from the archive ({e.__class__.__name__}: {e})", path=item.label)


def _run_job(stage: _Stage, job: _Job, stop: StopFlag | None) -> SourceRecord | ForgeError | None:
    if stop is not None and stop.requested:
        return None
    try:
        return stage.process(job)
    except ForgeError as e:
        return e
    except OSError as e:
        if e.errno in fsio.NO_SPACE:
            return fsio.DiskFull(f"the disk is full ({e.strerror})", path=job.item.label)
        return ForgeError(f"cannot be read or written ({e.strerror or e})", path=job.item.label)


def _plan_jobs(
    items: list[ingest.SourceItem],
    hashed: list[str | ForgeError],
    manifest: Manifest,
    stage: _Stage,
    report: PrepareReport,
) -> list[_Job]:
    """Drop exact duplicates (first one wins), skip what is done and unchanged, reserve output names."""
    seen: dict[str, str] = {}
    taken = manifest.stems()
    by_sha: dict[str, SourceRecord] = {}  # indexes, not a scan of the manifest per item (quadratic)
    by_origin: dict[tuple[str, str | None], SourceRecord] = {}
    for s in manifest.sources:
        by_sha.setdefault(s.sha256, s)
        by_origin.setdefault((s.origin, s.member), s)
    jobs = []
    for item, sha in zip(items, hashed, strict=True):
        if isinstance(sha, ForgeError):
            report.skipped.append(ingest.Skipped(item.label, _reason(sha)))
            continue
        if sha in seen:
            report.skipped.append(ingest.Skipped(item.label, f"exact duplicate of {seen[sha]}; not used"))
            continue
        seen[sha] = item.label
        # known by content, else the same file edited since: its outputs are replaced, names kept
        old = by_sha.get(sha) or by_origin.get((str(item.path.resolve()), item.member))
        action = old.action if old else "auto"
        if old is not None and action == "drop":
            report.skipped.append(ingest.Skipped(item.label, "dropped earlier from this dataset; not used"))
            continue
        if (
            old is not None
            and old.sha256 == sha
            and old.key == stage.options.key(action, stage.detector_name)
            and all(_intact(stage.out / o.file) for o in old.outputs)
        ):
            report.unchanged.append(item.label)
            continue
        stem = old.stem if old else output_stem(item.name, taken, stage.out, (*OUTPUT_EXTS, ".txt"))
        jobs.append(_Job(item, sha, action, stem, old))
    return jobs


def _intact(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def apply_action(
    folder: str | os.PathLike[str], file: str, action: str, settings: Settings | None = None
) -> SourceRecord:
    """Redo one prepared image: "centre", "face" (face focus), "whole" (padded, nothing cut) or "drop".

    The replaced files move to `.lora_forge/previous/`; the choice is remembered so a re-run keeps it.
    """
    folder = Path(folder)
    manifest = Manifest.load(folder)
    record = manifest.by_output(Path(file).name)
    if record is None:
        raise ForgeError(f"{file} is not one of the prepared images in {folder}; run the preparation first")
    options = PrepareOptions(**{k: v for k, v in manifest.options.items() if k in PrepareOptions.__dataclass_fields__})
    stage = _Stage(folder, options, settings or Settings.from_env(), [])
    if action == "drop":
        names = [o.file for o in record.outputs]
        stage.put_away(names + [str(Path(n).with_suffix(".txt")) for n in names])
        record.action, record.outputs = "drop", []
        manifest.save()
        return record
    if action not in crop.ACTIONS:
        raise ForgeError(f"unknown action {action!r}; use one of {', '.join((*crop.ACTIONS, 'drop'))}")
    item = ingest.SourceItem(record.source, Path(record.origin), record.member)
    try:
        sha = _sha256_of(item)
    except (OSError, ForgeError) as e:
        raise ForgeError(f"the original {record.source} cannot be read any more ({e}); add it again") from e
    if sha != record.sha256:
        raise ForgeError(f"the original {record.source} has changed since it was prepared; run the preparation again")
    new = stage.process(_Job(item, sha, action, record.stem, record))
    new.caption = record.caption
    manifest.sources[manifest.sources.index(record)] = new
    manifest.save()
    return new
