"""素材 / 裁剪: bring images in (upload, folder or zip), crop them, look at the result, fix single images.

Wiring only: the work is lora_forge.dataset.prepare. Uploads are copied into the dataset's own
`.lora_forge/uploads/` first, because gradio's temp files vanish and the per-image actions (re-crop
centred / face / keep whole) go back to the original.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress
from lora_forge.ui.context import UiContext

TITLE = "Images & crop"
SIZES = ["512", "768", "1024"]
ACTIONS = {"Re-crop centred": "centre", "Face focus": "face", "Keep whole": "whole", "Drop": "drop"}
BOX_COLOUR = (255, 40, 40)


@dataclass(frozen=True)
class PrepareHandles:
    """What the tab wires to: the output folder box and the Prepare click (its work changes the steps)."""

    out: Any
    prepared: Any


def _paths_from_text(text: str) -> list[str]:
    """One path per line; the quotes Windows' "Copy as path" adds are removed."""
    return [line.strip().strip('"').strip("'").strip() for line in (text or "").splitlines() if line.strip()]


def _stage_uploads(files: Any, out: Path) -> Path | None:
    """Move the uploaded files (with the names the user dropped) into the dataset's uploads folder:
    an upload (uploads.UploadedFile) is ours and removed after this handler anyway, so a 2 GB zip
    is renamed, not copied a second time (copied only across drives); plain paths are copied."""
    from lora_forge.dataset.captions import STATE_DIR
    from lora_forge.uploads import UploadedFile

    items = [f for f in files or [] if getattr(f, "name", f)]
    if not items:
        return None
    folder = out / STATE_DIR / "uploads" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for f in items:
        p = Path(str(getattr(f, "name", f)))  # gradio 3.41 keeps the dropped name as the temp file's name
        if isinstance(f, UploadedFile):
            shutil.move(p, folder / p.name)
        else:
            shutil.copyfile(p, folder / p.name)
    return folder


def gallery_items(
    folder: Path, show_boxes: bool, tr: Callable[[str], str] = str
) -> tuple[list[tuple[Any, str]], list[str]]:
    """(image, caption) per prepared image, with the face boxes drawn when asked; and the file names.
    `tr` puts the flags in the user's language (a gallery caption is not a message box the tab's
    translation boundary sees)."""
    from PIL import Image, ImageDraw

    from lora_forge.dataset.manifest import Manifest

    items, names = [], []
    for _, out in Manifest.load(folder).images():
        path = folder / out.file
        if not path.is_file():
            continue
        note = f" ⚠ {'; '.join(tr(f) for f in out.flags)}" if out.flags else ""
        caption = f"{out.file}{note}"
        if show_boxes and out.faces:
            with Image.open(path) as im:
                im = im.convert("RGB")
            draw = ImageDraw.Draw(im)
            width = max(2, im.size[0] // 200)
            for f in out.faces:
                x, y, w, h = f["box"]
                draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=width)
            items.append((im, caption))
        else:
            items.append((str(path), caption))
        names.append(out.file)
    return items, names


def _report_markdown(report: Any) -> str:
    lines = [f"**{report.summary()}** in {report.seconds:.1f}s → `{report.folder}`"]
    lines += [f"- ⚠ {w}" for w in report.warnings]
    if report.skipped:
        lines.append("\n**Skipped**")
        lines += [f"- `{s.source}`: {s.reason}" for s in report.skipped]
    if report.notes:
        lines.append("\n**Notes**")
        lines += [f"- `{src}`: {'; '.join(notes)}" for src, notes in report.notes.items()]
    if report.near_duplicates:
        lines.append("\n**Near duplicates** (both kept; drop one if they are the same picture)")
        lines += [f"- `{p['a']}` ≈ `{p['b']}` (distance {p['distance']})" for p in report.near_duplicates]
    return "\n".join(lines)


def build(ctx: UiContext) -> PrepareHandles:
    import gradio as gr

    with gr.Row():
        files = gr.File(label="Drop images or zip files", file_count="multiple", elem_id="lora_forge_prepare_files")
        with gr.Column():
            sources = gr.Textbox(
                label="Or folders / zip files on this machine, one per line",
                lines=2,
                placeholder="D:\\photos\\my_character",
                elem_id="lora_forge_prepare_sources",
            )
            out_box = gr.Textbox(
                label="Output folder (empty = a new folder in the default dataset folder)",
                elem_id="lora_forge_prepare_out",
            )
    with gr.Row():
        size = gr.Radio(SIZES, value="512", label="Size", elem_id="lora_forge_prepare_size")
        buckets = gr.Checkbox(label="Aspect-ratio buckets (no upscaling)", elem_id="lora_forge_prepare_buckets")
        face_crops = gr.Checkbox(label="Extra face crops", elem_id="lora_forge_prepare_face_crops")
        fmt = gr.Radio(["jpg", "png"], value="jpg", label="File format", elem_id="lora_forge_prepare_format")
        run = gr.Button("Prepare images", variant="primary", elem_id="lora_forge_prepare_run")
    report_md = gr.Markdown("", elem_id="lora_forge_prepare_report")
    show_boxes = gr.Checkbox(label="Show face boxes", value=True, elem_id="lora_forge_prepare_boxes")
    gallery = gr.Gallery(
        label="Prepared images",
        columns=6,
        height=520,
        allow_preview=False,
        object_fit="contain",
        show_download_button=False,
        elem_id="lora_forge_prepare_gallery",
    )
    names = gr.State([])
    folder_state = gr.State("")
    with gr.Row():
        selected = gr.Textbox(label="Selected image", interactive=False, elem_id="lora_forge_prepare_selected")
        buttons = {
            label: gr.Button(label, size="sm", elem_id=f"lora_forge_prepare_{action}")
            for label, action in ACTIONS.items()
        }
    message = gr.Markdown("", elem_id="lora_forge_prepare_message")
    # the tab's shared folder box; on its own (tests) the section brings a hidden one
    dataset_dir = ctx.shared.get("dataset_dir") or gr.Textbox(visible=False)

    def do_run(files_v, sources_v, out_v, size_v, buckets_v, face_v, fmt_v, boxes_v, progress=gr.Progress()):
        # the dataset stage is imported on first use: at WebUI start-up it would only cost time
        from lora_forge.dataset.prepare import PrepareOptions, prepare

        try:
            settings = ctx.settings()
            out = (
                Path(out_v.strip().strip('"'))
                if out_v and out_v.strip()
                else (settings.dataset_dir / time.strftime("dataset-%Y%m%d-%H%M%S"))
            )
            inputs: list[str | Path] = _paths_from_text(sources_v)
            staged = _stage_uploads(files_v, out)
            if staged is not None:  # as single files, so the report names them as the user dropped them
                inputs += sorted(staged.iterdir())
            if not inputs:
                raise ForgeError("drop some images or a zip above, or enter a folder, then press Prepare")
            options = PrepareOptions(size=int(size_v), buckets=bool(buckets_v), face_crops=bool(face_v), format=fmt_v)

            def on_progress(event: Progress) -> None:
                if event.total:
                    progress((event.step, event.total), desc=ctx.tr(event.message)[:60])

            report = prepare(inputs, out, options, settings, progress=on_progress)
        except ForgeError as e:
            return f"**Error:** {e}", gr.update(), [], "", gr.update(), gr.update()
        items, file_names = gallery_items(out, boxes_v, ctx.tr)
        return _report_markdown(report), items, file_names, str(out), str(out), str(out)

    prepared = run.click(
        do_run,
        inputs=[files, sources, out_box, size, buckets, face_crops, fmt, show_boxes],
        outputs=[report_md, gallery, names, folder_state, out_box, dataset_dir],
    )

    def redraw(folder_v, boxes_v):
        if not folder_v:
            return gr.update(), []
        items, file_names = gallery_items(Path(folder_v), boxes_v, ctx.tr)
        return items, file_names

    show_boxes.change(redraw, inputs=[folder_state, show_boxes], outputs=[gallery, names])

    def select(names_v, evt):
        i = int(evt.index)
        return names_v[i] if 0 <= i < len(names_v) else ""

    select.__annotations__ = {"evt": gr.SelectData}  # gradio finds the event by this annotation
    gallery.select(select, [names], [selected])

    def make_action(action: str):
        def act(folder_v, file_v, boxes_v):
            from lora_forge.dataset.prepare import apply_action

            if not folder_v or not file_v:
                return "Select an image in the gallery first.", gr.update(), gr.update(), gr.update()
            try:
                rec = apply_action(Path(folder_v), file_v, action, ctx.settings())
            except ForgeError as e:
                return f"**Error:** {e}", gr.update(), gr.update(), gr.update()
            items, file_names = gallery_items(Path(folder_v), boxes_v, ctx.tr)
            done = ", ".join(o.file for o in rec.outputs) or "removed from the dataset"
            return f"{rec.source}: {action} → {done}", items, file_names, ""

        return act

    for label, action in ACTIONS.items():
        buttons[label].click(
            make_action(action),
            inputs=[folder_state, selected, show_boxes],
            outputs=[message, gallery, names, selected],
        )
    return PrepareHandles(out_box, prepared)
