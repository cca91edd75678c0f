"""The relay's side of the transactional outbox (`outbox_messages`, migration 0007).

The persistence writer commits, in the same transaction as the facts, one `outbox_messages` row per
commit batch and pair (one more for the wallet's transfers) holding the events as a JSON array in
per-pair sequence order (see `storage.rows`). The relay (`actors.relay`) works the table with these
functions:

- `fetch_unpublished(pool, limit)`: the oldest unpublished rows, in id order (commit order: ONE writer
  inserts them, one transaction at a time), through the partial index `outbox_messages_unpublished`;
- `mark_published(pool, ids)`: stamp `published_at` once every event of those rows is confirmed by the
  broker (a row published again after a crash is harmless: consumers de-duplicate on `event_id`);
- `prune_published(pool, older_than)`: delete published rows older than the retention, oldest first, in
  bounded chunks (an unpublished row is never deleted);
- `read_backlog(pool)`: how many rows (and events) wait, and how old the oldest is.

Events are decoded with their payload left as raw JSON (`msgspec.Raw`): the relay forwards it byte for
byte, it never re-encodes a payload. Every function takes a pool (or a connection) and turns database
failures into `StorageUnavailable` / `StorageError` (`storage_errors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg

from tradeengine.storage.database import storage_errors

__all__ = [
    "OutboxBacklog",
    "OutboxRow",
    "StoredEvent",
    "fetch_unpublished",
    "mark_published",
    "prune_published",
    "read_backlog",
]


class StoredEvent(msgspec.Struct, frozen=True):
    """One event of an outbox row as committed; `payload` is its JSON text, untouched."""

    event_id: str
    event_type: str
    routing_key: str
    sequence: int | None
    payload: msgspec.Raw


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRow:
    """An `outbox_messages` row: the events of one pair (symbol None: transfers) of one commit."""

    id: int
    symbol: str | None
    first_sequence: int | None
    last_sequence: int | None
    events: list[StoredEvent]
    created_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """Unpublished rows and their events (both counted up to `cap` rows) and the oldest one's age."""

    rows: int
    events: int
    oldest_age: float  # seconds since the oldest unpublished row was committed; 0 when there is none


_decode_events = msgspec.json.Decoder(list[StoredEvent]).decode

_FETCH = """
SELECT id, symbol, first_sequence, last_sequence, events::text, created_at
FROM outbox_messages
WHERE published_at IS NULL
ORDER BY id
LIMIT %s
"""

_MARK = """
UPDATE outbox_messages SET published_at = clock_timestamp()
WHERE id = ANY(%s) AND published_at IS NULL
"""

# Oldest first through the primary key: the published rows past the retention are the lowest ids, so
# the scan stops after `limit` of them; an unpublished row in between is skipped, never deleted.
_PRUNE = """
DELETE FROM outbox_messages WHERE id IN (
    SELECT id FROM outbox_messages
    WHERE published_at IS NOT NULL AND published_at < clock_timestamp() - %s
    ORDER BY id
    LIMIT %s
)
"""

_BACKLOG = """
SELECT count(*), coalesce(sum(json_array_length(events)), 0),
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
FROM (SELECT events, created_at FROM outbox_messages WHERE published_at IS NULL ORDER BY id LIMIT %s) AS b
"""


@contextmanager
def _connection(source: Any, action: str, timeout: float) -> Iterator[psycopg.Connection[Any]]:
    """A connection from a pool (borrowed for the block, committed at its end) or the one given."""
    with storage_errors(action):
        if isinstance(source, psycopg.Connection):
            yield source
        else:
            with source.connection(timeout=timeout) as conn:
                yield conn


def fetch_unpublished(source: Any, limit: int, *, timeout: float = 2.0) -> list[OutboxRow]:
    """Return up to `limit` unpublished rows, oldest (lowest id) first, with their events decoded."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with _connection(source, "reading the outbox", timeout) as conn:
        records = conn.execute(_FETCH, (limit,), prepare=False).fetchall()
    return [
        OutboxRow(row_id, symbol, first, last, _decode_events(events), created_at)
        for row_id, symbol, first, last, events, created_at in records
    ]


def mark_published(source: Any, ids: Sequence[int], *, timeout: float = 2.0) -> int:
    """Stamp `published_at` on the rows `ids` (those not stamped yet); return how many were stamped."""
    if not ids:
        return 0
    with _connection(source, "marking outbox rows published", timeout) as conn:
        return conn.execute(_MARK, (list(ids),), prepare=False).rowcount


def prune_published(source: Any, older_than: timedelta | float, *, chunk: int = 10_000,
                    timeout: float = 2.0) -> int:
    """Delete the rows published more than `older_than` (seconds, or a timedelta) ago; return how many.

    Works in chunks of `chunk` rows, each its own transaction, so a long backlog of old rows never holds
    one huge transaction. Rows not yet published are never deleted, however old.
    """
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if age < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {age}")
    deleted = 0
    while True:
        with _connection(source, "pruning the outbox", timeout) as conn:
            count = conn.execute(_PRUNE, (age, chunk), prepare=False).rowcount
            if isinstance(source, psycopg.Connection) and not conn.autocommit:
                conn.commit()
        deleted += count
        if count < chunk:
            return deleted


BACKLOG_CAP = 1_000_000
"""Unpublished rows are counted up to this many: the count stays cheap however far the relay is behind."""


def read_backlog(source: Any, *, cap: int = BACKLOG_CAP, timeout: float = 2.0,
                 statement_timeout: float | None = None) -> OutboxBacklog:
    """Count the unpublished rows and their events (up to `cap` rows) and the oldest row's age.

    `timeout` bounds the wait for a pool connection, `statement_timeout` (seconds) the query.
    """
    with _connection(source, "reading the outbox backlog", timeout) as conn:
        if statement_timeout is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, true)",
                         (f"{max(int(statement_timeout * 1000), 1)}ms",), prepare=False)
        record = conn.execute(_BACKLOG, (cap,), prepare=False).fetchone()
    assert record is not None  # an aggregate always returns a row
    rows, events, age = record
    return OutboxBacklog(int(rows), int(events), max(float(age), 0.0))
