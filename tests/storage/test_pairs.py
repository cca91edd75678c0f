"""PairRepository against real PostgreSQL."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import psycopg_pool
import pytest

from tradeengine.storage import PairRecord, PairRepository


def test_list_returns_the_ten_seeded_pairs_sorted_by_symbol(pg_pool: psycopg_pool.ConnectionPool) -> None:
    pairs = PairRepository(pg_pool).list()

    assert len(pairs) == 10
    assert [p.symbol for p in pairs] == sorted(p.symbol for p in pairs)
    assert {p.status for p in pairs} == {"ACTIVE"}
    assert all(isinstance(p, PairRecord) for p in pairs)


def test_get_returns_exact_decimals(pg_pool: psycopg_pool.ConnectionPool) -> None:
    pair = PairRepository(pg_pool).get("ETH-USDT")

    assert pair is not None
    assert (pair.base_asset, pair.quote_asset) == ("ETH", "USDT")
    assert pair.tick_size == Decimal("0.01") and pair.lot_size == Decimal("0.0001")
    assert (pair.maker_fee, pair.taker_fee) == (Decimal("0.0008"), Decimal("0.001"))
    assert pair.last_sequence == 0


def test_a_decimal_written_is_read_back_exactly(pg_pool: psycopg_pool.ConnectionPool) -> None:
    with pg_pool.connection() as conn:
        conn.execute("UPDATE pairs SET maker_fee = %s WHERE symbol = 'XRP-USDT'", (Decimal("0.00012345"),))
    pair = PairRepository(pg_pool).get("XRP-USDT")
    assert pair is not None and pair.maker_fee == Decimal("0.00012345")


def test_get_of_an_unknown_symbol_returns_none(pg_pool: psycopg_pool.ConnectionPool) -> None:
    assert PairRepository(pg_pool).get("NOPE-USDT") is None


def test_records_are_frozen(pg_pool: psycopg_pool.ConnectionPool) -> None:
    pair = PairRepository(pg_pool).get("BTC-USDT")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.status = "HALTED"  # type: ignore[misc,union-attr]
