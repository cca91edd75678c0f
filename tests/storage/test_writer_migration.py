"""Migrations 0005 (order ids in SQL, text trade ids, priority, last price), 0007 (lean write path) and
0011 (minute candles)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tradeengine.storage import apply_migrations
from tradeengine.storage.ids import MAX_ORDER_ID, created_at_of
from tradeengine.storage.migrate import load_migrations


@pytest.fixture
def conn(migrated_pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_pg_url) as connection:
        yield connection


def column_type(conn: psycopg.Connection[Any], table: str, column: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    assert row is not None, f"{table}.{column} is missing"
    return row[0], row[1]


def test_snowflake_timestamp_gives_back_the_exact_instant_of_an_order_id(
    conn: psycopg.Connection[Any],
) -> None:
    rng = random.Random(5)
    ids = [0, 1, 4095, 4096, MAX_ORDER_ID, (2 << 52) + 7, *(rng.randrange(MAX_ORDER_ID) for _ in range(200))]
    query = "SELECT id, snowflake_timestamp(id) FROM unnest(%s::bigint[]) AS id"
    got = conn.execute(query, (ids,)).fetchall()
    assert got == [(i, created_at_of(i)) for i in ids]


def test_trade_ids_are_text_and_orders_keep_priority_and_the_last_changing_sequence(
    conn: psycopg.Connection[Any],
) -> None:
    assert column_type(conn, "trades", "id") == ("text", "NO")
    assert column_type(conn, "ledger_entries", "trade_id") == ("text", "YES")
    assert column_type(conn, "orders", "priority") == ("bigint", "YES")
    assert column_type(conn, "orders", "updated_sequence") == ("bigint", "YES")
    assert column_type(conn, "orders", "filled_quote") == ("numeric", "NO")
    assert column_type(conn, "pairs", "last_price") == ("numeric", "YES")
    assert conn.execute("SELECT count(*) FROM pair_volume_24h").fetchone() == (10,)


def migrate_before(pg_url: str, version: int) -> None:
    """Apply the packaged migrations older than `version`, and only those."""
    before = [m for m in load_migrations() if m.version < version]

    class Folder:  # a Traversable over those migrations only
        def iterdir(self) -> Iterator[Any]:
            for m in before:
                yield _File(m.name, m.sql)

    apply_migrations(pg_url, source=Folder())  # type: ignore[arg-type]


def test_orders_stored_before_0005_get_their_sequence_as_priority(pg_url: str) -> None:
    migrations = load_migrations()
    migrate_before(pg_url, 5)
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO users (id, name, role) VALUES (1001, 'alice', 'trader')")
        conn.execute(
            "INSERT INTO orders (id, user_id, symbol, side, type, status, price, quantity, time_in_force, "
            "sequence, created_at, updated_at) VALUES (42, 1001, 'BTC-USDT', 'BUY', 'LIMIT', 'OPEN', 1, 1, "
            "'GTC', 7, now(), now())"
        )
        conn.execute(
            "INSERT INTO trades (id, symbol, price, quantity, quote_quantity, buyer_order_id, "
            "seller_order_id, buyer_user_id, seller_user_id, taker_side, buyer_fee, seller_fee, executed_at, "
            "sequence) "
            "VALUES (9, 'BTC-USDT', 1, 1, 1, 1, 2, 1001, 1001, 'BUY', 0, 0, now(), 9)"
        )
    assert apply_migrations(pg_url) == [m.name for m in migrations if m.version >= 5]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT priority, updated_sequence FROM orders").fetchone() == (7, 7)
        assert conn.execute("SELECT id FROM trades").fetchone() == ("9",)


def test_outbox_events_stored_before_0007_become_one_message_per_pair_sequence_or_transfer(
    pg_url: str,
) -> None:
    migrate_before(pg_url, 7)
    insert = ("INSERT INTO outbox_events (event_id, symbol, sequence, event_type, routing_key, payload, "
              "published_at) VALUES (%s, %s, %s, %s, %s, %s, %s)")
    ids = [uuid.uuid5(uuid.NAMESPACE_OID, str(n)) for n in range(5)]
    now = datetime.now(UTC)
    old = [
        (ids[0], None, None, "balance.changed", "balance.USDT", Jsonb({"n": 0}), now),
        (ids[1], "BTC-USDT", 7, "order.traded", "order.BTC-USDT.FILLED", Jsonb({"n": 1}), now),
        (ids[2], "BTC-USDT", 7, "trade.executed", "trade.BTC-USDT", Jsonb({"n": 2}), None),
        (ids[3], None, None, "balance.changed", "balance.BTC", Jsonb({"n": 3}), None),
        (ids[4], "BTC-USDT", 8, "order.accepted", "order.BTC-USDT.OPEN", Jsonb({"n": 4}), now),
    ]
    with psycopg.connect(pg_url) as conn:
        conn.cursor().executemany(insert, old)
    apply_migrations(pg_url)
    with psycopg.connect(pg_url) as conn:
        messages = conn.execute("SELECT symbol, first_sequence, last_sequence, json_array_length(events), "
                                "published_at IS NOT NULL FROM outbox_messages ORDER BY id").fetchall()
        assert messages == [(None, None, None, 1, True), ("BTC-USDT", 7, 7, 2, False),
                            (None, None, None, 1, False), ("BTC-USDT", 8, 8, 1, True)]
        events = conn.execute("SELECT event_id, symbol, sequence, event_type, routing_key, payload "
                              "FROM outbox_events ORDER BY message_id, position").fetchall()
        assert events == [(i, symbol, seq, kind, key, payload.obj) for i, symbol, seq, kind, key, payload, _
                          in old]
        with pytest.raises(psycopg.errors.UniqueViolation):  # a pair's sequence is never committed twice
            conn.execute("INSERT INTO outbox_messages (symbol, first_sequence, last_sequence, events) "
                         "VALUES ('BTC-USDT', 8, 9, '[]')")


class _File:
    def __init__(self, name: str, sql: bytes) -> None:
        self.name = name
        self._sql = sql

    def is_file(self) -> bool:
        return True

    def read_bytes(self) -> bytes:
        return self._sql


def test_trades_stored_before_0011_become_minute_candles_and_every_later_insert_is_merged_in(
    pg_url: str,
) -> None:
    migrate_before(pg_url, 11)
    insert = ("INSERT INTO trades (id, symbol, price, quantity, quote_quantity, buyer_order_id, "
              "seller_order_id, buyer_user_id, seller_user_id, taker_side, buyer_fee, seller_fee, "
              "executed_at, sequence) "
              "VALUES (%s, %s, %s, %s, %s * %s, 1, 2, 1001, 1002, 'BUY', 0, 0, %s, %s)")
    at = datetime(2026, 3, 10, 10, 0, 30, tzinfo=UTC)

    def add(conn: psycopg.Connection[Any], rows: list[tuple[str, int, int, datetime, int]]) -> None:
        conn.cursor().executemany(insert, [(f"{symbol}:{seq}", symbol, price, qty, price, qty, when, seq)
                                           for symbol, price, qty, when, seq in rows])

    with psycopg.connect(pg_url) as conn:
        add(conn, [("BTC-USDT", 100, 1, at, 2), ("BTC-USDT", 90, 2, at, 1),  # same instant: sequence 1 opens
                   ("BTC-USDT", 120, 1, at + timedelta(seconds=29), 3),
                   ("BTC-USDT", 80, 1, at + timedelta(seconds=30), 4),  # 10:01
                   ("ETH-USDT", 5, 3, at, 1)])
    apply_migrations(pg_url)
    query = ("SELECT symbol, open_time, (open_ref)[3], high, low, (close_ref)[3], volume, quote_volume, "
             "trades FROM candles_1m ORDER BY symbol, open_time")
    minute = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(query).fetchall() == [
            ("BTC-USDT", minute, 90, 120, 90, 120, 4, 400, 3),
            ("BTC-USDT", minute + timedelta(minutes=1), 80, 80, 80, 80, 1, 80, 1),
            ("ETH-USDT", minute, 5, 5, 5, 5, 3, 15, 1),
        ]
        # Any later INSERT (here plain SQL, one statement per trade) is merged into its minutes.
        add(conn, [("BTC-USDT", 70, 1, at - timedelta(seconds=30), 5),  # 10:00:00, before the open
                   ("BTC-USDT", 130, 2, at + timedelta(seconds=10), 6)])
        assert conn.execute(query).fetchall()[0] == ("BTC-USDT", minute, 70, 130, 70, 120, 7, 730, 5)
