"""Run by the WebUI at every start (unless --skip-install) and right after "Install from URL".

It adds only what LoRA Forge needs and the WebUI lacks: onnxruntime for the WD14 tagger (the GPU
build made for torch's CUDA major version, else the CPU build) and, on Python 3.10, tomli to read
TOML configs (3.11+ has tomllib). It never
installs or upgrades torch, gradio, transformers, Pillow, protobuf or numpy: pip gets a constraints
file that pins whatever versions of those are installed, so a resolution that would move one of
them fails instead. Any failure is printed and swallowed, because an extension must never keep the
WebUI from starting.

`plan()` is the whole decision and takes plain data, so the tests can ask it about any machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
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
# The CUDA major each onnxruntime-gpu release on PyPI is built for: [from, until) per major.
# 1.17/1.18 were CUDA 11.8 builds, 1.19-1.26 CUDA 12, 1.27 on CUDA 13 (and need protobuf >= 4.25.8).
ORT_GPU_RELEASES = {"cu11": ((1, 17), (1, 19)), "cu12": ((1, 19), (1, 27)), "cu13": ((1, 27), None)}


@dataclass
class Machine:
    """What plan() needs to know; gathered by inspect_machine() without importing torch."""

    python: tuple[int, int]
    installed: dict[str, str]  # distribution name -> version, for the packages we ask about
    torch_requires: list[str] = field(default_factory=list)  # torch's Requires-Dist lines
    platform: str = sys.platform
    # torch.version.cuda as torch/version.py states it ("13.0"); "" for a CPU/ROCm torch; None unread
    torch_cuda_version: str | None = None


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
    """'cu13', 'cu12', 'cu11' … or None (CPU, ROCm, macOS, no torch), without importing torch.

    torch/version.py says it (`cuda = '13.0'`); when it could not be read, the local tag does
    (2.1.2+cu121, +cpu, +rocm5.6), and an untagged Linux wheel from PyPI is a CUDA build whose
    major shows in the CUDA packages it requires (…-cu12, cuda-toolkit==13…).
    """
    version = machine.installed.get("torch")
    if not version:
        return None
    if machine.torch_cuda_version is not None:
        major = machine.torch_cuda_version.split(".", 1)[0]
        return f"cu{major}" if major.isdigit() else None
    local = version.split("+", 1)[1] if "+" in version else ""
    if local.startswith("cu") and local[2:].isdigit() and len(local) >= 4:
        return f"cu{local[2:-1]}"  # cu118 → cu11, cu121 → cu12, cu130 → cu13
    if local:
        return None
    majors = []
    for req in machine.torch_requires:
        name = req.lower()
        found = re.search(r"-cu(\d+)\b", name) or re.search(
            r"^(?:nvidia-cuda-runtime|cuda-toolkit)\S*?[=~]=(\d+)", name
        )
        if found and name.startswith(("nvidia-", "cuda-")):
            majors.append(int(found.group(1)))
    return f"cu{max(majors)}" if majors else None


def _fmt(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def onnxruntime_spec(package: str, machine: Machine, cuda: str | None) -> str | None:
    """The requirement to install, or None when no release fits this Python, these pins and CUDA."""
    low, high = ORT_MIN, None
    protobuf = machine.installed.get("protobuf")
    # 1.24 dropped Python 3.10 wheels, and 1.27 on require protobuf >= 4.25.8, which would move the
    # WebUI's protobuf 3.20: stay on 1.23.x (wheels for 3.10-3.13) in both cases.
    if machine.python <= (3, 10) or (protobuf and _version_tuple(protobuf) < (4, 25)):
        if machine.python >= (3, 14):
            return None
        high = (1, 24)
    if package == ORT_GPU:
        if cuda not in ORT_GPU_RELEASES:
            return None
        gpu_low, gpu_high = ORT_GPU_RELEASES[cuda]
        low = max(low, gpu_low)
        high = gpu_high if high is None else (min(high, gpu_high) if gpu_high else high)
        if high is not None and low >= high:
            return None
    return package + f">={_fmt(low)}" + (f",<{_fmt(high)}" if high else "")


def gpu_release_cuda(version: str) -> str | None:
    """The CUDA major an onnxruntime-gpu release from PyPI was built for."""
    v = _version_tuple(version)[:2]
    for cuda, (low, high) in ORT_GPU_RELEASES.items():
        if v >= low and (high is None or v < high):
            return cuda
    return None


def plan(machine: Machine) -> Plan:
    """Decide what to install. Never touches anything; see the module docstring."""
    result = Plan()
    if machine.python < (3, 10):
        result.notes.append(f"Python {machine.python[0]}.{machine.python[1]} is too old (3.10+ needed); skipped")
        return result
    cuda = torch_cuda(machine)
    present = [(p, machine.installed[p]) for p in (ORT_GPU, ORT_CPU) if machine.installed.get(p)]
    if present:
        _plan_present(result, machine, cuda, *present[0])
    else:
        _plan_missing(result, machine, cuda)
    if machine.python < (3, 11) and not machine.installed.get("tomli"):
        result.install.append("tomli")
        result.notes.append("tomli missing; Python 3.10 needs it to read TOML configs")
    if cuda and not machine.installed.get("bitsandbytes"):
        result.notes.append("optional 8-bit optimizers: pip install bitsandbytes (not installed automatically)")
    return result


def _no_gpu_build(machine: Machine, cuda: str) -> str:
    """Why no onnxruntime-gpu fits, naming what would make one fit."""
    if cuda not in ORT_GPU_RELEASES:
        return f"no onnxruntime-gpu release is built for torch's CUDA {cuda[2:]}"
    low = ORT_GPU_RELEASES[cuda][0]
    return (
        f"onnxruntime-gpu for CUDA {cuda[2:]} (>= {_fmt(low)}) needs Python 3.11+ and protobuf >= 4.25.8, "
        f"and this WebUI has Python {machine.python[0]}.{machine.python[1]} with protobuf "
        f"{machine.installed.get('protobuf', '?')}"
    )


def _plan_present(result: Plan, machine: Machine, cuda: str | None, package: str, version: str) -> None:
    if _version_tuple(version) < ORT_MIN:
        spec = onnxruntime_spec(package, machine, cuda) or onnxruntime_spec(ORT_CPU, machine, None)
        if spec:
            result.install.append(spec)
            result.notes.append(f"{package} {version} is older than {_fmt(ORT_MIN)} (WD14 v3 needs it)")
        else:
            result.notes.append(f"{package} {version} is too old and no newer build fits; the WD14 v3 tagger fails")
        return
    result.notes.append(f"{package} {version} present")
    built_for = gpu_release_cuda(version) if package == ORT_GPU else None
    if package == ORT_GPU and cuda and built_for and built_for != cuda:
        result.notes.append(
            f"{package} {version} is a CUDA {built_for[2:]} build but torch uses CUDA {cuda[2:]}: "
            "the tagger falls back to the CPU. "
            + (
                f'For GPU tagging: pip install "{spec}"'
                if (spec := onnxruntime_spec(ORT_GPU, machine, cuda))
                else _no_gpu_build(machine, cuda) + "; pip uninstall onnxruntime-gpu, then pip install onnxruntime"
            )
        )
    elif package == ORT_CPU and cuda:
        if onnxruntime_spec(ORT_GPU, machine, cuda):
            result.notes.append(
                "the tagger runs on CPU; for GPU tagging: pip uninstall onnxruntime, then pip install onnxruntime-gpu"
            )
        else:
            result.notes.append(f"the tagger runs on CPU: {_no_gpu_build(machine, cuda)}")


def _plan_missing(result: Plan, machine: Machine, cuda: str | None) -> None:
    spec = None
    if cuda and machine.platform != "darwin":
        spec = onnxruntime_spec(ORT_GPU, machine, cuda)
        if spec:
            result.notes.append(f"onnxruntime missing; torch is a CUDA {cuda[2:]} build")
        else:
            result.notes.append(
                f"onnxruntime missing; the CPU build, so the tagger runs on CPU: {_no_gpu_build(machine, cuda)}"
            )
    if spec is None:
        spec = onnxruntime_spec(ORT_CPU, machine, None)
        if spec and not cuda:
            result.notes.append("onnxruntime missing; torch is a CPU build")
    if spec:
        result.install.append(spec)
    else:
        result.notes.append("no onnxruntime build fits this Python and protobuf; install one by hand to tag")


def _torch_cuda_version() -> str | None:
    """torch.version.cuda read from torch/version.py as text: importing torch at every WebUI start
    would cost seconds. "" for a CPU or ROCm build, None when the file cannot be read."""
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.origin:
            return None
        with open(os.path.join(os.path.dirname(spec.origin), "version.py"), encoding="utf-8") as f:
            text = f.read()
    except (OSError, ImportError, ValueError):
        return None
    found = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(?:(['\"])([^'\"]*)\1|None)", text, re.MULTILINE)
    if not found:
        return None
    return found.group(2) or ""


def inspect_machine() -> Machine:
    installed = {}
    for name in (ORT_CPU, ORT_GPU, "bitsandbytes", "tomli", *PROTECTED):
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        torch_requires = importlib.metadata.requires("torch") or []
    except importlib.metadata.PackageNotFoundError:
        torch_requires = []
    return Machine(
        python=sys.version_info[:2],
        installed=installed,
        torch_requires=list(torch_requires),
        torch_cuda_version=_torch_cuda_version() if "torch" in installed else None,
    )


def constraints_text(machine: Machine) -> str:
    """Pin what is installed of the protected packages; version local tags (+cu121) are kept."""
    return "".join(f"{name}=={machine.installed[name]}\n" for name in PROTECTED if name in machine.installed)


def _pip_install(requirements: list[str], constraints: str) -> None:
    """Through the WebUI's run_pip (its index URL, --prefer-binary) when we run under it, else pip."""
    try:
        import launch  # the WebUI's launch.py; PYTHONPATH points at the WebUI root when it runs us
    except ImportError:
        launch = None
    if launch is not None and hasattr(launch, "run_pip"):
        quoted = " ".join(f'"{r}"' for r in requirements)
        launch.run_pip(f'install {quoted} -c "{constraints}"', f"{', '.join(requirements)} for LoRA Forge")
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--prefer-binary", *requirements, "-c", constraints],
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
            wanted = ", ".join(decided.install)
            print(f"{PREFIX} installing {wanted}")
            _pip_install(decided.install, constraints)
            print(f"{PREFIX} installed {wanted}")
        finally:
            os.unlink(constraints)
    except Exception as e:  # never stop the WebUI from starting
        output = getattr(e, "stdout", None) or ""
        print(f"{PREFIX} install step failed, the WebUI starts anyway: {e}\n{output}".rstrip())
        print(f"{PREFIX} the WD14 tagger needs onnxruntime; install it by hand: python -m pip install onnxruntime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
