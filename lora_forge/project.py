"""炼丹 projects: one folder per LoRA the user is making, so the work survives a WebUI restart.

    <projects root>/<short-safe-folder>/
        lora_forge_project.json   the manifest: schema version, display name, id, revision, where the
                                  user left off (step), settings, the runs it started
        dataset/                  prepared images + captions (素材/裁剪 write here, 打标/编辑 read)
        configs/                  run configs made by 优化 ("train again with these changes")
        grids/                    grids rendered for this project

Trained files stay in the host's Lora folder (each run in its own folder there), because that is
where the WebUI's Lora extension finds them; the manifest lists those run folders.

The folder name is ASCII, short and unique (Windows' 260-character path limit and zip tools that
mangle non-ASCII names); the name the user typed, Chinese or 200 characters long, lives in the
manifest. Saves are atomic and carry a revision number: a second browser tab that saved in
between makes a save fail with a message instead of silently overwriting it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_text, is_within, unused_path
from lora_forge.rundir import RunDir

SCHEMA_VERSION = 1
MANIFEST = "lora_forge_project.json"
LAST_OPENED = ".lora_forge_last_project.json"
RECOVERED = ".lora_forge_recovered"
SUBDIRS = ("dataset", "configs", "grids")
MAX_NAME = 200
MAX_FOLDER = 32
MAX_LORA_NAME = 64
LOCK_STALE_S = 30.0
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
# the user's path, in order; 编辑 (edit) is optional
STEPS = ("images", "crop", "tag", "edit", "train", "test")
STEP_TABS = {
    "images": "prepare",
    "crop": "prepare",
    "tag": "tagger",
    "edit": "editor",
    "train": "train",
    "test": "grid",
}


def clean_name(name: str) -> str:
    """The display name: control characters removed, spaces collapsed, at most MAX_NAME characters."""
    text = "".join(ch for ch in str(name or "") if unicodedata.category(ch)[0] != "C")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise ForgeError("give the project a name (any language)")
    if len(text) > MAX_NAME:
        raise ForgeError(f"the project name is {len(text)} characters; keep it under {MAX_NAME}")
    return text


def folder_name(name: str) -> str:
    """A short ASCII folder name for `name`: its ASCII letters and digits, else 'project'."""
    ascii_part = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_part).strip("-").lower()[:MAX_FOLDER].strip("-")
    if not slug or slug in WINDOWS_RESERVED:
        slug = f"project-{slug}" if slug else "project"
    return slug


def lora_name(name: str) -> str:
    """The LoRA file name a project's runs get by default: its display name, Chinese kept (the
    WebUI, Forge and ComfyUI list and load such files, and `<lora:小明:0.8>` parses); anything
    but letters, digits, '-' and '.' becomes '_', since a file name, the prompt syntax or an X/Y/Z
    value list would break on it; 'lora' if nothing is left."""
    text = re.sub(r"[^\w.\-]+", "_", name).strip("._")[:MAX_LORA_NAME].strip("._")
    return "lora" if not text or text.casefold() in WINDOWS_RESERVED else text


@dataclass
class Project:
    folder: Path
    data: dict[str, Any]
    read_only: str = ""  # why saving is refused (a newer extension made it), else ""

    @property
    def id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.folder.name)

    @property
    def revision(self) -> int:
        return int(self.data.get("revision", 0))

    @property
    def dataset_dir(self) -> Path:
        return self.folder / "dataset"

    @property
    def configs_dir(self) -> Path:
        return self.folder / "configs"

    @property
    def grids_dir(self) -> Path:
        return self.folder / "grids"

    @property
    def step(self) -> str:
        step = str(self.data.get("step") or "images")
        return step if step in STEPS else "images"

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.data.get("settings") or {})

    @property
    def runs(self) -> list[Path]:
        return [Path(p) for p in self.data.get("runs", [])]

    # ------------------------------------------------------------------ saving
    def save(self, changes: dict[str, Any], check_revision: bool = True) -> None:
        """Apply `changes` to the manifest on disk.

        With `check_revision` the save is refused when another tab saved since this one loaded the
        project; without it (where the user left off, a run it started) the change is merged into
        what is on disk, since both tabs' values are true.
        """
        if self.read_only:
            raise ForgeError(self.read_only)
        self._follow_rename()
        with _locked(self.folder):
            on_disk = _read_manifest(self.folder / MANIFEST)
            if check_revision and int(on_disk.get("revision", 0)) != self.revision:
                raise ForgeError(
                    f"project “{self.name}” was changed in another browser tab or window since you opened it; "
                    "nothing was overwritten: press Open to load the newer version, then make your change again"
                )
            # only checked saves count as a new revision: where a tab is, or a run it recorded,
            # must not make another tab's next real change fail
            revision = int(on_disk.get("revision", 0)) + (1 if check_revision else 0)
            merged = {**on_disk, **changes, "revision": revision, "saved": time.time()}
            atomic_write_text(self.folder / MANIFEST, json.dumps(merged, ensure_ascii=False, indent=2))
        self.data = merged

    def set_step(self, step: str) -> None:
        if step in STEPS and not self.read_only:
            self.save({"step": step}, check_revision=False)

    @property
    def runs_elsewhere(self) -> list[Path]:
        """Runs another face (the HTTP API) trained on this project's dataset: they count for the
        steps and 测试, but 训练's fields never come from them (the page's own runs set those)."""
        return [Path(p) for p in self.data.get("runs_elsewhere", [])]

    def add_run(self, run_dir: str | Path, elsewhere: bool = False) -> None:
        """Record a run folder (once); merged, since a run is a fact whichever tab started it. A run
        the page started is the page's even if a refresh first recorded it as trained elsewhere."""
        run = str(Path(run_dir))
        known = run in self.data.get("runs", [])
        if self.read_only or (known and (elsewhere or run not in self.data.get("runs_elsewhere", []))):
            return
        on_disk = self._on_disk()
        runs, others = list(on_disk.get("runs", [])), list(on_disk.get("runs_elsewhere", []))
        changes: dict[str, Any] = {}
        if run not in runs:
            changes["runs"] = [*runs, run]
        if elsewhere and run not in others and run not in runs:
            changes["runs_elsewhere"] = [*others, run]
        elif not elsewhere and run in others:
            changes["runs_elsewhere"] = [p for p in others if p != run]
        if changes:
            self.save(changes, check_revision=False)

    def remember(self, key: str, value: Any) -> None:
        """Keep one of the user's choices (the trigger word the tagger wrote) in the settings;
        merged, like where the user left off: a choice made in one tab is true in the other."""
        if self.read_only or self.settings.get(key) == value:
            return
        self.save({"settings": {**(self._on_disk().get("settings") or {}), key: value}}, check_revision=False)

    def _on_disk(self) -> dict[str, Any]:
        """The manifest as another tab may have saved it: what a merged save adds to."""
        return _read_manifest(self.folder / MANIFEST) if (self.folder / MANIFEST).is_file() else self.data

    def _follow_rename(self) -> None:
        """A folder renamed or moved within the projects root is found again by its id; a deleted
        one keeps the unsaved state in a recovery file so nothing the user typed is lost."""
        if (self.folder / MANIFEST).is_file():
            return
        root = self.folder.parent
        for candidate in _manifests(root):
            with contextlib.suppress(ForgeError):
                if _read_manifest(candidate).get("id") == self.id:
                    self.folder = candidate.parent
                    return
        keep = unused_path(root / RECOVERED / f"{folder_name(self.name)}-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with contextlib.suppress(OSError):
            keep.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(keep, json.dumps(self.data, ensure_ascii=False, indent=2))
        raise ForgeError(
            f"the folder of project “{self.name}” is gone (deleted, or moved out of {root}); "
            f"what this page had is kept in {keep}: create the project again or open it from its new place"
        )


# -- opening and listing --------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as e:
        raise ForgeError("no project here (no lora_forge_project.json)", path=path.parent) from e
    except (OSError, ValueError) as e:
        raise ForgeError(
            f"the project file cannot be read ({e.__class__.__name__}); fix or remove it", path=path
        ) from e
    if not isinstance(data, dict):
        raise ForgeError("the project file is not a JSON object; fix or remove it", path=path)
    return data


def _manifests(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p / MANIFEST for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """A lock file for the few milliseconds of a save (two tabs are two threads or processes)."""
    if not folder.is_dir():
        raise ForgeError("the project folder is gone", path=folder)
    lock = folder / ".lora_forge_project.lock"
    deadline = time.monotonic() + 5.0
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - lock.stat().st_mtime > LOCK_STALE_S:  # left by a crashed save
                    lock.unlink()
                    continue
            if time.monotonic() > deadline:
                raise ForgeError("the project is being saved by another tab; try again in a moment") from None
            time.sleep(0.02)
    try:
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def create(root: str | Path, name: str) -> Project:
    """A new project folder under `root` (never an existing one)."""
    display = clean_name(name)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ForgeError(f"cannot create the projects folder ({e.strerror}); check Settings → LoRA Forge") from e
    for other in list_projects(root):
        if other.name.casefold() == display.casefold():
            raise ForgeError(f"a project named “{display}” already exists; open it or choose another name")
    while True:
        folder = unused_path(root / folder_name(display))
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    for sub in SUBDIRS:
        (folder / sub).mkdir()
    data = {
        "schema": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "name": display,
        "created": time.time(),
        "revision": 1,
        "step": "images",
        "settings": {},
        "runs": [],
    }
    atomic_write_text(folder / MANIFEST, json.dumps(data, ensure_ascii=False, indent=2))
    remember(root, folder)
    return Project(folder, data)


def open_project(folder: str | Path) -> Project:
    folder = Path(folder)
    data = _read_manifest(folder / MANIFEST)
    schema = data.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise ForgeError("the project file has no valid schema number; fix or remove it", path=folder / MANIFEST)
    read_only = ""
    if schema > SCHEMA_VERSION:
        read_only = (
            f"project “{data.get('name', folder.name)}” was saved by a newer LoRA Forge (project format {schema}; "
            f"this one knows up to {SCHEMA_VERSION}); it is open read-only: update the extension to change it"
        )
    return Project(folder, data, read_only)


def list_projects(root: str | Path) -> list[Project]:
    """Projects under `root`, most recently saved first; unreadable ones are left out."""
    out = []
    for manifest in _manifests(Path(root)):
        with contextlib.suppress(ForgeError):
            out.append(open_project(manifest.parent))
    return sorted(out, key=lambda p: -float(p.data.get("saved") or p.data.get("created") or 0))


def find(root: str | Path, key: str) -> Project:
    """By display name or folder name (the list shows names; names are unique per root)."""
    for p in list_projects(root):
        if key in (p.name, p.folder.name):
            return p
    raise ForgeError(f"no project “{key}” in {root}; press 🔄 to refresh the list")


def remember(root: Path, folder: Path) -> None:
    """The project to reopen after a restart (one per projects root: one user per WebUI)."""
    with contextlib.suppress(OSError):
        atomic_write_text(Path(root) / LAST_OPENED, json.dumps({"folder": Path(folder).name}, ensure_ascii=False))


def last_opened(root: str | Path) -> Project | None:
    root = Path(root)
    try:
        name = json.loads((root / LAST_OPENED).read_text(encoding="utf-8")).get("folder", "")
    except (OSError, ValueError, AttributeError):
        return None
    folder = root / str(name)
    if not name or not is_within(folder, root) or not (folder / MANIFEST).is_file():
        return None
    try:
        return open_project(folder)
    except ForgeError:
        return None


# -- where the project stands -----------------------------------------------------------------------


@dataclass
class RunInfo:
    folder: Path
    name: str
    final: bool  # the run's last file is there
    resumable: bool  # a saved training state to continue from
    grids: list[Path] = field(default_factory=list)
    resumed_from: Path | None = None  # the run this one continues


def run_info(run_dir: Path) -> RunInfo | None:
    """What a run folder holds; None when it is gone."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        return None
    name, resumed_from = run_dir.name, None
    with contextlib.suppress(ForgeError, OSError):
        from lora_forge.train.config import read_config_file
        from lora_forge.train.state import resumed_run

        config = read_config_file(run.config)
        name = str(config.get("output_name") or name)
        if config.get("resume"):
            resumed_from = resumed_run(str(config["resume"]))
    return RunInfo(run_dir, name, run.final_file(name).is_file(), run.resumable, run.grids(), resumed_from)
