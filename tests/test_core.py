"""The shared ground every stage stands on: atomic writes, tolerant reads, the CLI's contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora_forge.errors import ForgeError
from lora_forge.fsio import atomic_write_text, is_within, read_text, unused_path
from tests.dataset_support import as_ordinary_user

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")
    atomic_write_text(target, "1girl, 微笑")
    assert target.read_bytes() == "1girl, 微笑".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_atomic_write_keeps_files_readable_by_others(tmp_path: Path) -> None:
    fresh = tmp_path / "new.txt"
    atomic_write_text(fresh, "x")
    assert fresh.stat().st_mode & 0o044 == 0o044 & ~_umask_now()  # like open(): group/others may read
    shared = tmp_path / "shared.txt"
    shared.write_text("old", encoding="utf-8")
    shared.chmod(0o664)
    atomic_write_text(shared, "new")
    assert shared.stat().st_mode & 0o777 == 0o664


def _umask_now() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_atomic_write_refuses_read_only_file(tmp_path: Path) -> None:
    target = tmp_path / "ro.txt"
    target.write_text("keep me", encoding="utf-8")
    target.chmod(0o444)
    with as_ordinary_user(), pytest.raises(ForgeError, match="read-only"):
        atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "keep me"


def test_read_text_handles_bom_and_gbk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf1girl, solo")
    assert read_text(bom) == "1girl, solo"
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("长发, 微笑".encode("gbk"))
    assert read_text(gbk) == "长发, 微笑"
    assert "GBK" in caplog.text


def test_unused_path_never_returns_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "run.safetensors").write_bytes(b"x")
    (tmp_path / "run-2.safetensors").write_bytes(b"x")
    assert unused_path(tmp_path / "run.safetensors").name == "run-3.safetensors"
    assert unused_path(tmp_path / "new.txt") == tmp_path / "new.txt"


def test_is_within_follows_links(tmp_path: Path) -> None:
    inside = tmp_path / "data"
    inside.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (inside / "link").symlink_to(outside)
    assert is_within(inside / "a.png", inside)
    assert not is_within(inside / "link" / "a.png", inside)
    assert not is_within(inside / ".." / "elsewhere", inside)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_forge", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_without_command_prints_help_and_fails() -> None:
    r = _cli()
    assert r.returncode == 2
    assert "selftest" in r.stdout


def test_cli_unknown_command_is_a_usage_error() -> None:
    r = _cli("no-such-command")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_cli_on_a_python_without_torch_says_which_python_to_use(tmp_path: Path) -> None:
    """A bare system Python (no WebUI venv) gets one line naming the fix, not a traceback."""
    code = (
        "import sys; sys.modules['torch'] = None; from lora_forge.cli import main; "
        f"sys.exit(main(['selftest', '--out', {str(tmp_path)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "has no 'torch'" in r.stderr and "tools/run.sh" in r.stderr


def test_importing_the_package_loads_no_heavy_modules() -> None:
    code = (
        "import sys, lora_forge, lora_forge.cli, lora_forge.fsio, lora_forge.events, lora_forge.host;"
        "lora_forge.cli.build_parser();"
        "heavy = [m for m in ('torch', 'cv2', 'onnxruntime', 'gradio') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def _python_3_10() -> str | None:
    candidates = [*map(str, Path("/root/.pyenv/versions").glob("3.10*/bin/python3.10")), shutil.which("python3.10")]
    for c in filter(None, candidates):
        r = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "(3, 10)":
            return c
    return None


PY310 = _python_3_10()


@pytest.mark.skipif(PY310 is None, reason="no Python 3.10 interpreter on this machine")
def test_sources_compile_under_python_3_10() -> None:
    """The WebUI runs on Python 3.10: a 3.11-only construct would break every user at import."""
    targets = [str(p) for p in (ROOT / "lora_forge", ROOT / "scripts", ROOT / "install.py") if p.exists()]
    r = subprocess.run([str(PY310), "-m", "compileall", "-q", *targets], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
