"""LoRA Forge inside the WebUI: the script's registrations, WebUIHost over the stand-in `modules.*`
(tests/webui_stub, following WebUI 1.10.1) with the real tiny ldm model, the queue lock, settings."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lora_forge.errors import ForgeError
from lora_forge.host.base import LoraRef, RenderRequest
from tests.asgi import request

ROOT = Path(__file__).resolve().parent.parent
STUB_DIR = Path(__file__).resolve().parent / "webui_stub"


@pytest.fixture
def webui(tmp_path: Path, tiny_host):
    """The stand-in WebUI started with our extension installed and the tiny model loaded."""
    if str(STUB_DIR) not in sys.path:
        # stays for the session (monkeypatch.syspath_prepend costs ~2 s per test once pkg_resources
        # is loaded); only `modules`, `launch` and `webui_stub` resolve there
        sys.path.insert(0, str(STUB_DIR))
    import webui_stub

    lora_dir = tmp_path / "webui" / "models" / "Lora"
    stub = webui_stub.start(
        tmp_path / "webui", tiny_host.sd_model(), argv=["--lora-dir", str(lora_dir)], extensions={"lora-forge": ROOT}
    )
    yield stub
    networks = sys.modules.get("networks")
    if networks is not None:
        networks.load_networks([])  # give the session's model its own weights back
    from modules import shared

    shared.sd_model = None


def _get(app, path: str):
    return request(app, "GET", path)


def _host():
    from lora_forge.host.webui import WebUIHost

    return WebUIHost()


def _arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _req(seed: int, **kw) -> RenderRequest:
    # the smallest render the SD1 layout allows (64 px = 8 latent px, halved three times), no CFG
    # batch doubling: the machine running the suite is small and shared
    kw = {"steps": 2, "cfg_scale": 1.0, **kw}
    return RenderRequest(kw.pop("prompt", "a photo of a cat"), seed=seed, width=64, height=64, **kw)


def write_lora(path: Path, sd_model, rank: int = 4, scale: float = 0.5, seed: int = 0) -> Path:
    """A kohya LoRA (compvis UNet names + a text-encoder layer) for the tiny model's real modules."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    modules = dict(sd_model.model.named_modules())
    targets = [n for n in modules if n.endswith(("attn1.to_q", "attn2.to_v", "proj_in"))]
    names = [("lora_unet_" + n.removeprefix("diffusion_model.").replace(".", "_"), modules[n]) for n in targets]
    te = sd_model.cond_stage_model.transformer.text_model.encoder.layers[0].self_attn.q_proj
    names.append(("lora_te_text_model_encoder_layers_0_self_attn_q_proj", te))
    for key, module in names:
        w = module.weight
        down_shape = (rank, w.shape[1], *w.shape[2:]) if w.dim() == 4 else (rank, w.shape[1])
        up_shape = (w.shape[0], rank, 1, 1) if w.dim() == 4 else (w.shape[0], rank)
        tensors[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=g) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=g) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_output_name": path.stem})
    return path


# -- registration ---------------------------------------------------------------------------------


def test_script_registers_tab_settings_and_api(webui) -> None:
    from fastapi import FastAPI
    from modules import script_callbacks, shared

    names = [c.name for cbs in script_callbacks.callback_map.values() for c in cbs]
    assert "lora-forge/lora_forge.py/ui_tabs" in names
    tabs = webui.build_ui()
    assert [(title, elem_id) for _blocks, title, elem_id in tabs] == [("炼丹", "lora_forge")]
    assert type(tabs[0][0]).__name__ == "Blocks"
    for key in ("lora_forge_models_dir", "lora_forge_hf_endpoint", "lora_forge_dataset_dir"):
        info = shared.opts.data_labels[key]
        assert info.section == ("lora_forge", "LoRA Forge")
        assert info.category_id == "training"
        assert isinstance(info.default, str) and info.label  # str default: the settings page builds a textbox
    app = FastAPI()
    webui.app_started(app)
    response = _get(app, "/lora_forge/v1/version")
    assert response.status_code == 200 and response.json()["name"] == "lora_forge"
    assert script_callbacks.errors_reported == []


def test_settings_map_to_settings(webui, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import shared

    from lora_forge.host.webui import settings_from_opts

    webui.build_ui()
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    s = settings_from_opts()
    assert s.models_dir == webui.root / "models" / "lora_forge"
    assert s.dataset_dir == webui.root / "lora_forge" / "datasets"
    assert s.hf_endpoint is None
    assert "Settings → LoRA Forge" in s.mirror_hint and "HF_ENDPOINT" not in s.mirror_hint  # not the env hint
    monkeypatch.setenv("HF_ENDPOINT", "https://env-mirror.example")
    assert settings_from_opts().hf_endpoint == "https://env-mirror.example"
    shared.opts.set("lora_forge_models_dir", str(webui.root / "mine"))
    shared.opts.set("lora_forge_dataset_dir", " D:/炼丹/data ")
    shared.opts.set("lora_forge_hf_endpoint", "https://hf-mirror.com/")
    s = settings_from_opts()
    assert s.models_dir == webui.root / "mine"
    assert s.dataset_dir == Path("D:/炼丹/data")
    assert s.hf_endpoint == "https://hf-mirror.com"


def test_settings_on_webui_1_6_leave_out_category_id(webui, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import shared

    class OptionInfo16(shared.OptionInfo):  # 1.6's signature: no category_id
        def __init__(
            self,
            default=None,
            label="",
            component=None,
            component_args=None,
            onchange=None,
            section=None,
            refresh=None,
            comment_before="",
            comment_after="",
            infotext=None,
            restrict_api=False,
        ):
            super().__init__(
                default,
                label,
                component,
                component_args,
                onchange,
                section,
                refresh,
                comment_before,
                comment_after,
                infotext,
                restrict_api,
            )

    monkeypatch.setattr(shared, "OptionInfo", OptionInfo16)
    webui.build_ui()
    info = shared.opts.data_labels["lora_forge_dataset_dir"]
    assert isinstance(info, OptionInfo16) and info.category_id is None


# Work modules that the tab's build must not load: they are imported by the handlers that use them,
# so a WebUI start does not pay for them (issue 2: the extension's share of start-up stays < 0.3 s).
STAGE_MODULES = (
    "lora_forge.dataset.prepare",
    "lora_forge.dataset.crop",
    "lora_forge.dataset.faces",
    "lora_forge.dataset.ingest",
    "lora_forge.dataset.manifest",
    "lora_forge.dataset.captions",
    "lora_forge.dataset.editor",
    "lora_forge.dataset.editor_view",
    "lora_forge.dataset.editor_thumbs",
    "lora_forge.tagger.batch",
    "lora_forge.tagger.session",
    "lora_forge.tagger.labels",
    "lora_forge.inspect",
    "lora_forge.train.loop",
    "lora_forge.grid.job",
)


def test_importing_the_script_loads_nothing_heavy(tmp_path: Path) -> None:
    """Importing the script loads no heavy library; building the whole tab and mounting the API
    (as a WebUI start does) loads none of torch, cv2, onnxruntime, safetensors nor a stage module."""
    heavy = ("torch", "cv2", "onnxruntime", "skimage", "safetensors")
    code = (
        "import sys, importlib.util;"
        "from pathlib import Path;"
        f"sys.path[:0] = [{str(STUB_DIR)!r}, {str(ROOT)!r}];"
        f"spec = importlib.util.spec_from_file_location('lora_forge.py', {str(ROOT / 'scripts' / 'lora_forge.py')!r});"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec));"
        "import lora_forge.api, lora_forge.ui.tab, lora_forge.ui.app;"
        "from modules import script_callbacks;"
        "assert len(script_callbacks.callback_map['callbacks_ui_tabs']) == 1;"
        f"print(','.join(m for m in {(*heavy, 'gradio')!r} if m in sys.modules));"
        "import fastapi, webui_stub;"  # a start loads the scripts afresh, as the WebUI does
        f"stub = webui_stub.start(Path({str(tmp_path)!r}), None, extensions={{'lora-forge': Path({str(ROOT)!r})}});"
        "tabs = stub.build_ui(); stub.app_started(fastapi.FastAPI());"
        "assert [t for _b, t, _i in tabs] == ['炼丹'], tabs;"
        f"print(','.join(m for m in {(*heavy, *STAGE_MODULES)!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["", ""], r.stdout


# -- rendering ------------------------------------------------------------------------------------


def test_txt2img_renders_through_process_images(webui, tiny_host) -> None:
    host = _host()
    events = []
    a, b, a_again = host.txt2img([_req(1), _req(2), _req(1)], progress=events.append)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(_arr(a), _arr(a_again))
    assert np.abs(_arr(a) - _arr(b)).mean() > 1.0
    # the same request through the standalone host gives the same picture: seeds, steps, size and
    # sampler reach process_images unchanged
    (standalone,) = tiny_host.txt2img([_req(1)])
    assert np.abs(_arr(a) - _arr(standalone)).mean() < 0.5
    assert events[-1].step == events[-1].total == 3  # three images


def test_lora_strength_and_files_outside_the_lora_folder(webui, tmp_path: Path) -> None:
    host = _host()
    model = host.sd_model()
    outside = write_lora(tmp_path / "elsewhere" / "mychar-000004.safetensors", model)
    none, zero, full = host.txt2img(
        [_req(5), _req(5, loras=[LoraRef(outside, 0.0)]), _req(5, loras=[LoraRef(outside, 1.0)])]
    )
    assert np.array_equal(_arr(none), _arr(zero))
    assert np.abs(_arr(full) - _arr(none)).mean() > 1.0
    # the file was made visible to the Lora extension under <Lora>/lora_forge_external, not moved
    linked = list((host.lora_dir() / "lora_forge_external").glob("mychar-000004-*.safetensors"))
    assert len(linked) == 1 and outside.is_file()
    # a file inside the Lora folder is used by its own name, without a copy
    inside = write_lora(host.lora_dir() / "mychar" / "mychar-000008.safetensors", model, seed=1)
    assert host.network_name(inside) == "mychar-000008"
    assert len(list((host.lora_dir() / "lora_forge_external").iterdir())) == 1


def test_a_shadowed_stem_still_renders_the_file_asked_for(webui) -> None:
    host = _host()
    model = host.sd_model()
    first = write_lora(host.lora_dir() / "a" / "same.safetensors", model, seed=1)
    second = write_lora(host.lora_dir() / "b" / "same.safetensors", model, seed=2)
    host.refresh_loras()
    names = {host.network_name(first), host.network_name(second)}
    assert len(names) == 2 and "same" in names
    one, two = host.txt2img([_req(3, loras=[LoraRef(first)]), _req(3, loras=[LoraRef(second)])])
    assert np.abs(_arr(one) - _arr(two)).mean() > 1.0


def test_interrupt_stops_rendering_and_restores_progress(webui) -> None:
    from modules import shared

    host = _host()
    shared.state.job_count, shared.state.job_no = 50, 7  # e.g. a training run that renders samples

    def interrupt_after_first(_event) -> None:
        shared.state.interrupt()

    with host.exclusive("train"):
        shared.state.job_count, shared.state.job_no = 50, 7
        with pytest.raises(ForgeError, match="interrupted"):
            host.txt2img([_req(1, prompt="one"), _req(2, prompt="two")], progress=interrupt_after_first)
        assert (shared.state.job_count, shared.state.job_no) == (50, 7)
        assert host.interrupted()


def test_progress_reaches_the_webui_progress_bar_and_lora_folder_follows_the_flag(webui) -> None:
    from modules import shared
    from PIL import Image

    from lora_forge.events import Progress

    host = _host()
    with host.exclusive("train"):
        assert shared.state.job == "lora_forge: train"
        host.report(Progress(3, 10, "epoch 1/4, loss 0.12", image=Image.new("RGB", (8, 8))))
        assert (shared.state.job_no, shared.state.job_count) == (3, 10)
        assert shared.state.textinfo == "epoch 1/4, loss 0.12"
        assert shared.state.current_image.size == (8, 8) and shared.state.id_live_preview == 1
    assert shared.state.job == ""
    assert host.lora_dir() == webui.root / "models" / "Lora"  # the --lora-dir the stub started with
    shared.cmd_opts.lora_dir = str(webui.root / "elsewhere")
    assert host.lora_dir() == webui.root / "elsewhere"
    shared.cmd_opts.lora_dir = None  # Lora extension disabled: its preload never added the flag
    assert host.lora_dir() == webui.root / "models" / "Lora"


def test_no_model_and_forge2_are_refused_with_a_message(webui) -> None:
    from modules import shared

    from lora_forge.host.webui import is_forge2

    assert not is_forge2(shared.sd_model)
    forge2 = SimpleNamespace(forge_objects=object(), is_sd1=True)
    assert is_forge2(forge2)
    shared.sd_model = forge2
    with pytest.raises(ForgeError, match="Forge 2"):
        _host().sd_model()
    shared.sd_model = None
    with pytest.raises(ForgeError, match="no checkpoint"):
        _host().txt2img([_req(1)])


# -- the queue lock --------------------------------------------------------------------------------


def test_the_lock_keeps_webui_generations_and_our_jobs_apart_in_arrival_order(webui) -> None:
    from modules import call_queue, processing, shared

    host = _host()
    log: list[str] = []
    training = threading.Event()

    def webui_generation() -> None:
        # what the txt2img button does: wrap_gradio_gpu_call -> queue_lock -> process_images
        def generate(_id: str) -> None:
            log.append("webui start")
            p = processing.StableDiffusionProcessingTxt2Img(
                prompt="x",
                seed=1,
                steps=2,
                cfg_scale=1.0,
                width=64,
                height=64,
                sampler_name="Euler a",
                do_not_save_samples=True,
                do_not_save_grid=True,
            )
            processing.process_images(p)
            log.append("webui end")

        call_queue.wrap_gradio_gpu_call(generate)("task(1)")

    def our_render() -> None:
        host.txt2img([_req(1)])
        log.append("ours rendered")

    def train() -> None:
        with host.exclusive("train"):
            log.append("train start")
            assert shared.state.job == "lora_forge: train"
            training.set()
            time.sleep(0.8)
            log.append("train end")

    t_train = threading.Thread(target=train)
    t_train.start()
    assert training.wait(30)
    t_gen = threading.Thread(target=webui_generation)
    t_gen.start()
    time.sleep(0.2)
    t_ours = threading.Thread(target=our_render)
    t_ours.start()
    for t in (t_train, t_gen, t_ours):
        t.join(120)
    assert log == ["train start", "train end", "webui start", "webui end", "ours rendered"]
    assert call_queue.queue_lock.acquire(blocking=False)  # and nothing is left holding it
    call_queue.queue_lock.release()


# -- localization: our catalog translates our tab only ---------------------------------------------


def test_our_catalog_never_reaches_the_webuis_own_pages(webui) -> None:
    """The WebUI applies every extension's zh_CN.json to its whole page: ours renamed its Train tab
    and txt2img's Width/Height/Seed (issue 17). Ours is withdrawn; a full translation stays."""
    from modules import localization

    from lora_forge import extension

    core = webui.root / "localizations" / "zh_CN.json"
    core.parent.mkdir()
    core.write_text(json.dumps({"Generate": "生成"}, ensure_ascii=False), encoding="utf-8")
    ours = webui.root / "extensions" / "lora-forge" / "localizations" / "zh_CN.json"
    localization.list_localizations(str(core.parent))  # 1.7+: core first, then every extension's
    assert any(Path(f).resolve() == ours.resolve() for f in localization.localizations["zh_CN"])
    extension.before_ui()
    page = json.loads(localization.localization_js("zh_CN").split("=", 1)[1])
    assert page == {"Generate": "生成"}  # none of "Train", "Width", "Seed", "Dataset folder"
    localization.localizations.clear()
    localization.localizations["zh_CN"] = str(ours)  # 1.6 kept one path per language
    extension.before_ui()
    stand_in = Path(localization.localizations["zh_CN"])
    assert stand_in.resolve() != ours.resolve() and json.loads(stand_in.read_text(encoding="utf-8")) == {}


def test_the_tab_is_built_in_the_webuis_language(webui) -> None:
    from modules import shared

    from lora_forge import extension

    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    shared.opts.data["localization"] = "zh_CN"
    try:
        ((blocks, _title, _id),) = extension.on_ui_tabs()
    finally:
        shared.opts.data["localization"] = "None"
    labels = {getattr(b, "label", None) for b in blocks.blocks.values()}
    buttons = {b.value for b in blocks.blocks.values() if type(b).__name__ == "Button"}
    assert zh["Dataset folder"] in labels and "Dataset folder" not in labels
    assert zh["Start training"] in buttons
    radios = [b for b in blocks.blocks.values() if type(b).__name__ == "Radio" and b.choices]
    shown = {name: value for r in radios for name, value in r.choices}
    assert any(name != value and zh.get(value) == name for name, value in shown.items())  # names Chinese, values kept
    ((english, _t, _i),) = extension.on_ui_tabs()
    assert "Dataset folder" in {getattr(b, "label", None) for b in english.blocks.values()}


def test_zh_cn_localization_is_valid_and_covers_our_labels() -> None:
    data = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in data.items())
    spec = importlib.util.find_spec("lora_forge.host.webui")
    source = Path(spec.origin).read_text(encoding="utf-8")
    for label in ("Folder for LoRA Forge downloads (tagger models)", "Default dataset folder", "Dataset folder"):
        assert label in data, label
    assert (
        "Hugging Face mirror for LoRA Forge downloads" in source
        and "Hugging Face mirror for LoRA Forge downloads" in data
    )


@pytest.mark.browser
def test_the_tab_inside_a_webui_page(webui, serve_blocks, page) -> None:
    """Rendered the way modules/ui.py does it: each on_ui_tabs Blocks inside a TabItem of one page."""

    from tests.browser import js_errors, wait_gradio, webui_like_page

    page.goto(serve_blocks(webui_like_page(webui.build_ui())))
    wait_gradio(page)
    assert not page.locator("#lora_forge").is_visible()  # another tab is on screen
    page.locator("#tabs button", has_text="炼丹").click()
    assert page.locator("#tab_lora_forge #lora_forge").is_visible()
    assert page.locator("#lora_forge_dataset_dir textarea").is_visible()
    assert js_errors(page) == []


def test_building_the_tab_sets_up_no_page_of_its_own(webui) -> None:
    """gradio makes a config and a FastAPI app at the end of every top-level Blocks; the WebUI only
    renders our tab into its page, so that work (the largest part of building the tab) is skipped,
    and gradio is left as it was for everything else (issue 17, start-up share)."""
    import gradio as gr

    from lora_forge import extension

    ((blocks, _title, _id),) = extension.on_ui_tabs()
    assert blocks.app is None and blocks.config == {}
    with gr.Blocks(analytics_enabled=False) as other:
        gr.Textbox()
    assert other.app is not None and other.config["components"]


@pytest.mark.browser
def test_our_words_in_the_browser_change_our_tab_only(webui, serve_blocks, page) -> None:
    """Inside the WebUI in zh_CN, javascript/lora_forge_l10n.js translates what the build could not
    (table headers, dropdown entries) below #lora_forge, and nothing of the WebUI's own page."""
    import gradio as gr
    from modules import shared

    from tests.browser import js_errors, wait_gradio

    zh = json.loads((ROOT / "localizations" / "zh_CN.json").read_text(encoding="utf-8"))
    shared.opts.data["localization"] = "zh_CN"
    try:
        tabs = webui.build_ui()
    finally:
        shared.opts.data["localization"] = "None"
    with gr.Blocks(analytics_enabled=False) as demo, gr.Tabs(elem_id="tabs"):
        with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):  # the WebUI's own words
            gr.Number(512, label="Width", elem_id="txt2img_width")
        with gr.TabItem("Train", id="train", elem_id="tab_train"):
            gr.Markdown("Train")
        for blocks, title, elem_id in tabs:
            with gr.TabItem(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()
    page.goto(serve_blocks(demo))
    wait_gradio(page)
    # what the WebUI's page has: its settings in `opts`, onUiLoaded/onUiUpdate, our script by file= URL
    page.evaluate(
        """(src) => {
            window.opts = {localization: "zh_CN"};
            window.onUiLoaded = (f) => setTimeout(f, 0);
            window.onUiUpdate = (f) => new MutationObserver(f).observe(document.body, {childList: true, subtree: true});
            document.head.appendChild(Object.assign(document.createElement("script"), {src}));
        }""",
        f"file={ROOT / 'javascript' / 'lora_forge_l10n.js'}",
    )
    page.wait_for_function(
        "(word) => [...document.querySelectorAll('#lora_forge_grid_scores thead th')]"
        ".some(t => t.innerText.includes(word))",
        arg=zh["Epoch"],
        timeout=30000,
    )
    assert page.locator("#tabs button", has_text="Train").count() == 1  # the WebUI's Train tab stays English
    assert page.inner_text("#txt2img_width label").strip().startswith("Width")
    assert js_errors(page) == []
