"""Calling the built tab's handlers directly (no browser): find one by its function's name and read
what it returned by the elem_ids of its outputs, whether it answered in order or as
{component: value} (a component it left out is not in the result)."""

from __future__ import annotations

from typing import Any


def handler(blocks: Any, name: str) -> Any:
    return next(f for f in blocks.fns if getattr(f.fn, "__name__", "") == name)


def _key(component: Any) -> Any:
    return getattr(component, "elem_id", None) or id(component)


def by_id(block_fn: Any, result: Any) -> dict[Any, Any]:
    if isinstance(result, dict) and result.get("__type__") != "update":
        return {_key(c): v for c, v in result.items()}
    values = list(result) if len(block_fn.outputs) > 1 else [result]
    return dict(zip([_key(c) for c in block_fn.outputs], values, strict=True))


def call(blocks: Any, name: str, *args: Any) -> dict[Any, Any]:
    """Run handler `name` with `args` (a generator: its last answer) and key its answer by elem_id."""
    fn = handler(blocks, name)
    result = fn.fn(*args)
    if hasattr(result, "__next__"):
        *_, result = result
    return by_id(fn, result)
