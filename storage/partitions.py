"""Partition maintenance for the time-partitioned ``orders`` (monthly) and ``trades`` (daily) tables.

The work is done by the SQL function ``create_partitions`` (migration 0002): idempotent, serialised by
an advisory lock, and it moves rows already caught by a DEFAULT partition into the new partition. Call
``run_partition_maintenance`` at start and then on a timer (daily is plenty with the defaults).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool

from tradeengine.storage.database import storage_errors

_log = logging.getLogger(__name__)


def run_partition_maintenance(
    target: psycopg_pool.ConnectionPool | psycopg.Connection[Any],
    *,
    months_ahead: int = 3,
    days_ahead: int = 14,
) -> list[str]:
    """Create the orders/trades partitions for the current period and ahead; return the names created.

    With a connection, the work is committed unless the connection is inside an outer transaction.
    """
    with storage_errors("partition maintenance"):
        if isinstance(target, psycopg.Connection):
            created = _create_partitions(target, months_ahead, days_ahead)
        else:
            with target.connection() as conn:
                created = _create_partitions(conn, months_ahead, days_ahead)
    if created:
        _log.info("created partitions: %s", ", ".join(created))
    return created


def _create_partitions(conn: psycopg.Connection[Any], months_ahead: int, days_ahead: int) -> list[str]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT create_partitions(%s, %s)", (months_ahead, days_ahead)
        ).fetchall()
    return [str(row[0]) for row in rows]
