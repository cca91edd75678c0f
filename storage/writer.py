"""Write one `RowSet` (see `storage.rows`) in ONE transaction: the persistence writer's commit.

`write_batch(conn, rows)` is all-or-nothing: every row of the group is committed, or (on any error)
none is. Statements per batch, whatever its size:
- COPY for the bulk inserts (orders, trades, ledger entries, outbox messages: one per pair, holding
  its events as a JSON array), routed by PostgreSQL to the time partitions (or their DEFAULT
  partitions: a row far in the past or future still inserts);
- one `UPDATE orders ... FROM unnest(...)` for the orders of earlier batches, joined on the primary key
  (id, created_at), bounded by the batch's earliest and latest created_at so that only the month
  partitions it touches are opened; an update that finds no row means memory and database disagree,
  and fails the batch;
- one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING` for client order ids (uniqueness is
  checked before the engine accepts an order; a duplicate must never fail a batch);
- one `UPDATE balances ... FROM unnest(...)` adding the aggregated balance deltas to the existing rows
  and, only when some are missing (a user's first funds in an asset), one INSERT of those; the CHECK
  constraints (available, locked ≥ 0) are the last line of defence; and one update of each pair's last
  sequence and price;
- in remote wallet mode no ledger entries and balances but one COPY of the wallet commands
  (`wallet_commands`, delivered later by the settler), in the same transaction as their facts.
The order UPDATE is never a server-side prepared statement: its generic plan over the partitioned table
cost ~2.5 ms against ~0.5 ms planned each time (measured on a batch of 7 updates).
No server-side prepared statement is required, so it works with `prepare_threshold=None` (PgBouncer in
transaction mode). psycopg errors leave as `StorageUnavailable` / `StorageError` (`storage_errors`).
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
from psycopg.pq import TransactionStatus

from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.rows import LEDGER_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS, RowSet
from tradeengine.storage.wallet_commands import COLUMNS as WALLET_COMMAND_COLUMNS

__all__ = ["write_batch"]

_json = msgspec.json.Encoder()

_OUTBOX_COLUMNS = ("symbol", "first_sequence", "last_sequence", "events")

# One statement for every order of earlier batches the group changed: unnest's rows joined on the
# primary key (id, created_at). The created_at bounds prune, when the executor starts, every month
# partition the batch does not touch.
_UPDATE_ORDERS = """
UPDATE orders AS o SET
    status = u.status,
    filled_quantity = coalesce(u.filled_quantity, o.filled_quantity),
    filled_quote = coalesce(u.filled_quote, o.filled_quote),
    price = coalesce(u.price, o.price),
    quantity = coalesce(u.quantity, o.quantity),
    priority = coalesce(u.priority, o.priority),
    reject_reason = coalesce(u.reject_reason, o.reject_reason),
    updated_sequence = u.updated_sequence,
    updated_at = u.updated_at
FROM unnest(%s::bigint[], %s::timestamptz[], %s::order_status[], %s::numeric[], %s::numeric[], %s::numeric[],
            %s::numeric[], %s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
    AS u(id, created_at, status, filled_quantity, filled_quote, price, quantity, priority, reject_reason,
         updated_sequence, updated_at)
WHERE o.id = u.id AND o.created_at = u.created_at AND o.created_at BETWEEN %s AND %s
"""

_INSERT_CLIENT_ORDER_IDS = """
INSERT INTO client_order_ids (user_id, client_order_id, order_id, created_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
ON CONFLICT DO NOTHING
"""

# Not INSERT ... ON CONFLICT DO UPDATE: PostgreSQL checks CHECK constraints on the proposed INSERT row
# before it finds the conflict, so a negative delta would fail even when the balance covers it. Existing
# rows are updated (the CHECKs, available and locked >= 0, guard the result); only when some are missing
# (a user's first funds in an asset) are those inserted with the delta itself (so a negative one fails,
# as it must).
_UPDATE_BALANCES = """
UPDATE balances AS b SET
    available = b.available + d.available,
    locked = b.locked + d.locked,
    updated_at = now()
FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[]) AS d(user_id, asset, available, locked)
WHERE b.user_id = d.user_id AND b.asset = d.asset
"""

_INSERT_BALANCES = """
INSERT INTO balances (user_id, asset, available, locked, updated_at)
SELECT d.user_id, d.asset, d.available, d.locked, now()
FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[]) AS d(user_id, asset, available, locked)
WHERE NOT EXISTS (SELECT 1 FROM balances AS b WHERE b.user_id = d.user_id AND b.asset = d.asset)
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
        _copy(cur, _COPY_ORDERS, rows.orders)
        _update_orders(cur, rows)
        _insert_client_order_ids(cur, rows)
        _copy(cur, _COPY_TRADES, rows.trades)
        _copy(cur, _COPY_LEDGER, rows.ledger_entries)
        _upsert_balances(cur, rows)
        _copy(cur, _COPY_OUTBOX, [
            (*message[:3], _json.encode(message.events).decode()) for message in rows.outbox
        ])
        _update_pairs(cur, rows)
        _copy(cur, _COPY_WALLET_COMMANDS, rows.wallet_commands)


def _copy_statement(table: str, columns: tuple[str, ...]) -> str:
    # Plain text, rendered once: the names are fixed lower-case identifiers that need no quoting.
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


_COPY_ORDERS = _copy_statement("orders", ORDER_COLUMNS)
_COPY_TRADES = _copy_statement("trades", TRADE_COLUMNS)
_COPY_LEDGER = _copy_statement("ledger_entries", LEDGER_COLUMNS)
_COPY_OUTBOX = _copy_statement("outbox_messages", _OUTBOX_COLUMNS)
_COPY_WALLET_COMMANDS = _copy_statement("wallet_commands", WALLET_COMMAND_COLUMNS)


def _copy(cur: psycopg.Cursor[Any], statement: str, rows: list[Any]) -> None:
    if not rows:
        return
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _update_orders(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    updates = rows.order_updates
    if not updates:
        return
    columns = _columns(updates, 11)
    created = columns[1]
    # Never a server-side prepared statement: a generic plan of this join costs several times more.
    cur.execute(_UPDATE_ORDERS, [*columns, min(created), max(created)], prepare=False)
    if cur.rowcount != len(updates):
        raise StorageError(
            f"{len(updates) - cur.rowcount} of {len(updates)} order updates found no order row: "
            "memory and database disagree"
        )


def _insert_client_order_ids(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if rows.client_order_ids:
        cur.execute(_INSERT_CLIENT_ORDER_IDS, _columns(rows.client_order_ids, 4))


def _upsert_balances(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if not rows.balance_deltas:
        return
    columns = _columns(rows.balance_deltas, 4)
    cur.execute(_UPDATE_BALANCES, columns)
    if cur.rowcount < len(rows.balance_deltas):  # a user's first funds in an asset
        cur.execute(_INSERT_BALANCES, columns)


def _update_pairs(cur: psycopg.Cursor[Any], rows: RowSet) -> None:
    if rows.pairs:
        cur.execute(_UPDATE_PAIRS, _columns(rows.pairs, 3))


def _columns(rows: list[Any], width: int) -> list[list[Any]]:
    """Transpose rows into `width` column lists (the arrays of an unnest)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
