"""Read access to the ``pairs`` table: the trading rules of each pair, as exact ``Decimal`` values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg_pool
from psycopg.rows import class_row

from tradeengine.storage.database import storage_errors

_COLUMNS = (
    "symbol, base_asset, quote_asset, tick_size, lot_size, min_quantity, max_quantity, min_notional, "
    "maker_fee, taker_fee, status::text AS status, last_sequence, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class PairRecord:
    """One row of ``pairs``. ``status`` is ACTIVE, HALTED or DELISTED."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    max_quantity: Decimal
    min_notional: Decimal
    maker_fee: Decimal
    taker_fee: Decimal
    status: str
    last_sequence: int
    created_at: datetime
    updated_at: datetime


class PairRepository:
    """Look up trading pairs through a connection pool."""

    def __init__(self, pool: psycopg_pool.ConnectionPool) -> None:
        self._pool = pool

    def list(self) -> list[PairRecord]:
        """Return every pair, ordered by symbol."""
        with storage_errors("listing pairs"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PairRecord))
            return cur.execute(f"SELECT {_COLUMNS} FROM pairs ORDER BY symbol").fetchall()

    def get(self, symbol: str) -> PairRecord | None:
        """Return the pair ``symbol`` (e.g. ``BTC-USDT``), or None when there is no such pair."""
        with storage_errors(f"reading pair {symbol}"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PairRecord))
            return cur.execute(f"SELECT {_COLUMNS} FROM pairs WHERE symbol = %s", (symbol,)).fetchone()
