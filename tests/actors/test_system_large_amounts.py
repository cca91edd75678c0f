"""Amounts at the top of what the engine takes, through the running system on real PostgreSQL.

Every balance stays within an asset's total (at most 10^30, what a NUMERIC(38,8) balance holds), but
flows add up past it: the same coins change hands again and again. A running total of flows (a minute
candle's volume, an order's filled quote) must store any size, or a valid command fails its batch's
commit and the whole database group is rebuilt (migration 0012).
"""

from __future__ import annotations

from decimal import Decimal

import psycopg_pool

from tests.actors.system_harness import (
    ATOMS,
    assert_consistent,
    limit,
    memory_book,
    order_id_of,
    running_system,
)
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import Side
from tradeengine.storage.pairs import NewPair

HUGE = NewPair(
    symbol="HUG-BIG", base_asset="HUG", quote_asset="BIG", tick_size=Decimal(1), lot_size=Decimal(1),
    min_quantity=Decimal(1), max_quantity=Decimal(1000), min_notional=Decimal(0), maker_fee=Decimal(0),
    taker_fee=Decimal(0),
)
X, Y = 1001, 1002
P = "600000000000000000000000000000"  # 6 x 10^29 BIG for one HUG
P2 = "500000000000000000000000000000"


def test_flows_past_what_a_balance_holds_commit_and_survive_a_restart(
    pool: psycopg_pool.ConnectionPool, system: ActorSystem,
) -> None:
    system.add_pair(HUGE)
    system.deposit(X, "BIG", 9 * 10**29 * ATOMS)  # 90 % of the most the exchange can hold of BIG
    system.deposit(Y, "HUG", 10 * ATOMS)
    exchange = system.exchange
    resting = order_id_of(exchange.place(Y, limit("HUG-BIG", Side.SELL, "3", P)))
    exchange.place(X, limit("HUG-BIG", Side.BUY, "1", P))  # Y is paid 6 x 10^29
    exchange.place(X, limit("HUG-BIG", Side.SELL, "1", P2))
    exchange.place(Y, limit("HUG-BIG", Side.BUY, "1", P2))  # ... pays 5 x 10^29 of it back to X
    exchange.place(X, limit("HUG-BIG", Side.BUY, "1", P))  # ... and is paid 6 x 10^29 again
    with pool.connection() as conn:
        filled_quote = conn.execute("SELECT status::text, filled_quote FROM orders WHERE id = %s",
                                    (resting,)).fetchone()
        assert filled_quote == ("PARTIALLY_FILLED", Decimal(12 * 10**29))  # past 10^30
        volumes = conn.execute("SELECT sum(volume), sum(quote_volume), sum(trades) FROM candles_1m "
                               "WHERE symbol = 'HUG-BIG'").fetchone()
        assert volumes == (3, Decimal(17 * 10**29), 3)
    book = memory_book(exchange, "HUG-BIG")
    assert_consistent(exchange, pool)
    system.stop()

    with running_system(pool) as again:  # the partly filled order is rebuilt with its filled quote
        assert memory_book(again.exchange, "HUG-BIG") == book
        assert_consistent(again.exchange, pool)
        held = {b.asset: (b.available, b.locked) for b in again.exchange.balances(Y)}
        assert (held["BIG"], held["HUG"]) == ((7 * 10**29 * ATOMS, 0), (8 * ATOMS, 1 * ATOMS))
