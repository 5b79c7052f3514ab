"""The tab's boundary: every value a handler is handed passes the server's path policy first.

Each input component that can carry a path says what it carries, once, in INPUTS (by elem_id);
`install` wraps every handler of the tab so those values go through `PathPolicy.check_value`
before the handler runs, and wraps the preprocess of every input component so an upload payload
is checked before gradio copies anything (lora_forge.uploads). Values, not names, decide: a
component nobody declared is still refused an absolute path while the server listens, and
tests/test_safety.py fails for any text-like input missing from INPUTS.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.safety import Kind, PathPolicy
from lora_forge.ui.context import UiContext


def _tagger_model(value: str) -> tuple[Kind, str]:
    """The tagger pickers take a registered model name or a model folder on the server."""
    from lora_forge.tagger import registry
    from lora_forge.ui.tagger import SEP

    key = str(value).split(SEP)[0].strip().strip('"')
    return (Kind.TEXT if key in registry.MODELS else Kind.READ), key


Declared = Kind | Callable[[str], tuple[Kind, str]]

# Every text-like input of the tab (Textbox, Dropdown, File, …) by elem_id. TEXT means "not a
# path": free text, or a name only ever matched against a listing the server made.
INPUTS: dict[str, Declared] = {
    "lora_forge_dataset_dir": Kind.WRITE,
    # 素材 / 裁剪
    "lora_forge_prepare_files": Kind.UPLOAD,
    "lora_forge_prepare_sources": Kind.LINES,
    "lora_forge_prepare_out": Kind.WRITE,
    "lora_forge_prepare_selected": Kind.TEXT,  # only its file name is used, inside the prepared folder
    # 打标
    "lora_forge_tagger_model": _tagger_model,
    "lora_forge_tagger_folder": Kind.READ,
    "lora_forge_tagger_trigger": Kind.TEXT,
    "lora_forge_tagger_exclude": Kind.TEXT,
    # 编辑
    "lora_forge_editor_search": Kind.TEXT,
    "lora_forge_editor_caption": Kind.TEXT,
    "lora_forge_editor_all": Kind.TEXT,
    "lora_forge_editor_any": Kind.TEXT,
    "lora_forge_editor_none": Kind.TEXT,
    "lora_forge_editor_trigger": Kind.TEXT,
    "lora_forge_editor_translations": Kind.READ,
    "lora_forge_editor_history": Kind.TEXT,  # matched against the dataset's own history list
    "lora_forge_editor_op": Kind.TEXT,
    "lora_forge_editor_op_tags": Kind.TEXT,
    "lora_forge_editor_op_repl": Kind.TEXT,
    "lora_forge_editor_pos": Kind.TEXT,
    # 训练
    "lora_forge_train_output_name": Kind.TEXT,  # TrainConfig.validate refuses anything but a plain name
    "lora_forge_train_trigger_word": Kind.TEXT,
    "lora_forge_train_resolution": Kind.TEXT,
    "lora_forge_train_optimizer_type": Kind.TEXT,
    "lora_forge_train_lr_scheduler": Kind.TEXT,
    "lora_forge_train_mixed_precision": Kind.TEXT,
    "lora_forge_train_v_parameterization": Kind.TEXT,
    "lora_forge_train_extra": Kind.SETTINGS,
    # 测试
    "lora_forge_grid_run": Kind.WRITE,  # the grid is written there, its LoRAs copied from there
    "lora_forge_grid_paths": Kind.LINES,
    "lora_forge_grid_strengths": Kind.TEXT,
    "lora_forge_grid_prompt": Kind.TEXT,
    "lora_forge_grid_negative": Kind.TEXT,
    "lora_forge_grid_sampler": Kind.TEXT,
    "lora_forge_grid_tagger": _tagger_model,
    "lora_forge_grid_keep_file": Kind.WRITE,  # kept; the run's other files move to the trash
    "lora_forge_grid_xyz": Kind.TEXT,
    # 模型识别
    "lora_forge_inspect_files": Kind.UPLOAD,
    "lora_forge_inspect_paths": Kind.LINES,
    # project bar: names matched against the projects the server lists
    "lora_forge_project": Kind.TEXT,
    "lora_forge_project_new": Kind.TEXT,
    "lora_forge_project_rename_to": Kind.TEXT,
}
# inputs whose values are never paths by their type (numbers, ticks, server-side state, choices)
UNTYPED = {
    "Number",
    "Slider",
    "Checkbox",
    "State",
    "Radio",
    "CheckboxGroup",
    "Dataframe",
    "Button",
    "Markdown",
    "Image",
}
# inputs that carry gradio upload payloads ({"name", "data", "is_file"})
UPLOADS = {"File", "UploadButton", "Gallery", "Video", "Audio", "Model3D", "Chatbot", "AnnotatedImage"}


def declared(component: Any) -> Declared | None:
    """What the component carries; None for a text-like input nobody declared (a test fails)."""
    elem_id = getattr(component, "elem_id", None) or ""
    if elem_id in INPUTS:
        return INPUTS[elem_id]
    name = component.__class__.__name__
    if name in UNTYPED:
        return Kind.TEXT
    if name in UPLOADS:
        return Kind.UPLOAD
    return None


def undeclared_inputs(blocks: Any) -> list[str]:
    """Text-like handler inputs missing from INPUTS (tests/test_safety.py wants none)."""
    out = []
    for block_fn in blocks.fns:
        if getattr(block_fn, "fn", None) is None:
            continue
        for comp in block_fn.inputs:
            if declared(comp) is None:
                out.append(f"{comp.__class__.__name__} {getattr(comp, 'elem_id', None) or getattr(comp, 'label', '')}")
    return sorted(set(out))


def check_input(policy: PathPolicy, what: Declared | None, value: Any) -> None:
    """One handler input through the policy."""
    if not policy.enforced or value is None or value == "":
        return
    if what is None:  # nobody said: an absolute path is refused all the same
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and _looks_absolute(item):
                policy.check_value(Kind.READ, item)
        return
    if callable(what) and not isinstance(what, Kind):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            kind, text = what(str(item))
            policy.check_value(kind, text)
        return
    if what is Kind.SETTINGS:
        from lora_forge.train.config import path_keys

        policy.check_value(what, value, path_keys())
    else:
        policy.check_value(what, value)


def _looks_absolute(text: str) -> bool:
    t = text.strip().strip('"').strip("'")
    return t.startswith(("/", "\\", "~")) or (len(t) > 2 and t[1] == ":" and t[2] in "\\/")


def install(blocks: Any, ctx: UiContext) -> int:
    """Guard every handler and every upload input of `blocks`; returns the handlers wrapped."""
    wrapped = 0
    for block_fn in blocks.fns:
        fn = getattr(block_fn, "fn", None)
        if fn is None or getattr(fn, "_lora_forge_guarded", False):
            continue
        kinds = [declared(comp) for comp in block_fn.inputs]
        for comp, kind in zip(block_fn.inputs, kinds, strict=True):
            if kind is Kind.UPLOAD:
                _guard_preprocess(comp, ctx)
        block_fn.fn = _guarded(fn, kinds, ctx)
        wrapped += 1
    return wrapped


def _guard_preprocess(component: Any, ctx: UiContext) -> None:
    """gradio 3.41 copies whatever server file an `is_file` payload names; check it first."""
    from lora_forge import uploads

    if getattr(component, "_lora_forge_uploads", False):
        return
    original = component.preprocess
    is_file_input = component.__class__.__name__ == "File"

    def preprocess(x: Any) -> Any:
        import gradio as gr

        try:
            if is_file_input:
                return uploads.preprocess_file(ctx.paths(), component, x)
            uploads.check_payload(ctx.paths(), x)
        except ForgeError as e:
            raise gr.Error(ctx.tr(str(e))) from None
        return original(x)

    component.preprocess = preprocess
    component._lora_forge_uploads = True


def _check_inputs(ctx: UiContext, kinds: list[Declared | None], args: tuple[Any, ...]) -> None:
    import gradio as gr

    policy = ctx.paths()
    try:
        for what, value in zip(kinds, args, strict=False):
            if what is not Kind.UPLOAD:
                check_input(policy, what, value)
    except ForgeError as e:
        raise gr.Error(str(e)) from None


def _discard_uploads(kinds: list[Declared | None], args: tuple[Any, ...]) -> None:
    """The handler is done with its uploads: they leave the server's temp folder."""
    from lora_forge import uploads

    for what, value in zip(kinds, args, strict=False):
        if what is Kind.UPLOAD:
            with contextlib.suppress(OSError):
                uploads.discard(value)


def _guarded(fn: Any, kinds: list[Declared | None], ctx: UiContext) -> Any:
    """Same kind of callable as `fn` (gradio looks at generator/async-ness and the signature)."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            try:
                _check_inputs(ctx, kinds, args)
                async for item in fn(*args, **kwargs):
                    yield item
            finally:
                _discard_uploads(kinds, args)

        wrapper: Any = agen
    elif inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                _check_inputs(ctx, kinds, args)
                yield from fn(*args, **kwargs)
            finally:
                _discard_uploads(kinds, args)

        wrapper = gen
    elif inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            try:
                _check_inputs(ctx, kinds, args)
                return await fn(*args, **kwargs)
            finally:
                _discard_uploads(kinds, args)

        wrapper = coro
    else:

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any) -> Any:
            try:
                _check_inputs(ctx, kinds, args)
                return fn(*args, **kwargs)
            finally:
                _discard_uploads(kinds, args)

        wrapper = plain
    wrapper._lora_forge_guarded = True
    return wrapper
