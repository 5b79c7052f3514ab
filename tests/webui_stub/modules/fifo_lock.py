"""modules/fifo_lock.py: a lock that hands itself to waiters in arrival order; not re-entrant."""

from __future__ import annotations

import collections
import threading
from typing import Any


class FIFOLock:
    def __init__(self) -> None:
        self._held = False
        self._guard = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()

    def acquire(self, blocking: bool = True) -> bool:
        with self._guard:
            if not self._held:
                self._held = True
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # release() passes ownership straight to us
        return True

    def release(self) -> None:
        with self._guard:
            if not self._held:
                raise RuntimeError("release of an unlocked FIFOLock")
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
