"""Stand-in for the WebUI's launch.py (1.10.1: launch.py re-exports modules/launch_utils.py).

install.py imports it when the WebUI runs it with PYTHONPATH=<webui root>. `run_pip` follows
launch_utils.run_pip(command, desc=None, live=...): it prefixes `"<python>" -m pip` and appends
--prefer-binary. With LORA_FORGE_STUB_PIP_LOG set it records the command and the constraints file
it names instead of running pip, so tests can see what install.py asked for without a network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")


def is_installed(package: str) -> bool:
    """launch_utils.is_installed (1.7+): distribution name first, then import name."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            return False


def run_pip(command: str, desc: str | None = None, live: bool = False) -> str | None:
    if desc is not None:
        print(f"Installing {desc}")
    log = os.environ.get("LORA_FORGE_STUB_PIP_LOG")
    if log:
        match = re.search(r'-c "([^"]+)"', command)
        constraints = ""
        if match:
            with open(match.group(1), encoding="utf-8") as f:
                constraints = f.read()
        with open(log, "w", encoding="utf-8") as f:
            f.write(f"{command}\n---\n{constraints}")
        return ""
    args = [python, "-m", "pip", *shlex.split(command), "--prefer-binary"]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"Couldn't install {desc}.\nCommand: {args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result.stdout
