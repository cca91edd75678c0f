"""The market-data mirror in Redis: its key layout, the JSON it holds, its writer and its reader.

The values are the public market-data responses of API.md, rendered here, so the HTTP layer serves them
as they are; its fallback path (the pair's actor and PostgreSQL) renders with the same functions, so the
two paths cannot differ in shape. The mirror (:mod:`tradeengine.actors.mirror`) writes; the HTTP routes
(:mod:`tradeengine.http.market`) and anyone else may read.

Layout, under a prefix (default ``tradeengine:md:``), per pair:

- hash ``tradeengine:md:{symbol}`` (expires 60 s after its last write), fields:
    ``book``          the order book (``GET /api/v1/orderbook``) cut at the mirror's depth
    ``book_levels``   the largest ``depth`` the stored book answers in full (the mirror's depth, or 500
                      when neither side had more levels than that)
    ``book_sides``    the number of levels of its longer side
    ``ticker``        the ticker (``GET /api/v1/markets/{symbol}/ticker``)
    ``trades``        the newest trades (``GET /api/v1/markets/{symbol}/trades``), at most 100
    ``trades_limit``  the largest ``limit`` the stored trades answer in full (100, or 1000 when the pair
                      has no more trades than those)
    ``trades_count``  the number of trades stored
    ``sequence``      the pair's sequence the values are current at (the book may be a little ahead: its
                      own ``sequence`` says where it is)
    ``verified_at``   when the mirror last saw the pair's actor at that sequence (ms since the Unix epoch)
- channel ``tradeengine:md:{symbol}`` (Pub/Sub channels are not keys: the same name does not clash):
  one message per change, coalesced like the writes, ``{"symbol", "sequence", "best_bid", "best_ask",
  "last_price", "timestamp"}``; read the hash for the rest.

Freshness rule: a reader serves a value only while ``verified_at`` is at most ``max_age`` (2 s) old.
The mirror re-verifies every pair every interval (50 ms), rewrites a pair within one interval of a
change, and rewrites every pair at least once a second even when nothing changed (that keeps
``verified_at`` and the ``timestamp`` fields current and refills a Redis that restarted empty). So while
the mirror runs, what Redis serves is at most one interval behind the actor; when the mirror stops (its
thread, the pair's actor or PostgreSQL failing), readers go back to the actors within 2 s.

Everything a reader does is bounded and never raises: a miss, a stale value, a deeper request than
stored, or any Redis error answers None (the caller falls back); after an error Redis is skipped for a
second (one caller then tries again), so an outage costs no request a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tradeengine.engine import PairSpec
from tradeengine.engine.units import format_decimal
from tradeengine.storage.market import Ticker24h
from tradeengine.storage.outage import OutageGate
from tradeengine.storage.rows import TradeRow, rfc3339

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "MAX_AGE",
    "MAX_DEPTH",
    "MAX_TRADES",
    "RECENT_TRADES",
    "MarketDataReader",
    "MarketDataStore",
    "PairSnapshot",
    "book_body",
    "channel",
    "cut_book",
    "cut_trades",
    "pair_key",
    "ticker_body",
    "trades_body",
    "update_message",
]

KEY_SPACE = "md:"
"""What the market-data keys start with after the engine's Redis key prefix."""
DEFAULT_KEY_PREFIX = "tradeengine:" + KEY_SPACE
MAX_AGE = 2.0
"""Seconds after its ``verified_at`` that a pair's values are no longer served."""
TTL = 60.0
"""Seconds after its last write that a pair's hash expires (nobody mirrors it any more)."""
MAX_DEPTH = 500
"""The deepest book the API answers (``depth`` 1..500)."""
MAX_TRADES = 1000
"""The most recent trades the API answers (``limit`` 1..1000)."""
RECENT_TRADES = 100
"""Trades kept per pair (the API's default ``limit``)."""

VERIFIED_AT = "verified_at"
BOOK, BOOK_LEVELS, BOOK_SIDES = "book", "book_levels", "book_sides"
TICKER = "ticker"
TRADES, TRADES_LIMIT, TRADES_COUNT = "trades", "trades_limit", "trades_count"
SEQUENCE = "sequence"

Level = tuple[int, int, int]

_log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def pair_key(prefix: str, symbol: str) -> str:
    """The hash holding a pair's market data."""
    return prefix + symbol


def channel(prefix: str, symbol: str) -> str:
    """The Pub/Sub channel of a pair's updates."""
    return prefix + symbol


# -- the API's bodies ---------------------------------------------------------------------------------


def _levels(spec: PairSpec, levels: Iterable[Level]) -> list[dict[str, Any]]:
    return [{"price": spec.format_price(ticks), "quantity": spec.format_quantity(lots), "orders": count}
            for ticks, lots, count in levels]


def book_body(spec: PairSpec, sequence: int, bids: Iterable[Level], asks: Iterable[Level],
              at: datetime) -> bytes:
    """``GET /api/v1/orderbook/{symbol}``: levels (price ticks, lots, orders) best first, at ``sequence``."""
    return _encode({"symbol": spec.symbol, "sequence": sequence, "bids": _levels(spec, bids),
                    "asks": _levels(spec, asks), "timestamp": rfc3339(at)})


def _text(value: Any) -> str | None:
    return None if value is None else format_decimal(value)


def ticker_body(spec: PairSpec, best_bid: tuple[int, int] | None, best_ask: tuple[int, int] | None,
                last_price: int | None, day: Ticker24h, at: datetime) -> bytes:
    """``GET /api/v1/markets/{symbol}/ticker``: best prices (ticks, lots), last price (ticks) and the 24 h
    figures over the trades executed in (at - 24 h, at]."""
    return _encode({
        "symbol": spec.symbol,
        "last_price": None if last_price is None else spec.format_price(last_price),
        "best_bid": None if best_bid is None else spec.format_price(best_bid[0]),
        "best_bid_quantity": None if best_bid is None else spec.format_quantity(best_bid[1]),
        "best_ask": None if best_ask is None else spec.format_price(best_ask[0]),
        "best_ask_quantity": None if best_ask is None else spec.format_quantity(best_ask[1]),
        "open_24h": _text(day.open_24h), "high_24h": _text(day.high_24h), "low_24h": _text(day.low_24h),
        "volume_24h": format_decimal(day.volume_24h),
        "quote_volume_24h": format_decimal(day.quote_volume_24h),
        "trades_24h": day.trades_24h,
        "timestamp": rfc3339(at),
    })


def trades_body(rows: Iterable[TradeRow]) -> bytes:
    """``GET /api/v1/markets/{symbol}/trades``: the trades as given (newest first)."""
    return _encode({"trades": [
        {"id": row.id, "price": format_decimal(row.price), "quantity": format_decimal(row.quantity),
         "taker_side": row.taker_side, "executed_at": rfc3339(row.executed_at)}
        for row in rows]})


def update_message(spec: PairSpec, sequence: int, best_bid: tuple[int, int] | None,
                   best_ask: tuple[int, int] | None, last_price: int | None, at: datetime) -> bytes:
    """What a pair's channel carries after a change."""
    return _encode({
        "symbol": spec.symbol, "sequence": sequence,
        "best_bid": None if best_bid is None else spec.format_price(best_bid[0]),
        "best_ask": None if best_ask is None else spec.format_price(best_ask[0]),
        "last_price": None if last_price is None else spec.format_price(last_price),
        "timestamp": rfc3339(at),
    })


def cut_book(body: bytes, depth: int) -> bytes:
    """An order book body with at most ``depth`` levels per side."""
    book = _decode(body)
    book["bids"] = book["bids"][:depth]
    book["asks"] = book["asks"][:depth]
    return _encode(book)


def cut_trades(body: bytes, limit: int) -> bytes:
    """A trades body with at most the ``limit`` newest trades."""
    trades = _decode(body)
    trades["trades"] = trades["trades"][:limit]
    return _encode(trades)


# -- writing ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairSnapshot:
    """Everything the mirror writes for one pair at once (see the module docstring for the fields)."""

    symbol: str
    sequence: int
    verified_at: int  # ms since the Unix epoch
    book: bytes
    book_levels: int
    book_sides: int
    ticker: bytes
    trades: bytes
    trades_limit: int
    trades_count: int
    update: bytes | None = None  # published on the pair's channel when given

    def fields(self) -> dict[str, bytes | int]:
        """The hash's fields."""
        return {SEQUENCE: self.sequence, VERIFIED_AT: self.verified_at, BOOK: self.book,
                BOOK_LEVELS: self.book_levels, BOOK_SIDES: self.book_sides, TICKER: self.ticker,
                TRADES: self.trades, TRADES_LIMIT: self.trades_limit, TRADES_COUNT: self.trades_count}


def _client(url: str, timeout: float) -> redis.Redis:
    """A client with short connect and read timeouts and no client-side retries."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


class MarketDataStore:
    """Writes pairs' snapshots: one pipeline (one round trip) for any number of pairs."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = DEFAULT_KEY_PREFIX,
                 ttl: float = TTL) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl_ms = int(ttl * 1000)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, **kwargs: Any) -> MarketDataStore:
        """A store on its own client."""
        return cls(_client(url, timeout), **kwargs)

    def ping(self) -> None:
        """Raise unless Redis answers."""
        self._client.ping()

    def write(self, snapshots: Sequence[PairSnapshot]) -> None:
        """Write every snapshot (and publish its update) in one round trip; raise a Redis error or OSError."""
        if not snapshots:
            return
        pipe = self._client.pipeline(transaction=False)
        for snapshot in snapshots:
            key = pair_key(self._prefix, snapshot.symbol)
            pipe.hset(key, mapping=snapshot.fields())  # type: ignore[arg-type]
            pipe.pexpire(key, self._ttl_ms)
            if snapshot.update is not None:
                pipe.publish(channel(self._prefix, snapshot.symbol), snapshot.update)
        pipe.execute()

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


# -- reading ------------------------------------------------------------------------------------------


class MarketDataReader:
    """Reads a pair's values for the HTTP routes: fresh ones, or None (never raises, never waits long)."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = DEFAULT_KEY_PREFIX, max_age: float = MAX_AGE,
                 retry_interval: float = 1.0, warn_interval: float = 60.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self._client = client
        self._prefix = key_prefix
        self._max_age_ms = max_age * 1000
        self._clock = clock
        self._log = logger if logger is not None else _log
        self._lock = threading.Lock()
        self._outage = OutageGate(retry_interval=retry_interval, warn_interval=warn_interval, clock=monotonic)
        self._counts = {"hits": 0, "misses": 0, "stale": 0, "errors": 0, "skipped": 0}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.1, **kwargs: Any) -> MarketDataReader:
        """A reader on its own client; ``timeout`` bounds connecting and each read (seconds)."""
        return cls(_client(url, timeout), **kwargs)

    @property
    def counts(self) -> dict[str, int]:
        """Reads so far: hits, misses (absent or deeper than stored), stale, errors, skipped (Redis down)."""
        with self._lock:
            return dict(self._counts)

    def book(self, symbol: str, depth: int) -> bytes | None:
        """The pair's order book with at most ``depth`` levels per side, or None."""

        def answer(body: bytes, levels: bytes, sides: bytes) -> bytes | None:
            if depth > int(levels):
                return None
            return body if depth >= int(sides) else cut_book(body, depth)

        return self._answer(symbol, (BOOK, BOOK_LEVELS, BOOK_SIDES), answer)

    def ticker(self, symbol: str) -> bytes | None:
        """The pair's ticker, or None."""
        return self._answer(symbol, (TICKER,), lambda body: body)

    def trades(self, symbol: str, limit: int) -> bytes | None:
        """The pair's ``limit`` newest trades, or None."""

        def answer(body: bytes, most: bytes, count: bytes) -> bytes | None:
            if limit > int(most):
                return None
            return body if limit >= int(count) else cut_trades(body, limit)

        return self._answer(symbol, (TRADES, TRADES_LIMIT, TRADES_COUNT), answer)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _answer(self, symbol: str, fields: tuple[str, ...],
                answer: Callable[..., bytes | None]) -> bytes | None:
        values = self._read(symbol, fields)
        if values is None:
            return None
        try:
            body = answer(*values)
        except Exception as exc:  # a value nobody should have written: fall back, and say so
            self._count("errors")
            self._log.error("market data: unreadable %s of %s in Redis (%s: %s)", fields[0], symbol,
                            type(exc).__name__, exc)
            return None
        self._count("misses" if body is None else "hits")
        return body

    def _read(self, symbol: str, fields: tuple[str, ...]) -> list[bytes] | None:
        """The fields of a pair's hash when all are there and fresh; None otherwise (never raises)."""
        if not self._outage.should_try():
            self._count("skipped")
            return None
        try:
            values: list[Any] = self._client.hmget(pair_key(self._prefix, symbol), [VERIFIED_AT, *fields])
        except Exception as exc:  # Redis down, slow or refusing: fall back
            self._failed(exc)
            return None
        if self._outage.down:
            ended = self._outage.succeeded()
            if ended is not None:
                self._log.info("market data: Redis answers again after %.1f s; serving from Redis", ended[0])
        if any(value is None for value in values):
            self._count("misses")
            return None
        try:
            verified_at = int(values[0])
        except ValueError:
            verified_at = 0
        if abs(self._clock() * 1000 - verified_at) > self._max_age_ms:
            self._count("stale")
            return None
        return values[1:]

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _failed(self, exc: Exception) -> None:
        self._count("errors")
        if self._outage.failed() is not None:
            self._log.warning("market data: Redis read failed (%s: %s); serving from the actors, trying "
                              "Redis again every %.1f s", type(exc).__name__, exc,
                              self._outage.retry_interval)
