"""tools/*.sh as a new user runs them: from their own folder, changing nothing on the system."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
pytestmark = pytest.mark.skipif(
    os.name == "nt" or not (VENV / ".complete").is_file(), reason="needs bash and the tools' venv"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LORA_FORGE_VENV"] = str(VENV)
    env.update(extra)
    return env


def test_run_sh_runs_in_the_users_folder(tmp_path):
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "run.sh"), "python", "-c", "import os, lora_forge; print(os.getcwd())"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path)


def _no_chromium_path(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH with only what the scripts use, no Chromium, and an apt-get that records its calls."""
    bin_dir, record = tmp_path / "bin", tmp_path / "apt-calls"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "sha256sum", "cut", "dirname", "id", "mkdir", "rm", "touch", "grep"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "apt-get").write_text(f'#!{shutil.which("bash")}\necho "$@" >> {record}\n')
    (bin_dir / "apt-get").chmod(0o755)
    return bin_dir, record


def test_the_main_job_installs_nothing_on_the_system(tmp_path):
    bin_dir, record = _no_chromium_path(tmp_path)
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "selftest.sh"), "--help"],
        cwd=tmp_path, env=_env(PATH=str(bin_dir)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout
    assert not record.exists(), record.read_text()


@pytest.mark.skipif(os.getuid() != 0, reason="the test script installs Chromium only as root")
def test_only_the_tests_install_chromium(tmp_path):
    bin_dir, record = _no_chromium_path(tmp_path)
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "test.sh"), "--version"],
        cwd=tmp_path, env=_env(PATH=str(bin_dir)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "chromium" in record.read_text()


def test_the_first_run_says_one_line_while_it_builds_the_environment(tmp_path):
    """pip's and the libraries' warnings go to a log; the user sees one line (issue 17: it was six)."""
    fake_py = tmp_path / "python3"
    # a Python whose venv's pip and python chatter on stderr, as the real ones do on a first run
    fake_py.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ $1 == -m && $2 == venv ]]; then mkdir -p "$3/bin"\n'
        "  for t in pip python; do\n"
        '    printf \'#!/usr/bin/env bash\\necho "WARNING: noise from %s" >&2\\n\' $t > "$3/bin/$t"\n'
        '  chmod +x "$3/bin/$t"; done; fi\n'
    )
    fake_py.chmod(0o755)
    venv = tmp_path / "venv"
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "run.sh"), "true"],
        cwd=tmp_path, env=_env(LORA_FORGE_VENV=str(venv), LORA_FORGE_PYTHON=str(fake_py)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "first run only" in r.stderr, r.stderr
    assert (venv / ".complete").is_file() and "noise from pip" in (tmp_path / "venv.log").read_text()
