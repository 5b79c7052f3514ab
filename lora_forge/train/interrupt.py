"""Ctrl-C in the command line is a stop, not a loss.

While `train` runs, SIGINT (Ctrl-C), SIGTERM (`kill`, a container stop) and, on Windows, SIGBREAK
(Ctrl-Break, and what a closing console delivers) ask the loop to stop after the step it is in: it
then writes the LoRA so far and the resumable state, like the tab's Stop button. A second signal
aborts at once (KeyboardInterrupt), for a user who really wants out now.

Windows note: Ctrl-C and Ctrl-Break reach these handlers; there is no SIGTERM delivery between
processes there (TerminateProcess and the Task Manager kill without any handler running), so only
the state of the last saved epoch survives those - the commit protocol in state.py keeps it whole.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lora_forge.events import StopFlag

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, abort_on_second: bool = True) -> Iterator[list[str]]:
    """For the block, the signals above request `stop`; yields the names of those received.

    `abort_on_second=False` under torchrun: its agent passes a Ctrl-C on to every process (which
    the console already signalled) and sends SIGTERM when a peer failed, then SIGKILL after 30 s
    itself, so a second signal is no user asking to abort."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if received and abort_on_second:
            raise KeyboardInterrupt
        received.append(name)
        if len(received) > 1:
            return
        stop.request(f"interrupted ({name})")
        again = " (press Ctrl-C again to abort without saving)" if abort_on_second else ""
        print(
            f"\n{name}: finishing this step, then saving the LoRA and the resumable state{again}",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
