"""The 测试 section in real headless Chromium: render a run's grid with scores on the tiny model,
send its X/Y/Z settings to a txt2img prompt box + paste button laid out with the WebUI 1.10.1
element ids, and keep the recommended file with the others moved to a trash folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lora_forge.grid.testing import write_run
from lora_forge.settings import Settings
from lora_forge.tagger.testing import build_test_model
from tests.browser import js_errors, wait_gradio


class WebUIishHost:
    """The tiny standalone host plus the two WebUIHost calls the send button uses."""

    def __init__(self, inner: Any, lora_dir: Path) -> None:
        self._inner = inner
        self._lora_dir = lora_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def lora_dir(self) -> Path:
        return self._lora_dir

    def xyz_script(self) -> tuple[list[str], list[str]]:
        from lora_forge.grid.xyz import LAYOUTS, PROMPT_SR

        axes = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", PROMPT_SR]
        return ["self", "p", *LAYOUTS["1.8-1.10"]], axes

    def network_name(self, path: Path) -> str:
        return Path(path).stem


def _blocks(ctx: Any) -> Any:
    import gradio as gr

    from lora_forge.ui import grid as grid_ui
    from lora_forge.ui.app import page_assets

    _css, js = page_assets()
    with gr.Blocks(analytics_enabled=False) as demo:
        with gr.Column(elem_id="lora_forge"):
            grid_ui.build(ctx)
        # what the WebUI's txt2img tab has at these ids (modules/ui_toprow.py, 1.10.1)
        prompt = gr.Textbox(label="txt2img prompt", elem_id="txt2img_prompt")
        with gr.Row(elem_id="txt2img_tools"):
            paste = gr.Button("↙", elem_id="paste")
        pasted = gr.Textbox(label="what paste read", elem_id="pasted")
        paste.click(lambda text: text, [prompt], [pasted])
        inject = "document.head.appendChild(Object.assign(document.createElement('script'), {text: %s}))"
        demo.load(None, None, None, _js="() => { " + inject % json.dumps(js) + "; }")
    return demo


# What the user cannot see whole: the score table's header cells (the last is "Combined") and the
# heat map, each checked against the page width and against every ancestor that clips its overflow.
CLIPPED_JS = """() => {
    const out = [];
    const targets = [...document.querySelectorAll('#lora_forge_grid_scores thead th'),
                     document.querySelector('#lora_forge_grid_heat img')].filter(Boolean);
    for (const el of targets) {
        const r = el.getBoundingClientRect();
        const name = el.tagName === 'IMG' ? 'heat map' : el.innerText.trim();
        if (r.width === 0) { out.push(name + ': not shown'); continue; }
        if (r.right > document.documentElement.clientWidth + 1) out.push(name + ': past the page edge');
        for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
            const st = getComputedStyle(a);
            if (!/(hidden|auto|scroll|clip)/.test(st.overflowX + st.overflowY)) continue;
            const b = a.getBoundingClientRect();
            if (r.right > b.right + 1 || r.bottom > b.bottom + 1 || r.left < b.left - 1) {
                out.push(name + ': clipped by ' + (a.id || a.className || a.tagName));
                break;
            }
        }
    }
    return out;
}"""


def _type(page: Any, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.press(selector, "Tab")


@pytest.mark.browser
def test_render_score_send_and_keep(page, serve_blocks, tiny_host, tmp_path):
    from lora_forge.ui.context import UiContext

    run = tmp_path / "Lora" / "lfgrid"
    write_run(tiny_host.sd_model(), run, epochs=1, final=True, scale=0.15)
    tagger = build_test_model(tmp_path / "tagger")
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path / "data")
    ctx = UiContext(host=lambda: WebUIishHost(tiny_host, tmp_path / "Lora"), settings=lambda: settings)
    page.set_viewport_size({"width": 1400, "height": 900})  # a laptop screen, where "Combined" was cut off
    page.goto(serve_blocks(_blocks(ctx)))
    wait_gradio(page)
    page.click("#lora_forge_grid_refresh")  # 🔄 lists the run folders under the Lora folder
    option = page.locator("#lora_forge_grid_run li", has_text=str(run))
    picker = page.locator("#lora_forge_grid_run input")
    for _ in range(240):  # open the list until the refreshed choices arrive (slow on a loaded machine)
        picker.click()
        if option.count():
            break
        page.keyboard.press("Escape")
        picker.blur()  # gradio's dropdown opens on focus: a click on the still-focused input shows nothing
        page.wait_for_timeout(250)
    option.click()
    _type(page, "#lora_forge_grid_strengths textarea", "0.5,1")
    _type(page, "#lora_forge_grid_prompt textarea", "a photo")
    for field, value in (("steps", "2"), ("width", "64"), ("height", "64")):
        _type(page, f"#lora_forge_grid_{field} input", value)
    _type(page, "#lora_forge_grid_tagger textarea", str(tagger))
    page.click("#lora_forge_grid_go")
    page.wait_for_function(
        "() => /grid in|Error/.test(document.querySelector('#lora_forge_grid_status').innerText)", timeout=120000
    )
    assert "2 × 2 grid in" in page.inner_text("#lora_forge_grid_status")
    page.wait_for_selector("#lora_forge_grid_image img")
    page.wait_for_selector("#lora_forge_grid_heat img")
    assert "Recommended:" in page.inner_text("#lora_forge_grid_advice")
    assert page.locator("#lora_forge_grid_scores tbody tr").count() == 4
    page.screenshot(path=str(tmp_path / "grid-1400.png"), full_page=True)
    clipped = page.evaluate(CLIPPED_JS)
    assert clipped == [], f"cut off at 1400 px (screenshot {tmp_path / 'grid-1400.png'}): {clipped}"
    with page.expect_popup() as popup_info:
        page.click("#lora_forge_grid_full")
    popup = popup_info.value
    popup.wait_for_function("() => (document.querySelector('#lora_forge_full_grid') || {}).naturalWidth > 0")
    shown = popup.evaluate("() => document.querySelector('#lora_forge_full_grid').naturalWidth")
    grids = [p.name for p in run.glob("lfgrid-grid-*.png") if not p.name.endswith("-scores.png")]
    assert len(grids) == 1 and (run / grids[0].replace(".png", "-scores.png")).is_file()
    assert shown == Image.open(run / grids[0]).width  # the full-size picture, not the scaled preview

    page.click("#lora_forge_grid_send")
    page.wait_for_function("() => document.querySelector('#pasted textarea').value.includes('X/Y/Z plot')")
    sent = page.input_value("#txt2img_prompt textarea")
    assert sent.startswith("lfgrid, a photo <lora:lfgrid-000001:0.50>\n")
    assert 'X Type: Prompt S/R, X Values: "lfgrid-000001,lfgrid"' in sent
    assert "Sent: txt2img now has the prompt" in page.inner_text("#lora_forge_grid_send_info")

    page.click("#lora_forge_grid_trash input")
    kept = page.input_value("#lora_forge_grid_keep_file input")
    page.click("#lora_forge_grid_keep")
    page.wait_for_function("() => document.querySelector('#lora_forge_grid_send_info').innerText.includes('moved 1')")
    remaining = sorted(p.name for p in run.glob("*.safetensors"))
    assert remaining == [Path(kept).name]
    moved = list((tmp_path / "models" / "trash").glob("lfgrid-*/*.safetensors"))
    assert len(moved) == 1 and moved[0].name != Path(kept).name
    assert js_errors(page) == []
