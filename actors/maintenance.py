"""Periodic partition maintenance: create the orders/trades partitions ahead of time.

`PeriodicMaintenance` runs a job once right after ``start()`` and then every ``interval`` seconds (after
a failure, again within ``retry_interval``), on one daemon thread that ``stop()`` ends without sitting
out the wait. ``start()`` and ``stop()`` are idempotent; a stopped one is not started again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

_log = logging.getLogger(__name__)

HOUR = 3600.0
THREAD_NAME = "partition-maintenance"


class PeriodicMaintenance:
    """Run `job` now and then every `interval` seconds until stopped."""

    def __init__(self, job: Callable[[], object], *, interval: float = HOUR, retry_interval: float = 60.0
                 ) -> None:
        self._job = job
        self.interval = interval
        self._retry_interval = min(retry_interval, interval)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._thread is not None

    def start(self) -> None:
        """Start the timer thread; the first run happens at once."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the timer and wait up to ``timeout`` seconds for a run in progress."""
        with self._lock:
            self._stopping.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("partition maintenance still running after %g s; leaving it behind", timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._job()
            except Exception:
                _log.exception("partition maintenance failed; retrying in %g s", self._retry_interval)
                wait = self._retry_interval
            else:
                wait = self.interval
            self._stopping.wait(wait)
