"""The README as a new user follows it: its commands, run as written from a folder outside the
checkout on a fresh HOME, and the names it tells them to click are the page's (issue 17).

Only what cannot be real here is arranged: `~/lora-forge` is this checkout, `model.safetensors` is the
tiny SD1 model (with its yaml), the WD14 download comes from a loopback hub through HF_ENDPOINT, and
the train/grid lines get settings that make the tiny model quick (appended, nothing else changes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hf_loopback import LoopbackHub

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV = Path(sys.prefix)
needs_bash = pytest.mark.skipif(
    os.name == "nt" or not (VENV / ".complete").is_file(), reason="needs bash and the tools' venv"
)
QUICK = {
    " train ": " --set resolution=64 --set min_bucket_reso=64 --set max_train_steps=2 --set sample_every_n_steps=0",
    " grid ": " --size 64x64 --steps 2 --strengths 0.5,1",
}


def _section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else len(README)]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def _as_written(block: str) -> str:
    """The block with the checkout where the README says the user cloned it, and the quick settings."""
    lines = []
    for line in block.replace("~/lora-forge", str(ROOT)).splitlines():
        code = line.split("  #")[0].rstrip()
        for marker, extra in QUICK.items():
            if code.startswith("lf") and marker in code + " ":
                code += extra
        lines.append(code)
    return "set -e\n" + "\n".join(lines) + "\n"


def _user(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORA_FORGE_", "HF_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), LORA_FORGE_VENV=str(VENV), OMP_NUM_THREADS="1")
    return work, env


@needs_bash
def test_the_headless_section_runs_as_written_from_the_users_folder(tmp_path, tiny_files, wd14_model):
    work, env = _user(tmp_path)
    shutil.copyfile(tiny_files.checkpoint, work / "model.safetensors")
    shutil.copyfile(tiny_files.config, work / "model.yaml")
    photos = work / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (600, 520, 3)).astype(np.uint8)).save(photos / f"p{i}.jpg")
    hub = LoopbackHub(
        {("SmilingWolf/wd-vit-tagger-v3", f.name): f.read_bytes() for f in wd14_model.folder.iterdir() if f.is_file()}
    )
    env["HF_ENDPOINT"] = hub.start()
    try:
        (block,) = _bash_blocks(_section("## Headless: the command line"))
        r = subprocess.run(["bash", "-c", _as_written(block)], cwd=work, env=env, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    finally:
        hub.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # everything landed in the user's folder, nothing in the checkout
    assert len(list((work / "data" / "10_zkw").glob("*.txt"))) == 3
    assert (work / "runs" / "zkw" / "zkw.safetensors").is_file()
    assert list(work.glob("grid*.png"))
    assert not (ROOT / "data").exists() and not (ROOT / "runs").exists()
    assert "Checkpoint" in r.stdout and "LoRA" in r.stdout  # inspect's answer for both files


@needs_bash
def test_the_two_commands_run_from_outside_the_checkout(tmp_path):
    work, env = _user(tmp_path)
    (block,) = _bash_blocks(_section("## Two commands"))
    script = _as_written(block)
    # the whole suite inside a test would be the suite twice: the test command only collects one file
    script = script.replace("tools/test.sh", "tools/test.sh --co -q tests/test_tools_scripts.py")
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "selftest passed" in r.stdout and "test_run_sh_runs_in_the_users_folder" in r.stdout
    assert list(work.iterdir()) == []  # nothing left behind in the user's folder, nor our temp folder
    assert not list((tmp_path / "tmp").glob("lora_forge*"))  # (torch keeps its own inductor cache there)


def _ui_strings() -> set[str]:
    """Every string literal in the tab's code, and the project bar's step labels."""
    found: set[str] = set()
    for path in (ROOT / "lora_forge" / "ui").glob("*.py"):
        found |= set(re.findall(r'"([^"\n]+)"', path.read_text(encoding="utf-8")))
    from lora_forge.app import steps

    return found | set(steps.STEP_LABELS.values())


def test_the_tutorials_names_are_the_pages():
    from lora_forge import i18n
    from lora_forge.ui import tab

    ui = _ui_strings()
    titles = [__import__(m, fromlist=["TITLE"]).TITLE for m in tab.SECTIONS if tab.module_exists(m)]
    english = _section("## From images to a grid")
    for name in re.findall(r"^\d\. \*\*([^*]+)\*\*", english, re.M):
        assert name.split(" (")[0] in [*titles, "Create a project"], name
    for label in re.findall(r'"([^"]+)"', english):
        if label in ("selftest passed", "tiny model"):
            continue
        assert label in ui, f"the README says {label!r}; the page has no such label"
    zh = i18n.translator("zh_CN")
    chinese = _section("## 从图片到对比图")
    for pair in re.findall(r"「([^」/]+) / ([^」]+)」", chinese):
        cn, en = pair
        if en == "English":
            continue
        assert en in ui or en == "running", f"the README says {en!r}; the page has no such label"
        assert zh.text(en) == cn, f"the Chinese page shows {zh.text(en)!r} for {en!r}, the README says {cn!r}"
