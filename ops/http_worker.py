"""The gunicorn worker of ``trade-engine serve``: the ASGI app on one event loop (uvicorn, httptools, uvloop).

Why not gthread (the design's first choice): in one process under the GIL, gunicorn's thread per request
cost more than the work. `trade-engine bench http` measured a bare Falcon ``/health`` at ~3,100 requests/s
under gthread (its pure-Python parser, WSGI environ, two thread hand-offs per request) and ~15,000/s
as ASGI under this worker. Orders, which wait for the engine's commits, stayed where they were (see the
README's Benchmarks); every route that does not wait for a commit answers 3-4.5 times as often. The app
answers every request on the loop; what blocks runs on the loop's executor
(:mod:`tradeengine.http.blocking`), and orders await the engine's futures on the loop.

:class:`EngineWorker` is ``uvicorn_worker.UvicornWorker`` (gunicorn stays the process manager: the
master, the worker's heartbeat, the hooks of ``ops.gunicorn_conf``) with:

- uvicorn's log records where gunicorn's go (``serve``: JSON lines through the root handler);
- uvloop and httptools, no lifespan protocol (the parts are built in gunicorn's ``load()``, stopped in
  ``worker_exit``), no uvicorn access log (the app logs each request itself), no ``Server`` header, and
  no ``X-Forwarded-For`` rewriting of the peer address (the rate limit counts the address that
  connected; see :mod:`tradeengine.http.ratelimit`);
- SIGTERM, SIGINT and SIGQUIT all stop the worker gracefully: it stops accepting, finishes its in-flight
  requests (one still running after half of gunicorn's graceful timeout is cancelled: 500, logged) and
  returns, so gunicorn's ``worker_exit`` hook stops the actor system. (uvicorn's own handling re-raises
  the signal once it has shut down, which would end the process before ``worker_exit``; and Ctrl-C at a
  terminal delivers SIGINT to the whole process group and then the master's SIGQUIT, neither of which
  may cut the stop short.)
- it stops, gracefully, within ``MASTER_CHECK_INTERVAL`` of the master's death (``kill -9``), as
  gunicorn's own workers do;
- the loop's thread is named ``http-loop`` and its executor's ``http-blocking-N`` (``ops.threadcpu``
  reports both as "http"), with ``TRADE_ENGINE_HTTP_THREADS`` threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

__all__ = ["STOP_SIGNALS", "EngineWorker"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
"""Each of them stops the worker gracefully."""

MASTER_CHECK_INTERVAL = 1.0
"""Seconds between two checks that the gunicorn master is still the worker's parent."""


class _GracefulServer(Server):
    """uvicorn's server, every stop signal graceful and none re-raised after the shutdown; ``stopped``
    tells whether one came before the server took the signals over."""

    def __init__(self, config: Config, stopped: Callable[[], bool]) -> None:
        super().__init__(config)
        self._stopped = stopped

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        if self._stopped():
            self.should_exit = True
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.should_exit = True


class EngineWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker for the engine's ASGI app (see the module docstring)."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (uvicorn_worker's own class attribute)
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's records (its errors: an exception an app did not answer, a malformed request) go where
        # gunicorn's go: under `serve` through the root handler, as JSON lines like every other record.
        error_log = logging.getLogger("uvicorn.error")
        error_log.propagate = self.log.error_log.propagate
        # Requests still running this long after a stop signal are cancelled, so the worker reaches
        # worker_exit well before the master's graceful timeout ends it with SIGKILL.
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout / 2

    def init_signals(self) -> None:
        """uvicorn_worker's signals, and a stop signal while the app is built (``load()``) ends the worker
        once it is built, through ``worker_exit``."""
        super().init_signals()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle_exit)  # gunicorn's graceful exit: it only clears `alive`

    def run(self) -> None:
        threading.current_thread().name = "http-loop"
        super().run()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=self.cfg.threads,
                                                     thread_name_prefix="http-blocking"))
        self.config.app = self.wsgi  # gunicorn's name for what load() returned: here the ASGI app
        server = _GracefulServer(self.config, stopped=lambda: not self.alive)
        watch = asyncio.create_task(self._watch_master(server))
        try:
            await server.serve(sockets=self.sockets)
        finally:
            watch.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _watch_master(self, server: Server) -> None:
        """Stop (gracefully) once the master is gone (``kill -9``), as gunicorn's own workers do."""
        while not server.should_exit:
            await asyncio.sleep(MASTER_CHECK_INTERVAL)
            if os.getppid() != self.ppid:
                self.log.warning("the gunicorn master is gone (killed?); stopping the worker")
                self.alive = False
                server.should_exit = True
