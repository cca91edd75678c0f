"""storage.publisher's `EventPublisher` on the machine's RabbitMQ: pipelined publisher confirms.

Every test publishes to an exchange of its own (a uuid in the name) and reads what a consumer would read
from a queue bound to it (`BrokerTap`); both are deleted afterwards. The rows are built in memory from
the events the real writer commits for a scenario (`FullDay`: orders, trades and balance changes), each
with a fresh event id. The broker is taken away by cutting a `TcpProxy` in the middle of a pass.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest
from kombu import Connection, Exchange, Queue, binding

from tests.actors.test_relay import CuttingRows
from tests.broker_harness import BrokerTap, Received
from tests.e2e.conftest import TcpProxy
from tests.storage.test_rows_scenarios import FullDay
from tradeengine.storage.outbox import OutboxRow, StoredEvent
from tradeengine.storage.publisher import BrokerUnavailable, EventPublisher, envelope
from tradeengine.storage.rows import build_rows

FULL_KEY = "trade.FULL-USDT"
"""A routing key the nack test sends to a queue that refuses all but its first message."""


def committed_events() -> list[StoredEvent]:
    """The outbox events the writer commits for a day of trading, as the relay reads them."""
    encode = msgspec.json.Encoder().encode
    return [StoredEvent(str(event.event_id), event.event_type, event.routing_key, event.sequence,
                        msgspec.Raw(encode(event.payload)))
            for event in build_rows(FullDay().facts).outbox_events]


def outbox_rows(count: int, per_row: int = 4) -> list[OutboxRow]:
    """`count` rows of `per_row` committed events each (fresh ids); every fifth is a transfers row."""
    events = committed_events()
    rows = []
    for index in range(count):
        picked = [events[(index * per_row + offset) % len(events)] for offset in range(per_row)]
        fresh = [StoredEvent(str(uuid.uuid4()), e.event_type, e.routing_key, e.sequence, e.payload)
                 for e in picked]
        symbol = None if index % 5 == 4 else "BTC-USDT"
        rows.append(OutboxRow(index + 1, symbol, index, index, fresh, datetime.now(UTC)))
    return rows


def event_ids(rows: list[OutboxRow]) -> list[str]:
    return [event.event_id for row in rows for event in row.events]


def arrival_order(received: list[Received]) -> list[str]:
    """The ids of the messages without their later duplicates, in arrival order."""
    return list(dict.fromkeys(message.message_id for message in received))








@pytest.fixture
def publisher(broker_url: str, exchange_name: str) -> Iterator[EventPublisher]:
    publisher = EventPublisher(broker_url, exchange_name, connect_timeout=2.0, confirm_timeout=5.0)
    try:
        yield publisher
    finally:
        publisher.close()


def test_a_pass_of_many_rows_is_confirmed_and_every_message_arrives_in_row_order_in_the_message_format(
    publisher: EventPublisher, tap: BrokerTap,
) -> None:
    rows = outbox_rows(300)

    assert publisher.publish_rows(rows) == (300, None)

    expected = event_ids(rows)
    received = tap.wait_for(set(expected), 10)
    assert [message.message_id for message in received] == expected, "each once, in row order"
    sent = {event.event_id: (row, event) for row in rows for event in row.events}
    for message in received:
        row, event = sent[message.message_id]
        headers: dict[str, object] = {"event_type": event.event_type}
        if row.symbol is not None:
            headers["symbol"] = row.symbol
        if event.sequence is not None:
            headers["sequence"] = event.sequence
        assert message.routing_key == event.routing_key
        assert message.headers == headers
        assert message.properties == {
            "content_type": "application/json", "content_encoding": "utf-8", "application_headers": headers,
            "delivery_mode": 2, "priority": 0, "message_id": event.event_id, "type": event.event_type,
            "app_id": "trade-engine",
        }
        body = msgspec.json.decode(msgspec.json.encode(envelope(row, event)))
        assert list(message.body.items()) == list(body.items()), "the envelope's fields, in order"


def test_a_connection_cut_in_the_middle_of_a_pass_leaves_the_rest_to_be_published_again_with_the_same_ids(
    broker_url: str, broker_proxy: TcpProxy, exchange_name: str, tap: BrokerTap,
) -> None:
    rows = outbox_rows(200)
    publisher = EventPublisher(broker_proxy.url(broker_url), exchange_name, connect_timeout=1.0,
                               confirm_timeout=2.0)
    try:
        confirmed, failure = publisher.publish_rows(CuttingRows(rows, at=120, cut=broker_proxy.cut))
        assert isinstance(failure, BrokerUnavailable)
        assert confirmed <= 120, "no row sent after the cut counts as confirmed"
        assert not publisher.connected, "the connection is dropped after the failure"
        while_away = publisher.publish_rows(rows[confirmed:])
        assert while_away[0] == 0 and isinstance(while_away[1], BrokerUnavailable)
        broker_proxy.restore()
        assert publisher.publish_rows(rows[confirmed:]) == (200 - confirmed, None)
    finally:
        publisher.close()

    expected = event_ids(rows)
    received = tap.wait_for(set(expected), 10)
    assert arrival_order(received) == expected, "first copies in row order"
    copies = Counter(message.message_id for message in received)
    assert all(copies[event_id] == 1 for event_id in event_ids(rows[:confirmed])), \
        "the confirmed rows were not published again"
    duplicated = {event_id for event_id, count in copies.items() if count > 1}
    assert duplicated <= set(event_ids(rows[confirmed:120])), "only what was sent but not confirmed"


def test_a_message_the_broker_nacks_fails_its_row_and_the_rest_of_the_pass_but_not_the_rows_before(
    broker_url: str, publisher: EventPublisher, exchange_name: str, tap: BrokerTap,
) -> None:
    rows = outbox_rows(12)
    for index in (2, 6):  # row 2's message fills the queue below, row 6's is refused
        first = rows[index].events[0]
        rows[index].events[0] = StoredEvent(first.event_id, first.event_type, FULL_KEY, first.sequence,
                                            first.payload)
    topic = Exchange(exchange_name, type="topic", durable=True)
    full = Queue(f"{exchange_name}.full", durable=False, auto_delete=False,
                 bindings=[binding(topic, routing_key=FULL_KEY)],
                 queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        full(channel).declare()
        try:
            confirmed, failure = publisher.publish_rows(rows)
            assert confirmed == 6, "the rows before the nacked one are confirmed, no further"
            assert isinstance(failure, BrokerUnavailable) and "nacked" in str(failure)
            assert not publisher.connected

            full(channel).purge()
            assert publisher.publish_rows(rows[confirmed:]) == (6, None), "the rest goes out again"
        finally:
            full(channel).delete()

    expected = event_ids(rows)
    assert arrival_order(tap.wait_for(set(expected), 10)) == expected
