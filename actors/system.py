"""The actor system of one engine process: writer, wallet and pairs under one supervisor.

It lives in the gunicorn worker only: created and started when the worker builds its app, stopped in
``worker_exit``. Composition, in start order (the supervisor stops in reverse):

    supervisor ── group "database" (rebuilt together once the database answers again)
                  ├── writer      PersistenceActor   ONE_FOR_ALL  (a failed commit → rebuild the group)
                  ├── wallet      WalletActor        ONE_FOR_ALL  (its ledger and the books go together)
                  └── pair:SYM …  PairActor          ONE_FOR_ONE  (a crash restarts that pair alone)
               relay              OutboxRelay        ONE_FOR_ONE  (when given ``relay`` settings; no group:
                                                                   it resumes from the outbox table;
                                                                   RelayProcess with ``process=True``:
                                                                   the same relay in a child process)
               settler            WalletSettler      ONE_FOR_ONE  (when given ``wallet`` settings; no group:
                                                                   it resumes from wallet_commands)

With ``wallet`` settings (`RemoteWalletSettings`) the balances live at a remote wallet service: the
wallet child is a `RemoteWalletActor`, the pairs hand `WalletSettledFacts` to the writer (wallet
commands instead of a local ledger), and the settler delivers those commands and reconciles the service
at every wallet start (`actors.remote_wallet`, `actors.settler`). One `WalletClient` (one breaker) is
shared by all of them for the system's life.

A pair that crashes is restarted alone: its new incarnation waits for the writer to commit what the old
one sent, then rebuilds its book from the database. A failed commit means memory and database may
differ, so the writer reports the whole group broken and the supervisor rebuilds it once the database
answers. The system also runs the partition maintenance (`actors.maintenance`; with a relay it also
prunes published outbox rows past ``RelaySettings.retention``) and, when given ``market_data`` settings,
the Redis market-data mirror (`actors.mirror`). The writer's report of each commit nudges the relay;
``relay_figures()`` gives its figures (events published, last publish time, backlog) to metrics.
Metrics hook in through ``on_event`` (supervisor events), ``on_batch`` (the writer's reports) and
``observer`` (every command sent, handed to the writer and answered: `exchange.CommandObserver`).

The specs and statuses of the pairs are kept here (the database is the source; this is the cache the
Exchange converts units with): each pair incarnation is built from the current entry, so a fee change
takes effect through a restart of that pair, and a halt through a message to it.

``start()`` and ``stop()`` are idempotent; a stopped system is not started again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from decimal import Decimal
from typing import Any

import pykka

from tradeengine.engine import PairSpec, format_atoms, format_decimal
from tradeengine.engine.errors import EngineTimeout, EngineUnavailable, UnknownSymbol, ValidationError
from tradeengine.storage.database import DEFAULT_PREPARE_THRESHOLD, check_database
from tradeengine.storage.errors import StorageError, StorageUnavailable
from tradeengine.storage.facts import PairFacts
from tradeengine.storage.orders import OrderLocation, find_client_order, largest_order_id, locate_order
from tradeengine.storage.outbox import prune_published, read_backlog
from tradeengine.storage.pairs import NewPair, PairRecord, PairRepository
from tradeengine.storage.partitions import run_partition_maintenance
from tradeengine.storage.recovery import check_reserved_funds, load_pair_specs, load_pair_state
from tradeengine.storage.wallet_client import WalletClient
from tradeengine.storage.wallet_commands import WalletSettledFacts
from tradeengine.storage.wallet_commands import read_backlog as read_wallet_backlog

from .exchange import CommandObserver, Exchange
from .handles import ChildHandle
from .ids import OrderIds
from .ledger import AssetBalance
from .maintenance import HOUR, PeriodicMaintenance
from .mirror import MarketDataMirror, MirrorSettings
from .pair import PairActor, SetTrading, StatusQuery
from .polling import Nudge
from .relay import OutboxRelay, RelayFigures, RelaySettings, RelayStats
from .relay_process import RelayProcess
from .remote_wallet import RemoteWallet, RemoteWalletActor, RemoteWalletSettings
from .settler import SettlerFigures, SettlerStats, WalletSettler
from .supervision import (
    ActorUnavailable,
    ChildFactory,
    ChildSpec,
    ChildStatus,
    GroupSpec,
    Strategy,
    SupervisorEvent,
)
from .supervisor import Supervisor
from .wallet import Deposit, LedgerSlot, WalletActor, Withdraw
from .writer import BatchReport, Commit, PersistenceActor
from .writer_process import WriterProcess

_log = logging.getLogger(__name__)

DATABASE_GROUP = "database"
ENGINE_WIDE_CHILDREN = ("writer", "wallet")
"""The actors every order needs: while one of them is down, no pair can take a command."""
WRITER_COMMIT_TIMEOUT = 10.0
WRITER_CONNECT_TIMEOUT = 5.0
TRADING_STATUSES = frozenset({"ACTIVE"})


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


def pair_child_name(symbol: str) -> str:
    """The supervisor's name for a pair's actor."""
    return f"pair:{symbol}"


@dataclasses.dataclass(slots=True)
class PairRoute:
    """A pair as the Exchange sees it: the current spec and a handle that survives restarts."""

    spec: PairSpec
    status: str
    handle: ChildHandle | None  # None while the pair's first incarnation starts (add_pair)

    def tell(self, message: Any, wait: float = 0.0) -> None:
        """Send to the pair's current incarnation; wait up to `wait` s while it restarts."""
        self._handle().tell(message, wait)

    def ask(self, message: Any, timeout: float) -> Any:
        """Send to the pair's current incarnation and wait for the answer."""
        return self._handle().ask(message, timeout)

    def _handle(self) -> ChildHandle:
        handle = self.handle
        if handle is None:
            raise EngineUnavailable(f"{self.spec.symbol} is starting", field="symbol")
        return handle


class DatabaseOrders:
    """The Exchange's view of committed orders: read from PostgreSQL, with a memory of recent ones.

    An order's pair and owner never change once it is committed, so remembering them is always right:
    the most recent `capacity` orders placed (or looked up) are located without a query, which spares
    a cancel or amend of a fresh order a database round trip (~0.6 ms of this process's CPU under
    load). Older ones are read from the database. Thread-safe (the Exchange's callers share it).
    """

    def __init__(self, pool: Any, *, capacity: int = 200_000) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self._pool = pool
        self._capacity = capacity
        # Insertion-ordered: the oldest entry is evicted first. OrderedDict's setitem and
        # popitem are single C calls, atomic under the GIL, so no lock is needed.
        self._recent: collections.OrderedDict[int, OrderLocation] = collections.OrderedDict()

    def locate(self, order_id: int) -> OrderLocation | None:
        """Return the pair and owner of an order, or None."""
        location = self._recent.get(order_id)
        if location is None:
            location = locate_order(self._pool, order_id)
            if location is not None:
                self.remember(order_id, location.symbol, location.user_id)
        return location

    def remember(self, order_id: int, symbol: str, user_id: int) -> None:
        """Note where a committed order lives (it never moves)."""
        if self._capacity == 0:
            return
        self._recent[order_id] = OrderLocation(symbol, user_id)
        if len(self._recent) > self._capacity:
            with contextlib.suppress(KeyError):  # another thread evicted the last one meanwhile
                self._recent.popitem(last=False)

    def find_client_order(self, user_id: int, client_order_id: str) -> int | None:
        """Return the id of the user's order with this client order id, or None."""
        return find_client_order(self._pool, user_id, client_order_id)


class ActorSystem:
    """Starts, supervises and stops the engine's actors and its periodic work."""

    def __init__(
        self,
        pool: Any,
        *,
        request_timeout: float = 5.0,
        maintenance_interval: float = HOUR,
        clock_us: Callable[[], int] = _wall_clock_us,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        observer: CommandObserver | None = None,
        market_data: MirrorSettings | None = None,
        relay: RelaySettings | None = None,
        wallet: RemoteWalletSettings | None = None,
        writer_process: bool = False,
    ) -> None:
        self.pool = pool
        self._writer_process = writer_process  # the writer commits in a process of its own
        self._wallet_settings = wallet  # a remote wallet service, when configured
        self.wallet_client: WalletClient | None = None
        self.settler_stats = SettlerStats()
        self._settler: ChildHandle | None = None
        self._market_data = market_data
        self._relay_settings = relay  # the outbox relay (child "relay"), when configured
        self.relay_stats = RelayStats()
        self._relay: ChildHandle | None = None
        self.mirror: MarketDataMirror | None = None  # the Redis market-data mirror, when configured
        self._maintenance = PeriodicMaintenance(self._run_partition_maintenance,
                                                interval=maintenance_interval)
        self._request_timeout = request_timeout
        self._clock_us = clock_us
        self._on_event = on_event
        self._on_batch = on_batch
        self._observer = observer  # metrics and request tracing: hears every command (exchange.py)
        self._lock = threading.Lock()
        self._stopped = False
        self._running = False
        self._routes: dict[str, PairRoute] = {}
        self._slot = LedgerSlot()
        self.supervisor: Supervisor | None = None
        self._exchange: Exchange | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    @property
    def exchange(self) -> Exchange:
        """The Exchange facade over the running pairs."""
        if self._exchange is None:
            raise EngineUnavailable("the engine is not running")
        return self._exchange

    def start(self) -> None:
        """Start the actors (writer, wallet, every pair) and the periodic partition maintenance."""
        with self._lock:
            if self._running or self._stopped:
                return
            self._maintenance.start()
            try:
                if self._wallet_settings is not None:
                    self.wallet_client = self._wallet_settings.client()
                self._start_actors()
                if self._market_data is not None:
                    self.mirror = MarketDataMirror(self._market_data, pool=self.pool, writer=self._writer,
                                                   pairs=self._mirrored_pairs)
                    self.mirror.start()
            except BaseException:
                self._stop_parts(timeout=10.0)
                raise
            self._running = True
        _log.info("actor system started: %d pairs (partition maintenance every %g s)",
                  len(self._routes), self._maintenance.interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every actor (pairs first, the writer last, committing what is pending) and the timer."""
        with self._lock:
            self._stopped = True
            was_running, self._running = self._running, False
        self._stop_parts(timeout)
        if was_running:
            _log.info("actor system stopped")

    def _stop_parts(self, timeout: float) -> None:
        mirror, self.mirror = self.mirror, None
        if mirror is not None:
            mirror.stop(timeout)
        supervisor, self.supervisor = self.supervisor, None
        self._exchange = None
        if supervisor is not None:
            supervisor.stop_all(timeout=timeout)
        self._settler = None
        client, self.wallet_client = self.wallet_client, None
        if client is not None:
            client.close()
        self._maintenance.stop(timeout)

    def _start_actors(self) -> None:
        supervisor = Supervisor(
            groups=[GroupSpec(DATABASE_GROUP, ready=self._database_answers)],
            on_event=self._on_event,
        )
        self.supervisor = supervisor
        writer = supervisor.add(ChildSpec(
            "writer",
            lambda link: PersistenceActor.start(link, self.pool, on_batch=self._batch_committed,
                                                commit_timeout=WRITER_COMMIT_TIMEOUT,
                                                process=self._writer_process_factory()),
            strategy=Strategy.ONE_FOR_ALL, group=DATABASE_GROUP,
            # on_stop commits what is pending: give it longer than one commit may take.
            stop_timeout=WRITER_COMMIT_TIMEOUT + 5.0,
        ))
        supervisor.add(ChildSpec("wallet", self._wallet_factory(writer), strategy=Strategy.ONE_FOR_ALL,
                                 group=DATABASE_GROUP))
        self._writer = writer
        self._pair_writer = writer if self._observer is None else _HandingWriter(writer, self._observer)
        for spec, status in load_pair_specs(self.pool):
            self._add_pair_actor(spec, status)
        if self.wallet_client is None:  # remote: the settler reconciles the service instead
            self._report_reserved_funds()
        ids = OrderIds(clock_us=self._clock_us, floor=largest_order_id(self.pool))
        self._exchange = Exchange(
            routes=self._routes.get, next_order_id=ids.next, clock_us=self._clock_us,
            orders=DatabaseOrders(self.pool), timeout=self._request_timeout,
            wallet=supervisor.handle("wallet"), symbols=self.symbols,
            observer=self._observer,
        )
        relay = self._relay_settings
        if relay is not None:
            self._relay = supervisor.add(ChildSpec("relay", self._relay_starter(relay),
                                                   stop_timeout=relay.stop_timeout))
        wallet, client = self._wallet_settings, self.wallet_client
        if wallet is not None and client is not None:
            self._settler = supervisor.add(ChildSpec(
                "settler",
                lambda link: WalletSettler.start(link, pool=self.pool, client=client, slot=self._slot,
                                                 settings=wallet.settler, stats=self.settler_stats),
                # a pass may wait for the service: every call of a batch may take its retries
                stop_timeout=30.0,
            ))
            self._nudge_settler()  # the wallet started before the settler existed

    def _writer_process_factory(self) -> Callable[[], WriterProcess] | None:
        """How the writer makes its process (None: it commits in this one)."""
        if not self._writer_process:
            return None
        conninfo = self.pool.conninfo
        # As the pool's connections (psycopg prepares unless told prepare_threshold=None).
        prepare = self.pool.kwargs.get("prepare_threshold", DEFAULT_PREPARE_THRESHOLD) is not None
        return lambda: WriterProcess(conninfo, commit_timeout=WRITER_COMMIT_TIMEOUT,
                                     connect_timeout=WRITER_CONNECT_TIMEOUT, prepare=prepare)

    def _wallet_factory(self, writer: ChildHandle) -> Callable[[Any], Any]:
        client = self.wallet_client
        if client is None:
            return lambda link: WalletActor.start(link, pool=self.pool, writer=writer, slot=self._slot,
                                                  clock_us=self._clock_us)
        return lambda link: RemoteWalletActor.start(
            link, client=client, on_installed=self._nudge_settler, on_command=self._nudge_settler,
            pool=self.pool, writer=writer, slot=self._slot, clock_us=self._clock_us)

    def _nudge_settler(self) -> None:
        settler = self._settler
        if settler is not None:
            with contextlib.suppress(EngineUnavailable):  # restarting: it looks at the table first
                settler.tell(Nudge())

    def _relay_starter(self, relay: RelaySettings) -> ChildFactory:
        """How the supervisor starts the relay: in this process, or as a process of its own."""
        if relay.process:
            return lambda link: RelayProcess.start(link, conninfo=self.pool.conninfo, settings=relay,
                                                   stats=self.relay_stats)
        return lambda link: OutboxRelay.start(link, pool=self.pool, settings=relay, stats=self.relay_stats)

    def _batch_committed(self, report: BatchReport) -> None:
        """The writer's report of a flush (its thread): nudge the relay and settler, then the hook."""
        relay = self._relay
        if relay is not None and report.ok and report.rows:
            with contextlib.suppress(EngineUnavailable):  # restarting: it looks at the outbox first
                relay.tell(Nudge())
        if report.ok and report.rows:
            self._nudge_settler()
        if self._on_batch is not None:
            self._on_batch(report)

    @property
    def remote_wallet(self) -> bool:
        """True when balances live at a remote wallet service."""
        return self._wallet_settings is not None

    def wallet_reconciled(self) -> bool:
        """Remote mode: True once the current wallet incarnation accepts reserves (always True built-in)."""
        if self._wallet_settings is None:
            return True
        try:
            backend = self._slot.current()
        except EngineUnavailable:
            return False
        return not isinstance(backend, RemoteWallet) or backend.reconciled

    def settler_figures(self, *, backlog: bool = True, timeout: float = 1.0) -> SettlerFigures | None:
        """The wallet settler's figures (None without a remote wallet): commands delivered and refused,
        reconciliations, service/database state, and with `backlog` the undelivered and refused commands
        and the oldest one's age, read within `timeout` (None if that fails).
        """
        if self._wallet_settings is None:
            return None
        waiting = None
        if backlog:
            try:
                waiting = read_wallet_backlog(self.pool, timeout=timeout)
            except StorageError as exc:
                _log.debug("the wallet backlog could not be read: %s", exc)
        return self.settler_stats.figures(waiting)

    def relay_figures(self, *, backlog: bool = True, timeout: float = 1.0) -> RelayFigures | None:
        """The outbox relay's figures (None when no relay is configured): events published, rows
        stamped, last publish time, broker/database state, outages, and with `backlog` the unpublished
        rows and events and the oldest one's age, read from PostgreSQL within `timeout` (None if that fails).
        """
        if self._relay_settings is None:
            return None
        waiting = None
        if backlog:
            try:
                waiting = read_backlog(self.pool, timeout=timeout)
            except StorageError as exc:
                _log.debug("the outbox backlog could not be read: %s", exc)
        return self.relay_stats.figures(waiting)

    def _add_pair_actor(self, spec: PairSpec, status: str) -> PairRoute:
        assert self.supervisor is not None
        symbol = spec.symbol

        def build(link: Any) -> Any:
            route = self._routes[symbol]
            return PairActor.start(link, spec=route.spec, trading=route.status in TRADING_STATUSES,
                                   pool=self.pool, writer=self._pair_writer, ledger=self._slot,
                                   facts=WalletSettledFacts if self._wallet_settings else PairFacts)

        placeholder = PairRoute(spec, status, handle=None)
        self._routes[symbol] = placeholder
        try:
            placeholder.handle = self.supervisor.add(ChildSpec(
                pair_child_name(symbol), build, strategy=Strategy.ONE_FOR_ONE, group=DATABASE_GROUP,
            ))
        except BaseException:
            self._routes.pop(symbol, None)
            raise
        return placeholder

    def _mirrored_pairs(self) -> list[tuple[PairSpec, ChildHandle]]:
        routes = list(self._routes.values())
        return [(route.spec, route.handle) for route in routes if route.handle is not None]

    def _report_reserved_funds(self) -> None:
        """Compare locked balances with what open orders reserve; report any difference loudly."""
        ledger = self._slot.current()
        pairs = [(route.spec, load_pair_state(self.pool, route.spec).snapshots)
                 for route in self._routes.values()]
        for gap in check_reserved_funds(ledger, pairs):  # type: ignore[arg-type]
            _log.error("locked funds differ from what open orders reserve: user %s asset %s locked %s "
                       "reserved %s", gap.user_id, gap.asset, format_atoms(gap.locked),
                       format_atoms(gap.reserved))

    def _database_answers(self) -> bool:
        try:
            check_database(self.pool, timeout=2.0)
        except StorageUnavailable:
            return False
        return True

    # -- operator controls ----------------------------------------------------------------------------

    def actors(self) -> list[ChildStatus]:
        """The supervised actors with state, incarnation, restarts, mailbox and last failure."""
        return list(self._supervisor().list())

    def symbols(self) -> list[str]:
        """The symbols of every pair of the engine, sorted."""
        return sorted(self._routes)

    def pair_actor(self, symbol: str) -> ChildStatus:
        """The supervision status of one pair's actor."""
        self._route(symbol)
        return self._supervisor().status(pair_child_name(symbol))

    def open_orders(self, symbols: Iterable[str]) -> dict[str, int | None]:
        """The number of live orders (resting and pending stops) of each pair, asked of all their actors
        at once; None for a pair whose actor is not running or does not answer within the request
        timeout (one deadline for all: a stuck pair does not hold the others' answers)."""
        asked: dict[str, pykka.Future[Any] | None] = {}
        for symbol in symbols:
            route = self._route(symbol)
            try:
                asked[symbol] = None if route.handle is None else route.handle.ask_future(StatusQuery())
            except ActorUnavailable:
                asked[symbol] = None
        deadline = time.monotonic() + self._request_timeout
        counts: dict[str, int | None] = {}
        for symbol, future in asked.items():
            counts[symbol] = None
            if future is not None:
                with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                    status = future.get(timeout=max(deadline - time.monotonic(), 0.0))
                    counts[symbol] = int(status.bids + status.asks + status.stops)
        return counts

    def add_pair(self, pair: NewPair) -> PairRecord:
        """Persist a new pair and start its actor: it trades at once."""
        spec = _spec_of(pair)  # the engine's rules first: a bad spec is refused before it is stored
        record = PairRepository(self.pool).create(pair)
        self._add_pair_actor(spec, record.status)
        _log.info("pair %s added (%s)", pair.symbol, record.status)
        return record

    def update_pair(self, symbol: str, *, status: str | None = None, maker_fee: Decimal | None = None,
                    taker_fee: Decimal | None = None) -> PairRecord:
        """Halt, resume or delist a pair, or change its fees (the pair restarts with the new fees).

        The change is stored first, and every later incarnation of the pair starts with it. A pair that is
        not running (failed, or restarting past the request timeout) takes it when it runs again: the
        change is answered as made, with a warning in the log, since it is.
        """
        route = self._route(symbol)
        record = PairRepository(self.pool).update(symbol, status=status, maker_fee=maker_fee,
                                                  taker_fee=taker_fee)
        if record is None:
            raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")
        route.status = record.status
        fees = maker_fee is not None or taker_fee is not None
        if fees:
            route.spec = dataclasses.replace(route.spec, maker_fee=record.maker_fee,
                                             taker_fee=record.taker_fee)
        try:
            if fees:
                self.restart_pair(symbol)
            else:
                route.ask(SetTrading(record.status in TRADING_STATUSES), self._request_timeout)
        except ActorUnavailable as exc:
            _log.warning("pair %s is not running (%s): its change (status %s, fees %s/%s) is stored and "
                         "takes effect when it runs again", symbol, exc, record.status,
                         format_decimal(record.maker_fee), format_decimal(record.taker_fee))
        return record

    def restart_pair(self, symbol: str) -> ChildStatus:
        """Restart a pair's actor; return once the new incarnation has rebuilt its book.

        When the writer or the wallet has failed (after failed commits: with them, every pair), the pair
        could not start without them: the supervisor rebuilds the whole database group instead.
        """
        self._route(symbol)
        name = pair_child_name(symbol)
        self._supervisor().restart(name)
        return self._supervisor().status(name)

    def deposit(self, user_id: int, asset: str, amount: int) -> AssetBalance:
        """Credit a user's balance (atoms); return it once committed."""
        return self._transfer(Deposit(user_id, asset, amount, Future()))

    def withdraw(self, user_id: int, asset: str, amount: int) -> AssetBalance:
        """Debit a user's available balance (atoms); return it once committed."""
        return self._transfer(Withdraw(user_id, asset, amount, Future()))

    def _transfer(self, message: Deposit | Withdraw) -> AssetBalance:
        if message.amount <= 0:
            raise ValidationError("amount must be greater than 0", field="amount")
        deadline = time.monotonic() + self._request_timeout
        self._supervisor().handle("wallet").tell(message, wait=self._request_timeout)
        try:
            return message.reply.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout:
            raise EngineTimeout(f"the wallet did not answer within {self._request_timeout} s; outcome "
                                "unknown (look at the balance)") from None

    def _route(self, symbol: str) -> PairRoute:
        route = self._routes.get(symbol)
        if route is None:
            raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")
        return route

    def _supervisor(self) -> Supervisor:
        if self.supervisor is None:
            raise EngineUnavailable("the engine is not running")
        return self.supervisor

    def _run_partition_maintenance(self) -> object:
        result = run_partition_maintenance(self.pool)
        if self._relay_settings is not None:  # published outbox rows past the retention go too
            pruned = prune_published(self.pool, self._relay_settings.retention)
            if pruned:
                _log.info("pruned %d published outbox row(s) older than %g s", pruned,
                          self._relay_settings.retention)
        return result


class _HandingWriter:
    """The writer as the pairs see it: tells the observer the moment a pair hands a command's facts over
    (the end of its time in the pair), then forwards every message to the writer."""

    __slots__ = ("_observer", "_writer")

    def __init__(self, writer: ChildHandle, observer: CommandObserver) -> None:
        self._writer = writer
        self._observer = observer

    def tell(self, message: Any, wait: float = 0.0) -> None:
        """Forward `message`; a Commit carrying a reply is reported as handed first."""
        if isinstance(message, Commit) and message.reply is not None:
            self._observer.command_handed(message.reply)
        self._writer.tell(message, wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def _spec_of(pair: NewPair) -> PairSpec:
    return PairSpec(
        symbol=pair.symbol, base_asset=pair.base_asset, quote_asset=pair.quote_asset,
        tick_size=pair.tick_size, lot_size=pair.lot_size, min_quantity=pair.min_quantity,
        max_quantity=pair.max_quantity, min_notional=pair.min_notional, maker_fee=pair.maker_fee,
        taker_fee=pair.taker_fee,
    )
