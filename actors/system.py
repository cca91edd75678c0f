"""The actor system of one engine process, composed around the database connection pool.

It lives in the gunicorn worker only: created and started when the worker builds its app, stopped in
``worker_exit``. For now it holds no pair actors (a later issue adds the pairs, the wallet and the
writer under a supervisor); it does run the storage's partition maintenance: once right after
``start()`` and then every ``maintenance_interval`` seconds (after a failure, again within
``retry_interval``), on one daemon thread that ``stop()`` ends.

``start()`` and ``stop()`` are idempotent; a stopped system is not started again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tradeengine.storage.partitions import run_partition_maintenance

_log = logging.getLogger(__name__)

HOUR = 3600.0


class ActorSystem:
    """Starts and stops the engine's actors and its periodic work."""

    def __init__(
        self,
        pool: Any,
        *,
        maintenance: Callable[[], object] | None = None,
        maintenance_interval: float = HOUR,
        retry_interval: float = 60.0,
    ) -> None:
        self.pool = pool
        self._maintenance = maintenance if maintenance is not None else self._run_partition_maintenance
        self._interval = maintenance_interval
        self._retry_interval = min(retry_interval, maintenance_interval)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._running = False

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    def start(self) -> None:
        """Start the periodic partition maintenance (its first run happens at once)."""
        with self._lock:
            if self._running or self._stopping.is_set():
                return
            self._timer = threading.Thread(target=self._maintain, name="partition-maintenance", daemon=True)
            self._timer.start()
            self._running = True
        _log.info("actor system started (partition maintenance every %g s)", self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the periodic work and wait up to ``timeout`` seconds for a run in progress."""
        with self._lock:
            self._stopping.set()
            timer, self._timer = self._timer, None
            was_running, self._running = self._running, False
        if timer is not None:
            timer.join(timeout)
            if timer.is_alive():
                _log.warning("partition maintenance still running after %g s; leaving it behind", timeout)
        if was_running:
            _log.info("actor system stopped")

    def _run_partition_maintenance(self) -> object:
        return run_partition_maintenance(self.pool)

    def _maintain(self) -> None:
        while not self._stopping.is_set():
            try:
                self._maintenance()
            except Exception:
                _log.exception("partition maintenance failed; retrying in %g s", self._retry_interval)
                wait = self._retry_interval
            else:
                wait = self._interval
            self._stopping.wait(wait)
