"""Time partitions of orders and trades, and their maintenance, against real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import psycopg
import psycopg_pool
import pytest

from tradeengine.storage import run_partition_maintenance

FEES_USER_ID = 1


def add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=month_index // 12, month=month_index % 12 + 1, day=1, hour=0, minute=0,
                          second=0, microsecond=0)


def insert_order(conn: psycopg.Connection[Any], order_id: int, created_at: datetime) -> str:
    """Insert a resting LIMIT BUY created at ``created_at``; return the partition that holds it."""
    row = conn.execute(
        """
        INSERT INTO orders (id, user_id, symbol, side, type, status, price, quantity, time_in_force,
                            sequence, created_at, updated_at)
        VALUES (%s, %s, 'BTC-USDT', 'BUY', 'LIMIT', 'OPEN', 50000, 0.5, 'GTC', %s, %s, %s)
        RETURNING tableoid::regclass::text
        """,
        (order_id, FEES_USER_ID, order_id, created_at, created_at),
    ).fetchone()
    assert row is not None
    return str(row[0])


def insert_trade(conn: psycopg.Connection[Any], trade_id: int, executed_at: datetime) -> str:
    row = conn.execute(
        """
        INSERT INTO trades (id, symbol, price, quantity, quote_quantity, buyer_order_id, seller_order_id,
                            buyer_user_id, seller_user_id, taker_side, buyer_fee, seller_fee,
                            executed_at, sequence)
        VALUES (%s, 'BTC-USDT', 50000, 0.5, 25000, 1, 2, %s, %s, 'BUY', 0.0005, 25, %s, %s)
        RETURNING tableoid::regclass::text
        """,
        (trade_id, FEES_USER_ID, FEES_USER_ID, executed_at, trade_id),
    ).fetchone()
    assert row is not None
    return str(row[0])


def partitions_of(conn: psycopg.Connection[Any], parent: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass",
        (parent,),
    ).fetchall()
    return {row[0] for row in rows}


def test_orders_far_in_the_past_and_future_land_in_the_default_partition(migrated_pg_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(migrated_pg_url) as conn:
        assert insert_order(conn, 1, now - timedelta(days=730)) == "orders_default"
        assert insert_order(conn, 2, now + timedelta(days=730)) == "orders_default"
        assert insert_order(conn, 3, now) == f"orders_p{now:%Y_%m}"


def test_trades_far_in_the_past_and_future_land_in_the_default_partition(migrated_pg_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(migrated_pg_url) as conn:
        assert insert_trade(conn, 1, now - timedelta(days=730)) == "trades_default"
        assert insert_trade(conn, 2, now + timedelta(days=730)) == "trades_default"
        assert insert_trade(conn, 3, now) == f"trades_p{now:%Y_%m_%d}"


def test_migrations_create_partitions_for_this_period_and_ahead(migrated_pg_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(migrated_pg_url) as conn:
        orders = partitions_of(conn, "orders")
        trades = partitions_of(conn, "trades")
    assert orders == {"orders_default"} | {f"orders_p{add_months(now, i):%Y_%m}" for i in range(4)}
    assert trades == {"trades_default"} | {f"trades_p{now + timedelta(days=i):%Y_%m_%d}" for i in range(15)}


def test_maintenance_creates_partitions_ahead_and_is_idempotent(pg_pool: psycopg_pool.ConnectionPool) -> None:
    now = datetime.now(UTC)
    created = run_partition_maintenance(pg_pool, months_ahead=6, days_ahead=30)

    assert created == [f"orders_p{add_months(now, i):%Y_%m}" for i in range(4, 7)] + [
        f"trades_p{now + timedelta(days=i):%Y_%m_%d}" for i in range(15, 31)
    ]
    with pg_pool.connection() as conn:
        assert {f"orders_p{add_months(now, i):%Y_%m}" for i in range(7)} <= partitions_of(conn, "orders")
        assert {f"trades_p{now + timedelta(days=i):%Y_%m_%d}" for i in range(31)} <= partitions_of(
            conn, "trades"
        )
    assert run_partition_maintenance(pg_pool, months_ahead=6, days_ahead=30) == []
    assert run_partition_maintenance(pg_pool) == []


def test_maintenance_moves_rows_caught_by_the_default_partition(pg_pool: psycopg_pool.ConnectionPool) -> None:
    in_five_months = add_months(datetime.now(UTC), 5) + timedelta(days=2)
    in_twenty_days = datetime.now(UTC) + timedelta(days=20)
    with pg_pool.connection() as conn:
        assert insert_order(conn, 42, in_five_months) == "orders_default"
        assert insert_trade(conn, 43, in_twenty_days) == "trades_default"

    run_partition_maintenance(pg_pool, months_ahead=6, days_ahead=25)

    with pg_pool.connection() as conn:
        order = conn.execute("SELECT tableoid::regclass::text, quantity FROM orders WHERE id = 42").fetchone()
        trade = conn.execute("SELECT tableoid::regclass::text FROM trades WHERE id = '43'").fetchone()
        assert conn.execute("SELECT count(*) FROM ONLY orders_default").fetchone() == (0,)
    assert order == (f"orders_p{in_five_months:%Y_%m}", Decimal("0.50000000"))
    assert trade == (f"trades_p{in_twenty_days:%Y_%m_%d}",)


def test_concurrent_maintenance_runs_do_not_collide(pg_pool: psycopg_pool.ConnectionPool) -> None:
    errors: list[BaseException] = []
    created: list[list[str]] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        try:
            created.append(run_partition_maintenance(pg_pool, months_ahead=12, days_ahead=60))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(len(names) for names in created)[:2] == [0, 0]


def test_maintenance_on_a_connection_commits_its_work(migrated_pg_url: str) -> None:
    with psycopg.connect(migrated_pg_url) as conn:
        created = run_partition_maintenance(conn, months_ahead=5, days_ahead=14)
    with psycopg.connect(migrated_pg_url) as conn:
        assert set(created) <= partitions_of(conn, "orders")
        assert len(created) == 2  # months 4 and 5; 0-3 exist since the migrations


def test_a_run_that_crosses_midnight_copies_a_template_migrated_that_day(
    machine_pg_admin_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The migrations create the partitions of the day they run and ahead (above): the tests' migrated
    # template (tests/conftest.py) is one per UTC day, or the checks above fail after midnight.
    from tests import conftest

    templates = conftest._MigratedTemplates(machine_pg_admin_url)
    try:
        today = templates.today()
        assert templates.today() == today

        class Tomorrow(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> Tomorrow:
                moment = datetime.now(tz) + timedelta(days=1)
                return cls.fromtimestamp(moment.timestamp(), tz)

        monkeypatch.setattr(conftest, "datetime", Tomorrow)
        assert templates.today() != today  # migrated anew (by the database's clock: today's partitions)
    finally:
        templates.close()
