"""CPU time of the engine process's threads by role: where the one GIL-bound process spends its CPU.

Each thread's own clock (``pthread_getcpuclockid``: user and system time of that thread alone), grouped
by what the thread does, known from its name: pykka names an actor's thread after its class ("PairActor-7"),
the HTTP worker names its event loop's thread and its executor's (`http_worker`), and the rest have names
of their own.
`ThreadCpu.read()` gives the seconds so far per role and never goes down: a thread that ended keeps the
time it had at the last read. Used by the ``trade_engine_thread_cpu_seconds_total`` metric and by
`trade-engine bench engine` (and, through ``/metrics``, `bench http`).
"""

from __future__ import annotations

import contextlib
import threading
import time

__all__ = ["ROLES", "ThreadCpu", "thread_role"]

# Role of a thread by the start of its name (before "-N"); the first match counts.
_PREFIXES = (
    ("PersistenceActor", "writer"),
    ("writer-process-reader", "writer"),  # resolves the callers of the writer process's commits
    ("PairActor", "pairs"),
    ("WalletActor", "wallet"),
    ("OutboxRelay", "relay"),
    ("outbox-relay-timer", "relay"),
    ("RelayProcess", "relay"),  # the relay's stand-in when it runs in a process of its own
    ("relay-process", "relay"),
    ("WalletSettler", "settler"),
    ("wallet-settler-timer", "settler"),
    ("market-data-mirror", "mirror"),
    ("http-loop", "http"),  # the HTTP worker's event loop (`http_worker`)
    ("http-blocking", "http"),  # its executor: the app's blocking calls
)
ROLES = (*dict.fromkeys(role for _, role in _PREFIXES), "main", "other")
"""Every role, in the order they are reported."""


def thread_role(name: str) -> str:
    """The role of a thread called `name`: one of `ROLES` ("main" is the main thread)."""
    if name == "MainThread":
        return "main"
    return next((role for prefix, role in _PREFIXES if name.startswith(prefix)), "other")


class ThreadCpu:
    """CPU seconds of this process's threads per role, monotonic across threads that end. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per thread (the object itself: an ident is reused by later threads), its role and its CPU seconds
        # at the last read; holding the object keeps that key unique until the next read drops it.
        self._seen: dict[threading.Thread, tuple[str, float]] = {}
        self._ended = dict.fromkeys(ROLES, 0.0)  # CPU seconds of threads gone since, per role

    def read(self) -> dict[str, float]:
        """CPU seconds so far per role (every role of `ROLES`, in that order)."""
        now: dict[threading.Thread, tuple[str, float]] = {}
        for thread in threading.enumerate():
            ident = thread.ident
            if ident is None:
                continue
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                seconds = time.clock_gettime(time.pthread_getcpuclockid(ident))
                now[thread] = (thread_role(thread.name), seconds)
        with self._lock:
            for thread, (role, seconds) in self._seen.items():
                if thread not in now:  # gone: it keeps what it had at the last read
                    self._ended[role] += seconds
            self._seen = now
            totals = dict(self._ended)
        for role, seconds in now.values():
            totals[role] += seconds
        return totals
