"""A real RabbitMQ for the event tests: a tap queue on a test's own exchange, and a cuttable proxy.

Fixtures (registered for the whole suite by tests/conftest.py): ``exchange_name`` (unique per test),
``tap`` (a `BrokerTap` bound to it with ``#``), ``broker_proxy`` (a `TcpProxy` before the broker).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue, binding

from tests.actors.system_harness import wait_until
from tests.e2e.conftest import TcpProxy

# -- what a consumer receives -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One message as a consumer gets it."""

    message_id: str
    routing_key: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: dict[str, Any]


class BrokerTap:
    """A queue bound to the test's exchange on the real broker (declared before anything is published).

    The exchange is declared exactly as the publisher declares it (durable topic), so whichever side
    comes first, the other finds it; `close()` deletes the queue and the exchange.
    """

    def __init__(self, url: str, exchange: str, keys: tuple[str, ...] = ("#",)) -> None:
        self.exchange = Exchange(exchange, type="topic", durable=True)
        bindings = [binding(self.exchange, routing_key=key) for key in keys]
        self.queue = Queue(f"{exchange}.tap", bindings=bindings, durable=False, auto_delete=False)
        self.connection = Connection(url, connect_timeout=5)
        self.channel = self.connection.channel()
        self.exchange(self.channel).declare()
        self.queue(self.channel).declare()
        self.received: list[Received] = []

    def drain(self) -> list[Received]:
        """Take every message waiting in the queue (acknowledged at once); return all received so far."""
        queue = self.queue(self.channel)
        while (message := queue.get(no_ack=True)) is not None:
            self.received.append(Received(
                message.properties.get("message_id"), message.delivery_info["routing_key"],
                dict(message.headers), dict(message.properties), json.loads(message.body),
            ))
        return self.received

    def wait_for(self, event_ids: set[str], timeout: float) -> list[Received]:
        """Drain until every id of `event_ids` arrived; fail after `timeout` seconds."""
        wait_until(lambda: event_ids <= {m.message_id for m in self.drain()}, timeout,
                   f"all {len(event_ids)} committed events delivered")
        time.sleep(0.3)  # anything published late (a duplicate) arrives too
        return self.drain()

    def close(self) -> None:
        try:
            self.queue(self.channel).delete()
            self.exchange(self.channel).delete()
        finally:
            self.connection.close()


@pytest.fixture
def exchange_name() -> str:
    return f"te-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tap(broker_url: str, exchange_name: str) -> Iterator[BrokerTap]:
    tap = BrokerTap(broker_url, exchange_name)
    try:
        yield tap
    finally:
        tap.close()


@pytest.fixture
def broker_proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A cuttable proxy in front of the machine's RabbitMQ."""
    proxy = TcpProxy.before(broker_url, 5672)
    try:
        yield proxy
    finally:
        proxy.cut()
