"""After the grid: which run folders there are to pick from, and keeping the chosen file.

Keeping one file moves the run's other epoch files into a trash folder outside the Lora folder
(the WebUI lists every file under it, subfolders included), with a note of where each came from;
nothing is ever deleted here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_text, unused_path
from lora_forge.grid.plan import EpochFile, split_name


def run_folders(lora_dir: Path, limit: int = 200) -> list[Path]:
    """Folders under the Lora folder holding epoch files (name-000001.safetensors …), newest first."""
    if not lora_dir.is_dir():
        return []
    found: dict[Path, float] = {}
    for path in lora_dir.rglob("*.safetensors"):
        if split_name(path.stem)[1] is not None:
            try:
                found[path.parent] = max(found.get(path.parent, 0.0), path.stat().st_mtime)
            except OSError:
                continue
    return sorted(found, key=lambda p: -found[p])[:limit]


def keep_only(files: list[EpochFile], keep: Path, trash_root: Path) -> tuple[Path, list[Path]]:
    """Move every file of `files` except `keep` into a fresh folder under `trash_root`.

    Returns (the trash folder, the moved files' new paths). A file already gone is skipped.
    """
    keep = Path(keep)
    if keep not in {f.path for f in files}:
        raise ForgeError("the file to keep is not one of this grid's files; render the grid again", path=keep)
    others = [f.path for f in files if f.path != keep and f.path.exists()]
    if not others:
        raise ForgeError("there is nothing else to move: the kept file is the only one left")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = unused_path(trash_root / f"{files[0].run}-{stamp}")
    folder.mkdir(parents=True)
    moved = []
    lines = [f"Moved here by LoRA Forge when {keep.name} was kept. Move them back to restore them.", ""]
    for path in others:
        target = unused_path(folder / path.name)
        shutil.move(str(path), str(target))
        moved.append(target)
        lines.append(f"{target.name} <- {path}")
    atomic_write_text(folder / "README.txt", "\n".join(lines) + "\n")
    return folder, moved
