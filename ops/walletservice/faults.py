"""Fault injection for tests (``trade-engine wallet-service --faults``; CONTRACT.md "Fault injection").

:class:`Faults` holds the fault set and the counters, behind one lock (gunicorn's gthread worker answers
calls in several threads); :meth:`Faults.take` decides, atomically, what happens to one call, so two
concurrent calls never both take the last ``fail_next``. :class:`FaultInjection` is a WSGI middleware
around the Falcon app that carries the decision out:

- ``latency_ms``: every call on a faulted route first sleeps that long;
- ``drop_next``: the client's connection is shut down (``SHUT_RDWR`` on ``gunicorn.socket``) and an
  ``OSError(ENOTCONN)`` is raised to gunicorn, which then writes nothing and only closes the connection
  (it logs such errors at DEBUG); a drop wins over a fail when both are pending;
- ``fail_next``: the call answers ``fail_status`` with an ``INJECTED_FAULT`` error body;
- ``after_apply``: the app answers first (the movement is committed), then its answer is thrown away
  and the call fails or is dropped as above.

Outside gunicorn there is no socket to shut down: a drop then only raises the ``OSError``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import falcon
import orjson

from .models import FaultsBody

#: Route names a fault can target: the mutating routes and the balance reads.
ROUTES = ("reserve", "release", "settle", "deposit", "withdraw", "balances")
_MUTATING_PATHS = {f"/v1/{name}": name for name in ROUTES if name != "balances"}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class FaultSet:
    """The faults in force; ``fail_next`` and ``drop_next`` count down as calls take them."""

    latency_ms: int = 0
    fail_status: int = 503
    fail_next: int = 0
    drop_next: int = 0
    after_apply: bool = False
    routes: tuple[str, ...] = ROUTES


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one call."""

    latency_ms: int = 0
    action: Literal["fail", "drop"] | None = None
    fail_status: int = 503
    after_apply: bool = False


@dataclass(slots=True)
class _Counters:
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROUTES, 0))
    delayed: int = 0
    failed: int = 0
    dropped: int = 0


class Faults:
    """The fault set and its counters, safe to use from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = FaultSet()
        self._counters = _Counters()

    def replace(self, body: FaultsBody) -> dict[str, Any]:
        """Put ``body`` in force instead of the current faults (counters go on); return :meth:`view`."""
        routes = tuple(dict.fromkeys(body.routes)) if body.routes is not None else ROUTES
        with self._lock:
            self._set = FaultSet(body.latency_ms, body.fail_status, body.fail_next, body.drop_next,
                                 body.after_apply, routes)
        return self.view()

    def clear(self) -> dict[str, Any]:
        """No faults, counters back to zero; return :meth:`view`."""
        with self._lock:
            self._set = FaultSet()
            self._counters = _Counters()
        return self.view()

    def view(self) -> dict[str, Any]:
        """``{"faults": {...}, "counters": {"calls": {route: n}, "delayed", "failed", "dropped"}}``."""
        with self._lock:
            faults = asdict(self._set)
            counters = asdict(self._counters)
        faults["routes"] = list(faults["routes"])
        return {"faults": faults, "counters": counters}

    def take(self, route: str) -> Decision:
        """Count a call on ``route`` and decide its fault, taking one ``drop_next``/``fail_next``."""
        with self._lock:
            current, counters = self._set, self._counters
            counters.calls[route] += 1
            if route not in current.routes:
                return Decision()
            action: Literal["fail", "drop"] | None = None
            if current.drop_next > 0:
                action = "drop"
                self._set = _replace(current, drop_next=current.drop_next - 1)
                counters.dropped += 1
            elif current.fail_next > 0:
                action = "fail"
                self._set = _replace(current, fail_next=current.fail_next - 1)
                counters.failed += 1
            if current.latency_ms:
                counters.delayed += 1
            return Decision(current.latency_ms, action, current.fail_status, current.after_apply)


def _replace(faults: FaultSet, **changes: int) -> FaultSet:
    return FaultSet(**{**asdict(faults), **changes})


def route_of(environ: dict[str, Any]) -> str | None:
    """The fault route name of a call, or None for calls faults never touch."""
    method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
    if method == "POST":
        return _MUTATING_PATHS.get(path)
    if method == "GET" and (path == "/v1/balances" or path.startswith("/v1/balances/")):
        return "balances"
    return None


class FaultInjection:
    """WSGI middleware carrying out :meth:`Faults.take`'s decision around the wrapped app."""

    def __init__(self, app: WsgiApp, faults: Faults) -> None:
        self._app = app
        self._faults = faults

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = route_of(environ)
        if route is None:
            return self._app(environ, start_response)
        decision = self._faults.take(route)
        if decision.latency_ms:
            time.sleep(decision.latency_ms / 1000)
        if decision.action is None:
            return self._app(environ, start_response)
        if decision.after_apply:
            _run_and_discard(self._app, environ)
        if decision.action == "drop":
            drop_connection(environ)
        return _fail(start_response, decision.fail_status, route, decision.after_apply)


def _run_and_discard(app: WsgiApp, environ: dict[str, Any]) -> None:
    """Let the app answer the call in full (so its movement commits) and throw the answer away."""

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        return lambda data: None

    result = app(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def drop_connection(environ: dict[str, Any]) -> None:
    """Shut the client's connection down and make gunicorn close it without writing an answer."""
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # the client went away already
            sock.shutdown(socket.SHUT_RDWR)
    raise OSError(errno.ENOTCONN, "connection dropped by fault injection")


def _fail(start_response: Callable[..., Any], status: int, route: str, after_apply: bool) -> list[bytes]:
    when = "after the call was applied" if after_apply else "before the call was applied"
    body = orjson.dumps({"error": {"code": "INJECTED_FAULT",
                                   "message": f"injected {status} on {route} {when} (fault injection)"}})
    start_response(falcon.code_to_http_status(status),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
