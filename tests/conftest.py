"""Fixtures shared by every test module. Each helper adds its own block; keep edits additive."""

from __future__ import annotations

import faulthandler
import os

import pytest

# One torch/OpenMP thread: the tiny models' ops are too small to split, and on a busy 2-core machine
# two spinning OpenMP threads made a 64 px render ~15x slower (9 s instead of 0.5 s). Must be set
# before torch is imported; an explicit OMP_NUM_THREADS still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Browser harness (tests/browser.py): serve_blocks, browser, page, tab_url.
from tests.browser import browser, page, serve_blocks, tab_url  # noqa: F401

# A test that hangs (a browser page waiting on a dead server, a lock never released) would hold CI
# until its 30-minute limit with nothing to read; after this long the run stops with every thread's
# stack instead. The slowest test takes ~65 s on a loaded 2-core machine.
TEST_WATCHDOG_S = 420


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    faulthandler.dump_traceback_later(TEST_WATCHDOG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# Tiny real models (lora_forge/host/tiny.py): tiny_files, tiny_host. Built once per session.


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SD1.5-layout checkpoint + its yaml + CLIP tokenizer folder (seed 0), in a session tmp dir.
    Treat as read-only: copy it (tmp_path) before writing beside it."""
    from lora_forge.host.tiny import build_tiny_sd1

    return build_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1"), seed=0)


@pytest.fixture(scope="session")
def tiny_host(tiny_files, tmp_path_factory: pytest.TempPathFactory):
    """StandaloneHost over `tiny_files` on CPU; its lora_dir() is a fresh session tmp folder.
    Shared by the session: undo anything you do to its model (LoRA injection, requires_grad, ...)."""
    from lora_forge.host.standalone import StandaloneHost

    return StandaloneHost(tiny_files.checkpoint, lora_dir=tmp_path_factory.mktemp("tiny-lora"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The whole-flow browser tests (tests/test_flow_*), the slowest, run last, so a failure in a
    quick test is reported first. (The stalls once blamed on them were two test-side faults, since
    fixed: test_grid_ui's dropdown retry and a server teardown waiting on an open stream.)"""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_flow_"))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave once pytest has reported: a non-daemon thread left by a library (a gradio server, a
    playwright driver) must not keep the interpreter alive and hold CI to its time limit."""
    if _EXIT_STATUS:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


@pytest.fixture(scope="session")
def wd14_model(tmp_path_factory: pytest.TempPathFactory):
    """The tiny WD14-layout tagger (lora_forge/tagger/testing.py, 48 px input) as registry files, for
    the caption tests; its per-colour tag probabilities are listed in test_tagger_captions.py."""
    from lora_forge.tagger.registry import ModelFiles
    from lora_forge.tagger.testing import build_test_model

    return ModelFiles("test-wd14", build_test_model(tmp_path_factory.mktemp("wd14") / "model", size=48))


# Tiny real SDXL (lora_forge/host/tiny_sdxl.py, sgm classes via lora_forge.host.sgm_compat): built once per session.


@pytest.fixture(scope="session")
def tiny_sdxl_files(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SDXL-base-layout checkpoint + yaml + CLIP-L tokenizer folder + the bigG arch json (seed 0).
    Treat as read-only: copy it before writing beside it."""
    from lora_forge.host.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_host(tiny_sdxl_files, tmp_path_factory: pytest.TempPathFactory):
    """StandaloneHost over `tiny_sdxl_files` on CPU (the sgm DiffusionEngine plus the WebUI's additions).
    Shared by the session: undo anything you do to its model."""
    from lora_forge.host.standalone import StandaloneHost

    return StandaloneHost(tiny_sdxl_files.checkpoint, lora_dir=tmp_path_factory.mktemp("tiny-sdxl-lora"))
