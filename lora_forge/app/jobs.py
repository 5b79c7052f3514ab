"""One way to run work off the caller's thread: a `Job` owns the worker thread, its stop flag, the
progress events it emits, its status, and what it ended with.

Faces never block on work: gradio handlers are generators that `follow()` a job, the HTTP API
polls its status, the CLI simply `wait()`s. Errors are caught once, here: a ForgeError (the user's
mistake or a refusal) becomes the job's message as it is; anything else is a bug, logged with its
traceback and shown to the user as one line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from lora_forge.errors import ForgeError
from lora_forge.events import Progress, ProgressFn, StopFlag, no_progress

log = logging.getLogger(__name__)

DONE = ("finished", "stopped", "failed")
_END = object()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def bug_line(e: BaseException) -> str:
    """What the user sees of a bug (the traceback is in the console)."""
    return f"unexpected {type(e).__name__}: {e} (details in the console)"


class Job:
    """`work(job)` on a daemon thread. It reports through `job.emit(Progress)` and polls
    `job.stop_flag`; its return value becomes `job.result`.

    State: waiting → running (from the thread's start) → finished / stopped / failed. A work
    function that knows better (a run the host's Interrupt ended) may set `job.state = "stopped"`
    before returning.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[Job], Any],
        on_event: ProgressFn = no_progress,
        on_end: Callable[[Job], None] | None = None,
        job_id: str = "",
    ) -> None:
        self.id = job_id or new_id()
        self.name = name
        self.state = "waiting"
        self.message = ""
        self.error = ""
        self.result: Any = None
        self.info: dict[str, Any] = {}  # what the work publishes on the way (e.g. the provider it runs on)
        self.started = time.time()
        self.finished = 0.0
        self.stop_flag = StopFlag()
        self._work = work
        self._on_event = on_event
        self._on_end = on_end
        self._events: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.state in DONE

    def start(self) -> Job:
        self._thread = threading.Thread(target=self._run, name=f"lora_forge {self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, reason: str = "stopped by user") -> None:
        """Ask the work to end after the unit it is in (a step, an image, a cell)."""
        if not self.done:
            self.stop_flag.request(reason)

    def wait(self, timeout: float | None = None) -> Job:
        if self._thread is not None:
            self._thread.join(timeout)
        return self

    def emit(self, event: Progress) -> None:
        """From the work: one progress event, to the job's listener and to whoever follows it."""
        self._on_event(event)
        if event.message:
            self.message = event.message
        self._events.put(event)

    def say(self, message: str) -> None:
        """A plain line from the work itself (downloading, loading), marked `data["said"]`."""
        self.emit(Progress(0, 0, message, data={"said": True}))

    def follow(self) -> Iterator[Progress]:
        """The job's events as they come, until it is done (for a gradio generator handler)."""
        while True:
            event = self._events.get()
            if event is _END:
                self._events.put(_END)  # a second follower ends too
                return
            yield event

    def _run(self) -> None:
        self.state = "running"
        try:
            self.result = self._work(self)
            if not self.done:
                self.state = "stopped" if self.stop_flag.requested else "finished"
        except ForgeError as e:
            if self.stop_flag.requested:  # stopped before anything was done (e.g. while loading)
                self.state, self.message = "stopped", str(e)
            else:
                self.state, self.error = "failed", str(e)
        except Exception as e:  # a bug: loud in the log, one line for the user
            log.exception("%s failed", self.name)
            self.state, self.error = "failed", bug_line(e)
        finally:
            self.finished = time.time()
            if self.state == "failed":
                self.message = self.error
            try:
                if self._on_end is not None:
                    self._on_end(self)
            except Exception:
                log.exception("%s: recording its end failed", self.name)
            self._events.put(_END)
