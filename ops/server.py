"""``trade-engine serve``: the process wiring around gunicorn.

Master process (the one ``serve`` runs in):
  1. configures logging; SIGTERM/SIGINT before gunicorn is up end the start cleanly (no orphan server);
     checks that it can listen on TRADE_ENGINE_HTTP_HOST:PORT (``ops.engine_lock``);
  2. owns the data folder and starts the embedded PostgreSQL, or waits (bounded) for the external one,
     and applies the migrations; takes the database's engine lock (one engine per database) — any
     failure ends here with one line on stderr and exit status 1;
  3. runs gunicorn with ONE worker (``ops.http_worker``); no app, pool or actor thread is ever created here;
  4. when gunicorn stops (SIGTERM, SIGINT/Ctrl-C, or a worker that failed to boot) stops the embedded
     PostgreSQL, so no postgres process is left, and releases the data folder.

Worker process (forked by gunicorn): ``load()`` builds the pool, starts the :class:`ActorSystem` with
its metrics hooked in (:mod:`tradeengine.ops.metrics`) and creates the ASGI app; ``worker_exit`` stops
the actor system and closes the pool. When the master is killed with ``kill -9`` the worker notices its
parent is gone and exits by itself; the next ``serve`` takes the orphaned PostgreSQL over.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType
from typing import Any, NoReturn

from gunicorn.app.base import BaseApplication
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from tradeengine.actors.mirror import MirrorSettings
from tradeengine.actors.relay import RelaySettings
from tradeengine.actors.remote_wallet import RemoteWalletSettings
from tradeengine.actors.system import ActorSystem
from tradeengine.http import ratelimit
from tradeengine.http.app import create_app
from tradeengine.http.middleware import RequestIdLogFilter
from tradeengine.http.ratelimit import build_rate_limit
from tradeengine.http.readiness import Check, actors_check, broker_check, redis_check, wallet_check
from tradeengine.http.routes import api_endpoints
from tradeengine.storage import breaker, marketdata
from tradeengine.storage.database import DEFAULT_PREPARE_THRESHOLD, check_database, create_pool
from tradeengine.storage.embedded import EmbeddedPostgres
from tradeengine.storage.marketdata import MarketDataReader
from tradeengine.storage.users import UserRepository

from .cli import engine_version
from .database import DataDirLock, StartupError, serving_database
from .engine_lock import EngineLock, check_bind
from .gcpolicy import tune_collector
from .gunicorn_conf import BLOCKING_MARGIN, gunicorn_options
from .logconfig import configure_logging
from .metrics import EngineMetrics
from .settings import Settings

_log = logging.getLogger(__name__)

#: Seconds each readiness check may take; /ready answers within about this long.
READY_CHECK_TIMEOUT = 1.5


class _Interrupted(Exception):
    """A stop signal arrived before gunicorn took over signal handling."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def serve(settings: Settings) -> int:
    """Run the engine until SIGTERM or SIGINT; return the exit status."""
    lock, engine_lock = DataDirLock(settings.data_dir), EngineLock()

    @contextmanager
    def guard(url: str) -> Iterator[None]:
        with engine_lock.held(url), (
            EmbeddedWatch(EmbeddedPostgres(settings.data_dir)) if settings.database_url is None
            else nullcontext()
        ):
            yield

    return run_server(settings, database=lambda shield: serving_database(settings, lock=lock, shield=shield),
                      application=lambda conninfo: EngineApplication(settings, conninfo, lock, engine_lock),
                      name="gunicorn", bind=(settings.http_host, settings.http_port), guard=guard)


class EmbeddedWatch:
    """While ``serve`` runs on its embedded PostgreSQL: if that server stops (an operator's ``pg_ctl
    stop``, a kill), stop the engine, loudly, with exit status 1.

    Without it the engine would run on, every request waiting for the pool's timeout and answering 503,
    the operator's tools refused too (an API key is checked in the database), and nothing in the log
    above WARNING. The server is the master's to start and stop, not the engine's to restart under
    itself: a supervisor (systemd, compose) restarts ``serve``, which starts it again. A thread of the
    master looks every ``interval`` seconds; on leaving the block it raises StartupError (one line on
    stderr, status 1) if the server stopped under the engine.
    """

    def __init__(self, server: EmbeddedPostgres, interval: float = 1.0) -> None:
        self._server = server
        self._interval = interval
        self._done = threading.Event()
        self._stopped_under_us = False

    def __enter__(self) -> EmbeddedWatch:
        threading.Thread(target=self._watch, name="embedded-postgres-watch", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._stopped_under_us and exc_info[0] is None:
            raise StartupError(f"the embedded PostgreSQL in {self._server.pgdata} stopped while the engine "
                               "ran; the engine stopped with it (start it again: trade-engine serve)")

    def _watch(self) -> None:
        while not self._done.wait(self._interval):
            if not self._server.is_running():
                self._stopped_under_us = True
                _log.error("the embedded PostgreSQL in %s stopped while the engine ran; stopping the "
                           "engine (exit status 1)", self._server.pgdata)
                os.kill(os.getpid(), signal.SIGTERM)  # gunicorn's graceful stop
                return


Shield = Callable[[], AbstractContextManager[object]]


def run_server(settings: Settings, *, database: Callable[[Shield], AbstractContextManager[str]],
               application: Callable[[str], BaseApplication], name: str, bind: tuple[str, int] | None = None,
               guard: Callable[[str], AbstractContextManager[None]] | None = None) -> int:
    """Run a gunicorn server of ours (the engine, the wallet service) until SIGTERM or SIGINT.

    `bind` (host, port) is checked first; `database(shield)` yields the database URL (starting an
    embedded server inside ``shield()``, where stop signals wait); `guard(url)` is held while the server
    runs (the engine lock); `application(url)` builds the gunicorn application. Returns the exit status:
    1 after a start-up error (one plain line on stderr), 128 + the signal when stopped while starting.
    """
    configure_logging(settings)
    signals = _StopSignals()
    try:
        if bind is not None:
            check_bind(*bind)
        with signals.installed(), database(signals.deferred) as url, (
            guard(url) if guard is not None else nullcontext()
        ):
            return _run_gunicorn(application(url), name)
    except StartupError as exc:  # one plain line, as for a bad setting: the operator reads this one
        print(f"trade-engine: {exc}", file=sys.stderr, flush=True)
        return 1
    except (_Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
        _log.info("stopped by %s while starting", signal.Signals(signum).name)
        return 128 + signum


class _StopSignals:
    """SIGTERM/SIGINT until gunicorn installs its own handlers: they end the start with
    :class:`_Interrupted`, so the ``finally`` blocks that stop the embedded server run. Inside
    :meth:`deferred` (starting or stopping the server, which must not be cut in half) a signal is
    remembered and acted on when the block ends. Only the first signal counts."""

    def __init__(self) -> None:
        self._received: int | None = None
        self._raised = False
        self._deferring = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the signals inside the block; restore the previous handlers afterwards."""
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a stop signal back until the block is done."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self._received is not None and not self._deferring:
            self._interrupt()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signum
            if not self._deferring:
                self._interrupt()

    def _interrupt(self) -> None:
        if not self._raised and self._received is not None:
            self._raised = True
            raise _Interrupted(self._received)


def _run_gunicorn(application: BaseApplication, name: str) -> int:
    master = os.getpid()
    try:
        application.run()
        status = 0
    except SystemExit as exc:  # gunicorn ends the master loop, and every worker, with sys.exit(status)
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        if os.getpid() != master:
            _leave_worker(1)
        raise
    if os.getpid() != master:
        _leave_worker(status)
    if status == 0:  # not serve's status: what stopped it may still end serve with 1 (EmbeddedWatch)
        _log.info("%s stopped", name)
    else:
        _log.error("%s stopped with exit status %d", name, status)
    return status


def _leave_worker(status: int) -> NoReturn:
    """End a worker right here. A forked worker unwinds through the master's stack (gunicorn exits it
    with sys.exit); it must not run the master's ``finally`` blocks, which stop the embedded server.
    gunicorn's ``worker_exit`` hook has already stopped the worker's own parts."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@dataclasses.dataclass
class WorkerParts:
    """What the worker builds after the fork: the pool, the actor system and the ASGI app."""

    pool: Any
    system: ActorSystem
    app: Any
    metrics: EngineMetrics | None = None

    def close(self) -> None:
        """Stop the actor system, then close the pool."""
        try:
            self.system.stop()
        finally:
            self.pool.close()


def readiness_checks(settings: Settings, pool: Any, system: ActorSystem) -> dict[str, Check]:
    """The /ready checks: database and actors always; Redis, broker, wallet service when configured."""

    def database() -> None:
        check_database(pool, timeout=READY_CHECK_TIMEOUT - 0.3)

    checks: dict[str, Check] = {"database": database}
    if settings.redis_url:
        checks["redis"] = redis_check(settings.redis_url, timeout=1.0)
    if not settings.broker_url.startswith("memory://"):
        checks["broker"] = broker_check(settings.broker_url, timeout=1.0)
    if settings.wallet_url:
        checks["wallet"] = wallet_check(settings.wallet_url, system.wallet_reconciled, timeout=1.0)
    checks["actors"] = actors_check(system)
    return checks


def build_worker(settings: Settings, conninfo: str) -> WorkerParts:
    """In the worker: open the pool, start the actor system, create the app (nothing reads env)."""
    size = settings.database_pool_size
    pool = create_pool(conninfo, min_size=min(2, size), max_size=size, name="tradeengine-worker",
                       prepare_threshold=DEFAULT_PREPARE_THRESHOLD if settings.database_prepare else None)
    prefix = settings.redis_key_prefix  # each user of Redis keeps its keys in a space of its own under it
    mirror = None
    if settings.redis_url:
        mirror = MirrorSettings(settings.redis_url, key_prefix=prefix + marketdata.KEY_SPACE,
                                levels=settings.market_data_levels, interval=settings.market_data_interval)
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, version=engine_version())
    relay = RelaySettings(settings.broker_url, settings.broker_exchange, retention=settings.outbox_retention,
                          process=settings.relay_process, nudge_interval=settings.relay_nudge_interval)
    wallet = None
    if settings.wallet_url:
        wallet = RemoteWalletSettings(
            settings.wallet_url, timeout=settings.wallet_timeout, retries=settings.wallet_retries,
            breaker_fail_max=settings.wallet_breaker_fail_max,
            breaker_reset_timeout=settings.wallet_breaker_reset_timeout, redis_url=settings.redis_url,
            redis_key_prefix=prefix + breaker.KEY_SPACE,
            breaker_listeners=(metrics.breaker_listener("wallet"),))
    system = ActorSystem(pool, request_timeout=settings.request_timeout, market_data=mirror, relay=relay,
                         wallet=wallet, on_event=metrics.on_supervisor_event, on_batch=metrics.on_batch,
                         observer=metrics, writer_process=settings.writer_process)
    _stamp_request_ids()
    try:
        if settings.bootstrap_admin_key:
            _bootstrap_admin(UserRepository(pool), settings.bootstrap_admin_key)
        system.start()
        metrics.watch(system, pool)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        app = create_app(
            version=engine_version(),
            readiness_checks=readiness_checks(settings, pool, system),
            registry=registry,
            cors_origins=settings.cors_origins,
            logger=logging.getLogger("tradeengine.http"),
            ready_timeout=READY_CHECK_TIMEOUT,
            blocking_limit=settings.request_timeout + BLOCKING_MARGIN,
            authenticate=UserRepository(pool).authenticate,
            rate_limit=build_rate_limit(rate=settings.rate_limit, burst=settings.rate_burst,
                                        public_rate=settings.public_rate_limit,
                                        public_burst=settings.public_rate_burst,
                                        redis_url=settings.redis_url,
                                        key_prefix=prefix + ratelimit.KEY_SPACE),
            endpoints=api_endpoints(system=system, pool=pool, market_data=(
                MarketDataReader.from_url(settings.redis_url, key_prefix=prefix + marketdata.KEY_SPACE)
                if settings.redis_url else None)),
        )
    except BaseException:
        WorkerParts(pool, system, None).close()
        raise
    if settings.broker_url.startswith("memory://"):
        _log.info("events go to the in-process broker (TRADE_ENGINE_BROKER_URL=memory://): only consumers "
                  "inside this process receive them, and they count as published; set an amqp:// URL to "
                  "publish them to RabbitMQ")
    _log.info("worker ready: pool of up to %d connection(s), actor system running", size)
    return WorkerParts(pool, system, app, metrics)


def _bootstrap_admin(users: UserRepository, key: str) -> None:
    """Create the admin holding `key` when there is none; say so when the key is not an admin's key."""
    admin = users.ensure_admin(key)
    if admin is not None:
        _log.info("created the bootstrap admin (user '%s') holding TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY",
                  admin.name)
        return
    holder = users.authenticate(key)
    if holder is None or holder.role != "admin":
        _log.warning("TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY is not an admin's key and an admin exists already, "
                     "so it was not created (it only bootstraps the first admin): use the key of an existing "
                     "admin, or create another admin with `trade-engine users create NAME --role admin`")


def _stamp_request_ids() -> None:
    """Every log record made while a request is answered carries its request id (see RequestIdLogFilter)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdLogFilter) for f in handler.filters):
            handler.addFilter(RequestIdLogFilter())


class EngineApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's application object: configuration from the settings, the app built in the worker."""

    def __init__(self, settings: Settings, conninfo: str, lock: DataDirLock | None = None,
                 engine_lock: EngineLock | None = None) -> None:
        self._settings = settings
        self._conninfo = conninfo
        self._lock = lock
        self._engine_lock = engine_lock
        self._parts: WorkerParts | None = None
        super().__init__(prog="trade-engine")

    def load_config(self) -> None:
        """Apply :func:`gunicorn_options` (called by gunicorn in the master)."""
        for key, value in gunicorn_options(self._settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the worker's parts and return the ASGI app (called by gunicorn in the worker)."""
        self._parts = build_worker(self._settings, self._conninfo)
        tune_collector(self._settings.gc_threshold)
        return self._parts.app

    def after_fork_in_worker(self) -> None:
        """The worker must not keep the data folder or the engine lock once the master is gone
        (``kill -9``)."""
        if self._lock is not None:
            self._lock.forget_in_child()
        if self._engine_lock is not None:
            self._engine_lock.forget_in_child()

    def close_worker(self) -> None:
        """Stop the worker's actor system and close its pool (gunicorn's ``worker_exit``)."""
        parts, self._parts = self._parts, None
        if parts is not None:
            parts.close()
