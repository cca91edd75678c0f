"""Write one `RowSet` (see `storage.rows`) in ONE transaction, in ONE round trip: the writer's commit.

`write_batch(conn, rows)` is all-or-nothing: every row of the group is committed, or (on any error)
none is. The batch goes to the server as one pipeline (psycopg pipeline mode): BEGIN, the statement
timeout (``SET LOCAL``), the fence check, ONE statement holding every row, COMMIT, then a single Sync;
the client waits once, for all the answers. The earlier path (COPY for orders and ledger entries, an
UPDATE whose row count was read before going on, the rest) took ~10 round trips: on loopback that was
within the noise of this one, but a database across a network charges its latency per round trip
(through a proxy adding ~2.5 ms per round trip, a batch of 6 commands took 26 ms that way and 7 ms this
way; 30 commands: 28 and 10 ms), and the writer commits one batch at a time.

The statement is a WITH of data-modifying parts, each present only when the batch has rows for it, each
reading its rows from ``unnest`` of array parameters, every one of them run whatever the final SELECT
reads (they see the same snapshot and none touches a row another one writes):
- the INSERT of new orders and of ledger entries (routed by PostgreSQL to the time partitions, or
  their DEFAULT partitions: a row far in the past or future still inserts);
- the UPDATE of the orders of earlier batches, joined on the primary key (id, created_at), bounded by
  the batch's earliest and latest created_at so that only the month partitions it touches are opened;
- the INSERT of client order ids, ``ON CONFLICT DO NOTHING`` (uniqueness is checked before the engine
  accepts an order; a duplicate must never fail a batch);
- the INSERT of trades (time partitions, as above), which PostgreSQL also merges into the pairs' minute
  candles (a statement trigger, migration 0011);
- the UPDATE of balances adding the aggregated deltas to the existing rows, and the INSERT of those it
  did not find (a user's first funds in an asset) with the delta itself; the CHECK constraints
  (available, locked ≥ 0) are the last line of defence. Not ``INSERT ... ON CONFLICT DO UPDATE``:
  PostgreSQL checks CHECK constraints on the proposed INSERT row before it finds the conflict, so a
  negative delta would fail even when the balance covers it;
- the INSERT of the outbox messages, one per pair (and one for the transfers), holding its events as a
  JSON array: the messages' arrays travel as ONE JSON parameter, split by ``json_array_elements``,
  which returns each element's text exactly as sent (compact msgspec JSON);
- the update of each pair's last sequence and price;
- in remote wallet mode (no ledger entries, no balances) the INSERT of the wallet commands
  (`wallet_commands`, delivered later by the settler), in the same transaction as their facts.

Checks the client cannot make between statements any more are made by the server (``writer_check``,
migration 0010), failing the transaction so that the COMMIT behind them commits nothing: the fence
(a batch of a fenced writer raises `WriterFenced`) and the order updates (one that finds no row means
memory and database disagree: `StorageError`). psycopg errors leave as `StorageUnavailable` /
`StorageError` (`storage_errors`).

Prepared statements: the batch statement's text depends only on the parts present (a handful of shapes),
so on a connection that prepares (psycopg's ``prepare_threshold``) each shape becomes a server-side
prepared statement after a few uses, and parsing and analysing it (a third of PostgreSQL's time for a
small batch) happen once. Its plans stay custom ones (``plan_cache_mode = force_custom_plan``, set for
the transaction): a generic plan of the order UPDATE over the partitioned table cost ~2.5 ms against
~0.5 ms planned each time (measured on a batch of 7 updates). Measured in isolation (one connection, a
fresh database, 550 batches): a batch of 3 commands took 2.0 ms unprepared and 1.3 ms prepared, one of
30 commands 3.3–3.7 and 2.4–3.0 ms. Nothing requires them: with ``prepare_threshold=None``
(``TRADE_ENGINE_DATABASE_PREPARE=false``, PgBouncer in transaction mode) every statement is unnamed.

Values are rendered here, column by column, as text PostgreSQL reads back to the same values (``str`` of
ints and Decimals, ``t``/``f``, datetimes as ``2026-11-24 10:00:00.123456+00:00``): each column as one
text parameter holding an array literal (``{1,2,NULL}``, text elements double-quoted with backslash and
double quote escaped) that the statement casts (``%s::bigint[]``). This costs a fraction of psycopg's
per-value adaptation of rows and lists; each datetime of the batch is rendered once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import re
import select
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from psycopg.pq import ConnStatus, TransactionStatus

from tradeengine.storage.database import first_line, storage_errors
from tradeengine.storage.errors import CommitOutcomeUnknown, StorageError, StorageUnavailable, WriterFenced
from tradeengine.storage.rows import LEDGER_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS, RowSet

__all__ = ["RenderedBatch", "claim_fence", "commit_batch", "render_batch", "write_batch"]

_json = msgspec.json.Encoder()
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# The kinds of each table's columns, one letter per column (see `_Renderer`).
_ORDER_KINDS = "IITTTTnnnnNNTBTttIIIDD"
_LEDGER_KINDS = "ITTNNNitD"
_TRADE_KINDS = "TTNNNIIIITNNDI"
assert len(_ORDER_KINDS) == len(ORDER_COLUMNS) and len(_LEDGER_KINDS) == len(LEDGER_COLUMNS)
assert len(_TRADE_KINDS) == len(TRADE_COLUMNS)

# Transaction-scoped settings (also right behind PgBouncer): every plan of the batch is a custom one (see
# the module docstring), and, when given, the statement timeout.
_SET_LOCALS = "SELECT set_config('plan_cache_mode', 'force_custom_plan', true)"
_SET_LOCALS_AND_TIMEOUT = _SET_LOCALS + ", set_config('statement_timeout', %s, true)"

# The fence (migration 0009) checked on the server (writer_check, migration 0010): the batch's later
# statements and its COMMIT are on their way already, and an error here aborts them all.
_FENCED = "TEF01"
_CHECK_FENCE = f"""
SELECT writer_check(epoch = %s, '{_FENCED}',
                    format('a newer writer (epoch %%s) has started; this one (epoch %%s) must not commit',
                           epoch, %s::bigint))
FROM writer_fence FOR SHARE
"""

# The parts of the batch statement (see the module docstring), in the order they appear in it.
_INSERT_ORDERS = f"""orders_inserted AS (
    INSERT INTO orders ({', '.join(ORDER_COLUMNS)})
    SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::order_side[], %s::order_type[],
                         %s::order_status[], %s::numeric[], %s::numeric[], %s::numeric[], %s::numeric[],
                         %s::numeric[], %s::numeric[], %s::time_in_force[], %s::boolean[], %s::stp_mode[],
                         %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::timestamptz[],
                         %s::timestamptz[])
)"""

# Every order of earlier batches the group changed: unnest's rows joined on the primary key (id,
# created_at). The created_at bounds prune, when the executor starts, every month partition the batch
# does not touch. Its RETURNING rows are counted by the statement's final check.
_UPDATE_ORDERS = """orders_updated AS (
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
    FROM unnest(%s::bigint[], %s::timestamptz[], %s::order_status[], %s::numeric[], %s::numeric[],
                %s::numeric[], %s::numeric[], %s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[])
        AS u(id, created_at, status, filled_quantity, filled_quote, price, quantity, priority, reject_reason,
             updated_sequence, updated_at)
    WHERE o.id = u.id AND o.created_at = u.created_at AND o.created_at BETWEEN %s AND %s
    RETURNING 1
)"""
_UPDATE_KINDS = "IDTnnnnitID"

_DISAGREE = "TED01"
_CHECK_UPDATES = f"""
SELECT writer_check(count(*) = %s, '{_DISAGREE}',
                    format('%%s of %%s order updates found no order row: memory and database disagree',
                           %s - count(*), %s::bigint))
FROM orders_updated"""

_INSERT_LEDGER = f"""ledger_inserted AS (
    INSERT INTO ledger_entries ({', '.join(LEDGER_COLUMNS)})
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::ledger_entry_kind[], %s::numeric[], %s::numeric[],
                         %s::numeric[], %s::bigint[], %s::text[], %s::timestamptz[])
)"""

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


@dataclasses.dataclass(frozen=True, slots=True)
class RenderedBatch:
    """A batch's ONE statement and its parameters, ready to commit (`render_batch`, `commit_batch`)."""

    statement: str  # "" when the batch has no rows
    params: list[Any]
    row_count: int


def render_batch(rows: RowSet) -> RenderedBatch:
    """Render `rows` as the batch statement (no I/O: the writer process does it while the previous batch
    commits)."""
    statement, params = _batch_statement(rows, _Renderer())
    return RenderedBatch(statement, params, rows.row_count)


def write_batch(
    conn: psycopg.Connection[Any], rows: RowSet, *, statement_timeout: float | None = None,
    fence: int | None = None,
) -> None:
    """Write every row of `rows` in one transaction and commit it: `commit_batch` of `render_batch`."""
    commit_batch(conn, render_batch(rows), statement_timeout=statement_timeout, fence=fence)


def commit_batch(
    conn: psycopg.Connection[Any], batch: RenderedBatch, *, statement_timeout: float | None = None,
    fence: int | None = None,
) -> None:
    """Write every row of `batch` in one transaction and commit it (all or nothing), in one round trip.

    `conn` must be idle (not inside a transaction), else ValueError: the batch must really commit.
    `statement_timeout` (seconds) bounds each statement, transaction-scoped (``SET LOCAL``, so it also
    behaves behind PgBouncer). With `fence` (a writer process's epoch, see `claim_fence`) the batch
    first reads ``writer_fence`` FOR SHARE and fails with `WriterFenced` unless the epoch is still
    `fence`: a newer writer has started. Raises `CommitOutcomeUnknown` when the connection is lost
    before the COMMIT's answer (it may have committed), `StorageUnavailable` when the database refuses
    the transaction as unavailable or a statement times out, `StorageError` for any other failure (in
    both, nothing was written).
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("write_batch needs an idle connection: inside a transaction it could not commit")
    if _closed_while_idle(conn):  # known before anything is sent: nothing of the batch is committed
        raise StorageUnavailable("committing a batch of facts: the database closed the connection while it "
                                 "was idle; nothing was sent")
    statement, params = _numbered(batch.statement), batch.params
    autocommit = conn.autocommit
    try:
        with storage_errors("committing a batch of facts"):
            try:
                # BEGIN and COMMIT are sent as statements of the pipeline (psycopg's own BEGIN would be a
                # round trip of its own), hence autocommit while the batch is written.
                conn.autocommit = True
                with conn.pipeline(), psycopg.RawCursor(conn) as cur:
                    cur.execute("BEGIN", prepare=False)
                    if statement_timeout is None:
                        cur.execute(_numbered(_SET_LOCALS))
                    else:
                        cur.execute(_numbered(_SET_LOCALS_AND_TIMEOUT),
                                    (f"{max(1, int(statement_timeout * 1000))}ms",))
                    if fence is not None:
                        cur.execute(_numbered(_CHECK_FENCE), (fence, fence))
                    if statement:
                        cur.execute(statement, params)  # prepared as the connection's threshold says
                    cur.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                _roll_back_failed(conn)
                if exc.sqlstate == _FENCED:
                    raise WriterFenced(exc.diag.message_primary or "a newer writer has started") from exc
                if conn.closed or conn.broken:  # no answer to the COMMIT: it may have been applied
                    raise CommitOutcomeUnknown(
                        f"committing a batch of facts: the connection was lost before the commit was "
                        f"confirmed; the outcome is unknown ({first_line(exc)})") from exc
                raise  # the server answered with an error: the transaction was rolled back
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = autocommit


@functools.lru_cache(maxsize=128)
def _numbered(statement: str) -> str:
    """`statement` with ``$1``, ``$2``, ... for its ``%s`` (and ``%`` for ``%%``), as a `psycopg.RawCursor`
    takes it: psycopg converts a ``%s`` query on every execution when it is longer than 4 KB, as the
    batch statement is; this is done once per shape of it."""
    numbers = itertools.count(1)
    return re.sub(r"%%|%s", lambda match: "%" if match.group() == "%%" else f"${next(numbers)}", statement)


def _closed_while_idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server closed (or terminated) this idle connection: its socket has something to read
    (an end of file, a FATAL message) although nothing was asked. One `select` without waiting. A lost
    connection found only after the batch was sent leaves its outcome unknown; found here, it does not."""
    pgconn = conn.pgconn
    try:
        for _ in range(3):  # a FATAL message first, then the end of file (consume_input raises there)
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return pgconn.status != ConnStatus.OK  # a notice, read: the connection lives
            pgconn.consume_input()
    except (OSError, ValueError, psycopg.Error):
        return True
    return True  # still something to read on an idle connection: not one to commit on


def _roll_back_failed(conn: psycopg.Connection[Any]) -> None:
    """End the transaction a failed statement of the pipeline left aborted (if the connection lives)."""
    if conn.info.transaction_status == TransactionStatus.INERROR:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK", prepare=False)


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


def _batch_statement(rows: RowSet, render: _Renderer) -> tuple[str, list[Any]]:
    """The ONE statement that writes every row of the batch; its parameters. ("", []) when it is empty.

    A WITH of data-modifying parts, each present only when the batch has rows for it; every part runs,
    whatever the final SELECT reads. That SELECT checks that every order update found its row.
    """
    parts: list[str] = []
    params: list[Any] = []
    updates = rows.order_updates
    tables: list[tuple[str, Sequence[Sequence[Any]], str]] = [
        (_INSERT_ORDERS, rows.orders, _ORDER_KINDS),
        (_UPDATE_ORDERS, updates, _UPDATE_KINDS),
        (_INSERT_LEDGER, rows.ledger_entries, _LEDGER_KINDS),
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
            if part is _UPDATE_ORDERS:  # the created_at bounds of the rows it may touch
                created = [update.created_at for update in updates]
                params += [min(created), max(created)]
            elif part is _INSERT_OUTBOX:  # and the events, one JSON array per message, in one JSON array
                events = b",".join([_json.encode(message.events) for message in rows.outbox])
                params.append(f"[{events.decode()}]")
    if not parts:
        return "", []
    statement = "WITH " + ",\n".join(parts)
    if updates:
        return statement + _CHECK_UPDATES, [*params, len(updates), len(updates), len(updates)]
    return statement + "\nSELECT 1", params


def _contains_any(texts: Iterable[str | None], characters: str) -> bool:
    """Whether any of `texts` (None ones skipped) holds one of `characters`: one scan of them all."""
    joined = "".join(filter(None, texts))
    return any(character in joined for character in characters)


_ELEMENT_SPECIAL = '\\"'  # what an array literal element escapes


def _element(text: str) -> str:
    """A text element of an array literal: double-quoted, backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Renderer:
    """Renders the values of one batch as array literals (see the module docstring).

    Column kinds, one letter per column (upper case: never None; lower case: None is NULL):
    I/i int, N/n Decimal, D datetime, B bool, T/t text.
    """

    __slots__ = ("_seconds", "_stamps")

    def __init__(self) -> None:
        self._stamps: dict[int, str] = {}  # per id() of a datetime of the batch: its text
        self._seconds: dict[int, str] = {}  # per second since the Unix epoch: its text up to the "."

    def arrays(self, rows: Sequence[Sequence[Any]], kinds: str) -> list[str]:
        """One array literal per column of `rows` (a non-empty list of tuples with a field of each kind)."""
        columns = zip(*rows, strict=True)
        return [self._array(kind, column) for kind, column in zip(kinds, columns, strict=True)]

    def _array(self, kind: str, column: tuple[Any, ...]) -> str:
        if kind == "D":
            return "{" + ",".join(self._datetimes(column)) + "}"
        if kind == "B":
            return "{" + ",".join(["t" if value else "f" for value in column]) + "}"
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
