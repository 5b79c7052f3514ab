"""In real Chromium on the tiny model: what a WebUI restart does to a run, and 优化's "train again".

A restart is a real one: the tab is served by `python -m lora_forge ui` in a process of its own,
which is killed (SIGKILL, as a closed console or a crashed WebUI does) while it trains; a new
process then serves the same folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge import project as pj
from lora_forge.train.config import read_config_file
from tests.browser import free_port, js_errors, train_result, wait_gradio, wait_http
from tests.test_flow_browser import _fill, _scored_grid, _shot, _tab, _wait_text

ROOT = Path(__file__).resolve().parent.parent


def _dataset(folder: Path, captions: str) -> None:
    """Four pictures with their captions, as a user who brings their own would copy them in."""
    rng = np.random.default_rng(0)
    for i, colour in enumerate([(230, 20, 20), (200, 40, 30), (240, 60, 40), (210, 10, 10)]):
        arr = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
        arr[12:52, 12:52] = colour
        Image.fromarray(arr).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(captions, encoding="utf-8")


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name → sha256): equal before and after means untouched."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _train_fields(page, values: dict[str, str], extra: str) -> None:
    for key, value in values.items():
        _fill(page, f"lora_forge_train_{key}", value)
    page.locator("#lora_forge_train_advanced").click()
    _fill(page, "lora_forge_train_mixed_precision", "no")
    _fill(page, "lora_forge_train_extra", extra)


FAST_EXTRA = "min_bucket_reso = 64\nmax_bucket_reso = 64"


def _finished(page, run_dir: Path, timeout_s: float = 300) -> str:
    """训练's result once it shows "Finished" (re-attaching once the run's report is on disk)."""
    report = run_dir / "report.json"
    return train_result(page, "Finished", report.is_file, timeout_s, lambda: f"{report} exists: {report.is_file()}")


class Server:
    """`python -m lora_forge ui` in its own process over the test's folders (the standalone tab)."""

    def __init__(self, tiny_files, projects: Path, lora_dir: Path, log: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LORA_FORGE_DATASETS": str(projects),
            "LORA_FORGE_MODELS": str(projects.parent / "models"),
            "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing may be downloaded
            "GRADIO_ANALYTICS_ENABLED": "False",
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, "-m", "lora_forge", "ui", "--ckpt", str(tiny_files.checkpoint)]
        cmd += ["--clip-folder", str(tiny_files.clip_folder), "--lora-dir", str(lora_dir), "--port", str(self.port)]
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        try:
            wait_http(self.url, timeout=120)
        except TimeoutError:
            self.stop()
            raise AssertionError("the UI process did not start:\n" + log.read_text(errors="replace")[-3000:]) from None

    def kill(self) -> None:
        """What a restart does to a training thread: the process is gone, nothing runs after."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


@pytest.mark.browser
@pytest.mark.slow
def test_a_run_cut_short_by_a_restart_resumes_in_a_new_folder(tiny_files, page, tmp_path) -> None:
    projects, lora = tmp_path / "projects", tmp_path / "Lora"
    project = pj.create(projects, "续训角色")
    _dataset(project.dataset_dir, "zkw, 1girl, long hair")

    first = Server(tiny_files, projects, lora, tmp_path / "first.log")
    try:
        page.goto(first.url)
        wait_gradio(page)
        _wait_text(page, "#lora_forge_project_msg", "Reopened project")
        _tab(page, "Train")
        fields = {
            "output_name": "cont",
            "trigger_word": "zkw",
            "num_repeats": "1",
            "max_train_epochs": "4",
            "network_dim": "4",
            "network_alpha": "2",
            "learning_rate": "0.001",
            "resolution": "64",
            "save_every_n_epochs": "1",
            "sample_every_n_steps": "0",
        }
        _train_fields(page, fields, FAST_EXTRA)
        page.click("#lora_forge_train_start")
        state = lora / "cont" / "state" / "state.json"  # written last, after the epoch's file
        deadline = time.monotonic() + 180
        while not state.is_file():
            assert first.proc.poll() is None, "the UI process died:\n" + first.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no epoch was saved:\n" + first.log.read_text(errors="replace")[-3000:]
            time.sleep(0.02)
        first.kill()  # mid-run: 4 epochs of 4 steps, the first one just saved
    finally:
        first.stop()

    cut = lora / "cont"
    assert not (cut / "cont.safetensors").exists(), "the run finished before the kill; make it longer"
    assert (cut / "cont-000001.safetensors").is_file()
    assert json.loads(state.read_text(encoding="utf-8"))["step"] == 4
    before = _fingerprint(cut)

    second = Server(tiny_files, projects, lora, tmp_path / "second.log")
    try:
        page.goto(second.url)
        wait_gradio(page)
        _wait_text(page, "#lora_forge_project_msg", "Reopened project “续训角色”")
        _wait_text(page, "#lora_forge_resume_text", "cont")
        assert page.locator("#lora_forge_resume").is_visible()
        assert "needs attention" in page.inner_text("#lora_forge_step_train")
        assert "did not finish" in page.inner_text("#lora_forge_next")
        # the fields show the cut run's settings, so a new Start would train the same thing
        assert page.input_value("#lora_forge_train_max_train_epochs input") == "4"
        _shot(page, "resume-offered.png")

        page.click("#lora_forge_resume")
        _wait_text(page, "#lora_forge_project_msg", "Resuming run cont as cont-2")
        # 训练 opens and follows the continued run to its end
        _wait_text(page, "#lora_forge_train_status", "cont-2", timeout=60_000)
        result = _finished(page, lora / "cont-2")
        assert "16 steps" in result, result
        assert page.inner_text("#lora_forge_train_pct") == "100%"
        page.locator("#lora_forge_train_chart img").wait_for()
        # the bar follows the run: 训练 turns done, nothing is offered for resume any more
        _wait_text(page, "#lora_forge_step_train", "done", timeout=60_000)
        page.locator("#lora_forge_resume_row").wait_for(state="hidden")
        assert "in Test grid" in page.inner_text("#lora_forge_next")
        _shot(page, "resume-finished.png")
        # the page that was open on the killed process lost its connection: that is the restart
        gone = f"127.0.0.1:{first.port}/"
        assert [e for e in js_errors(page) if gone not in e] == []
    finally:
        second.stop()

    resumed = lora / "cont-2"
    assert (resumed / "cont-2.safetensors").is_file()
    assert sorted(p.name for p in resumed.glob("cont-2-*.safetensors")) == [
        f"cont-2-00000{e}.safetensors" for e in (2, 3, 4)
    ]
    report = json.loads((resumed / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 16 and report["steps_this_run"] == 12
    assert _fingerprint(cut) == before  # the cut run is exactly as the kill left it
    runs = json.loads((project.folder / pj.MANIFEST).read_text(encoding="utf-8"))["runs"]
    assert [Path(r).name for r in runs] == ["cont", "cont-2"]


@pytest.mark.browser
@pytest.mark.slow
def test_underfit_advice_and_train_again_with_the_changes(tiny_files, serve_blocks, page, tmp_path) -> None:
    """A run far too short at a tiny learning rate changes nothing the grid can see: 优化 says
    underfit, and "train again" makes a new config and a new run with more epochs and repeats,
    keeping the first run as it was. The advice is read back after a reload, from the files."""
    from lora_forge.settings import Settings
    from lora_forge.tagger.testing import build_test_model
    from lora_forge.ui.app import build_app

    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "projects")
    lora = tmp_path / "Lora"
    project = pj.create(settings.dataset_dir, "欠拟合")
    # red pictures, captioned with tags the tiny tagger sees in red; the tiny model draws grey noise
    _dataset(project.dataset_dir, "zkw, 1girl, long hair, ^_^")
    tagger = build_test_model(tmp_path / "tagger")
    url = serve_blocks(
        build_app(
            ckpt=tiny_files.checkpoint, clip_folder=tiny_files.clip_folder, lora_dir=lora, settings=lambda: settings
        )
    )
    page.goto(url)
    wait_gradio(page)
    _wait_text(page, "#lora_forge_project_msg", "Reopened project")
    _tab(page, "Train")
    fields = {
        "output_name": "under",
        "trigger_word": "zkw",
        "num_repeats": "1",
        "max_train_epochs": "1",
        "network_dim": "4",
        "network_alpha": "2",
        "learning_rate": "1e-7",
        "resolution": "64",
        "save_every_n_epochs": "1",
        "sample_every_n_steps": "0",
    }
    _train_fields(page, fields, FAST_EXTRA)
    _fill(page, "lora_forge_train_text_encoder_lr", "0")
    page.click("#lora_forge_train_start")
    first = lora / "under"
    assert "Finished: 4 steps" in _finished(page, first)

    _tab(page, "Test grid")
    _scored_grid(page, tagger, paths=str(first))
    assert list(first.glob("*-scores.json"))
    before = _fingerprint(first)

    # the next day: a fresh page; 优化 reads the grid's scores from the run folder
    page.goto(url)
    wait_gradio(page)
    _wait_text(page, "#lora_forge_project_msg", "Reopened project")
    _tab(page, "Optimise")
    page.click("#lora_forge_optimise_advise")
    advice = _wait_text(page, "#lora_forge_optimise_advice", "From the grid of run")
    assert "Underfit" in advice and "in every cell" in advice, advice
    assert "max_train_epochs = 2" in advice and "num_repeats = 2" in advice, advice
    _shot(page, "optimise-underfit.png")

    page.click("#lora_forge_optimise_again")
    _wait_text(page, "#lora_forge_optimise_advice", "previous run is kept")
    [next_config] = (project.folder / "configs").glob("under-next*.toml")
    saved = read_config_file(next_config)
    assert (saved["max_train_epochs"], saved["num_repeats"], saved["learning_rate"]) == (2, 2, 1e-7)
    # 训练 is open and shows the changes, with the settings that have no field of their own
    page.locator("#lora_forge_train_start").wait_for()
    assert page.input_value("#lora_forge_train_max_train_epochs input") == "2"
    assert page.input_value("#lora_forge_train_num_repeats input") == "2"
    page.locator("#lora_forge_train_advanced").click()
    assert "min_bucket_reso = 64" in page.input_value("#lora_forge_train_extra textarea")
    assert _fingerprint(first) == before

    page.click("#lora_forge_train_start")
    second = lora / "under-2"
    result = _finished(page, second)
    assert "Finished: 16 steps" in result, result  # 4 images x 2 repeats x 2 epochs
    trained = read_config_file(second / "config.toml")
    assert {k: trained[k] for k in saved if k not in ("output_name",)} == {
        k: v for k, v in saved.items() if k != "output_name"
    }
    assert _fingerprint(first) == before  # the first run, its grid and scores as they were
    _wait_text(page, "#lora_forge_step_train", "done")
    _shot(page, "optimise-next-run.png")
    assert js_errors(page) == []
