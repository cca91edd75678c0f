"""gunicorn's configuration for ``trade-engine serve``, from the settings.

ONE worker (the actor system lives in it; two workers would run every pair twice): for the engine
:class:`~tradeengine.ops.http_worker.EngineWorker` (the ASGI app on uvicorn's event loop), its blocking
calls on ``TRADE_ENGINE_HTTP_THREADS`` threads; for the reference wallet service (a WSGI app) gunicorn's
``gthread``. No control socket (gunicorn 27 opens one by default); no gunicorn access log (the app logs
each request itself); the error log formatted like every other record
(:class:`~tradeengine.ops.logconfig.GunicornLogger`).

The hooks run in the worker: ``post_fork`` lets the application object (``server.app``) drop what the
worker must not inherit from the master (the data-folder lock); ``post_worker_init`` makes every stop
signal graceful (the engine's worker does so itself from the start); ``worker_exit`` stops the worker's
actor system and closes its pool.
"""

from __future__ import annotations

import math
import signal
from typing import Any

from .logconfig import GunicornLogger
from .settings import Settings

#: Seconds a stopping worker gets to finish in-flight requests before it is killed.
GRACEFUL_TIMEOUT = 10
#: Seconds without a heartbeat from the worker before the master restarts it.
WORKER_TIMEOUT = 30
KEEPALIVE = 5
#: The engine's worker: its ASGI app on uvicorn's event loop (see ops/http_worker.py).
ENGINE_WORKER = "tradeengine.ops.http_worker.EngineWorker"
#: gunicorn's threaded WSGI worker, for the wallet service.
WSGI_WORKER = "gthread"


def bind_address(host: str, port: int) -> str:
    """``host:port`` for gunicorn's ``bind`` (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: let the application drop what belongs to the master."""
    server.app.after_fork_in_worker()


def post_worker_init(worker: Any) -> None:
    """Make SIGINT and SIGQUIT stop the worker gracefully, as SIGTERM does.

    gunicorn's own handler for them raises SystemExit from inside the signal handler; Ctrl-C at a
    terminal delivers two at once (the terminal's SIGINT to the whole process group, then the master's
    SIGQUIT), and the second one can cut the first one's clean-up short, skipping ``worker_exit``. The
    graceful path only sets a flag: the worker finishes its in-flight requests (the master kills it after
    the graceful timeout) and leaves through ``worker_exit``.
    """
    signal.signal(signal.SIGINT, worker.handle_exit)
    signal.signal(signal.SIGQUIT, worker.handle_exit)


def worker_exit(server: Any, worker: Any) -> None:
    """In the exiting worker: stop the actor system and close the pool."""
    server.app.close_worker()


#: Seconds beyond TRADE_ENGINE_REQUEST_TIMEOUT that a request's blocking call may take (http.blocking).
BLOCKING_MARGIN = 2.0


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn settings for ``serve``. A stopping worker cancels what still runs after half the
    graceful timeout: that half is longer than any request may take (`BLOCKING_MARGIN`), so each one
    in flight gets its own answer (a database that hangs: a 503 or 504) rather than being cut off."""
    longest = settings.request_timeout + BLOCKING_MARGIN
    return single_worker_options(host=settings.http_host, port=settings.http_port,
                                 threads=settings.http_threads, log_level=settings.log_level,
                                 proc_name="trade-engine", worker_class=ENGINE_WORKER,
                                 graceful_timeout=max(GRACEFUL_TIMEOUT, math.ceil(2 * (longest + 1.0))))


def single_worker_options(*, host: str, port: int, threads: int, log_level: str, proc_name: str,
                          worker_class: str = WSGI_WORKER,
                          graceful_timeout: int = GRACEFUL_TIMEOUT) -> dict[str, Any]:
    """The gunicorn settings of a server of ours: one worker of ``worker_class`` with these hooks (see
    above)."""
    return {
        "bind": [bind_address(host, port)],
        "workers": 1,
        "worker_class": worker_class,
        "threads": threads,
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": graceful_timeout,
        "keepalive": KEEPALIVE,
        "preload_app": False,
        "control_socket_disable": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "logger_class": GunicornLogger,
        "proc_name": proc_name,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
    }
