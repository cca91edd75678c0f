"""MarketDataMirror: keeps each pair's order book, ticker and recent trades in Redis.

One thread, started by the :class:`~tradeengine.actors.system.ActorSystem` when a Redis URL is
configured, so the public market-data routes cost the pairs nothing however many clients read them.
The layout, the JSON and the freshness rule readers apply are in :mod:`tradeengine.storage.marketdata`.

Every ``interval`` (50 ms) the mirror asks every pair, all at once, for its ``Top`` (best prices, last
price, sequence: cheap) and notes the pair's incarnation. A pair whose (incarnation, sequence) differs
from what the mirror holds has changed; however many commands it ran meanwhile, it costs one reload:

1. a ``Barrier`` to the writer, answered once everything the pairs handed it before their Top answer is
   committed: the recent trades and the 24 h figures read next include the trades of that sequence;
2. the pair's depth (``levels`` + 1 levels, to know whether the stored book is complete) and its newest
   trades from PostgreSQL; the 24 h figures are recomputed at most once per ``refresh`` (1 s) per pair
   (the aggregate reads every trade of the day), so in a burst their volumes and count may lag by up to
   that long, except that a new last price outside their low and high (or a first trade) has them
   recomputed at once: the ticker never shows a last price its high and low contradict. Its
   ``timestamp`` is always the end of the 24 h window its figures cover;
3. one pipeline to Redis for all pairs written this tick, with a message on each changed pair's channel.

Every pair is also rewritten at least once per ``refresh`` (no message): that keeps ``verified_at``
and the timestamps current, slides the 24 h window of pairs that had trades, and refills a Redis that
restarted empty. The incarnation is part of the change test because a rebuilt pair may reach a sequence
the old incarnation had shown with a different book (its last commands were never committed).

A pair that does not answer, or whose reload fails (PostgreSQL down, writer broken), is simply not
written: its ``verified_at`` ages and readers go back to the actors after 2 s. When Redis fails the
mirror logs once, stops reading the pairs, and tries Redis again every ``retry_interval`` (1 s); the
first write that succeeds rewrites every pair (and publishes on every channel), so it catches up at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from tradeengine.engine import PairSpec
from tradeengine.storage.market import Ticker24h, recent_trades, ticker_24h
from tradeengine.storage.marketdata import (
    DEFAULT_KEY_PREFIX,
    MAX_DEPTH,
    MAX_TRADES,
    RECENT_TRADES,
    MarketDataStore,
    PairSnapshot,
    book_body,
    ticker_body,
    trades_body,
    update_message,
)

from .pair import Depth, DepthQuery, Top, TopQuery
from .writer import Barrier

_log = logging.getLogger(__name__)
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)

__all__ = ["MarketDataMirror", "MirrorSettings"]


@dataclasses.dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Where and how the mirror writes."""

    redis_url: str
    key_prefix: str = DEFAULT_KEY_PREFIX
    interval: float = 0.05
    """Seconds between two looks at the pairs: a pair is written at most once per interval."""
    levels: int = 50
    """Book levels per side kept in Redis; a deeper request is answered by the pair's actor."""
    refresh: float = 1.0
    """Every pair is rewritten at least this often; the 24 h figures are recomputed at most this often.
    Keep it well below the readers' max age (2 s), or they take idle pairs' values for stale ones."""
    ask_timeout: float = 1.0
    """Seconds a pair (or the writer's barrier) may take to answer before it is skipped this tick."""
    retry_interval: float = 1.0
    """Seconds between two tries while Redis does not answer."""

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= MAX_DEPTH:
            raise ValueError(f"levels must be 1..{MAX_DEPTH}, not {self.levels}")
        if not self.interval > 0 or not self.refresh > 0:
            raise ValueError("interval and refresh must be greater than 0")


class _Handle(Protocol):
    """How the mirror reaches a pair (a supervisor's ChildHandle)."""

    @property
    def incarnation(self) -> int: ...

    def ask_future(self, message: Any) -> Any: ...

    def ask(self, message: Any, timeout: float) -> Any: ...


class _Writer(Protocol):
    def tell(self, message: Any, wait: float = 0.0) -> None: ...


PairSource = Callable[[], Iterable[tuple[PairSpec, _Handle]]]


@dataclasses.dataclass(slots=True)
class _Pair:
    """What the mirror holds of one pair."""

    spec: PairSpec
    known: tuple[int, int] | None = None  # (incarnation, sequence) the cached values are current at
    depth: Depth | None = None
    book_levels: int = 0
    trades: bytes = b""
    trades_limit: int = 0
    trades_count: int = 0
    day: Ticker24h | None = None
    day_at: datetime = _LONG_AGO
    day_stale: bool = True  # trades came since the 24 h figures were computed
    day_price: int | None = None  # the last price (ticks) when they were computed
    written_at: float = -math.inf  # monotonic time of the last write Redis took
    pushed: bool = False  # Redis holds the values of `known`
    published: tuple[int, int] | None = None


@dataclasses.dataclass(slots=True)
class _Seen:
    """A pair as it answered this tick."""

    state: _Pair
    handle: _Handle
    mark: tuple[int, int]
    top: Top


class MarketDataMirror:
    """The mirror's thread; ``start()`` and ``stop()`` it, or call ``tick()`` yourself."""

    def __init__(self, settings: MirrorSettings, *, pool: Any, pairs: PairSource, writer: _Writer | None,
                 store: MarketDataStore | None = None, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self._pool = pool
        self._pairs_of = pairs
        self._writer = writer
        self._store = store if store is not None else MarketDataStore.from_url(
            settings.redis_url, key_prefix=settings.key_prefix)
        self._log = logger if logger is not None else _log
        self._pairs: dict[str, _Pair] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._warned: set[str] = set()
        self.counts = {"ticks": 0, "writes": 0, "pairs_written": 0, "published": 0, "redis_failures": 0}

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="market-data-mirror", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the Redis client."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._store.close()

    @property
    def redis_down(self) -> bool:
        """True while the last write to Redis failed."""
        return self._down_since is not None

    def _run(self) -> None:
        interval = self.settings.interval
        next_at = time.monotonic()
        while not self._stopping.wait(max(next_at - time.monotonic(), 0.0)):
            next_at = time.monotonic() + interval
            try:
                self.tick()
            except Exception:  # never let the thread die: the next tick tries again
                self._log.exception("market-data mirror: a tick failed")

    # -- one tick -------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Look at every pair once; write what changed or is due to Redis."""
        if self._down_since is not None and not self._redis_back():
            return
        self.counts["ticks"] += 1
        verified_at = time.time_ns() // 1_000_000
        seen = self._look()
        changed = [s for s in seen if s.mark != s.state.known]
        if changed and not self._barrier():
            changed = []  # their DB parts cannot be read now; they are not written (nor verified)
        reloaded = {id(s) for s in changed if self._reload(s)}
        now = time.monotonic()
        wall = datetime.now(UTC)
        snapshots: list[tuple[_Seen, PairSnapshot]] = []
        for s in seen:
            state = s.state
            if s.mark != state.known:
                continue
            due = (id(s) in reloaded or not state.pushed or now - state.written_at >= self.settings.refresh
                   or (state.day_stale and wall - state.day_at >= timedelta(seconds=self.settings.refresh)))
            if due:
                snapshot = self._snapshot(s, verified_at, wall)
                if snapshot is not None:
                    snapshots.append((s, snapshot))
        self._write(snapshots, now)

    def _look(self) -> list[_Seen]:
        """Every pair's Top, asked all at once; pairs that do not answer in time are left out."""
        asked = []
        for spec, handle in self._pairs_of():
            state = self._pairs.get(spec.symbol)
            if state is None:
                state = self._pairs[spec.symbol] = _Pair(spec)
            state.spec = spec
            try:
                incarnation = handle.incarnation  # before the ask: a restart in between shows as a change
                asked.append((state, handle, incarnation, handle.ask_future(TopQuery())))
            except Exception:  # not running now (restarting, stopped): not verified this tick
                continue
        deadline = time.monotonic() + self.settings.ask_timeout
        seen = []
        for state, handle, incarnation, future in asked:
            try:
                top: Top = future.get(timeout=max(deadline - time.monotonic(), 0.0))
            except Exception:
                continue
            seen.append(_Seen(state, handle, (incarnation, top.sequence), top))
        return seen

    def _barrier(self) -> bool:
        """Wait until the writer has committed what the pairs handed it before answering their Top."""
        if self._writer is None:
            return True
        reply: Future[None] = Future()
        try:
            self._writer.tell(Barrier(reply))
            reply.result(timeout=self.settings.ask_timeout)
        except Exception as exc:
            self._warn_once("barrier", "market-data mirror: the writer did not confirm its commits (%s: %s); "
                            "changed pairs wait", type(exc).__name__, exc)
            return False
        self._warned.discard("barrier")
        return True

    def _reload(self, seen: _Seen) -> bool:
        """Read a changed pair's depth and newest trades; False when it cannot be read now."""
        state = seen.state
        symbol = state.spec.symbol
        levels = self.settings.levels
        try:
            depth: Depth = seen.handle.ask(DepthQuery(levels + 1), self.settings.ask_timeout)
            rows = recent_trades(self._pool, symbol, RECENT_TRADES + 1)
        except Exception as exc:
            self._warn_once(f"reload:{symbol}", "market-data mirror: %s cannot be read (%s: %s); its values "
                            "in Redis age out", symbol, type(exc).__name__, exc)
            return False
        self._warned.discard(f"reload:{symbol}")
        complete = len(depth.bids) <= levels and len(depth.asks) <= levels
        state.depth = Depth(depth.sequence, depth.bids[:levels], depth.asks[:levels])
        state.book_levels = MAX_DEPTH if complete else levels
        state.trades = trades_body(rows[:RECENT_TRADES])
        state.trades_limit = MAX_TRADES if len(rows) <= RECENT_TRADES else RECENT_TRADES
        state.trades_count = min(len(rows), RECENT_TRADES)
        state.day_stale = True
        state.known = seen.mark
        state.pushed = False
        return True

    def _snapshot(self, seen: _Seen, verified_at: int, wall: datetime) -> PairSnapshot | None:
        """The pair's values now (the 24 h figures recomputed when due); None when they cannot be read."""
        state = seen.state
        spec = state.spec
        assert state.depth is not None and state.known is not None
        refresh = timedelta(seconds=self.settings.refresh)
        day = state.day
        last_price = seen.top.last_price
        if day is None or ((state.day_stale or day.trades_24h > 0) and wall - state.day_at >= refresh) or (
                last_price is not None and last_price != state.day_price
                and not _within(day, spec.ticks_to_price(last_price))):
            try:
                day = ticker_24h(self._pool, spec.symbol, wall)
            except Exception as exc:
                self._warn_once(f"day:{spec.symbol}", "market-data mirror: the 24 h figures of %s cannot be "
                                "read (%s: %s)", spec.symbol, type(exc).__name__, exc)
                return None
            self._warned.discard(f"day:{spec.symbol}")
            state.day, state.day_at, state.day_stale, state.day_price = day, wall, False, last_price
        # Figures without trades and without a change since stay exact however far the window slides.
        window_end = wall if not state.day_stale and day.trades_24h == 0 else state.day_at
        top = seen.top
        depth = state.depth
        return PairSnapshot(
            symbol=spec.symbol, sequence=state.known[1], verified_at=verified_at,
            book=book_body(spec, depth.sequence, depth.bids, depth.asks, wall),
            book_levels=state.book_levels, book_sides=max(len(depth.bids), len(depth.asks)),
            ticker=ticker_body(spec, top.best_bid, top.best_ask, top.last_price, day, window_end),
            trades=state.trades, trades_limit=state.trades_limit, trades_count=state.trades_count,
            update=(None if state.published == state.known else
                    update_message(spec, top.sequence, top.best_bid, top.best_ask, top.last_price, wall)),
        )

    def _write(self, snapshots: list[tuple[_Seen, PairSnapshot]], now: float) -> None:
        try:
            self._store.write([snapshot for _, snapshot in snapshots])
        except Exception as exc:
            self._redis_failed(exc)
            return
        for seen, snapshot in snapshots:
            state = seen.state
            state.pushed, state.written_at = True, now
            if snapshot.update is not None:
                state.published = state.known
                self.counts["published"] += 1
        if snapshots:
            self.counts["writes"] += 1
            self.counts["pairs_written"] += len(snapshots)

    # -- Redis outages --------------------------------------------------------------------------------

    def _redis_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.counts["redis_failures"] += 1
        self._retry_at = now + self.settings.retry_interval
        for state in self._pairs.values():  # whatever Redis holds now, rewrite (and announce) every pair
            state.pushed = False
            state.published = None
        if self._down_since is None:
            self._down_since = now
            self._log.warning("market-data mirror: Redis does not answer (%s: %s); market data is served "
                              "from the actors; trying again every %.1f s", type(exc).__name__, exc,
                              self.settings.retry_interval)

    def _redis_back(self) -> bool:
        """While Redis is down: True once it answers again (tried at most once per retry interval)."""
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            self._store.ping()
        except Exception:
            self._retry_at = now + self.settings.retry_interval
            return False
        assert self._down_since is not None
        self._log.info("market-data mirror: Redis answers again after %.1f s; rewriting every pair",
                       now - self._down_since)
        self._down_since = None
        return True

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning once until the condition clears (the caller discards the key then)."""
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)


def _within(day: Ticker24h, price: Decimal) -> bool:
    """Whether the 24 h figures agree with a last trade at `price`: it lies within their low and high."""
    return day.low_24h is not None and day.high_24h is not None and day.low_24h <= price <= day.high_24h
