"""模型识别: drop a model file (or give its path) and see what it is.

Paths are the main way in: a 7 GB checkpoint on the server's disk need not travel through the
browser. The panel only reads file headers, so it is safe on any file a user points it at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_forge.ui.context import UiContext

TITLE = "Model inspector"

EMPTY = "Drop a model file above or enter its path, then press Inspect."


def _paths_from_text(text: str) -> list[str]:
    """One path per line; the quotes Windows' "Copy as path" adds are removed."""
    return [line.strip().strip('"').strip("'").strip() for line in (text or "").splitlines() if line.strip()]


def _uploaded(files: Any) -> list[tuple[str, str]]:
    """(temp path, name the user dropped) for gradio 3.41's file objects or plain paths."""
    out = []
    for f in files or []:
        path = getattr(f, "name", f)
        if path:
            out.append((str(path), Path(str(path)).name))
    return out


def inspect_to_markdown(files: Any, paths_text: str) -> str:
    from lora_forge.inspect import inspect_file, render_markdown

    jobs = _uploaded(files) + [(p, "") for p in _paths_from_text(paths_text)]
    if not jobs:
        return EMPTY
    parts = []
    for path, shown in jobs:
        report = inspect_file(path)
        if shown:
            report.path = shown  # the upload's temp folder means nothing to the user
        parts.append(render_markdown(report))
    return "\n".join(parts)


def build(ctx: UiContext) -> None:
    import gradio as gr

    with gr.Row():
        files = gr.File(
            label="Drop model files (.safetensors, .ckpt, .pt, .pth, .bin)",
            file_count="multiple",
            elem_id="lora_forge_inspect_files",
        )
        with gr.Column():
            paths = gr.Textbox(
                label="Or paths on this machine, one per line",
                lines=3,
                placeholder="D:\\sd\\models\\Lora\\my_lora.safetensors",
                elem_id="lora_forge_inspect_paths",
            )
            button = gr.Button("Inspect", variant="primary", elem_id="lora_forge_inspect_button")
    report = gr.Markdown(EMPTY, elem_id="lora_forge_inspect_report")
    button.click(inspect_to_markdown, inputs=[files, paths], outputs=[report])
    files.upload(inspect_to_markdown, inputs=[files, paths], outputs=[report])
    paths.submit(inspect_to_markdown, inputs=[files, paths], outputs=[report])
