"""`OutageGate`: how a caller of an optional service (Redis) behaves while it is down.

While the service answers, every call tries it. From the first failure on it is "down": only one caller
per ``retry_interval`` tries it again (the probe), the others use their fallback at once, and a warning
is due at most once per ``warn_interval``. The first success ends the outage. Thread-safe; the callers
log (they know what the fallback is).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["OutageGate"]


class OutageGate:
    """The outage state of one optional service (see the module docstring)."""

    def __init__(self, *, retry_interval: float = 1.0, warn_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_interval = retry_interval
        self._warn_interval = warn_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None  # None while the service answers (read without the lock)
        self._retry_at = 0.0
        self._next_warning = -math.inf
        self._warned = False  # a warning was due during the current outage

    @property
    def down(self) -> bool:
        """True from a failure until the next success."""
        return self._down_since is not None

    def should_try(self) -> bool:
        """True while the service answers, and for the one probe per interval while it is down."""
        if self._down_since is None:
            return True
        with self._lock:
            now = self._clock()
            if now < self._retry_at:
                return False
            self._retry_at = now + self.retry_interval
            return True

    def failed(self) -> float | None:
        """Note a failure; return how long the outage has lasted when a warning is due, else None."""
        with self._lock:
            now = self._clock()
            if self._down_since is None:
                self._down_since = now
            self._retry_at = now + self.retry_interval
            if now < self._next_warning:
                return None
            self._next_warning = now + self._warn_interval
            self._warned = True
            return now - self._down_since

    def succeeded(self) -> tuple[float, bool] | None:
        """Note a success; at the end of an outage return (how long it lasted, whether it was warned of)."""
        if self._down_since is None:
            return None
        with self._lock:
            if self._down_since is None:
                return None
            down_for = self._clock() - self._down_since
            warned, self._warned, self._down_since = self._warned, False, None
        return down_for, warned
