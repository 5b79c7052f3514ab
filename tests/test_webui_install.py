"""install.py: what it decides for a given machine, and that running it never breaks a WebUI start."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "webui_stub"


def _load_install():
    spec = importlib.util.spec_from_file_location("lora_forge_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


install = _load_install()
WEBUI_PINS = {"protobuf": "3.20.0", "numpy": "1.26.2", "Pillow": "9.5.0", "gradio": "3.41.2"}


def machine(python=(3, 10), torch="2.1.2+cu121", platform="win32", requires=(), cuda=None, **extra):
    installed = dict(WEBUI_PINS, **{k.replace("_", "-"): v for k, v in extra.items()})
    installed.setdefault("tomli", "2.0.1")
    if torch:
        installed["torch"] = torch
    return install.Machine(
        python=python, installed=installed, torch_requires=list(requires), platform=platform, torch_cuda_version=cuda
    )


# torch 2.14.1 from PyPI (untagged, CUDA 13): its Requires-Dist lines for the CUDA libraries.
TORCH_214_REQUIRES = [
    'cuda-toolkit[cublas,cudart,cufft]==13.0.3; platform_system == "Linux"',
    'cuda-bindings<14,>=13.0.3; platform_system == "Linux"',
    'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"',
    "sympy>=1.13.3",
]


def test_cuda_torch_on_python_310_gets_the_gpu_build_that_still_has_wheels() -> None:
    assert install.plan(machine()).install == ["onnxruntime-gpu>=1.19,<1.24"]


def test_cpu_torch_gets_the_cpu_build() -> None:
    assert install.plan(machine(torch="2.1.2+cpu")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch="2.1.2", platform="win32")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch="2.1.2+rocm5.6", platform="linux")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch="2.1.2", platform="darwin")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch=None)).install == ["onnxruntime>=1.17,<1.24"]


def test_untagged_linux_torch_is_cuda_when_it_pulls_nvidia_packages() -> None:
    linux = machine(torch="2.1.2", platform="linux", requires=["nvidia-cuda-runtime-cu12==12.1.105", "sympy"])
    assert install.plan(linux).install == ["onnxruntime-gpu>=1.19,<1.24"]


def test_cuda_11_torch_gets_a_cuda_11_gpu_build() -> None:
    assert install.plan(machine(torch="2.0.1+cu118")).install == ["onnxruntime-gpu>=1.17,<1.19"]


def test_newer_python_with_new_protobuf_is_not_capped_but_old_protobuf_is() -> None:
    newer = install.plan(machine(python=(3, 12), protobuf="5.29.0"))
    assert newer.install == ["onnxruntime-gpu>=1.19,<1.27"]  # 1.27 on are CUDA 13 builds
    assert install.plan(machine(python=(3, 12))).install == ["onnxruntime-gpu>=1.19,<1.24"]


def test_cuda_13_torch_gets_a_cuda_13_gpu_build_or_the_cpu_build_saying_why() -> None:
    # torch.version.cuda read from torch itself, and the same torch seen only through its metadata
    for torch_cuda in ({"cuda": "13.0"}, {"requires": TORCH_214_REQUIRES, "platform": "linux"}):
        webui = install.plan(machine(torch="2.14.1", **torch_cuda))  # Python 3.10, protobuf 3.20
        assert webui.install == ["onnxruntime>=1.17,<1.24"]
        note = next(n for n in webui.notes if "CUDA 13" in n)
        assert "runs on CPU" in note and "protobuf >= 4.25.8" in note and "Python 3.10" in note
        newer = install.plan(machine(torch="2.14.1", python=(3, 12), protobuf="5.29.0", **torch_cuda))
        assert newer.install == ["onnxruntime-gpu>=1.27"]


def test_torch_version_file_wins_over_the_local_tag() -> None:
    assert install.plan(machine(torch="2.14.1+cu130", cuda="13.0")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch="2.4.0", cuda="12.4")).install == ["onnxruntime-gpu>=1.19,<1.24"]
    assert install.plan(machine(torch="2.4.0", cuda="")).install == ["onnxruntime>=1.17,<1.24"]
    assert install.plan(machine(torch="2.4.0+cu124", cuda="14.0")).install == ["onnxruntime>=1.17,<1.24"]


def test_a_present_gpu_build_for_another_cuda_is_named() -> None:
    decided = install.plan(machine(torch="2.14.1", cuda="13.0", onnxruntime_gpu="1.23.2"))
    assert decided.install == []
    assert any("CUDA 12 build but torch uses CUDA 13" in n and "CPU" in n for n in decided.notes)
    assert not any("CUDA 12 build" in n for n in install.plan(machine(onnxruntime_gpu="1.23.2")).notes)


def test_python_310_gets_tomli_for_toml_configs() -> None:
    assert install.plan(machine(tomli=None)).install == ["onnxruntime-gpu>=1.19,<1.24", "tomli"]
    assert "tomli" not in install.plan(machine(python=(3, 11), tomli=None)).install


def test_nothing_fits_python_314_with_protobuf_3() -> None:
    decided = install.plan(machine(python=(3, 14)))
    assert decided.install == []
    assert any("by hand" in n for n in decided.notes)


def test_present_onnxruntime_is_left_alone_and_old_one_is_upgraded_in_its_own_flavour() -> None:
    assert install.plan(machine(onnxruntime_gpu="1.17.1")).install == []
    cpu_on_cuda = install.plan(machine(onnxruntime="1.23.2"))
    assert cpu_on_cuda.install == []
    assert any("GPU tagging" in n for n in cpu_on_cuda.notes)
    assert install.plan(machine(onnxruntime="1.16.3")).install == ["onnxruntime>=1.17,<1.24"]


def test_bitsandbytes_is_only_suggested() -> None:
    decided = install.plan(machine())
    assert not any("bitsandbytes" in r for r in decided.install)
    assert any("pip install bitsandbytes" in n for n in decided.notes)
    assert not any("bitsandbytes" in n for n in install.plan(machine(bitsandbytes="0.43.1")).notes)


def test_never_installs_a_protected_package() -> None:
    for m in (machine(), machine(torch="2.1.2+cpu", python=(3, 11)), machine(onnxruntime="1.15.0")):
        names = {r.split(">")[0].split("<")[0].split("=")[0] for r in install.plan(m).install}
        assert names <= {"onnxruntime", "onnxruntime-gpu", "tomli"}


def test_constraints_pin_what_the_webui_has() -> None:
    text = install.constraints_text(machine())
    assert "protobuf==3.20.0\n" in text and "torch==2.1.2+cu121\n" in text and "Pillow==9.5.0\n" in text
    assert "onnxruntime" not in text


def _run(python: str, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(env_extra)
    return subprocess.run(
        [python, str(ROOT / "install.py")], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_run_where_everything_is_present_installs_nothing(tmp_path: Path) -> None:
    # The test venv is the WebUI stack with onnxruntime 1.23.2 already there, like a second start.
    started = time.monotonic()
    r = _run(sys.executable, {}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[LoRA Forge] onnxruntime 1.23.2 present" in r.stdout
    assert "nothing to install" in r.stdout
    assert "installing" not in r.stdout
    assert time.monotonic() - started < 10


def _bare_venv(tmp_path: Path) -> str:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return str(python)


@pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")
def test_under_the_webui_it_asks_run_pip_for_onnxruntime_with_pins(tmp_path: Path) -> None:
    # A Python without onnxruntime or torch, started the way the WebUI starts it: PYTHONPATH is the
    # WebUI root, where launch.py is (here the stand-in, which records instead of running pip).
    python = _bare_venv(tmp_path)
    site = next((tmp_path / "venv" / "lib").glob("python3.*/site-packages"))
    fake_protobuf = site / "protobuf-3.20.0.dist-info"  # the WebUI's pin, seen through its metadata
    fake_protobuf.mkdir()
    (fake_protobuf / "METADATA").write_text("Metadata-Version: 2.1\nName: protobuf\nVersion: 3.20.0\n")
    log = tmp_path / "pip.log"
    r = _run(python, {"PYTHONPATH": str(STUB), "LORA_FORGE_STUB_PIP_LOG": str(log)}, tmp_path)
    assert r.returncode == 0, r.stderr
    command, constraints = log.read_text(encoding="utf-8").split("\n---\n")
    assert command.startswith('install "onnxruntime>=1.17,<1.24" -c "')
    assert constraints == "protobuf==3.20.0\n"
    assert "installed onnxruntime" in r.stdout


@pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")
def test_a_failing_install_is_reported_and_the_webui_still_starts(tmp_path: Path) -> None:
    # No launch module and no pip in this Python: the install cannot work.
    python = _bare_venv(tmp_path)
    r = _run(python, {}, tmp_path)
    assert r.returncode == 0
    assert "install step failed, the WebUI starts anyway" in r.stdout
    assert "python -m pip install onnxruntime" in r.stdout


def _python310() -> str | None:
    for candidate in sorted(Path("/root/.pyenv/versions").glob("3.10*/bin/python3.10")):
        return str(candidate)
    return shutil.which("python3.10")


@pytest.mark.skipif(os.name == "nt" or _python310() is None, reason="needs a POSIX Python 3.10")
def test_on_python_310_it_asks_for_a_release_with_310_wheels(tmp_path: Path) -> None:
    # The WebUI's own Python: no onnxruntime release after 1.23 has cp310 wheels.
    venv = tmp_path / "venv310"
    subprocess.run([_python310(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    log = tmp_path / "pip.log"
    r = _run(str(venv / "bin" / "python"), {"PYTHONPATH": str(STUB), "LORA_FORGE_STUB_PIP_LOG": str(log)}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert log.read_text(encoding="utf-8").startswith('install "onnxruntime>=1.17,<1.24" "tomli" -c "')


@pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")
def test_a_cuda_13_torch_is_read_from_torch_and_gets_the_cpu_build_with_a_note(tmp_path: Path) -> None:
    # torch 2.14.1 from PyPI as the WebUI would hold it: untagged, CUDA 13, beside protobuf 3.20.
    python = _bare_venv(tmp_path)
    site = next((tmp_path / "venv" / "lib").glob("python3.*/site-packages"))
    for name, version, requires in (("protobuf", "3.20.0", []), ("torch", "2.14.1", TORCH_214_REQUIRES)):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        lines = [
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
        (info / "METADATA").write_text("".join(lines))
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("raise SystemExit('install.py must not import torch')\n")
    (site / "torch" / "version.py").write_text("from typing import Optional\ncuda: Optional[str] = '13.0'\n")
    log = tmp_path / "pip.log"
    r = _run(python, {"PYTHONPATH": str(STUB), "LORA_FORGE_STUB_PIP_LOG": str(log)}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert log.read_text(encoding="utf-8").startswith('install "onnxruntime>=1.17,<1.24" -c "')
    assert "CUDA 13" in r.stdout and "runs on CPU" in r.stdout and "cu12" not in r.stdout
