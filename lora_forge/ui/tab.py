"""Assembles the 炼丹 tab from the sections that exist. The WebUI registers it through
scripts/lora_forge.py; tests and `python -m lora_forge ui` launch the same Blocks on their own.

Above the sections sits the project bar (lora_forge.ui.projects): the project, its steps and what
to do next. Each section's build returns its handles (its components and the events others may
chain to); ui/project_wiring.py connects the bar and the sections by them. Every handler of every
section runs behind lora_forge.ui.guard, so the path policy applies to every input without each
section repeating it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lora_forge.cli import module_exists
from lora_forge.ui import guard
from lora_forge.ui.context import UiContext
from lora_forge.ui.translate import localize_handlers

if TYPE_CHECKING:
    from lora_forge.ui.editor import EditorHandles
    from lora_forge.ui.grid import GridHandles
    from lora_forge.ui.prepare import PrepareHandles
    from lora_forge.ui.tagger import TaggerHandles
    from lora_forge.ui.train import TrainHandles

# (module, tab title) in the order of the user's path; a section that is not there is not shown.
SECTIONS: list[str] = [
    "lora_forge.ui.prepare",  # 素材 / 裁剪
    "lora_forge.ui.tagger",  # 打标
    "lora_forge.ui.editor",  # 编辑
    "lora_forge.ui.train",  # 训练
    "lora_forge.ui.grid",  # 测试
    "lora_forge.ui.optimise",  # 优化
    "lora_forge.ui.inspect",  # 模型识别
]

CSS_ROOT_ID = "lora_forge"


def section_id(name: str) -> str:
    return name.rsplit(".", 1)[1]


@dataclass
class Sections:
    """The built sections' handles (None for a section that is not there): what the tab wires the
    project bar and the sections to each other by."""

    tabs: Any  # gr.Tabs: selecting one of its ids opens that section
    items: dict[str, Any] = field(default_factory=dict)  # section key → its gr.Tab
    prepare: PrepareHandles | None = None
    tagger: TaggerHandles | None = None
    editor: EditorHandles | None = None
    train: TrainHandles | None = None
    grid: GridHandles | None = None

    def work_events(self) -> list[Any]:
        """The clicks whose work changes what the steps show, each done when its work is."""
        events = []
        if self.prepare is not None:
            events.append(self.prepare.prepared)
        if self.tagger is not None:
            events.append(self.tagger.tagged)
        if self.editor is not None:
            events += [self.editor.saved, self.editor.rolled_back]
        if self.grid is not None:
            events.append(self.grid.rendered)
        return events

    def trigger_sources(self) -> list[tuple[Any, Any]]:
        """(click, its trigger word box): the clicks that write a trigger word into the captions."""
        sources = []
        if self.tagger is not None:
            sources.append((self.tagger.tagged, self.tagger.trigger))
        if self.editor is not None:
            sources.append((self.editor.trigger_added, self.editor.trigger))
        return sources


def build(ctx: UiContext):
    """Return the gr.Blocks of the tab. Each section module has TITLE and build(ctx, ...) returning
    its handles; the bar and the sections are wired to each other by those handles here."""
    import gradio as gr

    from lora_forge.ui import project_wiring, projects

    # A Blocks rendered into the WebUI's tab loses its own elem_id, so the css/js root is a Column.
    with gr.Blocks(analytics_enabled=False) as blocks, gr.Column(elem_id=CSS_ROOT_ID):
        bar = projects.build_bar(ctx)
        ctx.shared["dataset_dir"] = gr.Textbox(
            label="Dataset folder", elem_id="lora_forge_dataset_dir", placeholder="folder of prepared images"
        )
        ctx.shared["grid_scores"] = gr.State(None)
        with gr.Tabs(elem_id="lora_forge_sections") as tabs:
            ctx.shared["sections"] = tabs
            sections = Sections(tabs)

            def add(name: str, *args: Any) -> Any:
                """Build one section in its tab; None when it is not there."""
                if not module_exists(name):
                    return None
                section = importlib.import_module(name)
                key = section_id(name)
                with gr.Tab(section.TITLE, id=key, elem_id=f"lora_forge_tab_{key}") as tab_item:
                    handles = section.build(ctx, *args)
                sections.items[key] = tab_item
                return handles

            sections.prepare = add("lora_forge.ui.prepare")
            sections.tagger = add("lora_forge.ui.tagger")
            sections.editor = add("lora_forge.ui.editor")
            sections.train = add("lora_forge.ui.train")
            sections.grid = add("lora_forge.ui.grid")
            add("lora_forge.ui.optimise", sections.train)  # "Train again" fills 训练's form
            add("lora_forge.ui.inspect")
        project_wiring.wire(ctx, blocks, bar, sections)
        if sections.train is not None:  # SDXL values when an SDXL model is loaded (or was switched to)
            sections.train.follow_model(sections.items["train"].select)
    guard.install(blocks, ctx)  # every input through the path policy (lora_forge.ui.guard)
    localize_handlers(blocks, ctx)  # messages leave in the user's language (lora_forge.ui.translate)
    return blocks
