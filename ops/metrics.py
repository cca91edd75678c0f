"""The engine's Prometheus metrics, composed in the gunicorn worker by ``ops.server.build_worker``.

Two kinds of sources feed one ``CollectorRegistry`` (the one ``/metrics`` exposes):

- hooks, counted as things happen: :class:`EngineMetrics` is the actor system's supervisor ``on_event``,
  the writer's ``on_batch`` and the Exchange's ``observer`` (`actors.exchange.CommandObserver`);
- collectors evaluated at scrape time, each bounded in time so a scrape never hangs on a busy engine:
  :class:`ActorCollector` (the supervisor's list, and every pair's status and depth asked all at once with
  one short deadline), :class:`OutboxCollector` (PostgreSQL with a statement timeout, cached a few
  seconds), :class:`PoolCollector` (psycopg_pool's counters, in process) and :class:`ThreadCpuCollector`
  (each thread's CPU clock, by role: `ops.threadcpu`).

The HTTP request counter and latency histogram live with the middleware (`http.middleware.HttpMetrics`).

Every metric (counters are exposed with ``_total``, histograms with ``_bucket``/``_sum``/``_count``):

=================================================== ========= ================ ==============================
name                                                type      labels           meaning
=================================================== ========= ================ ==============================
trade_engine_build_info                             gauge     version          1
trade_engine_orders_accepted_total                  counter   pair             placements answered accepted
                                                                               (committed)
trade_engine_orders_rejected_total                  counter   reason           placements answered refused:
                                                                               error code (ENGINE_TIMEOUT
                                                                               too) or the engine's
                                                                               reject_reason
trade_engine_trades_total                           counter   pair             trades committed
trade_engine_command_duration_seconds               histogram command          Exchange → committed answer
trade_engine_match_duration_seconds                 histogram command          Exchange → pair handed the
                                                                               facts to the writer (mailbox
                                                                               wait, matching, rows)
trade_engine_commit_wait_seconds                    histogram command          handed to the writer → answer
trade_engine_command_errors_total                   counter   command, reason  commands answered with an error
trade_engine_commit_batch_commands                  histogram                  commands per committed batch
trade_engine_commit_batch_rows                      histogram                  rows per committed batch
trade_engine_commit_duration_seconds                histogram                  write + commit of one batch
trade_engine_commit_failures_total                  counter                    batches whose commit failed
trade_engine_actor_restarts_total                   counter   actor            restarted incarnations that
                                                                               came up (a failed start: crash)
trade_engine_actor_crashes_total                    counter   actor            incarnations ended abnormally
trade_engine_actor_intensity_exceeded_total         counter   actor            supervisor gave up (FAILED)
trade_engine_group_restarts_total                   counter   group            one-for-all group rebuilds
trade_engine_circuit_breaker_state                  gauge     breaker          0 closed, 1 open, 2 half-open
trade_engine_scrape_errors_total                    counter   source           pairs / outbox / wallet / pool
                                                                               reads failed during a scrape
trade_engine_actor_state                            gauge     actor, state     1 for the actor's state
trade_engine_actor_mailbox_messages                 gauge     actor            messages waiting
trade_engine_actor_incarnation                      gauge     actor            current incarnation
trade_engine_pair_trading                           gauge     pair             1 trading, 0 halted
trade_engine_pair_sequence                          gauge     pair             the pair's last sequence
trade_engine_book_orders                            gauge     pair, side       resting orders (buy/sell)
trade_engine_book_levels                            gauge     pair, side       price levels (at most 10,000)
trade_engine_stop_orders                            gauge     pair             stops waiting for a trigger
trade_engine_outbox_unpublished_rows                gauge                      outbox rows not yet published
                                                                               (counted up to 1,000,000)
trade_engine_outbox_publish_lag_seconds             gauge                      age of the oldest of them
trade_engine_wallet_commands_pending                gauge                      remote wallet: settlements and
                                                                               releases not yet delivered
trade_engine_wallet_settlement_lag_seconds          gauge                      age of the oldest of them
trade_engine_wallet_commands_refused                gauge                      parked: refused by the service
trade_engine_db_pool_connections                    gauge                      connections open
trade_engine_db_pool_available_connections          gauge                      idle in the pool
trade_engine_db_pool_in_use_connections             gauge                      lent out
trade_engine_db_pool_max_connections                gauge                      the pool's limit
trade_engine_db_pool_waiting_requests               gauge                      callers waiting for one
trade_engine_db_pool_requests_total                 counter                    connections asked for
trade_engine_db_pool_wait_seconds_total             counter                    time callers waited
trade_engine_db_pool_errors_total                   counter                    requests that got none
trade_engine_thread_cpu_seconds_total               counter   role             CPU time of this process's
                                                                               threads by role: writer,
                                                                               pairs, wallet, relay,
                                                                               settler, mirror, http
                                                                               (the event loop and its
                                                                               executor), main, other
=================================================== ========= ================ ==============================

Request tracing: :class:`EngineMetrics` also remembers the request id (`http.middleware.current_request_id`)
each command was sent under, and logs (logger ``tradeengine.commands``, DEBUG) when the pair hands the
command's facts to the writer and when its commit answers it, with ``request_id``, ``order_id``, ``pair``
and the committed sequences (the outbox events of the command carry those sequences), or the error that
answered it; the outbox relay logs there too when it has published a pair's events, with the same
``pair`` and the sequence range, so an order is followed from HTTP to commit to event. They are DEBUG
lines on purpose: at thousands of commands per second, or when the database is gone and every command
fails, one line per command would flood the log; the HTTP access line (INFO) carries the request id and
the status of every request.

Cost on the command path, measured: about 11 µs of CPU per command (send, hand-over, answer).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import pybreaker
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tradeengine.actors.exchange import OrderRequest
from tradeengine.actors.pair import CommandOutcome, Depth, DepthQuery, PairActorStatus, StatusQuery
from tradeengine.actors.supervision import ChildState, ChildStatus, EventKind, SupervisorEvent
from tradeengine.actors.system import DATABASE_GROUP, ActorSystem
from tradeengine.actors.writer import BatchReport
from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    DomainError,
    OrderAccepted,
    OrderRejected,
    PlaceOrder,
    TradeEngineError,
    TradeExecuted,
)
from tradeengine.http.middleware import current_request_id
from tradeengine.ops.threadcpu import ThreadCpu
from tradeengine.storage.outbox import BACKLOG_CAP, OutboxBacklog
from tradeengine.storage.outbox import read_backlog as read_outbox_backlog
from tradeengine.storage.wallet_commands import WalletBacklog
from tradeengine.storage.wallet_commands import read_backlog as read_wallet_backlog

__all__ = [
    "ActorCollector",
    "EngineMetrics",
    "OutboxCollector",
    "PoolCollector",
    "ScrapeErrors",
    "WalletCommandsCollector",
]

_log = logging.getLogger(__name__)
_trace_log = logging.getLogger("tradeengine.commands")

PAIR_PREFIX = "pair:"
COMMANDS = ("place", "cancel", "amend", "cancel_all")
BREAKER_STATES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_OPEN: 1, pybreaker.STATE_HALF_OPEN: 2}
SCRAPE_SOURCES = ("pairs", "outbox", "wallet", "pool")

_COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_COMMAND_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_BATCH_ROW_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)

def command_name(command: Command) -> str:
    """The ``command`` label of an engine command."""
    if isinstance(command, PlaceOrder):
        return "place"
    if isinstance(command, CancelOrder):
        return "cancel"
    if isinstance(command, AmendOrder):
        return "amend"
    if isinstance(command, CancelAll):
        return "cancel_all"
    return type(command).__name__.lower()


def error_reason(error: BaseException) -> str:
    """The ``reason`` label of an error: its stable code (INTERNAL_ERROR for anything unexpected)."""
    return error.code if isinstance(error, TradeEngineError) else "INTERNAL_ERROR"


class _Children:
    """The children of one labelled metric, remembered: the per-command path skips ``labels()``."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


@dataclasses.dataclass(slots=True)
class _Trace:
    """One command on its way: what it is, the request it came with, when it was sent and handed over."""

    command: str
    order_id: str | None
    request_id: str | None
    sent: float
    handed: float | None = None


class EngineMetrics:
    """The counters and histograms fed by the actor system's hooks, and the collectors read at scrape time.

    Build it before the :class:`ActorSystem` and pass ``on_event=metrics.on_supervisor_event``,
    ``on_batch=metrics.on_batch`` and ``observer=metrics``; once the system runs, :meth:`watch` registers
    the scrape-time collectors. Every hook is safe to call from any thread and never raises.
    """

    def __init__(self, registry: CollectorRegistry, *, version: str | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.registry = registry
        self._clock = clock
        # reply → its trace, for the pair's hand-over; an entry goes with its reply (no cleanup needed)
        self._traces: weakref.WeakKeyDictionary[Future[Any], _Trace] = weakref.WeakKeyDictionary()
        if version is not None:
            info = Gauge("trade_engine_build_info", "Always 1; the engine's version in its label.",
                         ("version",), registry=registry)
            info.labels(version).set(1)
        # -- orders and commands
        self.orders_accepted = Counter(
            "trade_engine_orders_accepted", "Order placements accepted and committed, by pair.",
            ("pair",), registry=registry)
        self.orders_rejected = Counter(
            "trade_engine_orders_rejected",
            "Order placements refused, by reason: the error code, or the engine's reject_reason for an "
            "order stored as REJECTED.", ("reason",), registry=registry)
        self.trades = Counter("trade_engine_trades", "Trades committed, by pair.", ("pair",),
                              registry=registry)
        self.command_duration = Histogram(
            "trade_engine_command_duration_seconds",
            "From the Exchange sending a command to its pair until its answer (after the commit).",
            ("command",), buckets=_COMMAND_BUCKETS, registry=registry)
        self.match_duration = Histogram(
            "trade_engine_match_duration_seconds",
            "Time a command spends in its pair: from the Exchange sending it until the pair hands its "
            "facts to the writer (mailbox wait, matching, row preparation), or refuses it (a rule).",
            ("command",), buckets=_COMMAND_BUCKETS, registry=registry)
        self.commit_wait = Histogram(
            "trade_engine_commit_wait_seconds",
            "From the pair handing a command's facts to the writer until the commit answers it.",
            ("command",), buckets=_COMMAND_BUCKETS, registry=registry)
        self.command_errors = Counter(
            "trade_engine_command_errors", "Commands a pair or the writer answered with an error, by code.",
            ("command", "reason"), registry=registry)
        self._accepted, self._rejected, self._trades = (
            _Children(self.orders_accepted), _Children(self.orders_rejected), _Children(self.trades))
        self._total, self._in_pair, self._waiting = (
            _Children(self.command_duration), _Children(self.match_duration), _Children(self.commit_wait))
        for name in COMMANDS:
            for children in (self._total, self._in_pair, self._waiting):
                children(name)
        # -- the writer
        self.commit_batch_commands = Histogram(
            "trade_engine_commit_batch_commands", "Commands (facts of one command each) per committed batch.",
            buckets=_BATCH_COMMAND_BUCKETS, registry=registry)
        self.commit_batch_rows = Histogram(
            "trade_engine_commit_batch_rows", "Rows written per committed batch.",
            buckets=_BATCH_ROW_BUCKETS, registry=registry)
        self.commit_duration = Histogram(
            "trade_engine_commit_duration_seconds", "Time to write and commit one batch.",
            buckets=_COMMIT_BUCKETS, registry=registry)
        self.commit_failures = Counter(
            "trade_engine_commit_failures", "Batches whose write or commit failed.", registry=registry)
        # -- supervision
        self.actor_restarts = Counter(
            "trade_engine_actor_restarts", "Actor incarnations started again by the supervisor that came up "
            "(a restart whose start failed counts as a crash; `trade-engine actors` counts every attempt).",
            ("actor",), registry=registry)
        self.actor_crashes = Counter(
            "trade_engine_actor_crashes", "Actor incarnations that ended abnormally.",
            ("actor",), registry=registry)
        self.actor_intensity_exceeded = Counter(
            "trade_engine_actor_intensity_exceeded",
            "Times the supervisor gave an actor up (restart intensity exceeded: FAILED until an operator "
            "restarts it).", ("actor",), registry=registry)
        self.group_restarts = Counter(
            "trade_engine_group_restarts", "One-for-all rebuilds of a supervision group.", ("group",),
            registry=registry)
        self.group_restarts.labels(DATABASE_GROUP)
        self.breaker_state = Gauge(
            "trade_engine_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ("breaker",), registry=registry)
        self.breaker_state.labels("wallet").set(0)
        self.scrape_errors = ScrapeErrors()  # registered by watch(), after the collectors that feed it

    # -- wiring ---------------------------------------------------------------------------------------

    def watch(self, system: ActorSystem, pool: Any, *, pair_timeout: float = 0.5,
              outbox_ttl: float = 5.0) -> None:
        """Register the scrape-time collectors of the running ``system`` and its ``pool``."""
        for status in system.actors():
            self._known_actor(status.name)
        self.registry.register(ActorCollector(system, timeout=pair_timeout, errors=self.scrape_errors))
        self.registry.register(OutboxCollector(pool, ttl=outbox_ttl, errors=self.scrape_errors))
        if system.settler_figures(backlog=False) is not None:  # a remote wallet
            self.registry.register(WalletCommandsCollector(pool, ttl=outbox_ttl, errors=self.scrape_errors))
        self.registry.register(PoolCollector(pool, errors=self.scrape_errors))
        self.registry.register(ThreadCpuCollector())
        self.registry.register(self.scrape_errors)  # collected after them: a scrape shows its own errors

    def set_breaker_state(self, breaker: str, state: str) -> None:
        """Record a circuit breaker's state by name: ``closed``, ``open`` or ``half-open``."""
        self.breaker_state.labels(breaker).set(BREAKER_STATES[state])

    def breaker_listener(self, breaker: str) -> pybreaker.CircuitBreakerListener:
        """A pybreaker listener that keeps ``trade_engine_circuit_breaker_state{breaker=...}`` current."""
        return _BreakerListener(self, breaker)

    # -- supervisor and writer hooks -----------------------------------------------------------------

    def on_supervisor_event(self, event: SupervisorEvent) -> None:
        """The supervisor's ``on_event``: count restarts, crashes and give-ups."""
        try:
            if event.kind is EventKind.STARTED:
                self._known_actor(event.name)
            elif event.kind is EventKind.RESTARTED:
                self.actor_restarts.labels(event.name).inc()
            elif event.kind is EventKind.CRASHED:
                self.actor_crashes.labels(event.name).inc()
            elif event.kind is EventKind.FAILED:
                self.actor_intensity_exceeded.labels(event.name).inc()
            elif event.kind is EventKind.GROUP_RESTARTING:
                self.group_restarts.labels(event.name).inc()
        except Exception:
            _log.exception("metrics: supervisor event %s not counted", event)

    def on_batch(self, report: BatchReport) -> None:
        """The writer's ``on_batch``: batch size and commit latency (batches without commands are skipped)."""
        try:
            if not report.ok:
                self.commit_failures.inc()
            elif report.commits:
                self.commit_batch_commands.observe(report.commits)
                self.commit_batch_rows.observe(report.rows)
                self.commit_duration.observe(report.seconds)
        except Exception:
            _log.exception("metrics: batch report %s not counted", report)

    def _known_actor(self, name: str) -> None:
        """Make the actor's counters exist at 0, so rates and alerts see it before its first restart."""
        for counter in (self.actor_restarts, self.actor_crashes, self.actor_intensity_exceeded):
            counter.labels(name)
        if name.startswith(PAIR_PREFIX):
            symbol = name[len(PAIR_PREFIX):]
            self._accepted(symbol)
            self._trades(symbol)

    # -- the Exchange's observer ---------------------------------------------------------------------

    def command_sent(self, command: Command, reply: Future[Any]) -> None:
        """Note the command's send time and request id; its answer is measured when ``reply`` resolves."""
        try:
            order_id = getattr(command, "order_id", None)
            trace = _Trace(command_name(command), order_id, current_request_id(), self._clock())
            self._traces[reply] = trace  # a single dict store: atomic, no lock needed
            reply.add_done_callback(functools.partial(self._answered, trace))
        except Exception:
            _log.exception("metrics: command %r not traced", command)

    def command_handed(self, reply: Future[Any]) -> None:
        """The pair handed the command's facts to the writer: the end of its time in the pair."""
        try:
            trace = self._traces.get(reply)
            if trace is None:
                return
            trace.handed = self._clock()
            if _trace_log.isEnabledFor(logging.DEBUG):
                _trace_log.debug("%s %s matched; facts handed to the writer", trace.command,
                                 trace.order_id or "-", extra=self._fields(trace))
        except Exception:
            _log.exception("metrics: hand-over not traced")

    def order_placed(self, request: OrderRequest, result: CommandOutcome | TradeEngineError) -> None:
        """Count one placement the Exchange answered: accepted by pair, or rejected by reason."""
        try:
            if isinstance(result, TradeEngineError):
                self._rejected(result.code).inc()
                return
            first = result.events[0] if result.events else None
            if isinstance(first, OrderRejected):
                self._rejected(first.reason.value).inc()
            elif isinstance(first, OrderAccepted):
                self._accepted(result.spec.symbol).inc()
        except Exception:
            _log.exception("metrics: placement of %r not counted", request)

    def _answered(self, trace: _Trace, reply: Future[Any]) -> None:
        """``reply`` resolved (on the writer's reply thread, or the pair's for a rule violation)."""
        try:
            now = self._clock()
            total = now - trace.sent
            self._total(trace.command).observe(total)
            try:
                error = reply.exception()
            except CancelledError as exc:
                error = exc
            if trace.handed is not None:
                self._in_pair(trace.command).observe(trace.handed - trace.sent)
                self._waiting(trace.command).observe(now - trace.handed)
            elif isinstance(error, DomainError):  # the pair answered it itself: all of it was its time
                self._in_pair(trace.command).observe(total)
            if error is not None:
                self._failed(trace, error)
            else:
                self._committed(trace, reply.result())
        except Exception:
            _log.exception("metrics: answer of %s %s not counted", trace.command, trace.order_id)

    def _committed(self, trace: _Trace, outcome: Any) -> None:
        if not isinstance(outcome, CommandOutcome):
            return
        trades = sum(1 for event in outcome.events if isinstance(event, TradeExecuted))
        if trades:
            self._trades(outcome.spec.symbol).inc(trades)
        if _trace_log.isEnabledFor(logging.DEBUG):
            sequences = [event.sequence for event in outcome.events]
            fields = {**self._fields(trace), "pair": outcome.spec.symbol, "trades": trades,
                      "first_sequence": min(sequences, default=None),
                      "last_sequence": max(sequences, default=None)}
            _trace_log.debug("%s %s committed: %d events, %d trades", trace.command, trace.order_id or "-",
                             len(outcome.events), trades, extra=fields)

    def _fields(self, trace: _Trace) -> dict[str, Any]:
        """The log fields of a traced command: its kind, order id, request id and time since sent."""
        fields: dict[str, Any] = {"command": trace.command, "order_id": trace.order_id,
                                  "latency_ms": round((self._clock() - trace.sent) * 1000.0, 3)}
        if trace.request_id is not None:
            fields["request_id"] = trace.request_id
        return fields

    def _failed(self, trace: _Trace, error: BaseException) -> None:
        reason = error_reason(error)
        self.command_errors.labels(trace.command, reason).inc()
        if _trace_log.isEnabledFor(logging.DEBUG):
            _trace_log.debug("%s %s answered %s: %s", trace.command, trace.order_id or "-", reason, error,
                             extra={**self._fields(trace), "reason": reason})


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics: EngineMetrics, breaker: str) -> None:
        self._metrics = metrics
        self._breaker = breaker
        metrics.set_breaker_state(breaker, pybreaker.STATE_CLOSED)

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._metrics.set_breaker_state(self._breaker, new_state.name)


# -- scrape-time collectors -------------------------------------------------------------------------


class ScrapeErrors(Collector):
    """``trade_engine_scrape_errors_total{source}``: reads made for a scrape that failed or timed out.

    Register it after the collectors that count into it, so a scrape reports its own failures.
    """

    def __init__(self, sources: Iterable[str] = SCRAPE_SOURCES) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(sources, 0)

    def inc(self, source: str) -> None:
        """Count one failed read of ``source``."""
        with self._lock:
            self._counts[source] = self._counts.get(source, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("trade_engine_scrape_errors", "Reads made for a scrape that failed or "
                                     "timed out, by source (pairs, outbox, wallet, pool).", labels=["source"])
        with self._lock:
            counts = sorted(self._counts.items())
        for source, count in counts:
            family.add_metric([source], count)
        yield family


class ActorCollector(Collector):
    """Every supervised actor's state, mailbox and incarnation; every running pair's book, read at scrape
    time: ``StatusQuery`` and ``DepthQuery`` go to all pairs at once, and whatever has not answered
    ``timeout`` seconds later is left out of this scrape (and counted in ``trade_engine_scrape_errors``)."""

    def __init__(self, system: ActorSystem, *, timeout: float = 0.5, max_levels: int = 10_000,
                 errors: ScrapeErrors | None = None) -> None:
        self._system = system
        self._timeout = timeout
        self._max_levels = max_levels
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        try:
            statuses = self._system.actors()
        except TradeEngineError:  # not running
            return
        yield from _actor_families(statuses)
        yield from self._pair_families([s for s in statuses if s.name.startswith(PAIR_PREFIX)])

    def _pair_families(self, pairs: list[ChildStatus]) -> Iterator[Metric]:
        asked = []
        supervisor = self._system.supervisor
        for status in pairs:
            if supervisor is None or status.state is not ChildState.RUNNING:
                continue
            try:
                handle = supervisor.handle(status.name)
                asked.append((status.name[len(PAIR_PREFIX):], handle.ask_future(StatusQuery()),
                              handle.ask_future(DepthQuery(self._max_levels))))
            except Exception:  # stopped or restarting between list() and the ask
                self._error()
        deadline = time.monotonic() + self._timeout
        answers: list[tuple[str, PairActorStatus, Depth]] = []
        for symbol, status_future, depth_future in asked:
            try:
                pair_status = status_future.get(timeout=max(deadline - time.monotonic(), 0.0))
                depth = depth_future.get(timeout=max(deadline - time.monotonic(), 0.0))
            except Exception:  # pykka.Timeout, or the incarnation died
                self._error()
                continue
            answers.append((symbol, pair_status, depth))
        trading = GaugeMetricFamily("trade_engine_pair_trading", "1 while the pair accepts new orders, 0 "
                                    "when halted.", labels=["pair"])
        sequence = GaugeMetricFamily("trade_engine_pair_sequence", "The pair's last assigned sequence.",
                                     labels=["pair"])
        orders = GaugeMetricFamily("trade_engine_book_orders", "Orders resting in the book, by side.",
                                   labels=["pair", "side"])
        levels = GaugeMetricFamily("trade_engine_book_levels", f"Price levels in the book, by side (counted "
                                   f"up to {self._max_levels}).", labels=["pair", "side"])
        stops = GaugeMetricFamily("trade_engine_stop_orders", "Stop orders waiting for their trigger.",
                                  labels=["pair"])
        for symbol, pair_status, depth in answers:
            trading.add_metric([symbol], 1.0 if pair_status.trading else 0.0)
            sequence.add_metric([symbol], pair_status.sequence)
            orders.add_metric([symbol, "buy"], pair_status.bids)
            orders.add_metric([symbol, "sell"], pair_status.asks)
            levels.add_metric([symbol, "buy"], len(depth.bids))
            levels.add_metric([symbol, "sell"], len(depth.asks))
            stops.add_metric([symbol], pair_status.stops)
        yield from (trading, sequence, orders, levels, stops)

    def _error(self) -> None:
        if self._errors is not None:
            self._errors.inc("pairs")


def _actor_families(statuses: Iterable[ChildStatus]) -> Iterator[Metric]:
    state = GaugeMetricFamily("trade_engine_actor_state", "1 for the actor's current supervision state "
                              "(running, restarting, stopped, failed), 0 for the others.",
                              labels=["actor", "state"])
    mailbox = GaugeMetricFamily("trade_engine_actor_mailbox_messages", "Messages waiting in the actor's "
                                "mailbox.", labels=["actor"])
    incarnation = GaugeMetricFamily("trade_engine_actor_incarnation", "The actor's current incarnation "
                                    "(1 for the first).", labels=["actor"])
    for status in statuses:
        for candidate in ChildState:
            state.add_metric([status.name, candidate.value], 1.0 if status.state is candidate else 0.0)
        mailbox.add_metric([status.name], status.mailbox)
        incarnation.add_metric([status.name], status.incarnation)
    yield from (state, mailbox, incarnation)


class _CachedReadCollector(Collector):
    """A figure read from PostgreSQL at most once per ``ttl`` seconds (subclasses say what and how).

    A read runs on a thread of its own, bounded by ``connect_timeout`` (a pool connection) and
    ``statement_timeout``; a scrape waits for it at most their sum and half a second more: a database
    that hangs (a black-holed connection answers neither the query nor its timeout) must not hold the
    scrape. Concurrent scrapes share the read under way, and none starts another while it lasts. A
    failed read, or one that did not answer in time, is counted in
    ``trade_engine_scrape_errors{source=SOURCE}`` and leaves the gauges out until a read succeeds.
    """

    SOURCE = ""

    def __init__(self, pool: Any, *, ttl: float = 5.0, statement_timeout: float = 1.0,
                 connect_timeout: float = 0.5, errors: ScrapeErrors | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._ttl = ttl
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._errors = errors
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: Future[Any] | None = None  # the read under way
        self._cached: Any = None
        self._read_at: float | None = None

    def read(self) -> Any:
        """Read the figure (within the timeouts)."""
        raise NotImplementedError

    def _current(self) -> Any:
        with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < self._ttl:
                return self._cached
            reading = self._reading
            if reading is None:
                reading = self._reading = Future()
                threading.Thread(target=self._refresh, args=(reading,), name=f"metrics-{self.SOURCE}",
                                 daemon=True).start()
        wait = self._connect_timeout + self._statement_timeout + 0.5
        try:
            return reading.result(timeout=wait)
        except TimeoutError:
            self._failed(f"no answer within {wait:g} s (still waiting for it)")
            return None

    def _refresh(self, reading: Future[Any]) -> None:
        try:
            figure = self.read()
        except Exception as exc:
            figure = None
            self._failed(str(exc))
        with self._lock:
            self._cached, self._read_at, self._reading = figure, self._clock(), None
        reading.set_result(figure)

    def _failed(self, why: str) -> None:
        if self._errors is not None:
            self._errors.inc(self.SOURCE)
        _log.warning("metrics: the %s could not be read: %s", self.SOURCE, why)


class OutboxCollector(_CachedReadCollector):
    """The outbox backlog and publish lag (see `_CachedReadCollector`)."""

    SOURCE = "outbox"

    def __init__(self, pool: Any, *, read: Callable[..., OutboxBacklog] = read_outbox_backlog,
                 **options: Any) -> None:
        super().__init__(pool, **options)
        self._read = read

    def read(self) -> OutboxBacklog:
        return self._read(self._pool, timeout=self._connect_timeout,
                          statement_timeout=self._statement_timeout)

    def collect(self) -> Iterator[Metric]:
        backlog = self._current()
        if backlog is None:
            return
        rows = GaugeMetricFamily("trade_engine_outbox_unpublished_rows", f"Outbox rows committed but not "
                                 f"yet published to the broker (counted up to {BACKLOG_CAP}).")
        rows.add_metric([], backlog.rows)
        lag = GaugeMetricFamily("trade_engine_outbox_publish_lag_seconds", "Age of the oldest unpublished "
                                "outbox row (0 when every row is published).")
        lag.add_metric([], backlog.oldest_age)
        yield from (rows, lag)


class WalletCommandsCollector(_CachedReadCollector):
    """With a remote wallet: the settlements and releases not yet delivered to the wallet service."""

    SOURCE = "wallet"

    def read(self) -> WalletBacklog:
        return read_wallet_backlog(self._pool, timeout=self._connect_timeout + self._statement_timeout)

    def collect(self) -> Iterator[Metric]:
        backlog: WalletBacklog | None = self._current()
        if backlog is None:
            return
        pending = GaugeMetricFamily("trade_engine_wallet_commands_pending", "Wallet commands (settlements, "
                                    "releases) committed but not yet delivered to the wallet service.")
        pending.add_metric([], backlog.pending)
        lag = GaugeMetricFamily("trade_engine_wallet_settlement_lag_seconds", "Age of the oldest "
                                "undelivered wallet command (0 when every one is delivered).")
        lag.add_metric([], backlog.oldest_age)
        refused = GaugeMetricFamily("trade_engine_wallet_commands_refused", "Wallet commands the service "
                                    "refused, parked for an operator (never expected).")
        refused.add_metric([], backlog.refused)
        yield from (pending, lag, refused)


class ThreadCpuCollector(Collector):
    """``trade_engine_thread_cpu_seconds_total{role}``: this process's CPU time by thread role
    (`ops.threadcpu`: writer, pairs, wallet, relay, settler, mirror, http, main, other)."""

    def __init__(self, threads: ThreadCpu | None = None) -> None:
        self._threads = threads if threads is not None else ThreadCpu()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("trade_engine_thread_cpu_seconds", "CPU time of this process's "
                                     "threads (user and system), by what they do.", labels=["role"])
        for role, seconds in self._threads.read().items():
            family.add_metric([role], seconds)
        yield family


class PoolCollector(Collector):
    """The psycopg_pool's state (``get_stats()``): connections open, idle, lent out, callers waiting."""

    def __init__(self, pool: Any, *, errors: ScrapeErrors | None = None) -> None:
        self._pool = pool
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._pool.get_stats()
        except Exception:
            if self._errors is not None:
                self._errors.inc("pool")
            return
        size = stats.get("pool_size", 0)
        available = stats.get("pool_available", 0)
        gauges = (
            ("trade_engine_db_pool_connections", "PostgreSQL connections the pool holds open.", size),
            ("trade_engine_db_pool_available_connections", "Idle connections in the pool.", available),
            ("trade_engine_db_pool_in_use_connections", "Connections lent out.", max(size - available, 0)),
            ("trade_engine_db_pool_max_connections", "The pool's limit.", stats.get("pool_max", 0)),
            ("trade_engine_db_pool_waiting_requests", "Callers waiting for a connection now.",
             stats.get("requests_waiting", 0)),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        yield CounterMetricFamily("trade_engine_db_pool_requests", "Connections asked of the pool.",
                                  value=stats.get("requests_num", 0))
        yield CounterMetricFamily("trade_engine_db_pool_wait_seconds", "Time callers spent waiting for a "
                                  "connection.", value=stats.get("requests_wait_ms", 0) / 1000.0)
        yield CounterMetricFamily("trade_engine_db_pool_errors", "Requests for a connection that failed "
                                  "(timed out, or too many waiting).", value=stats.get("requests_errors", 0))
