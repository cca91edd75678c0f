"""Write one `RowSet` (see `storage.rows`) in ONE transaction: the persistence writer's commit.

`write_batch(conn, rows)` is all-or-nothing: every row of the group is committed, or (on any error)
none is. Statements per batch, whatever its size:
- COPY for the bulk inserts (orders, trades, ledger entries, outbox events), routed by PostgreSQL to
  the time partitions (or their DEFAULT partitions: a row far in the past or future still inserts);
- one pipelined `executemany` of `UPDATE orders ... WHERE id = $ AND created_at = $` for the orders
  of earlier batches (the partition key in the WHERE prunes to the order's month); an update that finds
  no row means memory and database disagree, and fails the batch;
- one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING` for client order ids (uniqueness is
  checked before the engine accepts an order; a duplicate must never fail a batch);
- one statement adding the aggregated balance deltas (update the existing rows, insert the missing
  ones), relying on the CHECK constraints (available, locked ≥ 0) as the last line of defence, and one
  update of each pair's last sequence and price.
No server-side prepared statement is required, so it works with `prepare_threshold=None` (PgBouncer in
transaction mode). psycopg errors leave as `StorageUnavailable` / `StorageError` (`storage_errors`).
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.rows import LEDGER_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS, RowSet

__all__ = ["write_batch"]

_json = msgspec.json.Encoder()

_OUTBOX_COLUMNS = ("event_id", "symbol", "sequence", "event_type", "routing_key", "payload")

_UPDATE_ORDER = """
UPDATE orders SET
    status = %(status)s::order_status,
    filled_quantity = coalesce(%(filled_quantity)s::numeric, filled_quantity),
    filled_quote = coalesce(%(filled_quote)s::numeric, filled_quote),
    price = coalesce(%(price)s::numeric, price),
    quantity = coalesce(%(quantity)s::numeric, quantity),
    priority = coalesce(%(priority)s::bigint, priority),
    reject_reason = coalesce(%(reject_reason)s::text, reject_reason),
    updated_sequence = %(updated_sequence)s,
    updated_at = %(updated_at)s
WHERE id = %(id)s AND created_at = %(created_at)s
"""

_INSERT_CLIENT_ORDER_IDS = """
INSERT INTO client_order_ids (user_id, client_order_id, order_id, created_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
ON CONFLICT DO NOTHING
"""

# Not INSERT ... ON CONFLICT DO UPDATE: PostgreSQL checks CHECK constraints on the proposed INSERT row
# before it finds the conflict, so a negative delta would fail even when the balance covers it. Existing
# rows are updated (the CHECKs, available and locked >= 0, guard the result); missing ones are inserted
# with the delta itself (so a negative one fails, as it must).
_UPSERT_BALANCES = """
WITH d (user_id, asset, available, locked) AS (
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[])
), updated AS (
    UPDATE balances AS b SET
        available = b.available + d.available,
        locked = b.locked + d.locked,
        updated_at = now()
    FROM d
    WHERE b.user_id = d.user_id AND b.asset = d.asset
    RETURNING b.user_id, b.asset
)
INSERT INTO balances (user_id, asset, available, locked, updated_at)
SELECT d.user_id, d.asset, d.available, d.locked, now()
FROM d
WHERE NOT EXISTS (SELECT 1 FROM updated AS u WHERE u.user_id = d.user_id AND u.asset = d.asset)
"""

_UPDATE_PAIRS = """
UPDATE pairs AS p SET
    last_sequence = g.last_sequence,
    last_price = coalesce(g.last_price, p.last_price),
    updated_at = now()
FROM unnest(%s::text[], %s::bigint[], %s::numeric[]) AS g(symbol, last_sequence, last_price)
WHERE p.symbol = g.symbol
"""


def write_batch(
    conn: psycopg.Connection[Any], rows: RowSet, *, statement_timeout: float | None = None
) -> None:
    """Write every row of `rows` in one transaction and commit it (all or nothing).

    `conn` must be idle (not inside a transaction), else ValueError: the batch must really commit.
    `statement_timeout` (seconds) bounds each statement, transaction-scoped (``SET LOCAL``, so it also
    behaves behind PgBouncer). Raises `StorageUnavailable` when the database cannot be reached or a
    statement times out (the outcome of a commit cut off mid-way is unknown), `StorageError` for any
    other failure (nothing was written).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("write_batch needs an idle connection: inside a transaction it could not commit")
    with storage_errors("committing a batch of facts"), conn.transaction(), conn.cursor() as cur:
        if statement_timeout is not None:
            cur.execute("SELECT set_config('statement_timeout', %s, true)",
                        (f"{max(1, int(statement_timeout * 1000))}ms",))
        _copy(cur, "orders", ORDER_COLUMNS, rows.orders)
        _update_orders(cur, rows)
        _insert_client_order_ids(cur, rows)
        _copy(cur, "trades", TRADE_COLUMNS, rows.trades)
        _copy(cur, "ledger_entries", LEDGER_COLUMNS, rows.ledger_entries)
        _upsert_balances(cur, rows)
        _copy(cur, "outbox_events", _OUTBOX_COLUMNS, [
            (*row[:5], _json.encode(row.payload).decode()) for row in rows.outbox
        ])
        _update_pairs(cur, rows)


def _copy(cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[Any]) -> None:
    if not rows:
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _update_orders(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    updates = rows.order_updates
    if not updates:
        return
    cur.executemany(_UPDATE_ORDER, [update._asdict() for update in updates])
    if cur.rowcount != len(updates):
        raise StorageError(
            f"{len(updates) - cur.rowcount} of {len(updates)} order updates found no order row: "
            "memory and database disagree"
        )


def _insert_client_order_ids(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if rows.client_order_ids:
        cur.execute(_INSERT_CLIENT_ORDER_IDS, _columns(rows.client_order_ids, 4))


def _upsert_balances(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if rows.balance_deltas:
        cur.execute(_UPSERT_BALANCES, _columns(rows.balance_deltas, 4))


def _update_pairs(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if rows.pairs:
        cur.execute(_UPDATE_PAIRS, _columns(rows.pairs, 3))


def _columns(rows: list[Any], width: int) -> list[list[Any]]:
    """Transpose rows into `width` column lists (the arrays of an unnest)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
