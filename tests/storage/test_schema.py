"""The schema and seed data of the migrations, against real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

SEEDED_SYMBOLS = {
    "BTC-USDT", "ETH-USDT", "BNB-USDT", "SOL-USDT", "XRP-USDT",
    "ADA-USDT", "DOGE-USDT", "LINK-USDT", "MATIC-USDT", "USDC-USDT",
}
NOTIONAL_QUANTUM = Decimal("0.00000001")


@pytest.fixture
def conn(migrated_pg_url: str) -> Any:
    with psycopg.connect(migrated_pg_url) as connection:
        yield connection


def add_trader(conn: psycopg.Connection[Any], name: str = "alice") -> int:
    row = conn.execute(
        "INSERT INTO users (name, role) VALUES (%s, 'trader') RETURNING id", (name,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_ten_usdt_pairs_are_seeded_active_with_exact_trading_rules(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT symbol, quote_asset, status::text, tick_size, lot_size, min_quantity, max_quantity, "
        "min_notional, maker_fee, taker_fee FROM pairs"
    ).fetchall()

    assert {row[0] for row in rows} == SEEDED_SYMBOLS
    for symbol, quote, status, tick, lot, min_qty, max_qty, min_notional, maker, taker in rows:
        assert (quote, status) == ("USDT", "ACTIVE"), symbol
        assert all(isinstance(v, Decimal) for v in (tick, lot, min_qty, max_qty, min_notional, maker, taker))
        assert (tick * lot) % NOTIONAL_QUANTUM == 0, f"{symbol}: tick × lot is not exact to 8 decimals"
        assert min_qty % lot == 0 and max_qty % lot == 0, symbol
        assert min_notional >= 5 and 0 <= maker <= taker < Decimal("0.01"), symbol


def test_btc_usdt_rules_read_back_exactly(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT tick_size, lot_size, min_notional, maker_fee, taker_fee FROM pairs WHERE symbol = 'BTC-USDT'"
    ).fetchone()
    assert row == (Decimal("0.01"), Decimal("0.00001"), Decimal("10"), Decimal("0.0008"), Decimal("0.001"))


@pytest.mark.parametrize(
    "amount",
    [Decimal("0.00000001"), Decimal("123.45678901"), Decimal("999999999999999999999999999999.99999999")],
)
def test_decimal_amounts_round_trip_exactly(conn: psycopg.Connection[Any], amount: Decimal) -> None:
    user_id = add_trader(conn)
    conn.execute("INSERT INTO balances (user_id, asset, available, locked) VALUES (%s, 'USDT', %s, %s)",
                 (user_id, amount, amount))
    assert conn.execute("SELECT available, locked FROM balances WHERE user_id = %s",
                        (user_id,)).fetchone() == (amount, amount)


def test_the_fee_account_is_user_one_and_real_users_start_at_1000(conn: psycopg.Connection[Any]) -> None:
    fees = conn.execute("SELECT id, name, role::text FROM users WHERE id = 1").fetchone()
    assert fees == (1, "fees", "system")
    assert add_trader(conn) >= 1000


def test_balances_can_never_go_negative(conn: psycopg.Connection[Any]) -> None:
    user_id = add_trader(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO balances (user_id, asset, available) VALUES (%s, 'BTC', -0.00000001)",
                     (user_id,))


def test_a_client_order_id_is_unique_per_user_only(conn: psycopg.Connection[Any]) -> None:
    alice, bob = add_trader(conn, "alice"), add_trader(conn, "bob")
    now = datetime.now(UTC)
    insert = (
        "INSERT INTO client_order_ids (user_id, client_order_id, order_id, created_at) "
        "VALUES (%s, %s, %s, %s)"
    )
    conn.execute(insert, (alice, "my-1", 1, now))
    conn.execute(insert, (bob, "my-1", 2, now))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (alice, "my-1", 3, now))


@pytest.mark.parametrize(
    ("symbol", "base", "tick", "lot"),
    [
        ("btc-USDT", "btc", "0.01", "0.001"),       # lower case
        ("BTC-USDT", "ETH", "0.01", "0.001"),       # symbol is not base-quote
        ("NEW-USDT", "NEW", "0.00001", "0.0001"),  # tick × lot = 1e-9, not exact at 8 decimals
    ],
)
def test_pairs_with_broken_rules_are_refused(
    conn: psycopg.Connection[Any], symbol: str, base: str, tick: str, lot: str
) -> None:
    conn.execute("DELETE FROM pairs WHERE symbol = 'BTC-USDT'")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO pairs (symbol, base_asset, quote_asset, tick_size, lot_size, min_quantity, "
            "max_quantity, min_notional, maker_fee, taker_fee) "
            "VALUES (%s, %s, 'USDT', %s, %s, %s, 1000, 5, 0.001, 0.001)",
            (symbol, base, Decimal(tick), Decimal(lot), Decimal(lot)),
        )


def test_api_keys_store_a_sha256_hash_only(conn: psycopg.Connection[Any]) -> None:
    user_id = add_trader(conn)
    conn.execute("INSERT INTO api_keys (user_id, key_hash, key_prefix) VALUES (%s, %s, 'te_abcd')",
                 (user_id, bytes(32)))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO api_keys (user_id, key_hash, key_prefix) VALUES (%s, %s, 'te_abcd')",
                     (user_id, b"plaintext-key"))


def test_order_ids_give_their_timestamp_back_to_the_microsecond(conn: psycopg.Connection[Any]) -> None:
    moment = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
    since_epoch = moment - datetime(2025, 1, 1, tzinfo=UTC)
    micros = (since_epoch.days * 86_400 + since_epoch.seconds) * 1_000_000 + since_epoch.microseconds
    order_id = (micros << 12) | 77
    assert conn.execute("SELECT snowflake_timestamp(%s)", (order_id,)).fetchone() == (moment,)


def test_open_order_depth_sums_the_remaining_quantity_per_price_level(conn: psycopg.Connection[Any]) -> None:
    user_id = add_trader(conn)
    now = datetime.now(UTC)
    orders = [  # (id, side, status, price, quantity, filled)
        (1, "BUY", "OPEN", "100", "2", "0"),
        (2, "BUY", "PARTIALLY_FILLED", "100", "3", "1"),
        (3, "BUY", "FILLED", "100", "5", "5"),
        (4, "SELL", "OPEN", "101", "1.5", "0"),
    ]
    for order_id, side, status, price, quantity, filled in orders:
        conn.execute(
            "INSERT INTO orders (id, user_id, symbol, side, type, status, price, quantity, filled_quantity, "
            "time_in_force, sequence, created_at, updated_at) "
            "VALUES (%s, %s, 'ETH-USDT', %s, 'LIMIT', %s, %s, %s, %s, 'GTC', %s, %s, %s)",
            (order_id, user_id, side, status, Decimal(price), Decimal(quantity), Decimal(filled), order_id,
             now, now),
        )
    depth = conn.execute(
        "SELECT side::text, price, quantity, orders FROM open_order_depth WHERE symbol = 'ETH-USDT' "
        "ORDER BY side, price"
    ).fetchall()
    assert depth == [("BUY", Decimal("100"), Decimal("4"), 2), ("SELL", Decimal("101"), Decimal("1.5"), 1)]


def test_pair_volume_24h_lists_every_pair_and_counts_recent_trades(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO trades (id, symbol, price, quantity, quote_quantity, buyer_order_id, seller_order_id, "
        "buyer_user_id, seller_user_id, taker_side, buyer_fee, seller_fee, executed_at, sequence) "
        "VALUES (1, 'SOL-USDT', 150, 2, 300, 1, 2, 1, 1, 'SELL', 0, 0, now(), 1), "
        "       (2, 'SOL-USDT', 160, 1, 160, 3, 4, 1, 1, 'BUY', 0, 0, now() - interval '2 days', 2)"
    )
    volume = dict(
        (row[0], row[1:]) for row in conn.execute(
            "SELECT symbol, trades, base_volume, quote_volume, low, high FROM pair_volume_24h"
        ).fetchall()
    )
    assert set(volume) == SEEDED_SYMBOLS
    assert volume["SOL-USDT"] == (1, Decimal("2"), Decimal("300"), Decimal("150"), Decimal("150"))
    assert volume["BTC-USDT"] == (0, Decimal("0"), Decimal("0"), None, None)


def test_monitoring_views_can_always_be_read(conn: psycopg.Connection[Any]) -> None:
    # pg_stat_statements may be missing (embedded) or not preloaded (machine): the view must not fail.
    conn.execute("SELECT * FROM monitoring_slow_statements").fetchall()
    indexes = conn.execute("SELECT index_name FROM monitoring_index_usage").fetchall()
    assert ("orders_default_pkey",) in indexes
    bloat = conn.execute("SELECT table_name, dead_ratio FROM monitoring_table_bloat").fetchall()
    assert "balances" in {row[0] for row in bloat}
