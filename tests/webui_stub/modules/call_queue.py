"""modules/call_queue.py: the WebUI-wide GPU queue every generation, API call and settings change takes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from modules import fifo_lock, shared

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func: Callable[..., Any]) -> Callable[..., Any]:
    def f(*args: Any, **kwargs: Any) -> Any:
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func: Callable[..., Any], extra_outputs: Any = None) -> Callable[..., Any]:
    @functools.wraps(func)
    def f(*args: Any, **kwargs: Any) -> Any:
        id_task = args[0] if args and isinstance(args[0], str) and args[0].startswith("task(") else None
        with queue_lock:
            shared.state.begin(job=id_task)
            try:
                return func(*args, **kwargs)
            finally:
                shared.state.end()

    return f
