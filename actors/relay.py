"""OutboxRelay: publishes the committed outbox to the broker, in commit order, at least once.

A supervised actor (child "relay" of the system's supervisor, one-for-one, in no group: it holds no
state the database does not have). Each pass:

1. reads up to ``batch_rows`` unpublished `outbox_messages` rows in id order (`storage.outbox`): the
   order the one writer committed them, so per pair in sequence order;
2. publishes every event of those rows, row after row in array order, as its own persistent message on
   one channel with publisher confirms (`storage.publisher.EventPublisher.publish_rows`), pipelined:
   the whole pass goes out without waiting, then the relay waits for the broker's confirms of all of it;
3. stamps ``published_at`` on the leading rows whose events were all confirmed (up to the first row
   with a message nacked, or unconfirmed when the connection failed or ``confirm_timeout`` ran out).

Passes follow one another at once while rows are waiting; when the outbox is empty the relay waits for a
`Nudge` (the system sends one after every commit of the writer; the pass it asks for starts at the
earliest ``nudge_interval`` after the previous one began, so under load one pass takes several commits)
or ``idle_interval`` seconds. When the broker (or the database) fails, the rows fully published so far
are stamped, the relay logs ONCE for the outage and tries again after an exponential backoff
(``backoff``, capped, with jitter), ignoring nudges meanwhile; the first pass that succeeds logs the
recovery. Orders keep being accepted all along: the backlog simply grows in the table. Nothing is held
in memory across passes, so a crashed relay is restarted by the supervisor and resumes from the table,
and so does a restarted engine. (It holds one database connection, in autocommit, while passes follow
one another; see `OutboxRelay._connection`.)

Delivery is at least once: a row stamped late (a crash, a lost connection between a confirm and the
stamp) is published again, events with the same ``event_id``. Consumers de-duplicate on it; per pair
the first copy of each event arrives in sequence order.

Figures for metrics outlive the incarnations in a shared `RelayStats` (`RelayStats.figures()`; the
system adds the table's backlog in `ActorSystem.relay_figures()`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.outbox import OutboxBacklog, OutboxRow, fetch_unpublished, mark_published
from tradeengine.storage.publisher import BrokerUnavailable, EventPublisher

from .polling import Nudge, Outages, PollingActor
from .supervised import ChildLink
from .supervision import Backoff

__all__ = ["Nudge", "OutboxRelay", "RelayFigures", "RelaySettings", "RelayStats"]

_log = logging.getLogger(__name__)
_trace_log = logging.getLogger("tradeengine.commands")  # the command trail of ops.metrics: HTTP → event

DEFAULT_EXCHANGE = "trade-engine"

MAX_HOLD = 60.0
"""Seconds of back-to-back passes after which the relay gives its database connection back to the pool."""


@dataclasses.dataclass(frozen=True, slots=True)
class RelaySettings:
    """Where and how the relay publishes."""

    broker_url: str = "memory://"
    exchange: str = DEFAULT_EXCHANGE
    batch_rows: int = 250
    """Outbox rows per pass: their messages go out pipelined, then their confirms are awaited together
    and their stamps written in one statement (a pass is about 1,000 messages with rows of 4 events)."""
    idle_interval: float = 1.0
    """Seconds between two looks at an empty outbox when no nudge comes."""
    nudge_interval: float = 0.03
    """Seconds at least from the start of one pass to a pass a nudge asks for: under load, when every
    commit nudges, one pass then takes the rows of several commits (each pass has fixed costs: two
    queries, the broker's round trip); events leave at most that much later. 10 → 30 ms: single orders
    over HTTP +15–21 % (the relay ~115 instead of ~175 µs per order), beside the market-data mirror's
    own 50 ms."""
    backoff: Backoff = dataclasses.field(default_factory=lambda: Backoff(initial=0.2, factor=2.0, cap=10.0))
    """Delay before the next try while the broker (or the database) fails; jittered down by up to half."""
    connect_timeout: float = 2.0
    confirm_timeout: float = 5.0
    database_timeout: float = 2.0
    retention: float = 86_400.0
    """Seconds a published row is kept before the periodic maintenance prunes it."""
    process: bool = False
    """Run the relay in a process of its own (`actors.relay_process`), off the engine's GIL."""

    def __post_init__(self) -> None:
        if self.process and self.broker_url.startswith("memory://"):
            raise ValueError("a relay process needs a broker of its own (amqp://): memory:// reaches one "
                             "process only")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {self.batch_rows}")
        intervals_ok = self.idle_interval > 0 and 0 <= self.nudge_interval < self.idle_interval
        if not intervals_ok or self.retention < 0:
            raise ValueError("idle_interval must be greater than 0, nudge_interval at least 0 and less than "
                             "idle_interval, and retention at least 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RelaySettings:
        """Settings from `dataclasses.asdict` of settings (how a relay process receives them)."""
        return cls(**{**values, "backoff": Backoff(**values["backoff"])})

    @property
    def stop_timeout(self) -> float:
        """How long a pass may take at most (so how long a stop may have to wait for one)."""
        return self.connect_timeout + self.confirm_timeout + 2 * self.database_timeout + 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class RelayFigures:
    """What the relay has done since the system started (plus the table's backlog, when read)."""

    published_events: int
    """Events confirmed by the broker (an event published again after a failure counts again)."""
    published_rows: int
    """Outbox rows stamped published."""
    last_published_at: float | None
    """Wall-clock time (seconds since the epoch) of the last confirmed event; None before the first."""
    broker_available: bool
    """False from a failed publish (or connect) until the next one succeeds."""
    database_available: bool
    """False from a failed read or stamp of the outbox until the next one succeeds."""
    outages: int
    """Broker or database outages the relay went through (each logged once)."""
    backlog: OutboxBacklog | None = None
    """Unpublished rows, their events and the oldest one's age; None when not read (or unreadable)."""


class RelayStats:
    """Thread-safe counters shared by every incarnation of the relay (and read by metrics)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events = 0
        self._rows = 0
        self._last: float | None = None
        self._sources: dict[object, dict[str, int]] = {}  # per relay process: its last reported counts
        self.outages = Outages()  # "broker" / "database"

    def published(self, events: int) -> None:
        """Count `events` confirmed by the broker, now."""
        with self._lock:
            self._events += events
            self._last = self._clock()

    def stamped(self, rows: int) -> None:
        """Count `rows` stamped published."""
        with self._lock:
            self._rows += rows

    def absorb(self, source: object, figures: RelayFigures) -> None:
        """Take the figures a relay process reported (`ops.relay_main`): counted since that process
        started, so what is added is what grew since its previous report; its outages become ours."""
        with self._lock:
            seen = self._sources.setdefault(source, {"events": 0, "rows": 0})
            self._events += max(figures.published_events - seen["events"], 0)
            self._rows += max(figures.published_rows - seen["rows"], 0)
            seen.update(events=figures.published_events, rows=figures.published_rows)
            if figures.last_published_at is not None:
                self._last = max(self._last or 0.0, figures.last_published_at)
        parts = (("broker", figures.broker_available), ("database", figures.database_available))
        for part, available in parts:
            if available:
                self.outages.recovered(part)
            else:
                self.outages.failed(part)

    def figures(self, backlog: OutboxBacklog | None = None) -> RelayFigures:
        """The figures now, with `backlog` attached."""
        outages = self.outages
        with self._lock:
            return RelayFigures(self._events, self._rows, self._last, outages.up("broker"),
                                outages.up("database"), outages.count, backlog)


class OutboxRelay(PollingActor):
    """The relay's actor (see the module docstring)."""

    what = "outbox relay"
    waiting = "events wait in the outbox"

    def __init__(self, link: ChildLink, *, pool: Any, settings: RelaySettings,
                 stats: RelayStats | None = None, publisher: EventPublisher | None = None) -> None:
        self.stats = stats if stats is not None else RelayStats()
        super().__init__(link, log=_log, outages=self.stats.outages, idle_interval=settings.idle_interval,
                         backoff=settings.backoff, nudge_interval=settings.nudge_interval)
        self._pool = pool
        self._conn: psycopg.Connection[Any] | None = None  # held between passes (see _connection)
        self._held_since = 0.0
        self.settings = settings
        self._publisher = publisher if publisher is not None else EventPublisher(
            settings.broker_url, settings.exchange, connect_timeout=settings.connect_timeout,
            confirm_timeout=settings.confirm_timeout)

    def shut(self) -> None:
        """Stop the timer, close the broker connection, give the database connection back."""
        super().shut()
        self._publisher.close()
        self._give_back()

    # -- the database connection -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection held across passes while rows keep coming (taken from the pool if none is).

        Autocommit while held: reading the outbox and stamping rows are one statement each, so each is
        one round trip, with no BEGIN/COMMIT and no pool check around it (a pass per commit under load
        paid ~6 round trips for 2 statements). Given back after `MAX_HOLD` s, an idle pass or a failure.
        """
        conn = self._conn
        if conn is not None and time.monotonic() - self._held_since > MAX_HOLD:
            self._give_back()
            conn = None
        if conn is None:
            with storage_errors("reading the outbox"):
                conn = self._pool.getconn(timeout=self.settings.database_timeout)
                try:
                    conn.autocommit = True
                except BaseException:
                    self._pool.putconn(conn)
                    raise
            self._conn, self._held_since = conn, time.monotonic()
        return conn

    def _give_back(self) -> None:
        """Return the held connection to the pool as the pool lent it (not autocommit)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):  # broken: the pool sees it and replaces it
            conn.autocommit = False
        self._pool.putconn(conn)

    # -- one pass -----------------------------------------------------------------------------------

    def pass_once(self) -> bool | None:
        """Publish the next rows; True when more may wait, None after a failure."""
        settings = self.settings
        try:
            conn = self._connection()
            rows = fetch_unpublished(conn, settings.batch_rows, timeout=settings.database_timeout)
        except StorageError as exc:
            self._give_back()
            self.failed("database", exc)
            return None
        self.recovered("database")
        if not rows:
            self._give_back()  # idle: the pool may lend it to someone else
            if not self.stats.outages.up("broker"):  # nothing to publish: is it back, though?
                try:
                    self._publisher.connect()
                except BrokerUnavailable as exc:
                    self.failed("broker", exc)
                    return None
                self.recovered("broker")
            return False
        done, failure = self._publish(rows)
        if done:
            try:
                mark_published(self._connection(), done, timeout=settings.database_timeout)
            except StorageError as exc:  # published but not stamped: they go out again (same ids)
                self._give_back()
                self.failed("database", exc)
                return None
            self.stats.stamped(len(done))
        if failure is not None:
            self.failed("broker", failure)
            return None
        return len(rows) == settings.batch_rows

    def _publish(self, rows: list[OutboxRow]) -> tuple[list[int], BrokerUnavailable | None]:
        """Publish the rows in order; return the ids of those fully confirmed and the failure, if any."""
        confirmed, failure = self._publisher.publish_rows(rows)
        done = rows[:confirmed]
        if done:
            self.stats.published(sum(len(row.events) for row in done))
            if _trace_log.isEnabledFor(logging.DEBUG):  # the last step of a command's trail, by sequence
                for row in done:
                    count = len(row.events)
                    _trace_log.debug("published %d event(s) of %s sequences %s..%s", count,
                                     row.symbol or "transfers", row.first_sequence, row.last_sequence,
                                     extra={"pair": row.symbol, "first_sequence": row.first_sequence,
                                            "last_sequence": row.last_sequence, "events": count})
            self.recovered("broker")
        return [row.id for row in done], failure
