"""The outbox relay on the real actor system, real PostgreSQL and the machine's RabbitMQ.

Every test publishes to an exchange of its own (a uuid in the name) and reads what a consumer would
read from a queue bound to it (`BrokerTap`); both are deleted afterwards. The broker is taken away by
cutting a `TcpProxy` between the engine and RabbitMQ, never by stopping RabbitMQ. What was delivered is
compared with what was committed (the `outbox_events` view, one row per event, in commit order).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg_pool
import pytest

from tests.actors.system_harness import TRADERS, fund, limit, running_system, wait_until
from tests.broker_harness import BrokerTap, Received
from tests.e2e.conftest import TcpProxy
from tests.e2e.crash_driver import random_request
from tradeengine.actors import relay as relay_module
from tradeengine.actors.relay import RelaySettings
from tradeengine.actors.supervision import Backoff, ChildState
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import Side, TradeEngineError
from tradeengine.storage.outbox import OutboxRow, read_backlog
from tradeengine.storage.publisher import BrokerUnavailable, EventPublisher


def relay_settings(url: str, exchange: str, **options: Any) -> RelaySettings:
    options.setdefault("backoff", Backoff(initial=0.05, factor=2.0, cap=0.5))
    options.setdefault("connect_timeout", 1.0)
    options.setdefault("confirm_timeout", 2.0)
    return RelaySettings(url, exchange, **options)


# -- what was committed ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Committed:
    event_id: str
    symbol: str | None
    sequence: int | None
    event_type: str
    routing_key: str
    payload: dict[str, Any]


def committed_events(pool: psycopg_pool.ConnectionPool) -> list[Committed]:
    """Every outbox event in commit order (row by row, array order within a row)."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT event_id::text, symbol, sequence, event_type, routing_key, payload "
                            "FROM outbox_events ORDER BY message_id, position").fetchall()
    return [Committed(*row) for row in rows]


def wait_published(pool: psycopg_pool.ConnectionPool, timeout: float) -> None:
    wait_until(lambda: read_backlog(pool).rows == 0, timeout, "every outbox row stamped published")


def first_copies(received: list[Received]) -> list[Received]:
    """The messages without their later duplicates (same event id), in arrival order."""
    seen: set[str] = set()
    firsts = []
    for message in received:
        if message.message_id not in seen:
            seen.add(message.message_id)
            firsts.append(message)
    return firsts


def assert_delivered_in_order(received: list[Received], committed: list[Committed]) -> None:
    """Every committed event arrived, nothing else did, duplicates are exact copies, and per pair the
    first copies arrived in commit order, so in sequence order."""
    by_id = {event.event_id: event for event in committed}
    assert len(by_id) == len(committed), "event ids are unique"
    assert {m.message_id for m in received} == set(by_id), "every committed event, and only those"
    bodies: dict[str, dict[str, Any]] = {}
    for message in received:
        assert bodies.setdefault(message.message_id, message.body) == message.body, "a duplicate differs"
    for symbol in {event.symbol for event in committed}:
        expected = [event.event_id for event in committed if event.symbol == symbol]
        arrived = [m.message_id for m in first_copies(received) if m.body["symbol"] == symbol]
        assert arrived == expected, f"{symbol}: events out of commit order"
        if symbol is not None:
            sequences = [by_id[event_id].sequence for event_id in arrived]
            distinct = list(dict.fromkeys(sequences))
            assert distinct == sorted(distinct) and len(set(distinct)) == len(distinct), symbol
    for message in received:
        event = by_id[message.message_id]
        assert message.routing_key == event.routing_key
        assert message.body["event_type"] == event.event_type == message.headers["event_type"]
        assert message.body["sequence"] == event.sequence
        assert message.body["payload"] == event.payload
        assert message.properties["delivery_mode"] == 2
        assert message.properties["content_type"] == "application/json"


# -- trading --------------------------------------------------------------------------------------------


def trade_session(system: ActorSystem, commands: int, seed: int) -> int:
    """Place (and now and then cancel) `commands` random orders on three pairs; return how many were
    acknowledged."""
    rng = random.Random(seed)
    resting: list[tuple[int, str]] = []
    acknowledged = 0
    for _ in range(commands):
        user = rng.choice(TRADERS)
        try:
            if resting and rng.random() < 0.15:
                owner, order_id = resting.pop(rng.randrange(len(resting)))
                system.exchange.cancel(owner, order_id)
            else:
                outcome = system.exchange.place(user, random_request(rng, rng.random()))
                first = outcome.events[0]
                resting.append((user, first.order_id))  # type: ignore[attr-defined]
            acknowledged += 1
        except TradeEngineError:
            pass  # refused (already filled, not cancellable, ...): a committed rejection or nothing
    return acknowledged


class Load:
    """Callers placing orders on a background thread until stopped; counts acknowledgements."""

    def __init__(self, system: ActorSystem, seed: int) -> None:
        self.system = system
        self.acknowledged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seed,), daemon=True)
        self._thread.start()

    def _run(self, seed: int) -> None:
        while not self._stop.is_set():
            self.acknowledged += trade_session(self.system, 5, seed)
            seed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# -- tests ------------------------------------------------------------------------------------------------


def test_every_committed_order_change_and_trade_reaches_a_real_queue_once_in_per_pair_sequence_order(
    pool: psycopg_pool.ConnectionPool, broker_url: str, tap: BrokerTap, exchange_name: str,
) -> None:
    with running_system(pool, relay=relay_settings(broker_url, exchange_name)) as system:
        fund(system)
        assert trade_session(system, 150, seed=7) > 100
        wait_published(pool, 30)
        figures = system.relay_figures()

    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 10)
    assert len(received) == len(committed), "no duplicates without a failure"
    assert_delivered_in_order(received, committed)

    with pool.connection() as conn:
        trades = {row[0] for row in conn.execute("SELECT id FROM trades").fetchall()}
        orders = dict(conn.execute("SELECT id::text, status::text FROM orders").fetchall())
    trade_events = [m.body["payload"]["id"] for m in received if m.body["event_type"] == "trade.executed"]
    assert len(trades) > 10
    assert sorted(trade_events) == sorted(trades), "one trade event per committed trade"
    created = [m.body["payload"]["order_id"] for m in received
               if m.body["event_type"] in ("order.accepted", "order.rejected")]
    assert sorted(created) == sorted(orders), "one creation event per committed order"
    last_status: dict[str, str] = {}
    for message in received:
        if message.body["event_type"].startswith("order."):
            last_status[message.body["payload"]["order_id"]] = message.body["payload"]["status"]
    assert last_status == orders, "each order's last event carries its committed status"

    assert figures is not None
    assert figures.published_events == len(committed)
    assert figures.last_published_at is not None and figures.last_published_at > time.time() - 60
    assert figures.broker_available and figures.outages == 0
    assert figures.backlog is not None and figures.backlog.rows == 0


def test_with_the_broker_away_orders_are_still_accepted_the_backlog_grows_and_all_of_it_arrives_in_order(
    pool: psycopg_pool.ConnectionPool, broker_url: str, broker_proxy: TcpProxy, tap: BrokerTap,
    exchange_name: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tradeengine.actors.relay")
    settings = relay_settings(broker_proxy.url(broker_url), exchange_name)
    with running_system(pool, relay=settings) as system:
        fund(system)
        load = Load(system, seed=11)
        try:
            wait_until(lambda: system.relay_stats.figures().published_events > 50, 20, "events flowing")
            broker_proxy.cut()
            wait_until(lambda: not system.relay_stats.figures().broker_available, 10, "the relay noticing")
            during = load.acknowledged
            backlog = read_backlog(pool)
            # Acknowledgements are counted per session of 5 orders, so wait for both rather than
            # expecting one count to follow the other at once.
            wait_until(lambda: load.acknowledged > during + 20, 20, "orders accepted, the broker away")
            wait_until(lambda: read_backlog(pool).rows > backlog.rows + 20, 20, "the backlog growing")
            time.sleep(1.0)  # several backoff rounds: still one log line for the outage
            broker_proxy.restore()
            wait_until(lambda: system.relay_stats.figures().broker_available, 20, "the relay back")
        finally:
            load.stop()
        wait_published(pool, 60)
        figures = system.relay_stats.figures()

    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 20)
    assert_delivered_in_order(received, committed)
    assert figures.outages == 1
    outage_lines = [r for r in caplog.records if "broker is unavailable" in r.getMessage()]
    assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]
    assert any("broker is available again" in r.getMessage() for r in caplog.records)


def test_a_crashed_relay_is_restarted_by_the_supervisor_and_republishes_only_copies_with_the_same_ids(
    pool: psycopg_pool.ConnectionPool, broker_url: str, tap: BrokerTap, exchange_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = relay_module.mark_published
    crashes: list[list[int]] = []

    def crash_once_after_publishing(source: Any, ids: list[int], **options: Any) -> int:
        if not crashes and len(ids) > 1:  # the whole pass was confirmed by the broker, then the relay dies
            crashes.append(list(ids))
            raise RuntimeError("injected relay crash between publishing and stamping")
        return original(source, ids, **options)

    monkeypatch.setattr(relay_module, "mark_published", crash_once_after_publishing)
    with running_system(pool, relay=relay_settings(broker_url, exchange_name, batch_rows=20)) as system:
        fund(system)
        load = Load(system, seed=23)
        try:
            wait_until(lambda: bool(crashes), 30, "the injected crash")
            wait_until(lambda: system.supervisor is not None
                       and system.supervisor.status("relay").incarnation == 2
                       and system.supervisor.status("relay").state is ChildState.RUNNING, 15,
                       "the relay restarted by the supervisor")
            time.sleep(0.5)
        finally:
            load.stop()
        wait_published(pool, 60)
        status = system.supervisor.status("relay") if system.supervisor else None

    assert status is not None and status.restarts == 1 and status.last_failure is not None
    assert "injected relay crash" in status.last_failure.message
    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 20)
    assert_delivered_in_order(received, committed)  # duplicates included: exact copies, order kept
    with pool.connection() as conn:
        crashed = {row[0] for row in conn.execute(
            "SELECT event_id::text FROM outbox_events WHERE message_id = ANY(%s)", (crashes[0],)).fetchall()}
    copies = Counter(m.message_id for m in received)
    assert crashed and all(copies[event_id] == 2 for event_id in crashed), \
        "the events of the pass the crash left unstamped went out again, once more each"
    assert sum(copies.values()) - len(copies) == len(crashed), "nothing else was duplicated"


class CuttingRows(list[OutboxRow]):
    """A pass's rows that call `cut` when the publisher reaches the row at `at` (before its messages)."""

    def __init__(self, rows: list[OutboxRow], at: int, cut: Callable[[], None]) -> None:
        super().__init__(rows)
        self._at = at
        self._cut = cut

    def __iter__(self) -> Iterator[OutboxRow]:
        for index, row in enumerate(super().__iter__()):
            if index == self._at:
                self._cut()
            yield row


def test_a_connection_cut_in_the_middle_of_a_pass_leaves_the_unconfirmed_rows_unstamped_and_they_go_out_again(
    pool: psycopg_pool.ConnectionPool, broker_url: str, broker_proxy: TcpProxy, tap: BrokerTap,
    exchange_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_system(pool) as system:  # no relay: the outbox only fills
        fund(system)
        trade_session(system, 80, seed=31)
    waiting = read_backlog(pool)
    assert waiting.rows > 40

    publish_rows, mark_published = EventPublisher.publish_rows, relay_module.mark_published
    first_pass: list[tuple[list[int], int, BrokerUnavailable | None]] = []
    stamps: list[list[int]] = []

    def cut_halfway_through_the_first_pass(
        publisher: EventPublisher, rows: list[OutboxRow],
    ) -> tuple[int, BrokerUnavailable | None]:
        if first_pass:
            return publish_rows(publisher, rows)
        confirmed, failure = publish_rows(publisher, CuttingRows(rows, len(rows) // 2, broker_proxy.cut))
        first_pass.append(([row.id for row in rows], confirmed, failure))
        broker_proxy.restore()
        return confirmed, failure

    def record_stamps(source: Any, ids: list[int], **options: Any) -> int:
        stamps.append(list(ids))
        return mark_published(source, ids, **options)

    monkeypatch.setattr(EventPublisher, "publish_rows", cut_halfway_through_the_first_pass)
    monkeypatch.setattr(relay_module, "mark_published", record_stamps)
    settings = relay_settings(broker_proxy.url(broker_url), exchange_name, batch_rows=waiting.rows)
    with running_system(pool, relay=settings) as system:
        wait_published(pool, 30)
        figures = system.relay_stats.figures()

    ids, confirmed, failure = first_pass[0]
    assert len(ids) == waiting.rows and isinstance(failure, BrokerUnavailable)
    assert confirmed <= len(ids) // 2
    assert stamps == ([ids[:confirmed], ids[confirmed:]] if confirmed else [ids]), \
        "the confirmed rows stamped after the failed pass, the rest only once published again"
    assert figures.outages == 1
    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 20)
    assert_delivered_in_order(received, committed)  # duplicates included: exact copies, order kept
    with pool.connection() as conn:
        unconfirmed_sent = {row[0] for row in conn.execute(
            "SELECT event_id::text FROM outbox_events WHERE message_id = ANY(%s)",
            (ids[confirmed:len(ids) // 2],)).fetchall()}
    copies = Counter(m.message_id for m in received)
    assert {event_id for event_id, count in copies.items() if count > 1} <= unconfirmed_sent, \
        "only events sent but not confirmed before the cut went out twice"


def test_rows_committed_while_no_relay_ran_are_published_when_one_starts(
    pool: psycopg_pool.ConnectionPool, broker_url: str, tap: BrokerTap, exchange_name: str,
) -> None:
    with running_system(pool) as system:  # no relay: the outbox only fills
        fund(system)
        system.exchange.place(TRADERS[0], limit("BTC-USDT", Side.SELL, "0.5", "50000"))
        system.exchange.place(TRADERS[1], limit("BTC-USDT", Side.BUY, "0.2", "50100"))
    waiting = read_backlog(pool)
    assert waiting.rows > 0 and tap.drain() == []

    with running_system(pool, relay=relay_settings(broker_url, exchange_name)):
        wait_published(pool, 20)
    committed = committed_events(pool)
    assert len(committed) == waiting.events
    assert_delivered_in_order(tap.wait_for({event.event_id for event in committed}, 10), committed)


def test_the_relay_publishes_through_kombus_in_memory_transport_too(
    pool: psycopg_pool.ConnectionPool, exchange_name: str,
) -> None:
    tap = BrokerTap("memory://", exchange_name, keys=("trade.*", "order.BTC-USDT.*"))
    try:
        with running_system(pool, relay=relay_settings("memory://", exchange_name)) as system:
            fund(system, users=TRADERS[:2])
            system.exchange.place(TRADERS[0], limit("BTC-USDT", Side.SELL, "0.5", "50000"))
            system.exchange.place(TRADERS[1], limit("BTC-USDT", Side.BUY, "0.2", "50100"))
            wait_published(pool, 20)
        received = tap.drain()
    finally:
        tap.close()
    assert [m.body["event_type"] for m in received] == [
        "order.accepted", "order.accepted", "order.traded", "order.traded", "trade.executed"]
    assert [m.routing_key for m in received] == [
        "order.BTC-USDT.OPEN", "order.BTC-USDT.OPEN", "order.BTC-USDT.FILLED",
        "order.BTC-USDT.PARTIALLY_FILLED", "trade.BTC-USDT"]


def test_published_rows_past_the_retention_are_pruned_by_the_periodic_maintenance(
    pool: psycopg_pool.ConnectionPool, exchange_name: str,
) -> None:
    settings = relay_settings("memory://", exchange_name, retention=0.0)
    with running_system(pool, relay=settings, maintenance_interval=0.3) as system:
        fund(system, users=TRADERS[:2])
        system.exchange.place(TRADERS[0], limit("BTC-USDT", Side.SELL, "0.5", "50000"))
        wait_until(lambda: committed_events(pool) == [] and system.relay_stats.figures().published_rows > 0,
                   20, "every published row pruned")
        assert system.relay_stats.figures().published_events > 0
