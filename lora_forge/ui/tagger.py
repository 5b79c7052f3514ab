"""打标: caption the dataset folder with a WD14 tagger.

Wiring only: the work is lora_forge.tagger, run as an app.tagging job that this handler
follows, so the page shows which provider is really in use from the first second (a
silent CPU fall-back is what users complain about most). The result view shows at most TOP_TAGS
tags per image: thousands of confidence labels made other taggers' pages lag (kawalain#76).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from lora_forge.ui.context import UiContext

TITLE = "Tagging"
TOP_TAGS = 50
MAX_ROWS = 300
SEP = " · "
EXISTING = {
    "Skip (keep them as they are)": "skip",
    "Overwrite": "overwrite",
    "Append new tags": "append",
    "Prepend new tags": "prepend",
}
STATE_TEXT = {"present": "downloaded", "partial": "partly downloaded", "absent": "not downloaded"}


def model_choices(settings: Any) -> list[str]:
    from lora_forge.tagger import registry

    return [
        f"{spec.name}{SEP}{spec.label.rsplit('(', 1)[1].rstrip(')')}{SEP}{STATE_TEXT[state]}"
        for spec, state in registry.list_models(settings)
    ]


def choice_for(settings: Any, name: str, choices: list[str] | None = None) -> str:
    """The dropdown entry of model `name` (pass `choices` when they are at hand: listing them
    looks at every model's folder)."""
    return next(c for c in choices or model_choices(settings) if c.split(SEP)[0] == name)


def model_info(settings: Any, choice: str) -> str:
    from lora_forge.tagger import registry

    name = (choice or registry.DEFAULT_MODEL).split(SEP)[0]
    spec = registry.MODELS.get(name)
    if spec is None:
        return ""
    folder = registry.model_folder(settings, spec)
    state = registry.download_state(folder)
    batch = "batch of 1 (v2 export)" if spec.fixed_batch else "batches"
    hint = f"; model card threshold {spec.card_threshold}" if spec.card_threshold else ""
    return (
        f"`{spec.repo_id}` — {spec.label.rsplit('(', 1)[1].rstrip(')')}, **{STATE_TEXT[state]}**, {batch}, "
        f"onnxruntime ≥ {spec.min_onnxruntime}{hint}. Folder: `{folder}`"
    )


def results_html(report: Any) -> str:
    """One row per image: status, the caption on disk, and the model's tags with their confidences."""
    rows = []
    for r in report.results[:MAX_ROWS]:
        chips = "".join(
            f'<span class="lf-tag">{html.escape(name)} <b>{p:.2f}</b></span> ' for name, p in r.tags[:TOP_TAGS]
        )
        more = f" <i>+{len(r.tags) - TOP_TAGS} more</i>" if len(r.tags) > TOP_TAGS else ""
        note = f"<br><i>{html.escape(r.message)}</i>" if r.message else ""
        caption = html.escape(r.caption) if r.caption is not None else "—"
        rows.append(
            f"<tr><td>{html.escape(r.image.name)}</td><td>{html.escape(r.status)}{note}</td>"
            f"<td>{caption}</td><td>{chips}{more}</td></tr>"
        )
    more_rows = len(report.results) - MAX_ROWS
    tail = f"<p>… and {more_rows} more images</p>" if more_rows > 0 else ""
    return (
        '<table class="lf-tagger-results"><thead><tr><th>Image</th><th>Result</th><th>Caption</th>'
        f"<th>Tags (confidence)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{tail}"
    )


@dataclass(frozen=True)
class TaggerHandles:
    """What the tab wires to: the Tag click (captions change the steps) and its trigger word box."""

    tagged: Any
    trigger: Any


def build(ctx: UiContext) -> TaggerHandles:
    import gradio as gr

    from lora_forge.tagger import registry

    settings0 = ctx.settings()
    choices = model_choices(settings0)
    with gr.Row():
        model = gr.Dropdown(
            choices,
            value=choice_for(settings0, registry.DEFAULT_MODEL, choices),
            label="Model",
            elem_id="lora_forge_tagger_model",
        )
        folder = gr.Textbox(
            label="Or a folder with model.onnx + selected_tags.csv",
            placeholder="D:\\models\\wd-eva02-large-tagger-v3",
            elem_id="lora_forge_tagger_folder",
        )
        download = gr.Button("Download model", elem_id="lora_forge_tagger_download")
    info = gr.Markdown(ctx.tr(model_info(settings0, model.value)), elem_id="lora_forge_tagger_info")
    with gr.Row():
        general = gr.Slider(
            0.0, 1.0, 0.35, step=0.01, label="General tag threshold", elem_id="lora_forge_tagger_general"
        )
        character = gr.Slider(
            0.0, 1.0, 0.85, step=0.01, label="Character tag threshold", elem_id="lora_forge_tagger_character"
        )
        with gr.Column():
            mcut = gr.Checkbox(label="MCut: pick thresholds per image", elem_id="lora_forge_tagger_mcut")
            rating = gr.Checkbox(label="Add the rating tag", elem_id="lora_forge_tagger_rating")
            save_json = gr.Checkbox(label="Save confidences (.wd14.json)", elem_id="lora_forge_tagger_json")
            escape = gr.Checkbox(
                value=True,
                label="Escape ( ) as \\( \\) (the WebUI reads ( ) as emphasis)",
                elem_id="lora_forge_tagger_escape",
            )
    with gr.Row():
        trigger = gr.Textbox(label="Trigger word (written first)", elem_id="lora_forge_tagger_trigger")
        exclude = gr.Textbox(label="Never write these tags (comma separated)", elem_id="lora_forge_tagger_exclude")
        existing = gr.Radio(
            list(EXISTING),
            value=next(iter(EXISTING)),
            label="Images that already have a caption",
            elem_id="lora_forge_tagger_existing",
        )
    with gr.Row():
        run = gr.Button("Tag images", variant="primary", elem_id="lora_forge_tagger_run")
        stop = gr.Button("Stop", elem_id="lora_forge_tagger_stop")
    status = gr.Markdown("", elem_id="lora_forge_tagger_status")
    results = gr.HTML("", elem_id="lora_forge_tagger_results")
    dataset_dir = ctx.shared.get("dataset_dir") or gr.Textbox(visible=False)
    current: dict[str, Any] = {}  # this page's latest tagging job, for Stop

    def pick(choice: str):
        spec = registry.MODELS.get((choice or registry.DEFAULT_MODEL).split(SEP)[0])
        thresholds = (spec.general_threshold, spec.character_threshold) if spec else (gr.update(), gr.update())
        return model_info(ctx.settings(), choice), *thresholds

    model.change(pick, inputs=[model], outputs=[info, general, character])

    def do_download(choice: str):
        from lora_forge.app import tagging

        settings = ctx.settings()
        name = (choice or registry.DEFAULT_MODEL).split(SEP)[0]
        job = tagging.download(settings, name)
        for event in job.follow():
            yield f"Downloading {name} … {event.message}", gr.update()
        text = f"**Error:** {job.error}" if job.error else f"{name}: download complete."
        yield text, gr.update(choices=model_choices(settings), value=choice_for(settings, name))

    download.click(do_download, inputs=[model], outputs=[status, model]).then(
        lambda c: model_info(ctx.settings(), c), inputs=[model], outputs=[info]
    )

    def do_run(
        choice, folder_v, data_v, general_v, character_v, mcut_v, rating_v, json_v, escape_v, trigger_v, exclude_v, ex_v
    ):
        from lora_forge.app import tagging
        from lora_forge.tagger.batch import TagOptions
        from lora_forge.tagger.labels import CaptionOptions, Thresholds

        options = TagOptions(
            thresholds=Thresholds(float(general_v), float(character_v), bool(mcut_v)),
            caption=CaptionOptions(
                exclude=tuple(t for t in (exclude_v or "").split(",") if t.strip()),
                trigger=trigger_v or "",
                rating=bool(rating_v),
                escape=bool(escape_v),
            ),
            existing=EXISTING[ex_v],
            save_json=bool(json_v),
        )
        key = folder_v.strip().strip('"') if (folder_v or "").strip() else choice.split(SEP)[0]
        job = current["job"] = tagging.tag(ctx.settings(), data_v, key, options)
        for event in job.follow():
            line = f"{event.step}/{event.total} {event.message}" if event.total else event.message
            provider = job.info.get("provider")
            yield (f"Running on **{provider}** — {line}" if provider else line), gr.update()
        if job.error:
            yield f"**Error:** {job.error}", ""
            return
        report = job.result
        warn = " ⚠ " if "failed to load" in report.provider else ""
        n = len(report.history_ids)
        history = f"\n\nUndo it under Edit tags → history ({n} save(s))." if n else ""
        yield f"{warn}**{report.summary()}**.{history}", results_html(report)

    def refresh_models(choice: str):
        """A run may have downloaded the model: show the new state in the picker."""
        settings = ctx.settings()
        name = (choice or registry.DEFAULT_MODEL).split(SEP)[0]
        return gr.update(choices=model_choices(settings), value=choice_for(settings, name)), model_info(settings, name)

    tagged = run.click(
        do_run,
        inputs=[
            model,
            folder,
            dataset_dir,
            general,
            character,
            mcut,
            rating,
            save_json,
            escape,
            trigger,
            exclude,
            existing,
        ],
        outputs=[status, results],
    )
    tagged.then(refresh_models, inputs=[model], outputs=[model, info])
    stop.click(lambda: current["job"].stop() if "job" in current else None, None, None)
    return TaggerHandles(tagged, trigger)
