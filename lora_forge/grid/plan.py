"""What a grid will render, decided and checked before the first step: X = a run's epoch files,
Y = strengths, one prompt, one seed.

Every refusal a user can cause (no files, two runs mixed in one folder, a LoRA of another base
family, strengths that do not parse, a grid too large for memory) happens here, so nothing is
ever rendered half-way and then thrown away.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.grid.size import MAX_MEGAPIXELS, check_size
from lora_forge.host.base import LoraRef, RenderRequest
from lora_forge.rundir import RunDir

DEFAULT_STRENGTHS = "0.1-1 (+0.1)"
QUALITY_TAGS = "masterpiece, best quality"
# The trainer's generalisation probe (lora_forge.train.outputs.PROBE): the subject in clothes and
# hair it was not shown in. Spelled out here so the grid does not import the training room.
PROBE = "white hair, red dress"
DEFAULT_NEGATIVE = "lowres, bad anatomy, bad hands, worst quality, low quality, jpeg artifacts, blurry"
MAX_STRENGTHS = 40
MAX_FILES = 100
CHARACTERISTIC_SHARE = 0.5  # a tag in at least half of the training captions describes the subject

_EPOCH_RE = re.compile(r"^(?P<name>.+)-(?P<num>\d{6})$")  # kohya / our trainer: name-000006
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE_RE = re.compile(
    rf"^(?P<a>{_NUMBER})\s*-\s*(?P<b>{_NUMBER})\s*(?:\(\s*(?P<step>{_NUMBER})\s*\)|\[\s*(?P<count>\d+)\s*\])?$"
)


@dataclass(frozen=True)
class EpochFile:
    """One column of the grid: a LoRA file and the epoch it stands for."""

    path: Path
    epoch: int
    is_final: bool  # the file without a number (the run's last save), shown as its epoch
    run: str  # the run's output name (file stem without -NNNNNN)
    base: str = ""  # sd1 / sd2 / sdxl / flux/sd3 from the file's shapes or metadata; "" unknown

    @property
    def label(self) -> str:
        """The X label: the NUM the tutorial's renamed file would carry."""
        return f"{self.epoch:06d}" + (" (final)" if self.is_final else "")

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass
class GridPlan:
    files: list[EpochFile]
    strengths: list[float]
    prompt: str  # without any <lora:…> token: the host adds the file per cell
    negative_prompt: str = DEFAULT_NEGATIVE
    seed: int = 1234
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"
    trigger: str = ""
    probe: str = PROBE
    characteristic_tags: list[tuple[str, float]] = field(default_factory=list)  # (tag, share of captions)
    notes: list[str] = field(default_factory=list)

    @property
    def run(self) -> str:
        return self.files[0].run

    @property
    def folder(self) -> Path:
        return self.files[0].path.parent

    @property
    def cells(self) -> int:
        return len(self.files) * len(self.strengths)

    def request(self, file: EpochFile, strength: float) -> RenderRequest:
        return RenderRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            width=self.width,
            height=self.height,
            sampler=self.sampler,
            loras=[LoraRef(file.path, strength)],
        )

    def x_labels(self) -> list[str]:
        return [f.label for f in self.files]

    def y_labels(self) -> list[str]:
        return [format_strength(s) for s in self.strengths]


def format_strength(s: float) -> str:
    return f"{s:g}"


# -- strengths -----------------------------------------------------------------------------------


def parse_strengths(text: str | list[float] | tuple[float, ...]) -> list[float]:
    """ "0.1,0.5,1", "0.1-1 (+0.1)", "0-1 [5]" (the X/Y/Z plot's range syntax) or a mix of them.

    A range without a step counts in tenths, since strengths are fractions. Duplicates are dropped
    keeping the first; the order the user wrote is kept (it is the order of the rows).
    """
    if isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        values = []
        tight = re.sub(r"\s*([-(\[)\]])\s*", r"\1", text.strip())  # "0.1 - 1 (+0.1)" → "0.1-1(+0.1)"
        parts = [p for p in re.split(r"[,，;；\s]+", tight) if p]
        for part in parts:
            values.extend(_parse_part(part, text))
    out: list[float] = []
    for v in values:
        if not math.isfinite(v):
            raise ForgeError(f"strength {v} is not a number; use values like 0.1,0.5,1")
        v = round(v, 6) + 0.0  # 0.30000000000000004 → 0.3, and -0.0 → 0.0
        if v not in out:
            out.append(v)
    if not out:
        raise ForgeError("no strengths given; write them like 0.1,0.5,1 or 0.1-1 (+0.1)")
    if len(out) > MAX_STRENGTHS:
        raise ForgeError(f"{len(out)} strengths is too many for one grid (at most {MAX_STRENGTHS}); use a larger step")
    return out


def _parse_part(part: str, whole: str) -> list[float]:
    compact = part.replace(" ", "")
    try:
        return [float(compact)]
    except ValueError:
        pass
    m = _RANGE_RE.match(part.strip())
    if m is None:
        raise ForgeError(
            f"cannot read the strength {part!r} in {whole!r}: write numbers separated by commas (0.1,0.5,1) "
            "or a range like 0.1-1 (+0.1) or 0-1 [5]"
        )
    a, b = float(m["a"].replace(" ", "")), float(m["b"].replace(" ", ""))
    if m["count"] is not None:
        n = int(m["count"])
        if n < 1 or n > MAX_STRENGTHS:
            raise ForgeError(f"the range {part!r} asks for {n} values; give 1 to {MAX_STRENGTHS}")
        return [a + (b - a) * i / max(1, n - 1) for i in range(n)] if n > 1 else [a]
    step = float(m["step"].replace(" ", "")) if m["step"] else (0.1 if b >= a else -0.1)
    if step == 0 or (b - a) * step < 0:
        raise ForgeError(f"the range {part!r} never reaches its end with step {step:g}; check the sign of the step")
    n = math.floor((b - a) / step + 1e-9) + 1
    if n > MAX_STRENGTHS:
        raise ForgeError(f"the range {part!r} gives {n} strengths (at most {MAX_STRENGTHS}); use a larger step")
    return [a + step * i for i in range(n)]


# -- files ---------------------------------------------------------------------------------------


def split_name(stem: str) -> tuple[str, int | None]:
    """("mychar", 6) for mychar-000006, ("mychar", None) for the final mychar."""
    m = _EPOCH_RE.match(stem)
    return (m["name"], int(m["num"])) if m else (stem, None)


def _lora_info(path: Path) -> tuple[bool, str, dict[str, str]]:
    """(is a LoRA, base family, metadata) from the header alone."""
    from lora_forge.inspect import inspect_file
    from lora_forge.lora.fileformat import read_metadata

    report = inspect_file(path)
    if report.kind != "lora":
        return False, "", {}
    try:
        meta = read_metadata(path)
    except (ForgeError, OSError, ValueError):
        meta = {}
    return True, str(report.details.get("base") or ""), meta


def collect_files(sources: list[Path] | Path) -> tuple[list[EpochFile], dict[Path, dict[str, str]], list[str]]:
    """The LoRA files of ONE run, ordered by epoch, the final file last; their metadata; notes.

    A folder contributes its *.safetensors that are LoRAs (other models beside them are skipped
    with a note); files named one by one must all be LoRAs.
    """
    sources = [sources] if isinstance(sources, Path) else [Path(s) for s in sources]
    if not sources:
        raise ForgeError("no LoRA files given: pick a run folder or the epoch files")
    notes: list[str] = []
    candidates: list[tuple[Path, bool]] = []  # (path, named explicitly)
    for src in sources:
        src = Path(str(src).strip().strip('"'))
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.suffix.lower() == ".safetensors" and p.is_file())
            if not found:
                inside = _run_folders(src)
                if inside:
                    raise ForgeError(
                        f"this folder holds run folders, not LoRA files: {', '.join(inside)}; pick one "
                        f"(e.g. {src / inside[-1]}, the newest)",
                        path=src,
                    )
                raise ForgeError(
                    "no LoRA files (.safetensors) in this folder; pick the run folder that holds "
                    "name-000001.safetensors … name.safetensors",
                    path=src,
                )
            candidates += [(p, False) for p in found]
            # other runs of the same name (zkw, zkw-2, …: a new run never overwrites one), not every
            # LoRA folder beside it (the WebUI's Lora folder holds all of the user's LoRAs)
            family = re.sub(r"-\d+$", "", src.name)
            others = [n for n in _run_folders(src.parent) if n != src.name and re.sub(r"-\d+$", "", n) == family]
            if others:
                notes.append(f"run folders beside {src.name}: {', '.join(others)}; this grid shows {src.name}")
        elif src.is_file():
            if src.suffix.lower() != ".safetensors":
                raise ForgeError("not a .safetensors LoRA file (the grid reads kohya-format LoRAs)", path=src)
            candidates.append((src, True))
        else:
            raise ForgeError("no such file or folder", path=src)
    infos: dict[Path, dict[str, str]] = {}
    picked: list[tuple[Path, str, str | None, int | None]] = []  # path, base, ss_output_name, number
    for path, explicit in dict.fromkeys(candidates):
        is_lora, base, meta = _lora_info(path)
        if not is_lora:
            if explicit:
                raise ForgeError("not a LoRA file (the model inspector tab says what it is)", path=path)
            notes.append(f"skipped {path.name}: not a LoRA")
            continue
        infos[path] = meta
        _name, number = split_name(path.stem)
        picked.append((path, base, meta.get("ss_output_name") or None, number))
    if not picked:
        raise ForgeError("no LoRA files among the given files; pick a run folder of LoRA epoch files")
    runs = sorted({split_name(p.stem)[0] for p, *_ in picked})
    declared = sorted({n for _p, _b, n, _num in picked if n})
    if len(runs) > 1 or len(declared) > 1:
        shown = ", ".join((declared if len(declared) > 1 else runs)[:5])
        raise ForgeError(
            f"these files come from {max(len(runs), len(declared))} different runs ({shown}); a grid compares "
            "the epochs of one run: pick one run's files, or move the other run to its own folder"
        )
    run = runs[0]
    numbered = sorted((num, p, b) for p, b, _n, num in picked if num is not None)
    finals = [(p, b) for p, b, _n, num in picked if num is None]
    if len({num for num, _p, _b in numbered}) != len(numbered):
        raise ForgeError("two files claim the same epoch number; keep one of each")
    files = [EpochFile(p, num, False, run, b) for num, p, b in numbered]
    for p, b in finals:
        twin = next((f for f in files if _same_weights(infos[p], infos[f.path])), None)
        if twin is not None:  # a run that ends on an epoch boundary saves that epoch twice
            notes.append(f"{p.name} holds the same weights as {twin.path.name}: shown once")
            continue
        files.append(EpochFile(p, _final_epoch(infos[p], [f.epoch for f in files]), True, run, b))
    if len(files) > MAX_FILES:
        raise ForgeError(f"{len(files)} epoch files is too many for one grid (at most {MAX_FILES}); pick some")
    return files, infos, notes


def _run_folders(parent: Path) -> list[str]:
    """Sub-folders of `parent` holding .safetensors files (training runs: zkw, zkw-2, …), oldest first."""
    try:
        subs = [d for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []
    runs = [d for d in subs if any(p.suffix.lower() == ".safetensors" for p in d.iterdir() if p.is_file())]
    return [d.name for d in sorted(runs, key=lambda d: (d.stat().st_mtime, d.name))]


def _same_weights(a: dict[str, str], b: dict[str, str]) -> bool:
    """Equal tensors, by the sha256 of the bytes after the header that every saver we know writes."""
    return bool(a.get("sshs_model_hash")) and a.get("sshs_model_hash") == b.get("sshs_model_hash")


def _final_epoch(meta: dict[str, str], taken: list[int]) -> int:
    """The tutorial renames the final file to the next number; we only label it so. kohya writes
    ss_epoch; a number already used by an epoch file means the final is a copy of that epoch's
    weights (or a resumed run) and it still goes last, one past the highest."""
    try:
        epoch = int(float(meta.get("ss_epoch", "")))
    except ValueError:
        epoch = 0
    if epoch > 0 and epoch not in taken and (not taken or epoch > max(taken)):
        return epoch
    return max(taken, default=0) + 1


def check_family(files: list[EpochFile], sd_model: Any) -> None:
    """Refuse LoRAs made for another base family than the loaded model, naming both."""
    from lora_forge.inspect.lora import BASE_LABELS
    from lora_forge.model.family import FAMILY_LABELS, base_family, model_family

    family = model_family(sd_model)
    base = base_family(family)
    wrong = [f for f in files if f.base and base and f.base != base]
    if wrong:
        names = ", ".join(f.path.name for f in wrong[:3])
        label = BASE_LABELS.get(wrong[0].base, wrong[0].base)
        raise ForgeError(
            f"{names} {'was' if len(wrong) == 1 else 'were'} trained for {label} but the loaded model is "
            f"{FAMILY_LABELS.get(family, family)}; load a {label} checkpoint, or pick LoRAs made for this model"
        )


# -- prompt --------------------------------------------------------------------------------------


def tag_counts(meta: dict[str, str]) -> tuple[Counter[str], int]:
    """(tag → captions it is in, number of captions) from kohya's ss_tag_frequency / ss_dataset_dirs."""
    counts: Counter[str] = Counter()
    try:
        freq = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        freq = {}
    for tags in freq.values() if isinstance(freq, dict) else []:
        if isinstance(tags, dict):
            for tag, n in tags.items():
                if isinstance(n, (int, float)) and str(tag).strip():
                    counts[str(tag).strip()] += int(n)
    images = 0
    try:
        dirs = json.loads(meta.get("ss_dataset_dirs") or "{}")
        images = sum(int(d.get("img_count", 0)) for d in dirs.values() if isinstance(d, dict))
    except (ValueError, TypeError, AttributeError):
        pass
    if not images:
        try:
            images = int(float(meta.get("ss_num_train_images", "0")))
        except ValueError:
            images = 0
    return counts, max(images, max(counts.values(), default=0))


def run_config(folder: Path) -> dict[str, Any]:
    """The run's config.toml (our trainer writes one; kohya users often keep theirs beside)."""
    path = RunDir(folder).config
    if not path.is_file():
        return {}
    try:
        from lora_forge.train.config import parse_toml

        return parse_toml(path.read_text(encoding="utf-8-sig"))
    except (ForgeError, OSError, ValueError, ImportError):
        return {}


def find_trigger(meta: dict[str, str], config: dict[str, Any]) -> str:
    """The word that calls the subject: as declared in the file, in the run config, else the tag
    every training caption carries (kohya's keep_tokens convention puts it first)."""
    for key in ("modelspec.trigger_phrase", "ssmd_keywords"):
        if meta.get(key, "").strip():
            return meta[key].strip()
    if str(config.get("trigger_word") or "").strip():
        return str(config["trigger_word"]).strip()
    counts, images = tag_counts(meta)
    if images:
        for tag, n in counts.most_common(3):
            if n >= images:
                return tag
    return ""


def characteristic_tags(meta: dict[str, str], trigger: str, probe: str) -> list[tuple[str, float]]:
    """Tags in at least half of the training captions, the trigger and the probe's attributes
    excepted: what a faithful render of the subject should show."""
    from lora_forge.tagger.labels import match_key

    counts, images = tag_counts(meta)
    if not images:
        return []
    skip = {match_key(trigger)} | {match_key(t) for t in probe.split(",")}
    return [
        (tag, round(n / images, 3))
        for tag, n in sorted(counts.items(), key=lambda tn: (-tn[1], tn[0]))
        if n / images >= CHARACTERISTIC_SHARE and match_key(tag) not in skip
    ][:30]


def build_prompt(trigger: str, user_prompt: str) -> str:
    """Trigger word first (as in training), then the user's prompt; the trigger once only."""
    from lora_forge.tagger.labels import match_key

    user = user_prompt.strip().strip(",").strip()
    have = {match_key(t) for t in user.split(",")}
    parts = [trigger] if trigger and match_key(trigger) not in have else []
    return ", ".join([*parts, user] if user else parts)


# -- the whole plan ------------------------------------------------------------------------------


def make_plan(
    sources: list[Path] | Path,
    strengths: str | list[float] = DEFAULT_STRENGTHS,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    seed: int = 1234,
    steps: int = 20,
    cfg_scale: float = 7.0,
    size: tuple[int, int] | None = (512, 512),
    sampler: str = "Euler a",
    sd_model: Any = None,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> GridPlan:
    """Everything checked: files of one run, the model's family, strengths, size, the prompt.

    `prompt=None` means the default: quality tags and the run's generalisation probe; the trigger
    word is put in front of whatever prompt is used. `size=None` renders at the size the run trained
    at (its config.toml or the files' `ss_resolution`), else at the loaded family's native size.
    """
    values = parse_strengths(strengths)
    width, height = size or _trained_size(sources, sd_model)
    if width % 8 or height % 8 or width < 64 or height < 64:
        raise ForgeError(f"image size {width}x{height}: width and height must be multiples of 8, at least 64")
    if steps < 1 or steps > 150:
        raise ForgeError(f"{steps} sampling steps: use 1 to 150")
    files, infos, notes = collect_files(sources)
    if sd_model is not None:
        check_family(files, sd_model)
    meta = infos[files[-1].path]
    config = run_config(files[0].path.parent)
    trigger = find_trigger(meta, config)
    user = f"{QUALITY_TAGS}, {PROBE}" if prompt is None else prompt
    if not trigger:
        notes.append("no trigger word found in the files or the run's config.toml; the prompt is used as typed")
    plan = GridPlan(
        files=files,
        strengths=values,
        prompt=build_prompt(trigger, user),
        negative_prompt=DEFAULT_NEGATIVE if negative_prompt is None else negative_prompt,
        seed=int(seed),
        steps=int(steps),
        cfg_scale=float(cfg_scale),
        width=int(width),
        height=int(height),
        sampler=sampler,
        trigger=trigger,
        characteristic_tags=characteristic_tags(meta, trigger, PROBE),
        notes=notes,
    )
    check_size(plan, max_megapixels)
    return plan


NATIVE_SIZE = {"sdxl": 1024, "sd2": 768, "sd1": 512}


def _trained_size(sources: list[Path] | Path, sd_model: Any) -> tuple[int, int]:
    """The run's training resolution (an SDXL run: 1024), else the model's native size, else 512²."""
    first = Path(sources[0] if isinstance(sources, list) and sources else sources)
    folder = first if first.is_dir() else first.parent
    resolution = run_config(folder).get("resolution")
    if resolution:
        try:
            from lora_forge.train.config import parse_resolution

            return parse_resolution(str(resolution))
        except (ForgeError, ValueError):
            pass
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        meta = _lora_info(path)[2]  # kohya's "(w, h)" or modelspec's "wxh"
        text = meta.get("ss_resolution") or meta.get("modelspec.resolution") or ""
        m = re.fullmatch(r"\(?\s*(\d+)\s*[,x]\s*(\d+)\s*\)?", text)
        if m:
            return int(m[1]), int(m[2])
    if sd_model is not None:
        from lora_forge.model.family import base_family, model_family

        side = NATIVE_SIZE.get(base_family(model_family(sd_model)), 512)
        return side, side
    return 512, 512
