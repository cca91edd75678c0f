"""The engine lock of ``serve`` (ops/engine_lock.py) against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from tradeengine.ops.database import StartupError
from tradeengine.ops.engine_lock import ENGINE_LOCK_KEY, RELEASE_WAIT, EngineLock


def test_a_second_holder_is_refused_while_the_first_holds(machine_pg_url: str) -> None:
    with EngineLock().held(machine_pg_url), \
            pytest.raises(StartupError, match="another trade-engine is serving the database"), \
            EngineLock().held(machine_pg_url):
        pass
    with EngineLock().held(machine_pg_url):  # let go: free again
        pass
    with EngineLock().held(machine_pg_url):
        pass


def test_letting_go_does_not_wait_for_a_database_that_hangs(machine_pg_url: str) -> None:
    """A stopped backend (as under SIGSTOP of the server) never answers: leaving must not wait for it."""
    lock = EngineLock()
    left = threading.Event()
    with psycopg.connect(machine_pg_url, autocommit=True) as observer:
        def hold_and_leave() -> None:
            with lock.held(machine_pg_url):
                backend = lock._connection.info.backend_pid  # type: ignore[union-attr]
                os.kill(backend, signal.SIGSTOP)
                stopped.append(backend)
            left.set()

        stopped: list[int] = []
        holder = threading.Thread(target=hold_and_leave, daemon=True)
        holder.start()
        try:
            assert left.wait(timeout=5.0), "leaving the lock waited for the stopped backend"
        finally:
            for backend in stopped:
                os.kill(backend, signal.SIGCONT)
        deadline = time.monotonic() + 10.0
        while observer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                               (stopped[0],)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backend did not end once it ran again"
            time.sleep(0.05)
    with EngineLock().held(machine_pg_url):  # its lock went with its session
        pass


def test_a_lock_let_go_a_moment_ago_is_taken_once_its_session_has_ended(machine_pg_url: str) -> None:
    """The server ends a closed session's backend a moment after the client left: a start right after a
    stop asks again for a while instead of refusing."""
    first = psycopg.connect(machine_pg_url, autocommit=False)
    first.execute("SELECT pg_advisory_xact_lock(%s)", (ENGINE_LOCK_KEY,))
    threading.Timer(1.0, first.close).start()  # as a session that is still ending when the next one asks
    started = time.monotonic()
    with EngineLock().held(machine_pg_url):
        pass
    assert 0.9 < time.monotonic() - started < RELEASE_WAIT
