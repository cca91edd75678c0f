"""Helpers of the read-side tests (storage.history, storage.market): data written the way the engine does.

Orders and trades come from real engine commands (`Scenario`, shared with the writer tests) turned into
rows by `build_rows` and committed by `write_batch`; candle and ticker tests, which need exact
timestamps, write hand-made `TradeRow`s through the same `write_batch`.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg_pool

from tests.storage.test_rows_scenarios import ALICE, ATOMS, BOB, CAROL, Scenario, add_users
from tradeengine.engine import format_decimal
from tradeengine.storage.facts import Facts, Transfer
from tradeengine.storage.ids import datetime_of_us
from tradeengine.storage.rows import RowSet, TradeRow, build_rows, rfc3339
from tradeengine.storage.writer import write_batch

DAVE = 1004
USERS = (ALICE, BOB, CAROL, DAVE)
UNIX_EPOCH = datetime_of_us(0)


def add_traders(pool: psycopg_pool.ConnectionPool) -> None:
    """Create the test users ALICE, BOB, CAROL and DAVE, each with plenty of BTC, ETH and USDT."""
    with pool.connection() as conn:
        add_users(conn, *USERS)
    commit(pool, [Transfer("DEPOSIT", user, asset, 10**9 * ATOMS, 0)
                  for user in USERS for asset in ("BTC", "ETH", "USDT")])


def commit(pool: psycopg_pool.ConnectionPool, facts: list[Facts]) -> RowSet:
    """Write `facts` in one batch, as the persistence writer does; return the rows written."""
    rows = build_rows(facts)
    with pool.connection() as conn:
        write_batch(conn, rows)
    return rows


def now_us() -> int:
    """The wall clock in µs since the Unix epoch."""
    return time.time_ns() // 1000


def us_of(moment: datetime) -> int:
    """µs since the Unix epoch of an aware datetime."""
    return (moment - UNIX_EPOCH) // timedelta(microseconds=1)


class FrozenClock(Scenario):
    """A Scenario whose clock stands still until moved: its commands (and orders) share one instant."""

    def tick(self) -> int:
        return self.now

    def at(self, moment_us: int) -> FrozenClock:
        """Move the clock to `moment_us` (forwards only: order ids never go back)."""
        assert moment_us >= self.now
        self.now = moment_us
        return self


_trade_numbers = itertools.count(1)


def trade(symbol: str, price: str, quantity: str, executed_at: datetime, sequence: int | None = None,
          buyer: int = ALICE, seller: int = BOB, taker_side: str = "BUY") -> TradeRow:
    """A hand-made trade row with a chosen instant (fee-free: the market data ignores fees)."""
    sequence = next(_trade_numbers) if sequence is None else sequence
    p, q = Decimal(price), Decimal(quantity)
    return TradeRow(f"{symbol}:{sequence}", symbol, p, q, p * q, 10 * sequence, 10 * sequence + 1, buyer,
                    seller, taker_side, Decimal(0), Decimal(0), executed_at, sequence)


def write_trades(pool: psycopg_pool.ConnectionPool, trades: list[TradeRow]) -> None:
    """Commit hand-made trade rows through the batch writer."""
    with pool.connection() as conn:
        write_batch(conn, RowSet(trades=trades))


def rendered(row: tuple[object, ...]) -> list[object]:
    """A row as the API would render it: decimals through format_decimal, datetimes as RFC 3339."""
    return [format_decimal(v) if isinstance(v, Decimal) else rfc3339(v) if isinstance(v, datetime) else v
            for v in row]
