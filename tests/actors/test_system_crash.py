"""A pair actor that crashes mid-stream is restarted alone, from the database, and nothing is lost.

The fault is injected from the test: the matching engine's `execute` raises on the Nth command of one
pair (a test-side monkeypatch of `MatchingEngine.execute`, filtered by symbol; production code is not
touched). A failure after the ledger moved (a monkeypatched `Ledger.apply`) rebuilds the whole
"database" group instead. Real PostgreSQL, real pykka actors, the real supervisor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg_pool
import pytest

from tests.actors.system_harness import (
    assert_books_match_database,
    assert_locked_equals_reserved,
    assert_memory_balances_match_database,
    assert_money_conserved,
    fund,
    limit,
    order_id_of,
    prepare_database,
    stored_order_ids,
    wait_until,
)
from tradeengine.actors.ledger import Ledger
from tradeengine.actors.supervision import ChildState
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import MatchingEngine, Side, TradeExecuted
from tradeengine.engine.errors import EngineTimeout, EngineUnavailable, TradeEngineError
from tradeengine.storage import create_pool

CRASHING = "BTC-USDT"
STEADY = "ETH-USDT"
FAULT_AT = 12  # the crashing pair's Nth command raises


class InjectedFault(RuntimeError):
    """The test's own fault inside the matching engine."""


@pytest.fixture
def system(machine_pg_url: str,
           writer_process: bool) -> Iterator[tuple[ActorSystem, psycopg_pool.ConnectionPool]]:
    prepare_database(machine_pg_url)
    pool = create_pool(machine_pg_url, min_size=2, max_size=8)
    system = ActorSystem(pool, request_timeout=5.0, writer_process=writer_process)
    system.start()
    try:
        fund(system)
        yield system, pool
    finally:
        system.stop()
        pool.close()


def inject_fault(monkeypatch: pytest.MonkeyPatch, symbol: str, at: int) -> list[Any]:
    """Make `symbol`'s engine raise on its `at`-th command from now on (once); return the victims."""
    original = MatchingEngine.execute
    calls = 0
    victims: list[Any] = []
    lock = threading.Lock()

    def execute(self: MatchingEngine, command: Any) -> Any:
        nonlocal calls
        if self.spec.symbol == symbol:
            with lock:
                calls += 1
                fire = calls == at
            if fire:
                victims.append(command)
                raise InjectedFault(f"injected fault on {symbol} command #{at}")
        return original(self, command)

    monkeypatch.setattr(MatchingEngine, "execute", execute)
    return victims


def test_a_crashed_pair_restarts_alone_from_the_database_while_other_pairs_keep_trading(
    system: tuple[ActorSystem, psycopg_pool.ConnectionPool], monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, pool = system
    exchange = engine.exchange
    before = engine.pair_actor(CRASHING)
    for n in range(5):  # a book to rebuild
        exchange.place(1001, limit(CRASHING, Side.SELL, "0.01", f"{50_100 + n}"))
        exchange.place(1002, limit(CRASHING, Side.BUY, "0.01", f"{49_900 - n}"))
    victims = inject_fault(monkeypatch, CRASHING, FAULT_AT)

    # Another pair trades throughout, from its own thread: it must never see an error.
    steady_errors: list[BaseException] = []
    steady_acks: list[tuple[float, int]] = []
    stop = threading.Event()

    def trade_steadily() -> None:
        n = 0
        while not stop.is_set():
            side, user = (Side.BUY, 1003) if n % 2 else (Side.SELL, 1004)
            try:
                outcome = exchange.place(user, limit(STEADY, side, "0.01", "3000"))
                steady_acks.append((time.monotonic(), order_id_of(outcome)))
            except BaseException as exc:
                steady_errors.append(exc)
            n += 1

    steady = threading.Thread(target=trade_steadily, name="steady-pair", daemon=True)
    steady.start()

    def place(n: int) -> list[tuple[str, Any]]:
        # A batch: every order is sent before any reply is awaited, so commands queue in the pair's
        # inbox behind the one that crashes.
        side, user = (Side.BUY, 1001) if n % 2 else (Side.SELL, 1002)
        requests = [limit(CRASHING, side, "0.002", f"{50_000 + (n + k) % 7 - 3}")  # about half cross
                    for k in range(5)]
        return [("error", r) if isinstance(r, TradeEngineError) else ("ok", order_id_of(r))
                for r in exchange.place_batch(user, requests)]

    try:
        with ThreadPoolExecutor(4) as callers:
            results = [result for batch in callers.map(place, range(8)) for result in batch]
        crashed_at = time.monotonic()
        wait_until(lambda: engine.pair_actor(CRASHING).state is ChildState.RUNNING
                   and engine.pair_actor(CRASHING).incarnation == before.incarnation + 1,
                   15, "the crashed pair running again as its next incarnation")
        # After the restart the pair takes orders again.
        late = exchange.place(1001, limit(CRASHING, Side.BUY, "0.001", "49000"))
        wait_until(lambda: any(at > crashed_at for at, _ in steady_acks), 10,
                   "the steady pair trading after the crash")
    finally:
        stop.set()
        steady.join(10)

    assert victims, "the fault fired"
    status = engine.pair_actor(CRASHING)
    assert status.restarts == before.restarts + 1
    assert status.last_failure is not None and status.last_failure.type == "InjectedFault"
    assert all(s.incarnation == 1 for s in engine.actors() if s.name != f"pair:{CRASHING}"), \
        "only the crashed pair was restarted"

    errors = [value for kind, value in results if kind == "error"]
    acked = [value for kind, value in results if kind == "ok"] + [order_id_of(late)]
    # The command in flight when the pair crashed (and any queued behind it or sent while it restarted)
    # was refused as UNAVAILABLE, never acknowledged, never left to time out.
    assert errors, "the in-flight command of the crash got an error"
    assert all(isinstance(e, EngineUnavailable) and not isinstance(e, EngineTimeout) for e in errors), errors
    assert not steady_errors, steady_errors
    assert steady_acks

    with pool.connection() as conn:
        every_ack = acked + [oid for _, oid in steady_acks]
        assert stored_order_ids(conn, every_ack) == set(every_ack), "every acknowledged order is committed"
        assert conn.execute("SELECT count(*) FROM orders WHERE id = %s",
                            (int(victims[0].order_id),)).fetchone() == (0,), "the crashed command left no row"
    assert_books_match_database(exchange, pool, [CRASHING, STEADY])
    # The locks the crashed command had been granted were given back: memory equals the database, and
    # locked equals what the open orders reserve.
    assert_memory_balances_match_database(exchange, pool)
    assert_locked_equals_reserved(pool)
    assert_money_conserved(pool)


def test_a_failure_after_the_ledger_moved_rebuilds_the_whole_database_group_and_trading_resumes(
    system: tuple[ActorSystem, psycopg_pool.ConnectionPool], monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, pool = system
    exchange = engine.exchange
    exchange.place(1002, limit(CRASHING, Side.SELL, "0.01", "50000"))
    writer_before = next(s for s in engine.actors() if s.name == "writer")
    original = Ledger.apply
    fired = threading.Event()

    def apply(self: Ledger, spec: Any, events: Any, *, then: Any = None) -> None:
        if spec.symbol == CRASHING and not fired.is_set():
            fired.set()
            raise InjectedFault("injected fault while applying a command's movements")
        original(self, spec, events, then=then)

    monkeypatch.setattr(Ledger, "apply", apply)
    with pytest.raises(EngineUnavailable):
        exchange.place(1001, limit(CRASHING, Side.BUY, "0.01", "50000"))

    # Memory may differ from the database: writer, wallet and every pair are rebuilt from it.
    wait_until(lambda: next(s for s in engine.actors() if s.name == "writer").incarnation
               > writer_before.incarnation and all(s.state is ChildState.RUNNING for s in engine.actors()),
               20, "the database group rebuilt")
    assert all(s.incarnation >= 2 for s in engine.actors())
    taker = exchange.place(1001, limit(CRASHING, Side.BUY, "0.01", "50000"))
    # It trades against the order that rested before the fault: the book came back from the database.
    assert any(isinstance(event, TradeExecuted) for event in taker.events)
    assert_books_match_database(exchange, pool)
    assert_memory_balances_match_database(exchange, pool)
    assert_locked_equals_reserved(pool)
    assert_money_conserved(pool)
