"""The WD14 tagger models users pick from, where their files live, and how far their download got.

A model is either one of SmilingWolf's repositories (downloaded into our models folder through
huggingface_hub, mirror honoured, resumable) or any local folder holding `model.onnx` and
`selected_tags.csv` — users on slow links often copy the files by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.settings import Settings

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"

DEFAULT_MODEL = "wd-vit-tagger-v3"  # the fastest v3 on a CPU, and v3 knows tags up to 2024


@dataclass(frozen=True)
class ModelSpec:
    name: str
    repo_id: str
    size_mb: int  # model.onnx, as listed on the hub; shown to the user before a download
    fixed_batch: bool  # v2 exports have the batch dimension fixed at 1 (we read it from the graph anyway)
    min_onnxruntime: str  # v3 graphs use ai.onnx.ml opset 4, which older runtimes refuse
    card_threshold: float | None  # the model card's precision=recall threshold, shown as a hint
    general_threshold: float = 0.35
    character_threshold: float = 0.85

    @property
    def label(self) -> str:
        size = f"{self.size_mb / 1000:.2f} GB" if self.size_mb >= 1000 else f"{self.size_mb} MB"
        return f"{self.name} ({size})"


def _v2(kind: str, size_mb: int, card: float | None) -> ModelSpec:
    name = f"wd-v1-4-{kind}-tagger-v2"
    return ModelSpec(name, f"SmilingWolf/{name}", size_mb, True, "1.10", card)


def _v3(kind: str, size_mb: int, card: float | None) -> ModelSpec:
    name = f"wd-{kind}-tagger-v3"
    return ModelSpec(name, f"SmilingWolf/{name}", size_mb, False, "1.17", card)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _v3("vit", 379, 0.2614),
        _v3("swinv2", 467, 0.2653),
        _v3("convnext", 395, 0.2682),
        _v3("vit-large", 1260, None),
        _v3("eva02-large", 1260, 0.5296),
        _v2("moat", 326, None),
        _v2("convnextv2", 388, 0.3710),
        _v2("convnext", 388, 0.3685),
        _v2("vit", 373, 0.3537),
        _v2("swinv2", 455, 0.3771),
    )
}


@dataclass(frozen=True)
class ModelFiles:
    """The two files of one model, wherever they came from."""

    name: str
    folder: Path
    spec: ModelSpec | None = None  # None for a folder the user pointed at

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def tags_path(self) -> Path:
        return self.folder / TAGS_FILE


def model_folder(settings: Settings, spec: ModelSpec) -> Path:
    from lora_forge.hub import local_folder

    return local_folder(settings, spec.repo_id)


def download_state(folder: Path) -> str:
    """'present', 'partial' (an interrupted download that the next one resumes) or 'absent'."""
    from lora_forge.hub import partial_files

    has_model = (folder / MODEL_FILE).is_file()
    has_tags = (folder / TAGS_FILE).is_file()
    if has_model and has_tags:
        return "present"
    if has_model or has_tags or partial_files(folder):
        return "partial"
    return "absent"


def list_models(settings: Settings) -> list[tuple[ModelSpec, str]]:
    """Every registered model with its download state, in the order shown to the user."""
    return [(spec, download_state(model_folder(settings, spec))) for spec in MODELS.values()]


def resolve(settings: Settings, name_or_folder: str) -> ModelFiles:
    """A registered model name (files may still be missing) or a folder with the two files."""
    key = name_or_folder.strip()
    if key in MODELS:
        spec = MODELS[key]
        return ModelFiles(spec.name, model_folder(settings, spec), spec)
    folder = Path(key).expanduser()
    if folder.is_dir():
        missing = [f for f in (MODEL_FILE, TAGS_FILE) if not (folder / f).is_file()]
        if missing:
            raise ForgeError(
                f"the model folder lacks {' and '.join(missing)}; a WD14 model folder holds {MODEL_FILE} "
                f"and {TAGS_FILE} (download both from the model's page)",
                path=folder,
            )
        return ModelFiles(folder.name, folder)
    names = ", ".join(MODELS)
    raise ForgeError(f"unknown tagger model {key!r}: give one of {names}, or a folder with {MODEL_FILE} + {TAGS_FILE}")


def missing(files: ModelFiles) -> bool:
    """True when a registered model still has files to download (a user folder never has)."""
    return files.spec is not None and download_state(files.folder) != "present"


def ensure_downloaded(
    settings: Settings, files: ModelFiles, progress: Callable[[str, int, int | None], None] | None = None
) -> ModelFiles:
    """Download what is missing of a registered model; a user folder is taken as it is.

    `progress(filename, bytes_done, bytes_total)` is called while bytes arrive.
    """
    if not missing(files):
        return files
    from lora_forge.hub import download

    for filename in (TAGS_FILE, MODEL_FILE):
        if (files.folder / filename).is_file():
            continue
        report = None if progress is None else (lambda done, total, f=filename: progress(f, done, total))
        download(settings, files.spec.repo_id, filename, progress=report)
    return files


def ready(
    settings: Settings,
    name_or_folder: str,
    progress: Callable[[str, int, int | None], None] | None = None,
    announce: Callable[[ModelFiles], None] | None = None,
) -> ModelFiles:
    """`resolve`, then download what is missing: the model's files, on disk. `announce(files)` is
    called once before a download starts (not at all when nothing is missing)."""
    files = resolve(settings, name_or_folder)
    if missing(files):
        if announce is not None:
            announce(files)
        ensure_downloaded(settings, files, progress)
    return files
