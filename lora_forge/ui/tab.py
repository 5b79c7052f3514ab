"""Assembles the 炼丹 tab from the sections that exist. The WebUI registers it through
scripts/lora_forge.py; tests and `python -m lora_forge ui` launch the same Blocks on their own."""

from __future__ import annotations

import importlib

from lora_forge.cli import module_exists
from lora_forge.ui.context import UiContext

# (module, tab title) in the order of the user's path; a section that is not there is not shown.
SECTIONS: list[str] = [
    "lora_forge.ui.prepare",  # 素材 / 裁剪
    "lora_forge.ui.tagger",  # 打标
    "lora_forge.ui.editor",  # 编辑
    "lora_forge.ui.train",  # 训练
    "lora_forge.ui.grid",  # 测试
    "lora_forge.ui.inspect",  # 模型识别
]

CSS_ROOT_ID = "lora_forge"


def build(ctx: UiContext):
    """Return the gr.Blocks of the tab. Each section module has TITLE and build(ctx)."""
    import gradio as gr

    # A Blocks rendered into the WebUI's tab loses its own elem_id, so the css/js root is a Column.
    with gr.Blocks(analytics_enabled=False) as blocks, gr.Column(elem_id=CSS_ROOT_ID):
        ctx.shared["dataset_dir"] = gr.Textbox(
            label="Dataset folder", elem_id="lora_forge_dataset_dir", placeholder="folder of prepared images"
        )
        with gr.Tabs(elem_id="lora_forge_sections"):
            for name in SECTIONS:
                if not module_exists(name):
                    continue
                section = importlib.import_module(name)
                with gr.Tab(section.TITLE, elem_id=f"lora_forge_tab_{name.rsplit('.', 1)[1]}"):
                    section.build(ctx)
    return blocks
