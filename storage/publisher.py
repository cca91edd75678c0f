"""The kombu publisher of outbox events, and the one place the published message format is defined.

`EventPublisher(url, exchange)` publishes to a durable topic exchange (declared on connect), one AMQP
message per event, persistent (delivery mode 2), with publisher confirms on amqp:// (the kombu transport
option ``confirm_publish``: `publish` returns only once the broker has taken the message; a nack, a
lost connection or no confirm within ``confirm_timeout`` raises `BrokerUnavailable`). ``memory://``
works too (kombu's in-process transport: messages reach queues of the same process only; nothing to
confirm). The connection opens lazily on the first publish and is dropped after any broker failure,
so the next publish reconnects.

Each message (see README, "Events"):
- routing key: the event's, ``order.<SYMBOL>.<STATUS>``, ``trade.<SYMBOL>`` or ``balance.<ASSET>``;
- properties: ``message_id`` = event id, ``type`` = event type, ``content_type`` application/json,
  ``app_id`` trade-engine, headers ``event_type``, ``symbol`` and ``sequence`` (left out when null);
- body: the envelope (`envelope`), a JSON object with exactly these fields, in this order:
  ``event_id``, ``event_type``, ``symbol``, ``sequence``, ``occurred_at``, ``payload``.
  ``occurred_at`` is the engine time of the fact (the payload's ``timestamp``, a trade's
  ``executed_at``; the commit time for an event that has neither); ``payload`` is byte for byte the
  payload the writer committed.

`binding_keys(symbol, kinds)` gives the routing keys a consumer binds to select events, and
`follow_events` yields the bodies arriving on a temporary queue bound with them (``events tail``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Generator, Iterable
from typing import Any

import msgspec
from kombu.connection import Connection
from kombu.entity import Exchange, Queue, binding
from kombu.messaging import Consumer, Producer

from tradeengine.storage.errors import StorageError
from tradeengine.storage.outbox import OutboxRow, StoredEvent
from tradeengine.storage.rows import rfc3339

__all__ = [
    "EVENT_KINDS",
    "BrokerUnavailable",
    "Envelope",
    "EventPublisher",
    "binding_keys",
    "envelope",
    "follow_events",
]

EVENT_KINDS = ("order", "trade", "balance")
"""The first word of every routing key (and of every event type)."""

APP_ID = "trade-engine"
CONTENT_TYPE = "application/json"
PERSISTENT = 2


class BrokerUnavailable(StorageError):
    """The broker cannot be reached, refused a message or did not confirm it in time; try again later."""

    code = "UNAVAILABLE"


class Envelope(msgspec.Struct, frozen=True):
    """The body of every published message (a JSON object with these fields, in this order)."""

    event_id: str
    event_type: str
    symbol: str | None
    sequence: int | None
    occurred_at: str
    payload: msgspec.Raw


class _Moment(msgspec.Struct):
    """The payload fields that say when the fact happened (the rest is not decoded)."""

    timestamp: str | None = None
    executed_at: str | None = None


_decode_moment = msgspec.json.Decoder(_Moment).decode
_encode = msgspec.json.Encoder().encode


def envelope(row: OutboxRow, event: StoredEvent) -> Envelope:
    """The envelope of one event of an outbox row."""
    moment = _decode_moment(event.payload)
    occurred_at = moment.timestamp or moment.executed_at or rfc3339(row.created_at)
    return Envelope(event.event_id, event.event_type, row.symbol, event.sequence, occurred_at, event.payload)


def binding_keys(symbol: str | None = None, kinds: Iterable[str] = ()) -> list[str]:
    """The routing keys that select the events of `kinds` (default: every kind) of `symbol` (default: all).

    Balance events are routed by asset, not by pair (``balance.<ASSET>``): with a symbol, their key is
    ``balance.*`` and the consumer keeps those whose envelope ``symbol`` is that pair.
    """
    wanted = list(dict.fromkeys(kinds)) or list(EVENT_KINDS)
    unknown = [kind for kind in wanted if kind not in EVENT_KINDS]
    if unknown:
        raise ValueError(f"unknown event kind(s) {', '.join(unknown)}: choose from {', '.join(EVENT_KINDS)}")
    if symbol is None:
        return ["#"] if len(wanted) == len(EVENT_KINDS) else [f"{kind}.#" for kind in wanted]
    keys = {"order": f"order.{symbol}.*", "trade": f"trade.{symbol}", "balance": "balance.*"}
    return [keys[kind] for kind in wanted]


class EventPublisher:
    """Publishes outbox events to one topic exchange; not thread-safe (one owner thread)."""

    def __init__(self, url: str, exchange: str, *, connect_timeout: float = 2.0,
                 confirm_timeout: float = 5.0) -> None:
        self.url = url
        self.exchange = Exchange(exchange, type="topic", durable=True,  # type: ignore[no-untyped-call]
                                 auto_delete=False, delivery_mode=PERSISTENT)
        self._connect_timeout = connect_timeout
        self._confirm_timeout = confirm_timeout
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._errors: tuple[type[BaseException], ...] = ()

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still turn out to be dead on the next publish)."""
        return self._producer is not None

    def connect(self) -> None:
        """Open the connection and a channel and declare the exchange (if not connected already)."""
        if self._producer is not None:
            return
        amqp = not self.url.startswith("memory://")
        options: dict[str, Any] = {}
        if amqp:
            # confirm_publish: every publish waits for the broker's ack; the socket timeouts bound a
            # write into (or a read from) a connection that died without closing.
            options = {"confirm_publish": True, "read_timeout": self._confirm_timeout,
                       "write_timeout": self._confirm_timeout}
        connection = Connection(self.url, connect_timeout=self._connect_timeout,  # type: ignore[no-untyped-call]
                                transport_options=options)
        self._errors = (*connection.connection_errors, *connection.channel_errors,
                        *connection.recoverable_connection_errors, OSError)
        try:
            connection.connect()  # type: ignore[no-untyped-call]
            channel = connection.channel()  # type: ignore[no-untyped-call]
            self.exchange(channel).declare()  # type: ignore[no-untyped-call]
            self._producer = Producer(channel, self.exchange, auto_declare=False)  # type: ignore[no-untyped-call]
        except Exception as exc:
            _close_quietly(connection)
            raise self._unavailable("connecting to", exc) from exc
        self._connection = connection

    def publish_row(self, row: OutboxRow) -> int:
        """Publish every event of `row`, in order, each confirmed; return how many were published.

        Raises BrokerUnavailable (and drops the connection) when the broker fails on any of them; the
        events published before the failure stay published.
        """
        for event in row.events:
            self.publish(envelope(row, event), event.routing_key)
        return len(row.events)

    def publish(self, message: Envelope, routing_key: str) -> None:
        """Publish one envelope under `routing_key` and wait for the broker's confirm."""
        self.connect()
        producer = self._producer
        assert producer is not None
        headers: dict[str, Any] = {"event_type": message.event_type}
        if message.symbol is not None:
            headers["symbol"] = message.symbol
        if message.sequence is not None:
            headers["sequence"] = message.sequence
        try:
            producer.publish(  # type: ignore[no-untyped-call]
                _encode(message), routing_key=routing_key, delivery_mode=PERSISTENT,
                content_type=CONTENT_TYPE, content_encoding="utf-8", headers=headers,
                message_id=message.event_id, type=message.event_type, app_id=APP_ID,
                retry=False, confirm_timeout=self._confirm_timeout,
            )
        except self._errors as exc:
            self.close()
            raise self._unavailable("publishing to", exc) from exc

    def close(self) -> None:
        """Close the connection (quietly: it may be dead already)."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)

    def _unavailable(self, doing: str, exc: BaseException) -> BrokerUnavailable:
        where = Connection(self.url).as_uri()  # type: ignore[no-untyped-call]  # the password masked
        return BrokerUnavailable(f"{doing} the broker at {where} failed: {_first_line(exc)}")


def follow_events(
    url: str, exchange: str, keys: Iterable[str], *, on_ready: Callable[[str], None] | None = None,
    poll: float = 1.0,
) -> Generator[bytes, None, None]:
    """Yield the body of every message routed to `exchange` with one of `keys`, as it arrives, forever.

    The messages come through a queue of its own (exclusive, auto-delete: the broker drops it when the
    connection ends), bound once the exchange is declared as the publisher declares it. `on_ready` gets
    the broker's address (password masked) once the queue is bound: from then on nothing is missed.
    Close the generator to disconnect. Raises BrokerUnavailable when the broker cannot be reached or
    the connection is lost.
    """
    topic = Exchange(exchange, type="topic", durable=True)  # type: ignore[no-untyped-call]
    queue = Queue(f"trade-engine.tail.{uuid.uuid4().hex[:12]}", exclusive=True,  # type: ignore[no-untyped-call]
                  auto_delete=True, durable=False,
                  bindings=[binding(topic, routing_key=key) for key in keys])  # type: ignore[no-untyped-call]
    arrived: list[Any] = []
    connection = Connection(url, connect_timeout=5)  # type: ignore[no-untyped-call]
    where = connection.as_uri()
    failures = (*connection.connection_errors, *connection.channel_errors, OSError)
    try:
        try:
            channel = connection.channel()  # type: ignore[no-untyped-call]
            topic(channel).declare()  # type: ignore[no-untyped-call]
            consumer = Consumer(channel, queues=[queue], on_message=arrived.append,  # type: ignore[no-untyped-call]
                                no_ack=True)
            consumer.consume()  # type: ignore[no-untyped-call]
        except failures as exc:
            raise BrokerUnavailable(f"the broker at {where} failed: {_first_line(exc)}") from exc
        if on_ready is not None:
            on_ready(where)
        while True:
            try:
                connection.drain_events(timeout=poll)  # type: ignore[no-untyped-call]
            except TimeoutError:
                continue
            except failures as exc:
                raise BrokerUnavailable(f"the broker at {where} failed: {_first_line(exc)}") from exc
            while arrived:
                body = arrived.pop(0).body  # py-amqp hands a body with a content_encoding over decoded
                yield body.encode() if isinstance(body, str) else bytes(body)
    finally:
        _close_quietly(connection)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _close_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):  # a dead socket fails its own close; nothing is left to release
        connection.close()  # type: ignore[no-untyped-call]
