"""The database becomes unreachable mid-stream: commands answer UNAVAILABLE quickly, nothing is
acknowledged that is not committed, and once the database answers again the engine recovers by itself
(the supervisor rebuilds the "database" group), with books and balances consistent.

The engine's pool reaches the machine's PostgreSQL through a loopback TCP proxy that the test cuts
(listener closed, every connection shut) and restores (`tests.e2e.conftest.TcpProxy`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg_pool
import pytest

from tests.actors.system_harness import (
    assert_consistent,
    fund,
    limit,
    order_id_of,
    prepare_database,
    stored_order_ids,
    wait_until,
)
from tests.e2e.conftest import TcpProxy
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import Side
from tradeengine.engine.errors import TradeEngineError
from tradeengine.storage import create_pool

REQUEST_TIMEOUT = 3.0
ANSWER_LIMIT = REQUEST_TIMEOUT + 2.0  # the request timeout plus scheduling slack on a busy machine
STREAM = (("BTC-USDT", "50000", "0.001"), ("ETH-USDT", "3000", "0.01"), ("SOL-USDT", "150", "0.1"))


@pytest.fixture
def proxy(machine_pg_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy.before(machine_pg_url, 5432)
    try:
        yield proxy
    finally:
        proxy.cut()




class Stream:
    """Callers placing orders on several pairs until stopped; each call's outcome and duration kept."""

    def __init__(self, system: ActorSystem, callers: int = 4) -> None:
        self.exchange = system.exchange
        self.acked: list[int] = []
        self.errors: list[tuple[float, float, TradeEngineError]] = []  # (started, seconds, error)
        self.unexpected: list[BaseException] = []
        self.longest = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(callers)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(ANSWER_LIMIT * 2)

    def _run(self, caller: int) -> None:
        n = 0
        while not self._stop.is_set():
            symbol, price, quantity = STREAM[(caller + n) % len(STREAM)]
            side, user = (Side.BUY, 1001 + caller % 2) if n % 2 else (Side.SELL, 1003 + caller % 2)
            started = time.monotonic()
            try:
                outcome = self.exchange.place(user, limit(symbol, side, quantity, price))
            except TradeEngineError as exc:
                with self._lock:
                    self.errors.append((started, time.monotonic() - started, exc))
                time.sleep(0.02)  # a client backing off a little
            except BaseException as exc:
                self.unexpected.append(exc)
            else:
                with self._lock:
                    self.acked.append(order_id_of(outcome))
            with self._lock:
                self.longest = max(self.longest, time.monotonic() - started)
            n += 1


Proxied = tuple[ActorSystem, psycopg_pool.ConnectionPool]


@pytest.fixture
def proxied(machine_pg_url: str, proxy: TcpProxy, writer_process: bool) -> Iterator[Proxied]:
    """A running system whose database connections all go through the proxy the test can cut."""
    prepare_database(machine_pg_url)
    pool = create_pool(proxy.url(machine_pg_url), min_size=2, max_size=8, timeout=2.0,
                       connect_timeout=2.0)
    system = ActorSystem(pool, request_timeout=REQUEST_TIMEOUT, writer_process=writer_process)
    system.start()
    try:
        yield system, pool
    finally:
        system.stop()
        pool.close()


def test_a_database_outage_mid_stream_answers_unavailable_quickly_and_recovers_without_a_restart(
    proxied: Proxied, proxy: TcpProxy,
) -> None:
    system, pool = proxied
    fund(system)
    writer_before = next(s for s in system.actors() if s.name == "writer")
    with Stream(system) as stream:
        wait_until(lambda: len(stream.acked) >= 30, 20, "orders acknowledged before the outage")
        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: sum(1 for started, _, _ in stream.errors if started > cut_at) >= 6, 20,
                   "commands refused during the outage")
        acked_during = len(stream.acked)
        proxy.restore()
        restored_at = time.monotonic()
        # No process restart: the supervisor rebuilds the group once the database answers.
        wait_until(lambda: len(stream.acked) > acked_during + 10, 30, "orders acknowledged again")
        recovered_in = time.monotonic() - restored_at
    assert not stream.unexpected, stream.unexpected
    assert stream.longest <= ANSWER_LIMIT, f"a caller waited {stream.longest:.1f} s"
    outage_errors = [error for started, _, error in stream.errors if started > cut_at]
    assert all(error.code == "UNAVAILABLE" for error in outage_errors), \
        {type(error).__name__ for error in outage_errors}

    writer_after = next(s for s in system.actors() if s.name == "writer")
    assert writer_after.incarnation > writer_before.incarnation, "the database group was rebuilt"
    # The group's pairs are rebuilt one after the other: the first ones trade again before the last
    # ones are up.
    wait_until(lambda: all(s.state.value == "running" for s in system.actors()), 10, "every actor running")

    # Nothing acknowledged that is not committed; memory equals the database everywhere.
    with pool.connection() as conn:
        assert stored_order_ids(conn, stream.acked) == set(stream.acked)
    assert_consistent(system.exchange, pool)
    assert recovered_in < 30


def test_the_first_command_after_the_database_vanished_from_an_idle_engine_answers_unavailable(
    proxied: Proxied, proxy: TcpProxy,
) -> None:
    system, _ = proxied
    fund(system)
    system.exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.001", "50000"))
    proxy.cut()  # while nothing is in flight
    started = time.monotonic()
    with pytest.raises(TradeEngineError) as refused:
        system.exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.001", "50000"))
    assert time.monotonic() - started <= ANSWER_LIMIT
    assert refused.value.code == "UNAVAILABLE", repr(refused.value)
