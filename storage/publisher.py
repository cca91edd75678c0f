"""The kombu publisher of outbox events, and the one place the published message format is defined.

`EventPublisher(url, exchange)` publishes to a durable topic exchange (declared on connect), one AMQP
message per event, persistent (delivery mode 2), with publisher confirms on amqp://, pipelined:
`publish_rows` sends every message of its rows, in order, on one channel in confirm mode without
waiting, then waits (up to ``confirm_timeout``) until the broker has acked or nacked each of them
(`_Confirms` follows the delivery tags). It returns how many leading rows were confirmed entirely and,
when the broker nacked a message, the connection failed or a confirm did not come in time, the
`BrokerUnavailable`: the rows from the first one not fully confirmed on are to be published again.
``memory://`` works too (kombu's in-process transport: messages reach queues of the same process only;
nothing to confirm). The connection opens lazily on the first publish and is dropped after any broker
failure (so delivery tags restart with a fresh channel), and the next publish reconnects.

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
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import msgspec
from amqp.exceptions import NotFound
from kombu.connection import Connection
from kombu.entity import Exchange, Queue, binding
from kombu.messaging import Consumer

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


class _Confirms:
    """The publisher confirms of one channel in confirm mode (a RabbitMQ extension).

    The broker numbers the channel's publishes 1, 2, ... (delivery tags) and acks or nacks each, alone
    or with every earlier tag still open (``multiple``), usually in order but not necessarily.
    `confirmed_through` is the highest tag up to which every publish was acked.
    """

    def __init__(self, channel: Any) -> None:
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self.published = 0
        """The delivery tag of the last publish."""
        self._acked_through = 0
        self._acked_above: set[int] = set()  # acked one by one above `_acked_through`
        self.nacked: int | None = None
        """The lowest nacked delivery tag, if any."""

    @property
    def confirmed_through(self) -> int:
        """Every publish up to this delivery tag was acked (and none of them nacked)."""
        if self.nacked is None:
            return self._acked_through
        return min(self._acked_through, self.nacked - 1)

    def settled(self, through: int) -> bool:
        """True once there is nothing more to wait for up to `through`: all acked, or a nack and every
        earlier publish acked."""
        return self.confirmed_through >= (through if self.nacked is None else min(through, self.nacked - 1))

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._acked_through = max(self._acked_through, delivery_tag)
            self._acked_above = {tag for tag in self._acked_above if tag > self._acked_through}
        elif delivery_tag > self._acked_through:
            self._acked_above.add(delivery_tag)
        while self._acked_through + 1 in self._acked_above:
            self._acked_through += 1
            self._acked_above.remove(self._acked_through)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        # A multiple nack refuses every publish still open up to the tag, the lowest of which is the
        # first one not acked yet.
        lowest = min(self._acked_through + 1, delivery_tag) if multiple else delivery_tag
        self.nacked = lowest if self.nacked is None else min(self.nacked, lowest)


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
        self._channel: Any = None  # the transport's channel, published to directly
        self._confirms: _Confirms | None = None  # None on memory:// (nothing to confirm)
        self._errors: tuple[type[BaseException], ...] = ()

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still turn out to be dead on the next publish)."""
        return self._channel is not None

    def connect(self) -> None:
        """Open the connection and a channel (in confirm mode on amqp://) and declare the exchange."""
        if self._channel is not None:
            return
        amqp = not self.url.startswith("memory://")
        # The socket timeouts bound a write into (or a read from) a connection that died without closing.
        timeouts = {"read_timeout": self._confirm_timeout, "write_timeout": self._confirm_timeout}
        options = timeouts if amqp else {}
        connection = Connection(self.url, connect_timeout=self._connect_timeout,  # type: ignore[no-untyped-call]
                                transport_options=options)
        self._errors = (*connection.connection_errors, *connection.channel_errors,
                        *connection.recoverable_connection_errors, OSError)
        try:
            connection.connect()  # type: ignore[no-untyped-call]
            channel = connection.channel()  # type: ignore[no-untyped-call]
            self.exchange(channel).declare()  # type: ignore[no-untyped-call]
            # The channel is py-amqp's; without kombu's confirm_publish its basic_publish does not wait.
            self._confirms = _Confirms(channel) if amqp else None
            self._channel = channel
        except Exception as exc:
            _close_quietly(connection)
            raise self._unavailable("connecting to", exc) from exc
        self._connection = connection

    def publish_row(self, row: OutboxRow) -> int:
        """Publish every event of `row`, in order, all confirmed; return how many were published.

        Raises BrokerUnavailable (and drops the connection) when the broker fails on any of them.
        """
        _, failure = self.publish_rows([row])
        if failure is not None:
            raise failure
        return len(row.events)

    def publish_rows(self, rows: Sequence[OutboxRow]) -> tuple[int, BrokerUnavailable | None]:
        """Publish every event of `rows`, in order, then wait for the broker's confirms of all of them.

        Return how many leading rows had every event confirmed, and the failure (a nack, a lost
        connection, no confirm within ``confirm_timeout``: the connection is dropped), if any. The rows
        from the first one not fully confirmed on must be published again.
        """
        try:
            self.connect()
        except BrokerUnavailable as exc:
            return 0, exc
        confirms = self._confirms
        last_tags: list[int] = []  # per row, the delivery tag of its last message
        sent = 0
        try:
            for row in rows:
                if confirms is not None and confirms.nacked is not None:
                    break  # the rest of the pass would not be stamped anyway
                for event in row.events:
                    self._send(envelope(row, event), event.routing_key)
                    sent += 1
                last_tags.append(sent)
            failure = self._wait_for_confirms() if confirms is not None else None
        except self._errors as exc:
            failure = self._unavailable("publishing to", exc)
            failure.__cause__ = exc
        if confirms is None:
            done = len(last_tags)  # memory://: what was sent is published
        else:
            base = confirms.published - sent
            through = confirms.confirmed_through
            done = next((i for i, tag in enumerate(last_tags) if base + tag > through), len(last_tags))
        if failure is not None:
            self.close()
        return done, failure

    def _send(self, message: Envelope, routing_key: str) -> None:
        """Publish one envelope under `routing_key` (not waiting for its confirm)."""
        channel = self._channel
        assert channel is not None
        headers: dict[str, Any] = {"event_type": message.event_type}
        if message.symbol is not None:
            headers["symbol"] = message.symbol
        if message.sequence is not None:
            headers["sequence"] = message.sequence
        properties = {"delivery_mode": PERSISTENT, "message_id": message.event_id, "type": message.event_type,
                      "app_id": APP_ID}
        # What kombu's Producer.publish ends in, without its per-message preparation (declarations,
        # serializer and compression checks, retry wrapping): ~40 % of the relay's CPU per message.
        channel.basic_publish(channel.prepare_message(_encode(message), 0, CONTENT_TYPE, "utf-8", headers,
                                                      properties),
                              exchange=self.exchange.name, routing_key=routing_key)
        if self._confirms is not None:
            self._confirms.published += 1

    def _wait_for_confirms(self) -> BrokerUnavailable | None:
        """Read the broker's acks and nacks until every publish so far is settled, or the time is up."""
        confirms, connection = self._confirms, self._connection
        assert confirms is not None and connection is not None
        through = confirms.published
        deadline = time.monotonic() + self._confirm_timeout
        while not confirms.settled(through):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._unavailable("publishing to", TimeoutError(
                    f"no confirm within {self._confirm_timeout:g} s"))
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=remaining)  # type: ignore[no-untyped-call]
        if confirms.nacked is not None:
            return self._unavailable("publishing to", RuntimeError("the broker refused (nacked) a message"))
        return None

    def close(self) -> None:
        """Close the connection (quietly: it may be dead already)."""
        connection, self._connection, self._channel, self._confirms = self._connection, None, None, None
        if connection is not None:
            _close_quietly(connection)

    def _unavailable(self, doing: str, exc: BaseException) -> BrokerUnavailable:
        where = Connection(self.url).as_uri()  # type: ignore[no-untyped-call]  # the password masked
        return BrokerUnavailable(f"{doing} the broker at {where} failed: {_first_line(exc)}")


def follow_events(
    url: str, exchange: str, keys: Iterable[str], *, on_ready: Callable[[str], None] | None = None,
    on_created: Callable[[], None] | None = None, poll: float = 1.0,
) -> Generator[bytes, None, None]:
    """Yield the body of every message routed to `exchange` with one of `keys`, as it arrives, forever.

    The messages come through a queue of its own (exclusive, auto-delete: the broker drops it when the
    connection ends), bound once the exchange is declared as the publisher declares it. An exchange the
    broker does not have yet (no engine has published there, or the name is mistyped) is declared, and
    `on_created` is told. `on_ready` gets the broker's address (password masked) once the queue is bound:
    from then on nothing is missed. Close the generator to disconnect. Raises BrokerUnavailable when the
    broker cannot be reached or the connection is lost.
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
            try:
                topic(channel).declare(passive=True)  # type: ignore[no-untyped-call]
            except NotFound:  # the broker closed that channel
                channel = connection.channel()  # type: ignore[no-untyped-call]
                topic(channel).declare()  # type: ignore[no-untyped-call]
                if on_created is not None:
                    on_created()
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
