"""Connection pool, readiness check and error translation, against real PostgreSQL."""

from __future__ import annotations

import socket
import time

import psycopg
import psycopg_pool
import pytest

from tradeengine.storage import (
    StorageError,
    StorageUnavailable,
    check_database,
    create_pool,
    storage_errors,
)


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def prepared_statements(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()
    assert row is not None
    return int(row[0])


def test_a_pool_is_open_and_serves_connections(pg_url: str) -> None:
    with create_pool(pg_url, min_size=1, max_size=2) as pool:
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pool.get_stats()["pool_size"] >= 1


def test_prepared_statements_can_be_disabled_for_pgbouncer(pg_url: str) -> None:
    with (
        create_pool(pg_url, min_size=1, max_size=1, prepare_threshold=None) as pool,
        pool.connection() as conn,
    ):
        for _ in range(10):
            conn.execute("SELECT %s::int", (1,))
        assert prepared_statements(conn) == 0


def test_prepared_statements_are_used_by_default(pg_url: str) -> None:
    with create_pool(pg_url, min_size=1, max_size=1) as pool, pool.connection() as conn:
        for _ in range(10):
            conn.execute("SELECT %s::int", (1,))
        assert prepared_statements(conn) >= 1


def test_check_database_passes_on_a_live_server_by_url_and_by_pool(pg_url: str) -> None:
    check_database(pg_url)
    with create_pool(pg_url, min_size=1, max_size=1) as pool:
        check_database(pool)


def test_check_database_fails_fast_on_a_closed_port() -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="database check"):
        check_database(closed_port_url(), timeout=2.0)
    assert time.monotonic() - started < 3.0


def test_check_database_fails_fast_when_the_pool_has_no_free_connection(pg_url: str) -> None:
    with create_pool(pg_url, min_size=1, max_size=1) as pool, pool.connection():
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="no database connection available"):
            check_database(pool, timeout=0.5)
        assert time.monotonic() - started < 2.0


def test_opening_a_pool_on_an_unreachable_server_raises_storage_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="could not open 1 connection"):
        create_pool(closed_port_url(), min_size=1, max_size=1, open_timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_a_pool_needs_a_sane_size() -> None:
    with pytest.raises(ValueError, match="min_size"):
        create_pool("postgresql://unused", min_size=3, max_size=2)


# -- the psycopg → storage error boundary, each mapping shown with a real failure ----------------------


def test_a_lost_connection_becomes_storage_unavailable(pg_url: str) -> None:
    with (
        psycopg.connect(pg_url, autocommit=True) as victim,
        psycopg.connect(pg_url, autocommit=True) as admin,
    ):
        pid = victim.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageUnavailable, match="reading") as caught, storage_errors("reading"):
            victim.execute("SELECT 1")
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_a_statement_timeout_becomes_storage_unavailable(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(StorageUnavailable) as caught, storage_errors("sleeping"):
            conn.execute("SELECT pg_sleep(2)")
    assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)


def test_other_database_errors_become_storage_error(pg_url: str) -> None:
    with (
        psycopg.connect(pg_url, autocommit=True) as conn,
        pytest.raises(StorageError) as caught,
        storage_errors("querying"),
    ):
        conn.execute("SELECT * FROM no_such_table")
    assert not isinstance(caught.value, StorageUnavailable)
    assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
    assert "no_such_table" in str(caught.value)


def test_pool_timeout_and_closed_pool_become_storage_unavailable(pg_url: str) -> None:
    pool = create_pool(pg_url, min_size=1, max_size=1, timeout=0.2)
    with pool.connection():
        with pytest.raises(StorageUnavailable) as caught, storage_errors("borrowing"), pool.connection():
            pass
        assert isinstance(caught.value.__cause__, psycopg_pool.PoolTimeout)
    pool.close()
    with (
        pytest.raises(StorageUnavailable, match="pool is closed"),
        storage_errors("borrowing"),
        pool.connection(),
    ):
        pass
