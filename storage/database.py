"""PostgreSQL connection pool, readiness check and the psycopg → storage error boundary.

Every function here is bounded in time: connecting uses ``connect_timeout``, checks run their query
under ``SET LOCAL statement_timeout`` (transaction-scoped, so it also behaves behind PgBouncer in
transaction mode, which rejects session-level startup options), and waiting for a pooled connection
uses the pool's timeout.

PgBouncer in transaction mode cannot keep server-side prepared statements across transactions before
1.21: pass ``prepare_threshold=None`` to ``create_pool`` to disable them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from tradeengine.storage.errors import StorageError, StorageUnavailable

_log = logging.getLogger(__name__)

#: psycopg's default: a query is prepared server-side after it ran this many times on a connection.
DEFAULT_PREPARE_THRESHOLD = 5


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Translate psycopg and pool exceptions raised inside the block into storage errors.

    Connection-level failures (server down, connection lost, timeouts, pool exhausted) become
    ``StorageUnavailable``; any other database error becomes ``StorageError``. ``action`` says what
    was being done, for the message.
    """
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        raise StorageUnavailable(f"{action}: no database connection available in time ({exc})") from exc
    except psycopg_pool.PoolClosed as exc:
        raise StorageUnavailable(f"{action}: the connection pool is closed") from exc
    except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
        raise StorageUnavailable(f"{action}: database unavailable ({first_line(exc)})") from exc
    except psycopg.Error as exc:
        raise StorageError(f"{action}: {first_line(exc)}") from exc


def connection_kwargs(
    *,
    connect_timeout: float = 5.0,
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    application_name: str = "trade-engine",
) -> dict[str, Any]:
    """Return the ``psycopg.connect`` keyword arguments every engine connection uses."""
    return {
        # libpq takes whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        "prepare_threshold": prepare_threshold,
        "application_name": application_name,
        # A database that silently stops answering (a dead host, a cut network) is noticed within
        # ~11 s instead of the kernel's two hours, so the writer fails and the group is rebuilt.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


def create_pool(
    conninfo: str,
    min_size: int = 2,
    max_size: int = 10,
    *,
    name: str = "tradeengine",
    timeout: float = 5.0,
    connect_timeout: float = 5.0,
    open_timeout: float = 10.0,
    max_idle: float = 300.0,
    max_lifetime: float = 1800.0,
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    application_name: str = "trade-engine",
    check_on_checkout: bool = True,
) -> psycopg_pool.ConnectionPool:
    """Create a connection pool, open it and wait until ``min_size`` connections are ready.

    ``timeout`` bounds how long ``pool.connection()`` waits for a free connection. With
    ``check_on_checkout`` a connection is verified before it is handed out, so a restart of the server
    costs no failed request. Raises ``StorageUnavailable`` if the pool cannot fill in ``open_timeout``.
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    pool: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
        conninfo,
        kwargs=connection_kwargs(
            connect_timeout=connect_timeout,
            prepare_threshold=prepare_threshold,
            application_name=application_name,
        ),
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=timeout,
        max_idle=max_idle,
        max_lifetime=max_lifetime,
        check=psycopg_pool.ConnectionPool.check_connection if check_on_checkout else None,
        reconnect_failed=_log_reconnect_failed,
    )
    try:
        pool.open(wait=True, timeout=open_timeout)
    except psycopg_pool.PoolTimeout as exc:
        pool.close()
        raise StorageUnavailable(
            f"could not open {min_size} connection(s) to the database within {open_timeout:g} s"
        ) from exc
    _log.info("connection pool %r open (min %d, max %d)", name, min_size, max_size)
    return pool


def check_database(target: psycopg_pool.ConnectionPool | str, timeout: float = 2.0) -> None:
    """Check that the database answers a query within about ``timeout`` seconds.

    ``target`` is a pool (the check borrows a connection) or a conninfo string (the check opens and
    closes its own connection). Raises ``StorageUnavailable`` on any failure; never hangs.
    """
    statement_timeout_ms = max(1, int(timeout * 1000))
    with storage_errors("database check"):
        if isinstance(target, str):
            with psycopg.connect(
                target, autocommit=True, **connection_kwargs(connect_timeout=timeout, prepare_threshold=None)
            ) as conn:
                _run_check(conn, statement_timeout_ms)
        else:
            with target.connection(timeout=timeout) as conn:
                _run_check(conn, statement_timeout_ms)


def _run_check(conn: psycopg.Connection[Any], statement_timeout_ms: int) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{statement_timeout_ms}ms",))
        conn.execute("SELECT 1").fetchone()


def _log_reconnect_failed(pool: psycopg_pool.ConnectionPool) -> None:
    _log.error("connection pool %r gave up reconnecting to the database", pool.name)


def one_line(exc: BaseException) -> str:
    """An exception's whole text on one line (runs of whitespace folded; its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none), for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
