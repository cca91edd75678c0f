"""The ``pairs`` table: the trading rules and status of each pair, as exact ``Decimal`` values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg
import psycopg_pool
from psycopg.rows import class_row

from tradeengine.engine.errors import InvalidPairSpec, PairExists
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

    def create(self, record: NewPair) -> PairRecord:
        """Insert a new pair (status ACTIVE unless given); PairExists when the symbol is taken."""
        with storage_errors(f"creating pair {record.symbol}"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PairRecord))
            try:
                row = cur.execute(
                    "INSERT INTO pairs (symbol, base_asset, quote_asset, tick_size, lot_size, min_quantity, "
                    "max_quantity, min_notional, maker_fee, taker_fee, status) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    f"ON CONFLICT (symbol) DO NOTHING RETURNING {_COLUMNS}",
                    (record.symbol, record.base_asset, record.quote_asset, record.tick_size, record.lot_size,
                     record.min_quantity, record.max_quantity, record.min_notional, record.maker_fee,
                     record.taker_fee, record.status),
                ).fetchone()
            except psycopg.errors.CheckViolation as exc:
                reason = exc.diag.message_primary
                raise InvalidPairSpec(f"pair {record.symbol} rejected by the database: {reason}") from exc
        if row is None:
            raise PairExists(f"pair {record.symbol} already exists", field="symbol")
        return row

    def update(self, symbol: str, *, status: str | None = None, maker_fee: Decimal | None = None,
               taker_fee: Decimal | None = None) -> PairRecord | None:
        """Change a pair's status and/or fees; return the new row, or None when there is no such pair."""
        with storage_errors(f"updating pair {symbol}"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PairRecord))
            return cur.execute(
                "UPDATE pairs SET status = coalesce(%s::pair_status, status), "
                "maker_fee = coalesce(%s, maker_fee), taker_fee = coalesce(%s, taker_fee), "
                "updated_at = now() "
                f"WHERE symbol = %s RETURNING {_COLUMNS}",
                (status, maker_fee, taker_fee, symbol),
            ).fetchone()


@dataclass(frozen=True, slots=True)
class NewPair:
    """A pair to create: its rules as exact Decimals, and its initial status."""

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
    status: str = "ACTIVE"
