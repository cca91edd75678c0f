"""Order lookups the Exchange needs before it can route a command to the pair that owns the order.

Every lookup by order id finds the row in its month partition: an order's ``created_at`` is the
instant encoded in its id (``snowflake_timestamp``, migration 0005), so PostgreSQL prunes the other
partitions at run time.
"""

from __future__ import annotations

from typing import NamedTuple

from psycopg_pool import ConnectionPool

from .database import storage_errors


class OrderLocation(NamedTuple):
    """Which pair holds an order, and whose it is."""

    symbol: str
    user_id: int


def locate_order(pool: ConnectionPool, order_id: int) -> OrderLocation | None:
    """Return the pair and owner of an order, or None when no such order exists."""
    with storage_errors("locate an order"), pool.connection() as conn:
        row = conn.execute(
            "SELECT symbol, user_id FROM orders WHERE id = %s AND created_at = snowflake_timestamp(%s)",
            (order_id, order_id),
        ).fetchone()
    return None if row is None else OrderLocation(row[0], row[1])


def find_client_order(pool: ConnectionPool, user_id: int, client_order_id: str) -> int | None:
    """Return the id of the user's order carrying this client order id, or None."""
    with storage_errors("look up a client order id"), pool.connection() as conn:
        row = conn.execute(
            "SELECT order_id FROM client_order_ids WHERE user_id = %s AND client_order_id = %s",
            (user_id, client_order_id),
        ).fetchone()
    return None if row is None else int(row[0])


def largest_order_id(pool: ConnectionPool) -> int:
    """Return the largest order id ever stored (0 when none), so new ids never reuse one."""
    with storage_errors("read the largest order id"), pool.connection() as conn:
        row = conn.execute("SELECT coalesce(max(order_id), 0) FROM client_order_ids").fetchone()
        orders = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()
    return max(int(row[0]) if row else 0, int(orders[0]) if orders else 0)
