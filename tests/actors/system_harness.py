"""Shared parts of the actor-system tests: a database with users, funded traders, order helpers, and
the consistency checks of the durability contract (books, money, locks) against the committed state.

Everything runs on the real PostgreSQL and the real actors; nothing here is a fake. The checks are
written to be called while no command is in flight (after a stream has settled), because they compare
memory with the database at one moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import psycopg_pool

from tradeengine.actors.exchange import Exchange, OrderRequest
from tradeengine.actors.pair import CommandOutcome
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import (
    MatchingEngine,
    OrderAccepted,
    OrderRejected,
    OrderType,
    PairSpec,
    Side,
    UnlimitedFunds,
)
from tradeengine.storage import apply_migrations, create_pool
from tradeengine.storage.recovery import check_database_reserved_funds, load_pair_specs, load_pair_state

TRADERS = (1001, 1002, 1003, 1004)
FEE_USER = 1
ATOMS = 10**8
FUNDING = {"USDT": 10_000_000 * ATOMS, "BTC": 100 * ATOMS, "ETH": 2_000 * ATOMS, "SOL": 50_000 * ATOMS}
LEVELS = 100_000  # "every level" for depth reads

Levels = list[tuple[int, int, int]]


def prepare_database(url: str, users: Iterable[int] = TRADERS) -> None:
    """Apply the migrations and create the traders (users must exist before deposits)."""
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for user in users:
            conn.execute("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader')",
                         (user, f"trader{user}"))


@contextmanager
def database_pool(url: str, **options: Any) -> Iterator[psycopg_pool.ConnectionPool]:
    """An open pool on `url` (closed afterwards)."""
    pool = create_pool(url, min_size=options.pop("min_size", 2), max_size=options.pop("max_size", 8),
                       **options)
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def running_system(pool: psycopg_pool.ConnectionPool, **options: Any) -> Iterator[ActorSystem]:
    """A started ActorSystem on `pool`, stopped afterwards."""
    system = ActorSystem(pool, **options)
    system.start()
    try:
        yield system
    finally:
        system.stop()


def fund(system: ActorSystem, users: Iterable[int] = TRADERS,
         amounts: dict[str, int] | None = None) -> None:
    """Deposit `amounts` (atoms per asset) for every user, committed."""
    for user in users:
        for asset, amount in (amounts or FUNDING).items():
            system.deposit(user, asset, amount)


def limit(symbol: str, side: Side, quantity: str, price: str, **options: Any) -> OrderRequest:
    """A LIMIT order request in API units."""
    return OrderRequest(symbol, side, OrderType.LIMIT, quantity=Decimal(quantity), price=Decimal(price),
                        **options)


def order_id_of(outcome: CommandOutcome) -> int:
    """The id of the order a place command created (its first event names it)."""
    first = outcome.events[0]
    assert isinstance(first, OrderAccepted | OrderRejected), first
    return int(first.order_id)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(pause)


# -- books ------------------------------------------------------------------------------------------


def memory_book(exchange: Exchange, symbol: str) -> tuple[Levels, Levels]:
    """Every level of the pair's live book, read from its actor: (price ticks, lots, orders)."""
    depth = exchange.depth(symbol, LEVELS)
    return list(depth.bids), list(depth.asks)


def rebuilt_book(pool: psycopg_pool.ConnectionPool, spec: PairSpec) -> tuple[Levels, Levels]:
    """The book a fresh MatchingEngine rebuilds from the committed live orders of the pair."""
    state = load_pair_state(pool, spec)
    engine = MatchingEngine(spec, UnlimitedFunds(), sequence=state.sequence, last_price=state.last_price)
    engine.restore(state.snapshots, sequence=state.sequence, last_price=state.last_price)
    engine.check_invariants()
    bids, asks = engine.depth(LEVELS)
    return list(bids), list(asks)


def view_book(conn: psycopg.Connection[Any], spec: PairSpec) -> tuple[Levels, Levels]:
    """The pair's book as the `open_order_depth` view aggregates the committed orders."""
    rows = conn.execute(
        "SELECT side::text, price, quantity, orders FROM open_order_depth WHERE symbol = %s",
        (spec.symbol,),
    ).fetchall()
    bids: Levels = []
    asks: Levels = []
    for side, price, quantity, orders in rows:
        level = (int(price / spec.tick_size), int(quantity / spec.lot_size), int(orders))
        (bids if side == "BUY" else asks).append(level)
    bids.sort(key=lambda level: -level[0])
    asks.sort(key=lambda level: level[0])
    return bids, asks


def specs(pool: psycopg_pool.ConnectionPool) -> dict[str, PairSpec]:
    """Every pair's spec, by symbol, as committed."""
    return {spec.symbol: spec for spec, _ in load_pair_specs(pool)}


def assert_books_match_database(exchange: Exchange, pool: psycopg_pool.ConnectionPool,
                                symbols: Iterable[str] | None = None) -> None:
    """Each pair's live book equals the one rebuilt from the database and the open_order_depth view."""
    by_symbol = specs(pool)
    with pool.connection() as conn:
        for symbol in symbols or by_symbol:
            spec = by_symbol[symbol]
            live = memory_book(exchange, symbol)
            assert live == rebuilt_book(pool, spec), f"{symbol}: memory book differs from its rebuild"
            assert live == view_book(conn, spec), f"{symbol}: memory book differs from open_order_depth"


# -- money ------------------------------------------------------------------------------------------


def balance_totals(conn: psycopg.Connection[Any]) -> dict[str, Decimal]:
    """Per asset, the sum of every balance (available + locked), fee account included."""
    rows = conn.execute("SELECT asset, sum(available + locked) FROM balances GROUP BY asset").fetchall()
    return {asset: total for asset, total in rows}


def transfer_totals(conn: psycopg.Connection[Any]) -> dict[str, Decimal]:
    """Per asset, deposits minus withdrawals, from the ledger."""
    rows = conn.execute(
        "SELECT asset, sum(CASE kind WHEN 'DEPOSIT' THEN amount ELSE -amount END) FROM ledger_entries "
        "WHERE kind IN ('DEPOSIT', 'WITHDRAWAL') GROUP BY asset"
    ).fetchall()
    return {asset: total for asset, total in rows}


def assert_money_conserved(pool: psycopg_pool.ConnectionPool) -> None:
    """For every asset the sum of all balances equals deposits minus withdrawals."""
    with pool.connection() as conn:
        assert balance_totals(conn) == transfer_totals(conn)


def assert_locked_equals_reserved(pool: psycopg_pool.ConnectionPool) -> None:
    """Every committed locked balance equals what the committed live orders reserve."""
    assert check_database_reserved_funds(pool) == []


def database_balances(conn: psycopg.Connection[Any], user: int) -> dict[str, tuple[int, int]]:
    """One user's committed balances: asset → (available, locked) in atoms."""
    rows = conn.execute("SELECT asset, available, locked FROM balances WHERE user_id = %s",
                        (user,)).fetchall()
    return {asset: (int(available * ATOMS), int(locked * ATOMS)) for asset, available, locked in rows}


def assert_memory_balances_match_database(exchange: Exchange, pool: psycopg_pool.ConnectionPool,
                                          users: Iterable[int] = (*TRADERS, FEE_USER)) -> None:
    """The wallet's balances (memory) equal the committed ones, user by user."""
    with pool.connection() as conn:
        for user in users:
            live = {b.asset: (b.available, b.locked) for b in exchange.balances(user)}
            stored = database_balances(conn, user)
            assert {a: v for a, v in live.items() if v != (0, 0)} == {
                a: v for a, v in stored.items() if v != (0, 0)}, f"balances of user {user}"


_CANDLES_OF_TRADES = """
SELECT symbol, date_bin('1 minute', executed_at, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
       min(ARRAY[extract(epoch FROM executed_at), sequence, price]),
       max(ARRAY[extract(epoch FROM executed_at), sequence, price]),
       max(price), min(price), sum(quantity), sum(quote_quantity), count(*)
FROM trades GROUP BY 1, 2
"""
_STORED_CANDLES = ("SELECT symbol, open_time, open_ref, close_ref, high, low, volume, quote_volume, trades "
                   "FROM candles_1m")


def assert_candles_match_trades(pool: psycopg_pool.ConnectionPool) -> None:
    """The minute candles (migration 0011) are exactly the aggregate of the committed trades."""
    with pool.connection() as conn:
        for first, second, what in ((_STORED_CANDLES, _CANDLES_OF_TRADES, "without such trades"),
                                    (_CANDLES_OF_TRADES, _STORED_CANDLES, "missing")):
            rows = conn.execute(f"{first} EXCEPT ALL {second}").fetchall()
            assert not rows, f"{len(rows)} minute candle(s) {what}: {rows[:3]}"


def assert_consistent(exchange: Exchange, pool: psycopg_pool.ConnectionPool) -> None:
    """Every check of the durability contract at once (call it while nothing is in flight)."""
    assert_books_match_database(exchange, pool)
    assert_memory_balances_match_database(exchange, pool)
    assert_money_conserved(pool)
    assert_locked_equals_reserved(pool)
    assert_candles_match_trades(pool)


def stored_order_ids(conn: psycopg.Connection[Any], ids: Iterable[int]) -> set[int]:
    """Which of `ids` are committed in the orders table."""
    wanted = list(ids)
    rows = conn.execute("SELECT id FROM orders WHERE id = ANY(%s)", (wanted,)).fetchall()
    return {row[0] for row in rows}
