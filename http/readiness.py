"""Readiness checks for ``GET /ready``: named probes, each bounded in time, run side by side.

A check is a callable that returns when its part is usable and raises when it is not; the exception's
text becomes the short reason (``"unavailable: <reason>"``). :class:`Readiness` runs every check on its
own daemon thread and waits at most ``timeout`` seconds in total, so ``/ready`` never hangs. A check
still running from an earlier call is not started again (reported as still waiting), so a part that
hangs cannot pile up threads.

The probe factories below build the checks the server wires in: the database (always), Redis, the
broker and the remote wallet service (only when configured) and the actor system. Redis and the broker
are advisory (`ADVISORY_CHECKS`): reported, but the engine trades on without them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tradeengine.actors.supervision import ChildState, ChildStatus
from tradeengine.actors.system import ENGINE_WIDE_CHILDREN

Check = Callable[[], object]

OK = "ok"
_REASON_LIMIT = 160


class CheckFailed(Exception):
    """A readiness check found its part unusable; the text says why, briefly."""


def short_reason(error: BaseException) -> str:
    """The first line of an exception's text (or its class name), cut to a readable length."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    text = text or type(error).__name__
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"


class _BoundedCheck:
    """One named check; at most one run of it is in flight at any time."""

    def __init__(self, check: Check) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result: str | None = None

    def start(self) -> threading.Thread | None:
        """Start a run, or return None when an earlier run is still in flight."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return None
            self._result = None
            self._thread = threading.Thread(target=self._run, name="readiness-check", daemon=True)
            self._thread.start()
            return self._thread

    def _run(self) -> None:
        try:
            self._check()
        except Exception as exc:  # every failure is a reason, never an error of /ready itself
            self._result = f"unavailable: {short_reason(exc)}"
        else:
            self._result = OK

    def result(self) -> str | None:
        return self._result


ADVISORY_CHECKS = frozenset({"redis", "broker"})
"""Checks that are reported but leave the process ready when they fail: without Redis the market data is
read from the actors and rate limits are counted in process; without the broker the events wait in the
outbox. Orders are taken and committed all along, so a load balancer should keep sending them."""


class Readiness:
    """Named checks run concurrently, all answered within ``timeout`` seconds.

    The process is ready when every check but the ``advisory`` ones answers ok.
    """

    def __init__(self, checks: Mapping[str, Check], timeout: float = 1.5,
                 advisory: frozenset[str] = ADVISORY_CHECKS) -> None:
        self._checks = {name: _BoundedCheck(check) for name, check in checks.items()}
        self._timeout = timeout
        self._advisory = advisory

    @property
    def names(self) -> list[str]:
        """The names of the checks, in the order they are reported."""
        return list(self._checks)

    def run(self) -> tuple[bool, dict[str, str]]:
        """Run every check; return (ready, {name: "ok" | "unavailable: <reason>"})."""
        threads = {name: check.start() for name, check in self._checks.items()}
        deadline = time.monotonic() + self._timeout
        results: dict[str, str] = {}
        for name, thread in threads.items():
            if thread is None:
                results[name] = "unavailable: the previous check has not answered yet"
                continue
            thread.join(max(deadline - time.monotonic(), 0.0))
            result = self._checks[name].result()
            results[name] = result if result is not None else (
                f"unavailable: no answer within {self._timeout:g} s")
        return all(result == OK for name, result in results.items() if name not in self._advisory), results


class _Connectable(Protocol):
    def connection(self, timeout: float | None = None) -> Any: ...


def database_check(pool: _Connectable, timeout: float = 1.0) -> Check:
    """Borrow a connection from the pool within ``timeout`` and run ``SELECT 1`` on it."""

    def check() -> None:
        with pool.connection(timeout=timeout) as connection:
            connection.execute("SELECT 1")

    return check


def redis_check(url: str, timeout: float = 1.0) -> Check:
    """``PING`` Redis with short connect and read timeouts (one client, reconnecting as needed)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  retry_on_timeout=False)

    def check() -> None:
        if not client.ping():
            raise CheckFailed("PING was not answered with PONG")

    return check


def broker_check(url: str, timeout: float = 1.0) -> Check:
    """Open (and close) a connection to the kombu broker with a short connect timeout."""
    from kombu.connection import Connection

    def check() -> None:
        with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=timeout)

    return check


class _Running(Protocol):
    @property
    def running(self) -> bool: ...

    def actors(self) -> Sequence[ChildStatus]: ...


def actors_check(system: _Running) -> Check:
    """Ready when the actor system runs and so do the actors every order needs (writer, wallet).

    A pair's actor that is restarting or has failed does not make the process unready: the other pairs
    trade on, and a load balancer that took the process out would stop them too. Its state is in
    ``GET /api/v1/admin/pairs`` and the ``trade_engine_actor_state`` metric.
    """

    def check() -> None:
        if not system.running:
            raise CheckFailed("the actor system is not running")
        for actor in system.actors():
            if actor.name in ENGINE_WIDE_CHILDREN and actor.state is not ChildState.RUNNING:
                raise CheckFailed(f"the {actor.name} is {actor.state.value}")

    return check


def wallet_check(url: str, reconciled: Callable[[], bool], timeout: float = 1.0) -> Check:
    """``GET /health`` of the wallet service (outside the breaker), and its reconciliation done."""
    import urllib.request

    health = url.rstrip("/") + "/health"

    def check() -> None:
        with urllib.request.urlopen(health, timeout=timeout) as answer:
            if answer.status != 200:
                raise CheckFailed(f"/health answered {answer.status}")
        if not reconciled():
            raise CheckFailed("the wallet service is not reconciled yet (orders wait)")

    return check
