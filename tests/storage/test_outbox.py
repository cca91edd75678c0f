"""storage.outbox (the relay's reads and stamps) and storage.publisher's envelope, on real PostgreSQL.

The rows are written by the real writer (`write_batch` of `build_rows` of a scenario's facts), so what
the relay reads is exactly what the commit path commits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import pytest

from tests.storage.test_rows_scenarios import FullDay, add_users
from tradeengine.storage import StorageUnavailable, create_pool
from tradeengine.storage.facts import Facts
from tradeengine.storage.outbox import fetch_unpublished, mark_published, prune_published, read_backlog
from tradeengine.storage.publisher import binding_keys, envelope
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import write_batch


@pytest.fixture
def pool(migrated_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    with psycopg.connect(migrated_pg_url) as conn:
        add_users(conn)
    pool = create_pool(migrated_pg_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        pool.close()


def commit(pool: psycopg_pool.ConnectionPool, facts: list[Facts]) -> None:
    """Commit the facts as the persistence writer does: one transaction per call."""
    with pool.connection() as conn:
        conn.commit()
        write_batch(conn, build_rows(facts))


def commit_day_in_batches(pool: psycopg_pool.ConnectionPool, size: int = 3) -> FullDay:
    day = FullDay()
    for start in range(0, len(day.facts), size):
        commit(pool, day.facts[start:start + size])
    return day


def view(pool: psycopg_pool.ConnectionPool, query: str, *params: Any) -> list[Any]:
    with pool.connection() as conn:
        return conn.execute(query, params).fetchall()


def test_unpublished_rows_come_in_commit_order_with_every_event_as_the_writer_committed_it(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    commit_day_in_batches(pool)
    rows = fetch_unpublished(pool, limit=1000)

    assert [row.id for row in rows] == sorted(row.id for row in rows)
    stored = view(pool, "SELECT message_id, event_id::text, event_type, routing_key, sequence, payload "
                        "FROM outbox_events ORDER BY message_id, position")
    read = [(row.id, e.event_id, e.event_type, e.routing_key, e.sequence, json.loads(bytes(e.payload)))
            for row in rows for e in row.events]
    assert read == [tuple(record) for record in stored]
    for row in rows:
        sequences = [e.sequence for e in row.events]
        assert (row.first_sequence, row.last_sequence) == (sequences[0], sequences[-1])


def test_a_limit_reads_the_oldest_rows_and_stamped_rows_are_not_read_again(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    commit_day_in_batches(pool)
    everything = [row.id for row in fetch_unpublished(pool, limit=1000)]
    assert len(everything) >= 4

    first = fetch_unpublished(pool, limit=2)
    assert [row.id for row in first] == everything[:2]
    assert mark_published(pool, [row.id for row in first]) == 2
    assert mark_published(pool, [row.id for row in first]) == 0  # stamped once, never moved again
    assert [row.id for row in fetch_unpublished(pool, limit=1000)] == everything[2:]
    assert view(pool, "SELECT count(*) FROM outbox_messages WHERE published_at IS NOT NULL") == [(2,)]


def test_the_backlog_counts_waiting_rows_and_events_and_the_age_of_the_oldest(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    assert read_backlog(pool).rows == 0
    assert read_backlog(pool).oldest_age == 0.0
    commit_day_in_batches(pool)
    events = view(pool, "SELECT count(*) FROM outbox_events")[0][0]
    rows = fetch_unpublished(pool, limit=1000)
    with pool.connection() as conn:
        conn.execute("UPDATE outbox_messages SET created_at = now() - interval '90 seconds' WHERE id = %s",
                     (rows[0].id,))

    backlog = read_backlog(pool)
    assert (backlog.rows, backlog.events) == (len(rows), events)
    assert 90 <= backlog.oldest_age < 120

    mark_published(pool, [row.id for row in rows])
    assert read_backlog(pool).rows == 0
    assert read_backlog(pool).events == 0


def test_pruning_deletes_only_rows_published_longer_ago_than_the_retention(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    commit_day_in_batches(pool, size=2)
    ids = [row.id for row in fetch_unpublished(pool, limit=1000)]
    old_published, recent_published, old_unpublished = ids[:3], ids[3:4], ids[4:]
    mark_published(pool, old_published + recent_published)
    with pool.connection() as conn:
        conn.execute("UPDATE outbox_messages SET published_at = now() - interval '2 days' WHERE id = ANY(%s)",
                     (old_published,))
        conn.execute("UPDATE outbox_messages SET created_at = now() - interval '9 days' WHERE id = ANY(%s)",
                     (old_unpublished,))

    assert prune_published(pool, timedelta(days=1), chunk=2) == len(old_published)
    assert [r[0] for r in view(pool, "SELECT id FROM outbox_messages ORDER BY id")] == ids[3:]
    assert prune_published(pool, 86400.0) == 0
    with pytest.raises(ValueError):
        prune_published(pool, -1.0)


def test_an_unreachable_database_is_reported_as_storage_unavailable(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    pool.close()
    with pytest.raises(StorageUnavailable):
        fetch_unpublished(pool, limit=10)
    with pytest.raises(StorageUnavailable):
        mark_published(pool, [1])


def test_the_envelope_names_the_event_its_pair_sequence_and_time_and_keeps_the_payload_verbatim(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    commit_day_in_batches(pool)
    rows = fetch_unpublished(pool, limit=1000)
    seen_types = set()
    for row in rows:
        for event in row.events:
            body = json.loads(msgspec.json.encode(envelope(row, event)))
            assert list(body) == ["event_id", "event_type", "symbol", "sequence", "occurred_at", "payload"]
            payload = json.loads(bytes(event.payload))
            assert body["payload"] == payload
            assert body["event_id"] == event.event_id
            assert body["symbol"] == row.symbol
            assert body["sequence"] == event.sequence
            assert body["occurred_at"] == payload.get("timestamp", payload.get("executed_at"))
            assert body["occurred_at"].endswith("Z")
            seen_types.add(body["event_type"])
    assert {"order.accepted", "order.traded", "trade.executed", "balance.changed"} <= seen_types
    transfers = [row for row in rows if row.symbol is None]
    assert transfers and all(envelope(row, e).sequence is None for row in transfers for e in row.events)


@pytest.mark.parametrize(("symbol", "kinds", "keys"), [
    (None, (), ["#"]),
    (None, ("trade",), ["trade.#"]),
    ("BTC-USDT", (), ["order.BTC-USDT.*", "trade.BTC-USDT", "balance.*"]),
    ("BTC-USDT", ("order", "trade"), ["order.BTC-USDT.*", "trade.BTC-USDT"]),
])
def test_binding_keys_select_events_by_pair_and_kind(symbol: str | None, kinds: tuple[str, ...],
                                                     keys: list[str]) -> None:
    assert binding_keys(symbol, kinds) == keys


def test_an_unknown_event_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="orders"):
        binding_keys("BTC-USDT", ["orders"])
