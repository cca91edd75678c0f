"""Recovery loaders against real PostgreSQL: pair specs, live orders, balances, the reserved-funds check."""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal
from typing import Any

import psycopg_pool
import pytest

from tradeengine.engine import (
    FEE_ACCOUNT,
    MatchingEngine,
    OrderSnapshot,
    OrderStatus,
    OrderType,
    PairSpec,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeExecuted,
    UnknownSymbol,
    UnlimitedFunds,
)
from tradeengine.storage.balances import CorruptStoredAmount, decimal_to_units, load_balances
from tradeengine.storage.recovery import (
    Discrepancy,
    check_database_reserved_funds,
    check_reserved_funds,
    load_pair_specs,
    load_pair_state,
    log_discrepancies,
)

D = Decimal
ALICE, BOB, CAROL = 1001, 1002, 1003
BASE_ID = 1_000_000_000_000 << 12  # about 11.6 days after 2025-01-01: a valid order id instant
BTC_USDT = PairSpec(
    symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=D("0.01"), lot_size=D("0.00001"),
    min_quantity=D("0.00001"), max_quantity=D(9000), min_notional=D(10), maker_fee=D("0.0008"),
    taker_fee=D("0.001"),
)


def oid(n: int) -> int:
    return BASE_ID + n


def add_users(pool: psycopg_pool.ConnectionPool) -> None:
    with pool.connection() as conn:
        for user in (ALICE, BOB, CAROL):
            conn.execute("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader')", (user, f"u{user}"))


def add_order(pool: psycopg_pool.ConnectionPool, n: int, user: int, side: str, order_type: str, status: str,
              *, price: str | None, quantity: str, sequence: int, priority: int | None = None,
              stop_price: str | None = None, filled: str = "0", filled_quote: str = "0",
              symbol: str = "BTC-USDT", client_order_id: str | None = None) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO orders (id, user_id, symbol, side, type, status, price, stop_price, quantity, "
            "filled_quantity, filled_quote, time_in_force, post_only, self_trade_prevention, "
            "client_order_id, sequence, priority, updated_sequence, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'GTC', false, 'EXPIRE_MAKER', %s, %s, %s, "
            "%s, snowflake_timestamp(%s), now())",
            (oid(n), user, symbol, side, order_type, status, price, stop_price, quantity, filled,
             filled_quote, client_order_id, sequence, sequence if priority is None else priority, sequence,
             oid(n)),
        )


def add_balance(
    pool: psycopg_pool.ConnectionPool, user: int, asset: str, available: str, locked: str
) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO balances (user_id, asset, available, locked) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (user_id, asset) DO UPDATE SET available = excluded.available, "
            "locked = excluded.locked",
            (user, asset, available, locked),
        )


@pytest.fixture
def book(pg_pool: psycopg_pool.ConnectionPool) -> psycopg_pool.ConnectionPool:
    """BTC-USDT with a partly filled bid, two asks at one level (re-queued one behind), two stops, and
    final orders and another pair's order that recovery must leave out; balances that match them."""
    add_users(pg_pool)
    add_order(pg_pool, 1, ALICE, "BUY", "LIMIT", "PARTIALLY_FILLED", price="50000", quantity="0.5",
              filled="0.1", filled_quote="5000", sequence=3, client_order_id="alice-1")
    add_order(pg_pool, 2, BOB, "SELL", "LIMIT", "OPEN", price="50100", quantity="0.2", sequence=5,
              priority=9)  # amended up: re-queued behind order 3
    add_order(pg_pool, 3, BOB, "SELL", "LIMIT", "OPEN", price="50100", quantity="0.3", sequence=7)
    add_order(pg_pool, 4, CAROL, "SELL", "STOP_LIMIT", "PENDING_TRIGGER", price="49000", stop_price="49500",
              quantity="0.1", sequence=8)
    add_order(pg_pool, 5, ALICE, "BUY", "STOP_MARKET", "PENDING_TRIGGER", price=None, stop_price="51000",
              quantity="0.05", sequence=10)
    add_order(pg_pool, 6, BOB, "SELL", "LIMIT", "FILLED", price="49990", quantity="0.1", filled="0.1",
              filled_quote="4999", sequence=2)
    add_order(pg_pool, 7, CAROL, "BUY", "LIMIT", "CANCELLED", price="49000", quantity="0.1", sequence=11)
    add_order(pg_pool, 8, CAROL, "BUY", "LIMIT", "OPEN", price="3000", quantity="1", sequence=1,
              symbol="ETH-USDT")
    with pg_pool.connection() as conn:
        conn.execute("UPDATE pairs SET last_sequence = 12, last_price = 50050 WHERE symbol = 'BTC-USDT'")
    add_balance(pg_pool, ALICE, "USDT", "1000", "20000")  # 0.4 BTC left at 50000
    add_balance(pg_pool, ALICE, "BTC", "0.09992", "0")
    add_balance(pg_pool, BOB, "BTC", "1", "0.5")
    add_balance(pg_pool, BOB, "USDT", "4995.0008", "0")
    add_balance(pg_pool, CAROL, "BTC", "0", "0.1")
    add_balance(pg_pool, CAROL, "USDT", "0", "3000")  # the ETH-USDT bid
    add_balance(pg_pool, 1, "BTC", "0.00008", "0")
    add_balance(pg_pool, 1, "USDT", "3.9992", "0")
    return pg_pool


def test_load_pair_state_returns_the_live_orders_in_sequence_order_in_core_units(
    book: psycopg_pool.ConnectionPool,
) -> None:
    snapshots, sequence, last_price = load_pair_state(book, BTC_USDT)
    assert (sequence, last_price) == (12, 5_005_000)
    assert [s.order_id for s in snapshots] == [str(oid(n)) for n in (1, 2, 3, 4, 5)]
    assert snapshots[0] == OrderSnapshot(
        order_id=str(oid(1)), user_id=str(ALICE), side=Side.BUY, order_type=OrderType.LIMIT,
        status=OrderStatus.PARTIALLY_FILLED, price=5_000_000, stop_price=None, quantity=50_000,
        filled_quantity=10_000, cumulative_quote=5000 * 10**8, time_in_force=TimeInForce.GTC,
        post_only=False, self_trade_prevention=SelfTradePrevention.EXPIRE_MAKER, client_order_id="alice-1",
        sequence=3, priority=3,
    )
    assert (snapshots[1].sequence, snapshots[1].priority) == (5, 9)
    assert snapshots[3].stop_price == 4_950_000 and snapshots[3].price == 4_900_000
    assert snapshots[4].price is None and snapshots[4].order_type is OrderType.STOP_MARKET


def test_restoring_the_loaded_state_rebuilds_the_book_with_its_queue_order_and_passes_invariants(
    book: psycopg_pool.ConnectionPool,
) -> None:
    state = load_pair_state(book, BTC_USDT)
    engine = MatchingEngine(BTC_USDT, UnlimitedFunds())
    engine.restore(state.snapshots, sequence=state.sequence, last_price=state.last_price)
    engine.check_invariants()
    assert engine.depth(5) == ([(5_000_000, 40_000, 1)], [(5_010_000, 50_000, 2)])
    assert engine.counts() == (1, 2, 2)
    assert engine.get_order(str(oid(1))).locked == 20_000 * 10**8  # type: ignore[union-attr]
    # order 3 joined the 50100 level before the re-queued order 2: it trades first
    events = engine.execute(PlaceOrder(order_id="9", user_id=str(CAROL), side=Side.BUY,
                                       order_type=OrderType.LIMIT, price=5_010_000, quantity=30_000))
    trades = [e for e in events if isinstance(e, TradeExecuted)]
    assert [t.seller_order_id for t in trades] == [str(oid(3))]
    assert events[0].sequence == 13  # continues after the stored last_sequence


def test_a_pair_without_live_orders_starts_empty_and_an_unknown_pair_is_refused(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    sol = next(spec for spec, _ in load_pair_specs(pg_pool) if spec.symbol == "SOL-USDT")
    assert load_pair_state(pg_pool, sol) == ([], 0, None)
    ghost = PairSpec(symbol="ZZZ-USDT", base_asset="ZZZ", quote_asset="USDT", tick_size=D(1),
                     lot_size=D(1), min_quantity=D(1), max_quantity=D(10))
    with pytest.raises(UnknownSymbol):
        load_pair_state(pg_pool, ghost)


def test_a_stored_price_off_the_tick_grid_is_refused_loudly(pg_pool: psycopg_pool.ConnectionPool) -> None:
    add_users(pg_pool)
    add_order(pg_pool, 1, ALICE, "BUY", "LIMIT", "OPEN", price="50000.005", quantity="0.1", sequence=1)
    with pytest.raises(CorruptStoredAmount, match="price"):
        load_pair_state(pg_pool, BTC_USDT)


@pytest.mark.parametrize(("field", "values", "message"), [
    ("quantity", {"quantity": "0.000015"}, r"quantity 0\.00001500 is not a whole number ≥ 0 of 0\.00001"),
    ("filled_quantity", {"filled": "0.000001"}, "filled_quantity 0.00000100 is not a whole number"),
    ("stop_price", {"stop_price": "NaN"}, "stop_price is NaN, not an amount"),
    ("price", {"price": "NaN"}, "price is NaN, not an amount"),
])
def test_every_stored_amount_off_its_pairs_grid_is_refused_naming_the_order_and_field(
    pg_pool: psycopg_pool.ConnectionPool, field: str, values: dict[str, str], message: str,
) -> None:
    add_users(pg_pool)
    order: dict[str, Any] = {"price": "50000", "quantity": "0.1", **values}
    add_order(pg_pool, 7, ALICE, "BUY", "STOP_LIMIT" if field == "stop_price" else "LIMIT",
              "PENDING_TRIGGER" if field == "stop_price" else "OPEN", sequence=1, **order)
    with pytest.raises(CorruptStoredAmount, match=message) as error:
        load_pair_state(pg_pool, BTC_USDT)
    assert f"order {oid(7)} of BTC-USDT: {field}" in str(error.value)


def test_amounts_beyond_a_bigint_of_atoms_load_exactly(pg_pool: psycopg_pool.ConnectionPool) -> None:
    """Amounts are read as whole atoms in text: 10^12 units are 10^20 atoms, more than a bigint holds."""
    add_users(pg_pool)
    spec = dataclasses.replace(BTC_USDT, tick_size=D(1), lot_size=D("0.00000001"), min_notional=D(0),
                               max_quantity=D(10**13))
    add_order(pg_pool, 1, ALICE, "SELL", "LIMIT", "PARTIALLY_FILLED", price="1",
              quantity="1000000000000.00000001", filled="999999999999.99999999",
              filled_quote="9999999999.99999999", sequence=1)
    [snapshot] = load_pair_state(pg_pool, spec).snapshots
    assert (snapshot.price, snapshot.quantity, snapshot.filled_quantity, snapshot.cumulative_quote) == (
        1, 10**20 + 1, 10**20 - 1, 10**18 - 1)


def test_load_pair_specs_returns_every_pair_with_its_status(pg_pool: psycopg_pool.ConnectionPool) -> None:
    with pg_pool.connection() as conn:
        conn.execute("UPDATE pairs SET status = 'HALTED' WHERE symbol = 'ADA-USDT'")
    specs = load_pair_specs(pg_pool)
    assert len(specs) == 10
    assert [spec.symbol for spec, _ in specs] == sorted(spec.symbol for spec, _ in specs)
    assert dict((spec.symbol, status) for spec, status in specs)["ADA-USDT"] == "HALTED"
    assert (BTC_USDT, "ACTIVE") in specs


def test_load_balances_gives_exact_atoms_per_core_user_with_the_fee_account_mapped(
    book: psycopg_pool.ConnectionPool,
) -> None:
    balances = load_balances(book)
    assert balances[(str(ALICE), "USDT")] == (1000 * 10**8, 20_000 * 10**8)
    assert balances[(str(BOB), "USDT")] == (499_500_080_000, 0)
    assert balances[(FEE_ACCOUNT, "BTC")] == (8_000, 0)
    assert len(balances) == 8


def test_an_amount_that_is_not_whole_atoms_or_negative_is_refused_loudly() -> None:
    atom = D("0.00000001")
    assert decimal_to_units(D("99999999999999999999999999999.99999999"), atom, "x") == 10**37 - 1
    with pytest.raises(CorruptStoredAmount):
        decimal_to_units(D("0.000000001"), atom, "x")
    with pytest.raises(CorruptStoredAmount):
        decimal_to_units(D("-1"), atom, "x")


def test_check_reserved_funds_finds_nothing_on_consistent_data(book: psycopg_pool.ConnectionPool) -> None:
    assert check_database_reserved_funds(book) == []


def test_check_reserved_funds_finds_a_planted_discrepancy_and_logs_it(
    book: psycopg_pool.ConnectionPool, caplog: pytest.LogCaptureFixture,
) -> None:
    add_balance(book, BOB, "BTC", "1", "0.6")  # 0.1 BTC locked that no order needs
    add_balance(book, ALICE, "ETH", "0", "0.25")  # locked without any order at all
    state = load_pair_state(book, BTC_USDT)
    eth = next(spec for spec, _ in load_pair_specs(book) if spec.symbol == "ETH-USDT")
    found = check_reserved_funds(load_balances(book),
                                 [(BTC_USDT, state.snapshots), (eth, load_pair_state(book, eth).snapshots)])
    assert found == [
        Discrepancy(str(ALICE), "ETH", 25_000_000, 0),
        Discrepancy(str(BOB), "BTC", 60_000_000, 50_000_000),
    ]
    assert found[1].difference == 10_000_000
    with caplog.at_level(logging.ERROR):
        assert log_discrepancies(found) == 2
    assert "user 1002 asset BTC locked 60000000 atoms but live orders reserve 50000000" in caplog.text


def test_check_reserved_funds_reports_orders_whose_funds_are_not_locked() -> None:
    order = OrderSnapshot(order_id="1", user_id="7", side=Side.SELL, order_type=OrderType.LIMIT,
                          status=OrderStatus.OPEN, price=100, stop_price=None, quantity=3)
    assert check_reserved_funds({}, [(BTC_USDT, [order])]) == [Discrepancy("7", "BTC", 0, 3_000)]
