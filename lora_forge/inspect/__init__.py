"""Model inspector (模型识别): say what a model file is without trusting it.

`inspect_file` never raises for a bad file: every problem becomes the report's one-line `error`,
so one broken download in a folder does not hide what the other files are. It reads headers and
shapes, never whole tensors, and writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from lora_forge.errors import ForgeError
from lora_forge.inspect import kinds
from lora_forge.inspect.lora import analyse_lora, looks_like_lora
from lora_forge.inspect.readers import Opened, display_path, open_model_file
from lora_forge.inspect.report import Report, render_markdown, render_text

log = logging.getLogger(__name__)

__all__ = ["Report", "inspect_file", "inspect_paths", "render_markdown", "render_text"]


def inspect_file(path: str | os.PathLike[str]) -> Report:
    path = Path(path)
    report = Report(path=display_path(path))
    try:
        report.size = path.stat().st_size if path.is_file() else None
        opened = open_model_file(path)
    except ForgeError as e:
        message = str(e)
        report.kind = "error"
        report.error = message.removeprefix(f"{e.path}: ") if e.path is not None else message
        return report
    except Exception as e:  # a bug of ours on an odd file: logged, and the other files still get reported
        log.exception("inspector could not open %s", report.path)
        report.kind, report.error = "error", f"could not be read (inspector bug: {type(e).__name__}: {e})"
        return report
    report.container = opened.container
    report.tensors = opened.extras.get("tensor_count", len(opened.table.shapes))
    try:
        report.kind, report.title, report.details, notes = _classify(opened, path)
    except Exception as e:  # a bug of ours on an odd file: loud in the log, but the other files still get reported
        log.exception("inspector failed on %s", report.path)
        report.kind, report.error = "error", f"could not be classified (inspector bug: {type(e).__name__}: {e})"
        return report
    report.notes.extend(notes)
    dangers = report.details.get("yaml_dangerous")
    if dangers:
        report.error = (
            f"DANGEROUS config beside it: {report.details.get('yaml')} names code that is not a model class "
            f"({'; '.join(dangers[:3])}); loading this checkpoint with it would run that code. Delete the yaml"
        )
    if display_path(path) != os.fsdecode(path):
        # The content is fine, but the WebUI's file lists and JSON cannot carry such a name: an error
        # (exit code 2) that still says what the file is, so the user knows what they are renaming.
        report.error = (
            "the file name is not valid UTF-8 (undecodable bytes shown as \\xNN); rename it so the WebUI "
            f"and other tools can list it (the file itself is a {report.title})"
        )
    return report


def inspect_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Report]:
    return [inspect_file(p) for p in paths]


def _classify(opened: Opened, path: Path) -> tuple[str, str, dict, list[str]]:
    table = opened.table
    if opened.container == "torchscript":
        return (
            "torchscript",
            "TorchScript archive (contains code; not loaded)",
            {"archive_files": opened.extras.get("archive_files")},
            ["the WebUI does not load TorchScript files as models, LoRAs or embeddings"],
        )
    if opened.raw is not None:
        for kind, found in (
            ("embedding", kinds.embedding_from_pickle(opened.raw)),
            ("hypernetwork", kinds.hypernetwork(opened.raw)),
        ):
            if found:
                return kind, *found
    keys = list(table.shapes)
    found = kinds.embedding_from_table(table)
    if found:
        return "embedding", *found
    if keys and looks_like_lora(keys):
        return "lora", *analyse_lora(table)
    for kind, recognise in (
        ("checkpoint", lambda: kinds.checkpoint(table, path, opened.extras)),
        ("controlnet", lambda: kinds.controlnet(table)),
        ("vae", lambda: kinds.vae(table, path)),
        ("upscaler", lambda: kinds.upscaler(table)),
        ("other", lambda: kinds.other_model(table)),
    ):
        found = recognise()
        if found:
            return kind, *found
    if keys:
        hint = {"first_keys": keys[:5]}
    elif isinstance(opened.raw, dict):
        hint = {"first_keys": [str(k) for k in list(opened.raw)[:5]]}
    else:
        hint = {"python_type": type(opened.raw).__name__}
    return "unknown", "Unknown model type", hint, ["not a layout the inspector knows; the first keys may hint at it"]
