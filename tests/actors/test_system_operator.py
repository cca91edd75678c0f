"""Operator controls of a running ActorSystem: add a pair live, restart a pair, halt and resume, change
fees, list the actors. Real PostgreSQL (the machine's server), real actors.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import psycopg_pool
import pytest

from tests.actors.system_harness import (
    ATOMS,
    assert_consistent,
    fund,
    limit,
    memory_book,
    order_id_of,
    running_system,
    wait_until,
)
from tradeengine.actors.pair import PairActor, StatusQuery
from tradeengine.actors.supervision import ChildState
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import OrderCancelled, Side, TradeExecuted
from tradeengine.engine.errors import EngineUnavailable, PairNotTrading
from tradeengine.storage.pairs import NewPair, PairRepository

AVAX = NewPair(
    symbol="AVAX-USDT", base_asset="AVAX", quote_asset="USDT", tick_size=Decimal("0.01"),
    lot_size=Decimal("0.01"), min_quantity=Decimal("0.01"), max_quantity=Decimal("90000"),
    min_notional=Decimal("5"), maker_fee=Decimal("0.001"), taker_fee=Decimal("0.002"),
)


def trades_of(outcome: object) -> list[TradeExecuted]:
    return [e for e in outcome.events if isinstance(e, TradeExecuted)]  # type: ignore[attr-defined]


def test_a_pair_added_at_runtime_trades_at_once_and_is_still_there_after_a_restart_of_the_system(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    record = system.add_pair(AVAX)
    assert record.status == "ACTIVE"
    system.deposit(1002, "AVAX", 1_000 * ATOMS)
    exchange = system.exchange
    exchange.place(1002, limit("AVAX-USDT", Side.SELL, "2", "30"))
    exchange.place(1002, limit("AVAX-USDT", Side.SELL, "1", "31"))
    taker = exchange.place(1001, limit("AVAX-USDT", Side.BUY, "1.5", "30.5"))
    (trade,) = trades_of(taker)
    assert (trade.price, trade.quantity) == (3000, 150)
    book = memory_book(exchange, "AVAX-USDT")
    assert any(s.name == "pair:AVAX-USDT" and s.state is ChildState.RUNNING for s in system.actors())
    assert_consistent(exchange, pool)
    system.stop()

    with running_system(pool) as again:
        assert "pair:AVAX-USDT" in {s.name for s in again.actors()}
        assert memory_book(again.exchange, "AVAX-USDT") == book
        second = again.exchange.place(1001, limit("AVAX-USDT", Side.BUY, "0.5", "30"))
        assert sum(t.quantity for t in trades_of(second)) == 50
        assert_consistent(again.exchange, pool)


def test_a_restarted_pair_keeps_its_book_and_its_sequence_continues(system: ActorSystem) -> None:
    exchange = system.exchange
    for n in range(3):
        exchange.place(1001, limit("ETH-USDT", Side.BUY, "0.1", f"{2_990 - n}"))
        exchange.place(1002, limit("ETH-USDT", Side.SELL, "0.1", f"{3_010 + n}"))
    before = exchange.depth("ETH-USDT", 50)
    status = system.pair_actor("ETH-USDT")

    after_restart = system.restart_pair("ETH-USDT")

    assert after_restart.state is ChildState.RUNNING
    assert after_restart.incarnation == status.incarnation + 1
    assert after_restart.restarts == status.restarts + 1
    assert exchange.depth("ETH-USDT", 50) == before
    outcome = exchange.place(1001, limit("ETH-USDT", Side.BUY, "0.1", "2980"))
    assert outcome.events[0].sequence == before.sequence + 1


def test_a_halted_pair_refuses_new_orders_and_requeueing_amends_accepts_cancels_and_trades_again_once_active(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    exchange = system.exchange
    resting = order_id_of(exchange.place(1001, limit("SOL-USDT", Side.BUY, "1", "100")))

    assert system.update_pair("SOL-USDT", status="HALTED").status == "HALTED"
    with pytest.raises(PairNotTrading):
        exchange.place(1002, limit("SOL-USDT", Side.SELL, "1", "100"))
    exchange.place(1002, limit("ETH-USDT", Side.SELL, "0.1", "3000"))
    for change in ({"price": Decimal("101")}, {"quantity": Decimal("2")}):  # would re-queue, so may trade
        with pytest.raises(PairNotTrading, match="may only reduce the quantity"):
            exchange.amend(1001, str(resting), **change)
    reduced = exchange.amend(1001, str(resting), quantity=Decimal("0.5"))
    assert [type(e).__name__ for e in reduced.events] == ["OrderAmended", "FundsReleased"]
    cancelled = exchange.cancel(1001, str(resting))
    assert any(isinstance(e, OrderCancelled) for e in cancelled.events)
    other_pair = exchange.place(1002, limit("ETH-USDT", Side.SELL, "0.1", "3000"))  # others trade on
    assert other_pair.events

    assert system.update_pair("SOL-USDT", status="ACTIVE").status == "ACTIVE"
    exchange.place(1001, limit("SOL-USDT", Side.BUY, "1", "100"))
    assert trades_of(exchange.place(1002, limit("SOL-USDT", Side.SELL, "1", "100")))
    record = PairRepository(pool).get("SOL-USDT")
    assert record is not None and record.status == "ACTIVE"
    assert_consistent(exchange, pool)


def test_a_fee_change_takes_effect_on_the_next_trade_and_keeps_the_resting_orders(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    exchange = system.exchange
    exchange.place(1002, limit("BTC-USDT", Side.SELL, "0.01", "50000"))  # rests before the change
    system.update_pair("BTC-USDT", maker_fee=Decimal("0.002"), taker_fee=Decimal("0.003"))

    (trade,) = trades_of(exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.01", "50000")))
    # The taker (buyer) pays 0.3 % of the 0.01 BTC it receives; the maker (seller) 0.2 % of 500 USDT.
    assert trade.buyer_fee == 3_000  # 0.00003 BTC in atoms
    assert trade.seller_fee == 1 * ATOMS  # 1 USDT
    assert exchange.spec("BTC-USDT").taker_fee == Decimal("0.003")
    assert_consistent(exchange, pool)


def test_a_failed_pair_can_be_halted_and_given_new_fees_and_starts_with_them_once_repaired(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    exchange = system.exchange
    resting = order_id_of(exchange.place(1001, limit("LINK-USDT", Side.BUY, "1", "10")))
    with pool.connection() as conn:  # a stored order the pair cannot rebuild: every start fails
        conn.execute("UPDATE orders SET price = 10.0005 WHERE id = %s", (resting,))
    with pytest.raises(EngineUnavailable):
        system.restart_pair("LINK-USDT")
    wait_until(lambda: system.pair_actor("LINK-USDT").state is ChildState.FAILED, 30, "the pair failing")
    failure = system.pair_actor("LINK-USDT").last_failure  # what made on_start fail, not only that it did
    assert failure is not None and "CorruptStoredAmount" in failure.message and "10.0005" in failure.message

    # Stored and answered as made (not a 503 "nothing was done" after storing it anyway)
    assert system.update_pair("LINK-USDT", status="HALTED").status == "HALTED"
    assert system.update_pair("LINK-USDT", maker_fee=Decimal("0.004")).maker_fee == Decimal("0.004")
    record = PairRepository(pool).get("LINK-USDT")
    assert record is not None and (record.status, record.maker_fee) == ("HALTED", Decimal("0.004"))

    with pool.connection() as conn:
        conn.execute("UPDATE orders SET price = 10 WHERE id = %s", (resting,))
    system.restart_pair("LINK-USDT")
    assert exchange.spec("LINK-USDT").maker_fee == Decimal("0.004")
    with pytest.raises(PairNotTrading):
        exchange.place(1002, limit("LINK-USDT", Side.SELL, "1", "10"))
    assert memory_book(exchange, "LINK-USDT")[0]  # the repaired order is back in the book
    assert_consistent(exchange, pool)


def test_the_actor_list_shows_state_incarnation_restarts_mailbox_and_last_failure(
    system: ActorSystem,
) -> None:
    rows = {row.name: row for row in system.actors()}
    assert {"writer", "wallet", "pair:BTC-USDT", "pair:USDC-USDT"} <= rows.keys()
    assert len([name for name in rows if name.startswith("pair:")]) == 10
    for row in rows.values():
        assert row.state is ChildState.RUNNING
        assert (row.incarnation, row.restarts, row.mailbox, row.last_failure) == (1, 0, 0, None)
        assert row.as_dict().keys() >= {"state", "incarnation", "restarts", "mailbox", "last_failure"}

    system.restart_pair("BNB-USDT")

    row = system.pair_actor("BNB-USDT")
    assert (row.state, row.incarnation, row.restarts, row.last_failure) == (ChildState.RUNNING, 2, 1, None)
    assert system.open_orders(["BNB-USDT"]) == {"BNB-USDT": 0}


def test_restarting_a_pair_under_load_loses_no_command_and_leaves_no_gap_in_its_sequence(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    exchange = system.exchange
    sequences: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def call(caller: int) -> None:
        n = 0
        while not stop.is_set():
            side, user = (Side.BUY, 1001 + caller % 2) if n % 2 else (Side.SELL, 1003 + caller % 2)
            try:
                outcome = exchange.place(user, limit("ETH-USDT", side, "0.01", f"{3_000 + n % 5 - 2}"))
            except BaseException as exc:
                errors.append(exc)
            else:
                with lock:
                    sequences.extend(event.sequence for event in outcome.events)
            n += 1

    callers = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(6)]
    for thread in callers:
        thread.start()
    try:
        for _ in range(3):
            wait_until_more(sequences, 30)
            system.restart_pair("ETH-USDT")
        wait_until_more(sequences, 30)
    finally:
        stop.set()
        for thread in callers:
            thread.join(10)

    assert not errors, errors  # callers waited for each restart instead of failing
    assert system.pair_actor("ETH-USDT").incarnation == 4
    last = exchange.depth("ETH-USDT", 1).sequence
    assert sorted(sequences) == list(range(1, last + 1)), "every sequence number is one acked event"
    assert_consistent(exchange, pool)


def wait_until_more(items: list[int], timeout: float, more: int = 60) -> None:
    """Wait until `items` has grown by `more`."""
    target = len(items) + more
    wait_until(lambda: len(items) >= target, timeout, f"{more} more events")


def test_restarting_a_pair_after_its_group_failed_with_the_writer_rebuilds_the_whole_group(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    """Commits the database keeps refusing fail the writer and, one-for-all, every pair: a pair restart
    alone could not start without the writer, so it rebuilds the group."""
    exchange = system.exchange
    resting = order_id_of(exchange.place(1002, limit("BTC-USDT", Side.SELL, "0.01", "60000")))
    with pool.connection() as conn:
        conn.execute("ALTER TABLE ledger_entries ADD CONSTRAINT no_doge CHECK (asset <> 'DOGE') NOT VALID")

    def writer_state() -> ChildState:
        return {s.name: s.state for s in system.actors()}["writer"]

    def refuse_until_failed() -> bool:
        if writer_state() is ChildState.RUNNING:
            with pytest.raises(Exception):  # noqa: B017 - a refused commit, or the group rebuilding
                system.deposit(1001, "DOGE", ATOMS)
        return writer_state() is ChildState.FAILED

    wait_until(refuse_until_failed, 60, "the writer failing after commits refused again and again")
    states = {s.name: s.state for s in system.actors()}
    assert states["wallet"] is ChildState.FAILED and states["pair:BTC-USDT"] is ChildState.FAILED
    with pool.connection() as conn:
        conn.execute("ALTER TABLE ledger_entries DROP CONSTRAINT no_doge")

    status = system.restart_pair("ETH-USDT")

    assert status.state is ChildState.RUNNING
    assert {s.state for s in system.actors()} == {ChildState.RUNNING}  # the writer, the wallet, every pair
    system.deposit(1001, "DOGE", ATOMS)
    taker = exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.01", "60000"))
    assert [trade.seller_order_id for trade in trades_of(taker)] == [str(resting)]
    assert_consistent(exchange, pool)


def test_open_orders_are_asked_of_every_pair_at_once_and_a_stuck_pair_holds_no_other_answer(
    pool: psycopg_pool.ConnectionPool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = PairActor.on_receive

    stuck = {"BTC-USDT", "SOL-USDT", "XRP-USDT"}

    def stuck_on_three(self: PairActor, message: Any) -> Any:
        if isinstance(message, StatusQuery) and self.spec.symbol in stuck:
            time.sleep(2.0)
        return answer(self, message)

    monkeypatch.setattr(PairActor, "on_receive", stuck_on_three)
    with running_system(pool, request_timeout=0.5) as system:
        fund(system)
        system.exchange.place(1001, limit("ETH-USDT", Side.SELL, "1", "3000"))
        started = time.monotonic()
        counts = system.open_orders(system.symbols())
        assert time.monotonic() - started < 1.2  # one deadline for all; one per pair would take 3 × 0.5 s
        assert {symbol for symbol, count in counts.items() if count is None} == stuck
        assert counts["ETH-USDT"] == 1
        assert sum(1 for count in counts.values() if count == 0) == 6
