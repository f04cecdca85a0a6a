"""How long the server has had nothing to do: what `impasto-server --idle-exit MINUTES` watches.

A server started for GIMP by the plug-in gives the machine back once unused; one started by hand keeps
running unless given the flag. Busy means a call is open (a Stylize call stays open for its whole job)
or the queue holds a job, running or waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Activity:
    """Counts the open calls and remembers when the server was last busy.

    `jobs_pending()` says whether the queue holds a job; it is asked only when no call is open, since
    a job outliving its call is rare (a cancelled one finishing its iteration)."""

    def __init__(self, jobs_pending: Callable[[], bool] = lambda: False):
        self._jobs_pending = jobs_pending
        self._lock = threading.Lock()
        self._open_calls = 0
        self._last_busy = time.monotonic()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around each call the server answers: the idle time starts when the last one ends."""
        with self._lock:
            self._open_calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._open_calls -= 1
                self._last_busy = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the server last had an open call or a job; 0 while it has one."""
        with self._lock:
            now = time.monotonic()
            if self._open_calls or self._jobs_pending():
                self._last_busy = now
            return now - self._last_busy

    def wait_until_idle(self, seconds: float, stop: threading.Event) -> bool:
        """Blocks until the server has been idle for `seconds` (True) or `stop` is set (False)."""
        # Every end of a call moves the clock on, so waiting for what is left of the idle time is
        # exact; a busy server is looked at again one idle time later.
        while not stop.wait(max(0.0, seconds - self.idle_seconds())):
            if self.idle_seconds() >= seconds:
                return True
        return False
