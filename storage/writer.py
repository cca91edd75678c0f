"""Write one `RowSet` (see `storage.rows`) in ONE transaction: the persistence writer's commit.

`write_batch(conn, rows)` is all-or-nothing: every row of the group is committed, or (on any error)
none is. Statements per batch, whatever its size (each round trip costs the writer thread more CPU than
rendering dozens of rows, so there are few):
- COPY for the two bulk inserts, orders and ledger entries (most rows of a batch: COPY's multi-row
  insert is the server's cheapest path), routed by PostgreSQL to the time partitions (or their DEFAULT
  partitions: a row far in the past or future still inserts);
- one `UPDATE orders ... FROM unnest(...)` for the orders of earlier batches, joined on the primary key
  (id, created_at), bounded by the batch's earliest and latest created_at so that only the month
  partitions it touches are opened; an update that finds no row means memory and database disagree,
  and fails the batch before the rest of it is written;
- ONE statement for everything else, a WITH of data-modifying parts, each present only when the batch
  has rows for it, each reading its rows from ``unnest`` of array parameters:
  - the INSERT of client order ids, ``ON CONFLICT DO NOTHING`` (uniqueness is checked before the engine
    accepts an order; a duplicate must never fail a batch);
  - the INSERT of trades (time partitions, as above);
  - the UPDATE of balances adding the aggregated deltas to the existing rows, and the INSERT of those
    it did not find (a user's first funds in an asset) with the delta itself; the CHECK constraints
    (available, locked ≥ 0) are the last line of defence. Not ``INSERT ... ON CONFLICT DO UPDATE``:
    PostgreSQL checks CHECK constraints on the proposed INSERT row before it finds the conflict, so a
    negative delta would fail even when the balance covers it;
  - the INSERT of the outbox messages, one per pair (and one for the transfers), holding its events as a
    JSON array: the messages' arrays travel as ONE JSON parameter, split by ``json_array_elements``,
    which returns each element's text exactly as sent (compact msgspec JSON);
  - the update of each pair's last sequence and price;
  - in remote wallet mode (no ledger entries, no balances) the INSERT of the wallet commands
    (`wallet_commands`, delivered later by the settler), in the same transaction as their facts.
The order UPDATE is never a server-side prepared statement: its generic plan over the partitioned table
cost ~2.5 ms against ~0.5 ms planned each time (measured on a batch of 7 updates); nor is the batch
statement, whose text depends on the parts present. No server-side prepared statement is required, so
it works with `prepare_threshold=None` (PgBouncer in transaction mode). psycopg errors leave as
`StorageUnavailable` / `StorageError` (`storage_errors`).

Values are rendered here, column by column, as text PostgreSQL reads back to the same values (``str`` of
ints and Decimals, ``t``/``f``, datetimes as ``2026-11-24 10:00:00.123456+00:00``): COPY data as
text-format lines written in one piece (text fields escaped: backslash, tab, newline, carriage return;
NULL as ``\\N``), and each unnest column as one text parameter holding an array literal (``{1,2,NULL}``,
text elements double-quoted with backslash and double quote escaped) that the statement casts
(``%s::bigint[]``). This costs a fraction of psycopg's per-value adaptation of rows and lists; each
datetime of the batch is rendered once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from psycopg.pq import TransactionStatus

from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import StorageError, WriterFenced
from tradeengine.storage.rows import LEDGER_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS, RowSet

__all__ = ["claim_fence", "write_batch"]

_json = msgspec.json.Encoder()
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _copy_statement(table: str, columns: tuple[str, ...]) -> str:
    # Plain text, rendered once: the names are fixed lower-case identifiers that need no quoting.
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


_COPY_ORDERS = _copy_statement("orders", ORDER_COLUMNS)
_COPY_LEDGER = _copy_statement("ledger_entries", LEDGER_COLUMNS)

# The kinds of each table's columns, one letter per column (see `_Renderer`).
_ORDER_KINDS = "IITTTTnnnnNNTBTttIIIDD"
_LEDGER_KINDS = "ITTNNNitD"
_TRADE_KINDS = "TTNNNIIIITNNDI"
assert len(_ORDER_KINDS) == len(ORDER_COLUMNS) and len(_LEDGER_KINDS) == len(LEDGER_COLUMNS)
assert len(_TRADE_KINDS) == len(TRADE_COLUMNS)

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
_UPDATE_KINDS = "IDTnnnnitID"

# The parts of the batch statement (see the module docstring), in the order they appear in it.
_INSERT_CLIENT_ORDER_IDS = """client_order_ids_inserted AS (
    INSERT INTO client_order_ids (user_id, client_order_id, order_id, created_at)
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
    ON CONFLICT DO NOTHING
)"""
_CLIENT_ORDER_ID_KINDS = "ITID"

_INSERT_TRADES = f"""trades_inserted AS (
    INSERT INTO trades ({', '.join(TRADE_COLUMNS)})
    SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[], %s::bigint[],
                         %s::bigint[], %s::bigint[], %s::bigint[], %s::order_side[], %s::numeric[],
                         %s::numeric[], %s::timestamptz[], %s::bigint[])
)"""

_UPSERT_BALANCES = """deltas AS (
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[])
        AS d(user_id, asset, available, locked)
), balances_updated AS (
    UPDATE balances AS b SET
        available = b.available + d.available,
        locked = b.locked + d.locked,
        updated_at = now()
    FROM deltas AS d
    WHERE b.user_id = d.user_id AND b.asset = d.asset
    RETURNING b.user_id, b.asset
), balances_inserted AS (
    INSERT INTO balances (user_id, asset, available, locked, updated_at)
    SELECT d.user_id, d.asset, d.available, d.locked, now()
    FROM deltas AS d
    WHERE NOT EXISTS (SELECT 1 FROM balances_updated AS u WHERE u.user_id = d.user_id AND u.asset = d.asset)
)"""
_BALANCE_KINDS = "ITNN"

_INSERT_OUTBOX = """outbox_inserted AS (
    INSERT INTO outbox_messages (symbol, first_sequence, last_sequence, events)
    SELECT * FROM ROWS FROM (unnest(%s::text[]), unnest(%s::bigint[]), unnest(%s::bigint[]),
                             json_array_elements(%s::json))
)"""
_OUTBOX_KINDS = "tii"

_UPDATE_PAIRS = """pairs_updated AS (
    UPDATE pairs AS p SET
        last_sequence = g.last_sequence,
        last_price = coalesce(g.last_price, p.last_price),
        updated_at = now()
    FROM unnest(%s::text[], %s::bigint[], %s::numeric[]) AS g(symbol, last_sequence, last_price)
    WHERE p.symbol = g.symbol
)"""
_PAIR_KINDS = "TIn"

_INSERT_WALLET_COMMANDS = """wallet_commands_inserted AS (
    INSERT INTO wallet_commands (idempotency_key, kind, movements)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::json[])
)"""
_WALLET_COMMAND_KINDS = "TTT"


def write_batch(
    conn: psycopg.Connection[Any], rows: RowSet, *, statement_timeout: float | None = None,
    fence: int | None = None,
) -> None:
    """Write every row of `rows` in one transaction and commit it (all or nothing).

    `conn` must be idle (not inside a transaction), else ValueError: the batch must really commit.
    `statement_timeout` (seconds) bounds each statement, transaction-scoped (``SET LOCAL``, so it also
    behaves behind PgBouncer). With `fence` (a writer process's epoch, see `claim_fence`) the batch
    first reads ``writer_fence`` FOR SHARE and fails with `WriterFenced` unless the epoch is still
    `fence`: a newer writer has started. Raises `StorageUnavailable` when the database cannot be
    reached or a statement times out (the outcome of a commit cut off mid-way is unknown),
    `StorageError` for any other failure (nothing was written).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("write_batch needs an idle connection: inside a transaction it could not commit")
    render = _Renderer()
    orders = render.copy_text(rows.orders, _ORDER_KINDS)
    ledger = render.copy_text(rows.ledger_entries, _LEDGER_KINDS)
    statement, params = _batch_statement(rows, render)
    with storage_errors("committing a batch of facts"), conn.transaction(), conn.cursor() as cur:
        if statement_timeout is not None:
            cur.execute("SELECT set_config('statement_timeout', %s, true)",
                        (f"{max(1, int(statement_timeout * 1000))}ms",))
        if fence is not None:
            cur.execute("SELECT epoch FROM writer_fence FOR SHARE")
            epoch = cur.fetchone()[0]  # type: ignore[index]
            if epoch != fence:
                raise WriterFenced(f"a newer writer (epoch {epoch}) has started; this one (epoch {fence}) "
                                   "must not commit")
        _copy(cur, _COPY_ORDERS, orders)
        _update_orders(cur, rows, render)
        _copy(cur, _COPY_LEDGER, ledger)
        if statement:
            cur.execute(statement, params, prepare=False)


def claim_fence(conn: psycopg.Connection[Any], *, lock_timeout: float) -> int:
    """Become the writer in charge: increment the fence's epoch and commit; return the new epoch.

    Waits (at most `lock_timeout` seconds, then `StorageUnavailable`) for a batch of the previous writer
    that is still running: after this returns, no writer with an older epoch can commit.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("claim_fence needs an idle connection")
    with storage_errors("claiming the writer fence"), conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(lock_timeout * 1000))}ms",))
        cur.execute("UPDATE writer_fence SET epoch = epoch + 1 RETURNING epoch")
        row = cur.fetchone()
    if row is None:
        raise StorageError("the writer_fence row is missing (migration 0009)")
    return int(row[0])


def _copy(cur: psycopg.Cursor[Any], statement: str, data: str) -> None:
    if data:
        with cur.copy(statement) as copy:
            copy.write(data)


def _update_orders(cur: psycopg.Cursor[Any], rows: RowSet, render: _Renderer) -> None:
    updates = rows.order_updates
    if not updates:
        return
    created = [update.created_at for update in updates]
    # Never a server-side prepared statement: a generic plan of this join costs several times more.
    cur.execute(_UPDATE_ORDERS, [*render.arrays(updates, _UPDATE_KINDS), min(created), max(created)],
                prepare=False)
    if cur.rowcount != len(updates):
        raise StorageError(
            f"{len(updates) - cur.rowcount} of {len(updates)} order updates found no order row: "
            "memory and database disagree"
        )


def _batch_statement(rows: RowSet, render: _Renderer) -> tuple[str, list[Any]]:
    """The statement that writes everything but orders, their updates and ledger entries; its parameters.

    Returns ("", []) when there is nothing to write.
    """
    parts: list[str] = []
    params: list[Any] = []
    tables: list[tuple[str, Sequence[Sequence[Any]], str]] = [
        (_INSERT_CLIENT_ORDER_IDS, rows.client_order_ids, _CLIENT_ORDER_ID_KINDS),
        (_INSERT_TRADES, rows.trades, _TRADE_KINDS),
        (_UPSERT_BALANCES, rows.balance_deltas, _BALANCE_KINDS),
        (_INSERT_OUTBOX, [message[:3] for message in rows.outbox], _OUTBOX_KINDS),
        (_UPDATE_PAIRS, rows.pairs, _PAIR_KINDS),
        (_INSERT_WALLET_COMMANDS, rows.wallet_commands, _WALLET_COMMAND_KINDS),
    ]
    for part, table, kinds in tables:
        if table:
            parts.append(part)
            params += render.arrays(table, kinds)
            if part is _INSERT_OUTBOX:  # and the events, one JSON array per message, in one JSON array
                events = b",".join([_json.encode(message.events) for message in rows.outbox])
                params.append(f"[{events.decode()}]")
    if not parts:
        return "", []
    return "WITH " + ",\n".join(parts) + "\nSELECT 1", params  # each part runs, whatever the query reads


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_escape(text: str) -> str:
    """A text field in COPY's text format: backslash, tab, newline and carriage return escaped."""
    return text.translate(_COPY_ESCAPES)


def _contains_any(texts: Iterable[str | None], characters: str) -> bool:
    """Whether any of `texts` (None ones skipped) holds one of `characters`: one scan of them all."""
    joined = "".join(filter(None, texts))
    return any(character in joined for character in characters)


_COPY_SPECIAL = "\\\t\n\r"  # what a COPY text field escapes
_ELEMENT_SPECIAL = '\\"'  # what an array literal element escapes


def _element(text: str) -> str:
    """A text element of an array literal: double-quoted, backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Renderer:
    """Renders the values of one batch: COPY text data and array literals (see the module docstring).

    Column kinds, one letter per column (upper case: never None; lower case: None is NULL):
    I/i int, N/n Decimal, D datetime, B bool, T/t text.
    """

    __slots__ = ("_seconds", "_stamps")

    def __init__(self) -> None:
        self._stamps: dict[int, str] = {}  # per id() of a datetime of the batch: its text
        self._seconds: dict[int, str] = {}  # per second since the Unix epoch: its text up to the "."

    def copy_text(self, rows: Sequence[Sequence[Any]], kinds: str) -> str:
        """COPY text-format data of `rows` (tuples with a field of each kind), or "" when there are none."""
        if not rows:
            return ""
        fields = [self._copy_fields(kind, column)
                  for kind, column in zip(kinds, zip(*rows, strict=True), strict=True)]
        return "\n".join(map("\t".join, zip(*fields, strict=True))) + "\n"

    def arrays(self, rows: Sequence[Sequence[Any]], kinds: str) -> list[str]:
        """One array literal per column of `rows` (a non-empty list of tuples with a field of each kind)."""
        columns = zip(*rows, strict=True)
        return [self._array(kind, column) for kind, column in zip(kinds, columns, strict=True)]

    def _copy_fields(self, kind: str, column: tuple[Any, ...]) -> Iterable[str]:
        if kind == "I" or kind == "N":
            return map(str, column)
        if kind == "D":
            return self._datetimes(column)
        if kind == "B":
            return ["t" if value else "f" for value in column]
        if kind == "T":
            return map(_copy_escape, column) if _contains_any(column, _COPY_SPECIAL) else column
        if kind == "t":
            if _contains_any(column, _COPY_SPECIAL):
                return ["\\N" if value is None else _copy_escape(value) for value in column]
            return ["\\N" if value is None else value for value in column]
        return ["\\N" if value is None else str(value) for value in column]  # i, n

    def _array(self, kind: str, column: tuple[Any, ...]) -> str:
        if kind == "D":
            return "{" + ",".join(self._datetimes(column)) + "}"
        if kind == "T" or kind == "t":
            if _contains_any(column, _ELEMENT_SPECIAL):
                elements = ["NULL" if value is None else _element(value) for value in column]
            elif None in column:
                elements = ["NULL" if value is None else f'"{value}"' for value in column]
            else:
                return '{"' + '","'.join(column) + '"}'
            return "{" + ",".join(elements) + "}"
        body = ",".join(map(str, column))  # I, i, N, n
        if kind.islower() and "None" in body:  # no int or Decimal renders as text holding "None"
            body = ",".join(["NULL" if value is None else str(value) for value in column])
        return "{" + body + "}"

    def _datetimes(self, column: tuple[datetime, ...]) -> list[str]:
        # Keyed by object identity: hashing an aware datetime costs about as much as rendering it, and
        # build_rows gives each instant one datetime object. Every key's object lives in the RowSet until
        # the batch is written, so no id is reused meanwhile.
        stamps = self._stamps
        keys = list(map(id, column))
        missing = dict(zip(keys, column, strict=True))
        for key in missing.keys() - stamps.keys():
            stamps[key] = self._timestamptz(missing[key])
        return list(map(stamps.__getitem__, keys))

    def _timestamptz(self, moment: datetime) -> str:
        """The text of a datetime as PostgreSQL reads it; for UTC ones from a per-second prefix (cheaper)."""
        if moment.tzinfo is not UTC:
            return str(moment)
        delta = moment - _UNIX_EPOCH
        second = delta.days * 86_400 + delta.seconds
        prefix = self._seconds.get(second)
        if prefix is None:
            prefix = self._seconds[second] = str(moment)[:19] + "."  # "2026-11-24 10:00:00."
        return prefix + str(1_000_000 + delta.microseconds)[1:] + "+00:00"
