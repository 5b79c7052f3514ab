"""Run by the WebUI at every start (unless --skip-install) and right after "Install from URL".

It adds only what LoRA Forge needs and the WebUI lacks: onnxruntime for the WD14 tagger. It never
installs or upgrades torch, gradio, transformers, Pillow, protobuf or numpy: pip gets a constraints
file that pins whatever versions of those are installed, so a resolution that would move one of
them fails instead. Any failure is printed and swallowed, because an extension must never keep the
WebUI from starting.

`plan()` is the whole decision and takes plain data, so the tests can ask it about any machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

PREFIX = "[LoRA Forge]"
# The WebUI's own pins: a dependency of ours must never move them.
PROTECTED = ("torch", "torchvision", "gradio", "transformers", "Pillow", "protobuf", "numpy")
ORT_CPU, ORT_GPU = "onnxruntime", "onnxruntime-gpu"
# WD14 v3 taggers need opset/IR support that arrived in 1.17.
ORT_MIN = (1, 17)


@dataclass
class Machine:
    """What plan() needs to know; gathered by inspect_machine() without importing torch."""

    python: tuple[int, int]
    installed: dict[str, str]  # distribution name -> version, for the packages we ask about
    torch_requires: list[str] = field(default_factory=list)  # torch's Requires-Dist lines
    platform: str = sys.platform


@dataclass
class Plan:
    install: list[str] = field(default_factory=list)  # pip requirement specifiers
    notes: list[str] = field(default_factory=list)  # what we found / decided, for the console


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+", 1)[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):  # 1.23rc1: stop at the pre-release tag
            break
    return tuple(parts)


def torch_cuda(machine: Machine) -> str | None:
    """'cu12', 'cu11' or None (CPU, ROCm, macOS, no torch), read from torch's metadata only.

    Local tags say it directly (2.1.2+cu121, +cpu, +rocm5.6). Untagged wheels from PyPI are CUDA
    builds on Linux (they pull nvidia-* packages) and CPU builds on Windows and macOS.
    """
    version = machine.installed.get("torch")
    if not version:
        return None
    local = version.split("+", 1)[1] if "+" in version else ""
    if local.startswith("cu") and local[2:4].isdigit():
        return f"cu{local[2:4]}"
    if local:
        return None
    nvidia = [r for r in machine.torch_requires if r.lower().startswith("nvidia-")]
    if not nvidia:
        return None
    return "cu11" if any("cu11" in r.lower() for r in nvidia) else "cu12"


def onnxruntime_spec(package: str, machine: Machine, cuda: str | None) -> str | None:
    """The requirement to install, or None when no release fits this Python and these pins."""
    spec = [f">={ORT_MIN[0]}.{ORT_MIN[1]}"]
    protobuf = machine.installed.get("protobuf")
    # 1.24 dropped Python 3.10 wheels, and later releases require protobuf >= 4.25, which would
    # move the WebUI's protobuf 3.20: stay on 1.23.x (wheels for 3.10-3.13) in both cases.
    if machine.python <= (3, 10) or (protobuf and _version_tuple(protobuf) < (4, 25)):
        if machine.python >= (3, 14):
            return None
        spec.append("<1.24")
    # onnxruntime-gpu on PyPI is built for CUDA 12 from 1.19 on; 1.17/1.18 were CUDA 11.8 builds.
    if package == ORT_GPU and cuda == "cu11":
        spec.append("<1.19")
    return package + ",".join(spec)


def plan(machine: Machine) -> Plan:
    """Decide what to install. Never touches anything; see the module docstring."""
    result = Plan()
    if machine.python < (3, 10):
        result.notes.append(f"Python {machine.python[0]}.{machine.python[1]} is too old (3.10+ needed); skipped")
        return result
    cuda = torch_cuda(machine)
    present = [(p, machine.installed[p]) for p in (ORT_GPU, ORT_CPU) if machine.installed.get(p)]
    if present:
        package, version = present[0]
        if _version_tuple(version) >= ORT_MIN:
            result.notes.append(f"{package} {version} present")
            if package == ORT_CPU and cuda:
                result.notes.append(
                    "the tagger runs on CPU; for GPU tagging: "
                    "pip uninstall onnxruntime, then pip install onnxruntime-gpu"
                )
        else:
            spec = onnxruntime_spec(package, machine, cuda)
            if spec:
                result.install.append(spec)
                result.notes.append(f"{package} {version} is older than {ORT_MIN[0]}.{ORT_MIN[1]} (WD14 v3 needs it)")
            else:
                result.notes.append(f"{package} {version} is too old and no newer build fits; the WD14 v3 tagger fails")
    else:
        package = ORT_GPU if cuda and machine.platform != "darwin" else ORT_CPU
        spec = onnxruntime_spec(package, machine, cuda)
        if spec:
            result.install.append(spec)
            result.notes.append(f"onnxruntime missing; torch is a {cuda or 'CPU'} build")
        else:
            result.notes.append("no onnxruntime build fits this Python and protobuf; install one by hand to tag")
    if cuda and not machine.installed.get("bitsandbytes"):
        result.notes.append("optional 8-bit optimizers: pip install bitsandbytes (not installed automatically)")
    return result


def inspect_machine() -> Machine:
    installed = {}
    for name in (ORT_CPU, ORT_GPU, "bitsandbytes", *PROTECTED):
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        torch_requires = importlib.metadata.requires("torch") or []
    except importlib.metadata.PackageNotFoundError:
        torch_requires = []
    return Machine(python=sys.version_info[:2], installed=installed, torch_requires=list(torch_requires))


def constraints_text(machine: Machine) -> str:
    """Pin what is installed of the protected packages; version local tags (+cu121) are kept."""
    return "".join(f"{name}=={machine.installed[name]}\n" for name in PROTECTED if name in machine.installed)


def _pip_install(requirement: str, constraints: str) -> None:
    """Through the WebUI's run_pip (its index URL, --prefer-binary) when we run under it, else pip."""
    try:
        import launch  # the WebUI's launch.py; PYTHONPATH points at the WebUI root when it runs us
    except ImportError:
        launch = None
    if launch is not None and hasattr(launch, "run_pip"):
        launch.run_pip(f'install "{requirement}" -c "{constraints}"', f"{requirement} for LoRA Forge")
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--prefer-binary", requirement, "-c", constraints],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def main() -> int:
    try:
        machine = inspect_machine()
        decided = plan(machine)
        for note in decided.notes:
            print(f"{PREFIX} {note}")
        if not decided.install:
            print(f"{PREFIX} nothing to install")
            return 0
        fd, constraints = tempfile.mkstemp(prefix="lora_forge_constraints_", suffix=".txt")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(constraints_text(machine))
            for requirement in decided.install:
                print(f"{PREFIX} installing {requirement}")
                _pip_install(requirement, constraints)
                print(f"{PREFIX} installed {requirement}")
        finally:
            os.unlink(constraints)
    except Exception as e:  # never stop the WebUI from starting
        output = getattr(e, "stdout", None) or ""
        print(f"{PREFIX} install step failed, the WebUI starts anyway: {e}\n{output}".rstrip())
        print(f"{PREFIX} the WD14 tagger needs onnxruntime; install it by hand: python -m pip install onnxruntime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
