"""Training inside the WebUI (stand-in modules.*, real tiny ldm model): the model and a fixed
txt2img render are identical before and after a finished, stopped, failed or out-of-memory run;
generations and checkpoint switches wait for the run; files land where the Lora extension looks."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_forge.errors import ForgeError
from lora_forge.host.base import RenderRequest
from tests.train_support import SYNTAX_CAPTION, squares, weights_hash

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
STUB_DIR = Path(__file__).resolve().parent / "webui_stub"
FAST = {
    "output_name": "zkw",
    "trigger_word": "zkw",
    "resolution": "64",
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "num_repeats": 1,
    "max_train_epochs": 2,
    "network_dim": 4,
    "network_alpha": 2.0,
    "learning_rate": 1e-3,
    "sample_every_n_steps": 4,
    "sample_steps": 2,
    "sample_cfg_scale": 1.0,
    "cache_latents_to_disk": False,
    "mixed_precision": "no",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return squares(tmp_path_factory.mktemp("webui-train-data"), seed=1, caption=SYNTAX_CAPTION)


def start_stub(root: Path, sd_model, argv: list[str] | None = None):
    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    import webui_stub

    lora_dir = root / "models" / "Lora"
    return webui_stub.start(root, sd_model, argv=["--lora-dir", str(lora_dir), *(argv or [])], extensions={"x": ROOT})


@pytest.fixture
def webui(tmp_path: Path, tiny_host):
    stub = start_stub(tmp_path / "webui", tiny_host.sd_model())
    yield stub
    networks = sys.modules.get("networks")
    if networks is not None:
        networks.load_networks([])
    from modules import devices, shared

    shared.sd_model = None
    shared.cmd_opts.lowvram = False
    devices.fp8 = False


@pytest.fixture
def runs():
    from lora_forge.app.train import Runs

    return Runs()


def model_hash(sd_model) -> str:
    """Weights, requires_grad flags and train/eval modes."""
    h = hashlib.sha256(weights_hash(sd_model).encode())
    flags = [(n, p.requires_grad) for n, p in sd_model.named_parameters()]
    modes = [(n, m.training) for n, m in sd_model.named_modules()]
    h.update(repr((flags, modes)).encode())
    return h.hexdigest()


def render(prompt: str = "a photo of a cat") -> np.ndarray:
    from lora_forge.host.webui import WebUIHost

    req = RenderRequest(prompt, seed=7, steps=2, cfg_scale=1.0, width=64, height=64)
    return np.asarray(WebUIHost().txt2img([req])[0], dtype=np.int16)


def snapshot() -> tuple[str, np.ndarray]:
    from modules import shared

    return model_hash(shared.sd_model), render()


def host():
    from lora_forge.host.webui import host as webui_host

    return webui_host()


def run_to_end(runs, dataset, **changes):
    status = runs.start(host(), str(dataset), "custom", {**FAST, **changes})
    return runs.wait(status.id, timeout=300)


def test_run_trains_saves_where_the_webui_looks_and_leaves_the_model_as_it_was(webui, runs, dataset):
    from modules import shared

    before = snapshot()
    seen = []
    from lora_forge.host import webui_train

    original = webui_train.loadback_check

    def spy(h, sd_model, path, muted):
        on_disk = sorted(p.name for p in path.parent.glob("*.safetensors"))
        seen.append((shared.state.textinfo, shared.state.job_count, shared.state.job_no, path.name, on_disk))
        return original(h, sd_model, path, muted)

    webui_train.loadback_check = spy
    try:
        status = run_to_end(runs, dataset, learning_rate=1e-2)  # a LoRA that visibly changes renders
    finally:
        webui_train.loadback_check = original
    assert status.state == "finished", status.error
    assert snapshot()[0] == before[0]
    assert np.array_equal(snapshot()[1], before[1])

    lora_dir = Path(shared.cmd_opts.lora_dir)
    run_dir = lora_dir / "zkw"
    assert Path(status.run_dir) == run_dir
    names = sorted(p.name for p in run_dir.glob("*.safetensors"))
    assert names == ["zkw-000001.safetensors", "zkw-000002.safetensors", "zkw.safetensors"]
    assert (run_dir / "zkw-000002.preview.png").is_file() and (run_dir / "zkw.preview.png").is_file()
    # each file was checked right after it was saved (its own check found live modules to compare)
    assert status.warnings == []
    assert [(s[3], s[4]) for s in seen] == [
        ("zkw-000001.safetensors", ["zkw-000001.safetensors"]),
        ("zkw-000002.safetensors", names[:2]),
        ("zkw.safetensors", names),
    ]
    assert json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["save_checks"] == []
    assert "LoRA Forge" in seen[0][0] and seen[0][1] == status.total  # the WebUI's own progress
    assert len(status.losses) == status.total == 8 and status.sample_path
    assert "<lora:zkw-000002:0.8>" in status.message

    networks = sys.modules["networks"]
    assert "zkw-000002" in networks.available_networks  # the list was refreshed

    # the last sample (step 8, rendered by process_images with the live LoRA) is what the user gets
    # from the saved file in txt2img; without the LoRA the same render differs
    from lora_forge.host.webui import WebUIHost

    sample = np.asarray(Image.open(run_dir / "samples" / "step000008-0.png"), dtype=np.int16)
    req = dict(seed=1337, steps=2, cfg_scale=1.0, width=64, height=64, sampler="Euler a")
    from_file = WebUIHost().txt2img([RenderRequest("zkw <lora:zkw:1>", **req)])[0]
    plain = WebUIHost().txt2img([RenderRequest("zkw", **req)])[0]
    d_file = np.abs(np.asarray(from_file, dtype=np.int16) - sample).mean()
    d_plain = np.abs(np.asarray(plain, dtype=np.int16) - sample).mean()
    assert d_file < 0.1 and d_plain > max(0.3, 10 * d_file)  # fp16 file vs fp32 live modules: rounding only
    with_lora = render("a photo of a cat <lora:zkw-000002:1>")
    assert np.abs(with_lora - before[1]).max() > 0  # the file does something in txt2img
    assert np.array_equal(render(), before[1])


def test_second_run_gets_a_new_name_and_samples_escape_prompt_syntax(webui, runs, dataset):
    first = run_to_end(runs, dataset, sample_every_n_steps=0, max_train_epochs=1)
    second = run_to_end(runs, dataset, sample_every_n_steps=0, max_train_epochs=1)
    assert (first.name, second.name) == ("zkw", "zkw-2")
    assert Path(second.run_dir, "zkw-2-000001.safetensors").is_file()
    from lora_forge.host.webui_train import escape_prompt

    assert escape_prompt("zkw, (noise:1.5), [bg], <lora:x:1>") == r"zkw, \(noise\:1.5\), \[bg\], \<lora\:x\:1\>"


def test_interrupt_stops_the_run_and_resume_continues(webui, runs, dataset, monkeypatch):
    from modules import shared

    from lora_forge.train import loop

    before = snapshot()
    calls = {"n": 0}
    original = loop.optimizer_step

    def step_then_interrupt(*a, **k):
        original(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            shared.state.interrupt()  # the WebUI's Interrupt button

    monkeypatch.setattr(loop, "optimizer_step", step_then_interrupt)
    stopped = run_to_end(runs, dataset, sample_every_n_steps=0)
    assert stopped.state == "stopped" and stopped.step == 3
    assert "Resume" in stopped.message
    # the resumable state is there, but not in the WebUI's Lora list (it once showed "lora" and
    # "optimizer" there: one did nothing, the other printed a pickle warning and a traceback)
    assert (Path(stopped.run_dir) / "state" / "state.json").is_file()
    networks = sys.modules["networks"]
    networks.list_available_networks()
    listed = {
        Path(e.filename).relative_to(Path(stopped.run_dir).parent).as_posix()
        for e in networks.available_networks.values()
    }
    assert "zkw/zkw.safetensors" in listed and not any("/state/" in f for f in listed), listed
    assert shared.state.interrupted is False  # the next generation is not cancelled
    assert snapshot()[0] == before[0]
    assert np.array_equal(snapshot()[1], before[1])

    monkeypatch.setattr(loop, "optimizer_step", original)
    resumed = runs.wait(runs.start(host(), str(dataset), resume=stopped.run_dir).id, timeout=300)
    assert resumed.state == "finished", resumed.error
    assert resumed.name == "zkw-2" and resumed.step == 8
    assert snapshot()[0] == before[0]


@pytest.mark.parametrize("failure", ["error", "oom"])
def test_failed_run_restores_the_model_and_the_webui_keeps_working(webui, runs, dataset, monkeypatch, failure):
    from modules import call_queue, shared

    from lora_forge.train import loop

    # a LoRA merged by the last generation, hypernetworks and tiling on: all reset, then put back
    shared.loaded_hypernetworks = ["hn"]
    from modules import sd_hijack

    sd_hijack.model_hijack.apply_circular(True)
    sd_hijack.model_hijack.apply_circular(False)
    before = snapshot()
    calls = {"n": 0}
    original = loop.diffusion_loss
    seen = {}

    def failing(*a, **k):
        calls["n"] += 1
        seen["hn"] = list(shared.loaded_hypernetworks)
        seen["lock"] = call_queue.queue_lock.acquire(blocking=False)
        if calls["n"] == 3:
            raise (
                torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                if failure == "oom"
                else (RuntimeError("injected failure"))
            )
        return original(*a, **k)

    monkeypatch.setattr(loop, "diffusion_loss", failing)
    status = run_to_end(runs, dataset, sample_every_n_steps=0)
    assert status.state == "failed"
    if failure == "oom":
        assert status.error.startswith("out of GPU memory") and "batch size" in status.error
    else:
        assert "injected failure" in status.error
    assert seen == {"hn": [], "lock": False}  # hypernetworks off and queue_lock held during the run
    assert shared.loaded_hypernetworks == ["hn"]
    assert call_queue.queue_lock.acquire(blocking=False)
    call_queue.queue_lock.release()
    assert snapshot()[0] == before[0]
    assert np.array_equal(snapshot()[1], before[1])


def test_pristine_undoes_a_merged_lora_tiling_and_an_alternative_unet(webui, runs, dataset, monkeypatch):
    from modules import sd_hijack, sd_unet, shared

    from lora_forge.host import webui_train

    status = run_to_end(runs, dataset, sample_every_n_steps=0, max_train_epochs=1)
    base_hash, base_image = weights_hash(shared.sd_model), render()
    render(f"a photo of a cat <lora:{status.name}-000001:1>")  # leaves the LoRA merged (stub: eagerly)
    assert weights_hash(shared.sd_model) != base_hash
    sd_hijack.model_hijack.apply_circular(True)

    class Option(sd_unet.SdUnetOption):
        label, model_name = "TRT", None

        def create_unet(self):
            return sd_unet.SdUnet()

    sd_unet.unet_options.append(Option())
    monkeypatch.setitem(shared.opts.data, "sd_unet", "TRT")
    sd_unet.apply_unet()
    inside = {}
    with webui_train.pristine(shared.sd_model):
        inside["hash"] = weights_hash(shared.sd_model)
        inside["circular"] = sd_hijack.model_hijack.circular_enabled
        inside["unet"] = sd_unet.current_unet
    assert inside == {"hash": base_hash, "circular": False, "unet": None}
    assert sd_hijack.model_hijack.circular_enabled and sd_unet.current_unet is not None
    sd_hijack.model_hijack.apply_circular(False)
    sd_unet.apply_unet("None")
    sd_unet.unet_options.clear()
    assert np.array_equal(render(), base_image)


def test_generation_and_checkpoint_switch_wait_for_the_run(webui, runs, dataset, monkeypatch):
    from modules import call_queue

    from lora_forge.train import loop

    release = threading.Event()
    entered = threading.Event()
    original = loop.optimizer_step

    def slow(*a, **k):
        entered.set()
        release.wait(60)
        original(*a, **k)

    monkeypatch.setattr(loop, "optimizer_step", slow)
    status = runs.start(host(), str(dataset), "custom", {**FAST, "sample_every_n_steps": 0, "max_train_epochs": 1})
    assert entered.wait(120)
    done = []
    switch = threading.Thread(target=call_queue.wrap_queued_call(lambda: done.append(("switch", status.step))))
    gen = threading.Thread(target=lambda: done.append(("txt2img", render().shape)))
    switch.start()
    gen.start()
    time.sleep(1.0)
    assert done == []  # both wait in the FIFO queue behind the run
    release.set()
    runs.wait(status.id, timeout=300)
    switch.join(60)
    gen.join(120)
    assert status.state == "finished"
    assert sorted(d[0] for d in done) == ["switch", "txt2img"]
    assert ("switch", status.total) in done  # it ran only once every step was done


def test_start_while_a_generation_runs_waits_and_says_so(webui, runs, dataset):
    from modules import call_queue

    call_queue.queue_lock.acquire()  # a txt2img in progress
    try:
        status = runs.start(host(), str(dataset), "custom", {**FAST, "sample_every_n_steps": 0, "max_train_epochs": 1})
        time.sleep(0.5)
        assert status.state == "waiting" and "waiting for the WebUI" in status.message
        with pytest.raises(ForgeError, match="still going"):
            runs.start(host(), str(dataset), "custom", FAST)  # twice at once
    finally:
        call_queue.queue_lock.release()
    assert runs.wait(status.id, timeout=300).state == "finished"


def test_bad_input_is_refused_with_a_message_and_nothing_changes(webui, runs, dataset, tmp_path, monkeypatch):
    from modules import shared

    before = snapshot()
    empty = tmp_path / "empty"
    empty.mkdir()
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    Image.new("RGB", (64, 64), "red").save(uncaptioned / "a.png")
    for folder in (empty, uncaptioned):
        with pytest.raises(ForgeError):
            runs.start(host(), str(folder), "custom", FAST)
    with pytest.raises(ForgeError, match="dataset folder"):
        runs.start(host(), "", "custom", FAST)

    monkeypatch.setattr(shared.cmd_opts, "lowvram", True, raising=False)
    with pytest.raises(ForgeError, match="--lowvram"):
        runs.start(host(), str(dataset), "custom", FAST)
    monkeypatch.setattr(shared.cmd_opts, "lowvram", False)
    model = shared.sd_model
    shared.sd_model = None
    try:
        with pytest.raises(ForgeError, match="no checkpoint is loaded"):
            runs.start(host(), str(dataset), "custom", FAST)
    finally:
        shared.sd_model = model
    assert runs.list() == []
    assert snapshot()[0] == before[0]


def test_loadback_check_fires_after_the_first_save_when_the_webui_applies_the_file_differently(
    webui, runs, dataset, monkeypatch
):
    from modules import shared

    from lora_forge.host import webui_train
    from lora_forge.ui.train import render as render_status

    networks = sys.modules["networks"]
    original = networks._find_module

    def misses_output_blocks(mapping, key):  # a loader whose name rules miss half the UNet
        return (key, None) if "up_blocks" in key or "output_blocks" in key else original(mapping, key)

    monkeypatch.setattr(networks, "_find_module", misses_output_blocks)
    check = webui_train.loadback_check
    seen = []

    def spy(h, sd_model, path, muted):
        seen.append((path.name, shared.state.textinfo, list(runs.list()[0].warnings)))
        return check(h, sd_model, path, muted)

    monkeypatch.setattr(webui_train, "loadback_check", spy)
    before = snapshot()
    status = run_to_end(runs, dataset, sample_every_n_steps=0, max_train_epochs=2)
    assert status.state == "finished", status.error
    assert snapshot()[0] == before[0] and np.array_equal(snapshot()[1], before[1])

    files = ["zkw-000001.safetensors", "zkw-000002.safetensors", "zkw.safetensors"]
    assert [s[0] for s in seen] == files
    # the first file's failure was in the run's status and the WebUI's status text before the next save
    first, second = seen[0], seen[1]
    assert first[2] == [] and len(second[2]) == 1
    assert second[2][0].startswith("LOAD-BACK CHECK FAILED") and files[0] in second[2][0]
    assert "⚠ LOAD-BACK CHECK FAILED" in second[1] and files[0] in second[1]
    assert [files[i] in w for i, w in enumerate(status.warnings)] == [True] * 3
    report = json.loads((Path(status.run_dir) / "report.json").read_text(encoding="utf-8"))
    assert report["save_checks"] == status.warnings
    assert "LOAD-BACK CHECK FAILED" in render_status(status)[4]
    # (with the real name rules the same run passes: the run test above)


def test_the_webuis_fp8_weight_setting_trains_over_its_fp8_weights(webui, runs, dataset):
    """1.10.1 with Settings → FP8 weight: every Linear/Conv2d outside the VAE is float8_e4m3fn and
    `devices.fp8` is set. The run trains over those weights and leaves them bit-identical."""
    from modules import devices, shared

    model = shared.sd_model
    vae = model.first_stage_model
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    layers = [m for m in layers if not any(m is v for v in vae.modules())]
    originals = {id(p): p.data for m in layers for p in m.parameters(recurse=False)}
    for m in layers:
        m.to(torch.float8_e4m3fn)  # what load_model_weights does with the setting on
    devices.fp8 = True
    try:
        before = snapshot()
        status = run_to_end(runs, dataset, mixed_precision="bf16", max_train_epochs=1, sample_every_n_steps=2)
        assert status.state == "finished", status.error
        assert status.warnings == []  # the load-back check ran on each file, within FP8's rounding
        assert len(status.losses) == 4 and all(np.isfinite(status.losses)) and status.sample_path
        config = (Path(status.run_dir) / "config.toml").read_text(encoding="utf-8")
        assert "fp8_base = true" in config
        assert snapshot()[0] == before[0]  # FP8 weights, flags and modes as they were
        assert np.array_equal(snapshot()[1], before[1])
        assert all(p.dtype == torch.float8_e4m3fn for m in layers for p in m.parameters(recurse=False))
    finally:
        devices.fp8 = False
        for m in layers:
            for p in m.parameters(recurse=False):
                p.data = originals[id(p)]


def test_clip_skip_and_medvram_come_from_the_webui(webui):
    from modules import shared

    from lora_forge.app.train import build_config

    shared.opts.data["CLIP_stop_at_last_layers"] = 2
    try:
        config, _ = build_config(host(), "person", {})
        assert config.clip_skip == 2  # the preset says 1; the user's WebUI setting wins
        config, _ = build_config(host(), "person", {"clip_skip": 3})
        assert config.clip_skip == 3
        shared.cmd_opts.medvram = True
        config, _ = build_config(host(), "person", {})
        assert config.cache_latents and config.cache_text_encoder_outputs and not config.train_text_encoder
    finally:
        shared.opts.data.pop("CLIP_stop_at_last_layers")
        shared.cmd_opts.medvram = False


def test_pristine_restores_layers_the_lora_extension_left_merged_lazily(webui):
    """1.10.1 merges a LoRA into each layer in that layer's next forward and keeps a CPU backup;
    layers still merged from the last generation must be restored before training."""
    from modules import shared

    from lora_forge.host import webui_train

    sd_model = shared.sd_model
    base = weights_hash(sd_model)
    layer = sd_model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_k
    sd_model.network_layer_mapping = {"diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k": layer}
    try:
        with torch.no_grad():
            layer.network_weights_backup = layer.weight.detach().cpu().clone()
            layer.network_current_names = (("old_lora", 1.0, 1.0, None),)
            layer.weight.add_(0.5)  # what the lazy merge left in the weights
        assert weights_hash(sd_model) != base
        with webui_train.pristine(sd_model):
            assert weights_hash(sd_model) == base
            assert layer.network_current_names == ()
    finally:
        del sd_model.network_layer_mapping, layer.network_weights_backup, layer.network_current_names
    assert weights_hash(sd_model) == base


def test_standalone_host_runs_through_the_same_registry(tiny_host, dataset):
    """`python -m lora_forge ui` uses the same 训练 section on the standalone host: fresh name in its
    Lora folder, card previews, no WebUI needed."""
    from lora_forge.app.train import Runs

    before = weights_hash(tiny_host.sd_model())
    runs = Runs()
    name = f"solo{time.time_ns() % 100000}"
    status = runs.wait(runs.start(tiny_host, str(dataset), "custom", {**FAST, "output_name": name}).id, 300)
    assert status.state == "finished", status.error
    run_dir = tiny_host.lora_dir() / name
    assert (run_dir / f"{name}-000002.safetensors").is_file() and (run_dir / f"{name}.preview.png").is_file()
    assert weights_hash(tiny_host.sd_model()) == before


def _nan_lora(sd_model, folder: Path, name: str) -> Path:
    from safetensors.torch import load_file, save_file

    from lora_forge.grid.testing import write_run
    from lora_forge.lora.fileformat import read_metadata

    (path,) = write_run(sd_model, folder, name=name, epochs=0, final=True, trigger=name)
    tensors, meta = load_file(str(path)), read_metadata(path)
    path.unlink()
    save_file({k: v * float("nan") if k.endswith("lora_up.weight") else v for k, v in tensors.items()}, str(path), meta)
    return path


def test_loadback_verdict_follows_what_the_webui_renders(webui, monkeypatch):
    """Issue 17: "gives NaN/inf outputs; do not use it" for a file that rendered finite in the WebUI.
    NaN through the WebUI's own loader is a do-not-use verdict; NaN only in our probe is not."""
    import contextlib

    from modules import shared

    from lora_forge.grid.testing import write_run
    from lora_forge.host import webui_train

    h = host()
    sd_model = shared.sd_model
    bad = _nan_lora(sd_model, h.lora_dir() / "lfbad", "lfbad")
    verdict = webui_train.loadback_check(h, sd_model, bad, contextlib.nullcontext)
    assert verdict.startswith("LOAD-BACK CHECK: lfbad.safetensors gives NaN/inf outputs through the WebUI's")

    (good,) = write_run(sd_model, h.lora_dir() / "lfgood", name="lfgood", epochs=0, final=True, scale=0.15)
    real_apply = type(sd_model).apply_model
    calls = []

    def probe_overflows(self, x, t, cond, *args, **kwargs):  # our live fp16 step overflowing, once
        calls.append(1)
        out = real_apply(self, x, t, cond, *args, **kwargs)
        return out * float("inf") if len(calls) == 1 else out

    monkeypatch.setattr(type(sd_model), "apply_model", probe_overflows)
    verdict = webui_train.loadback_check(h, sd_model, good, contextlib.nullcontext)
    assert "could not compare lfgood.safetensors" in verdict and "renders it finite" in verdict, verdict
    assert "do not use it" not in verdict
