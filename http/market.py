"""The public market-data routes (API.md "Market data"): pairs, order book, ticker, trades, candles.

No key is needed (``auth = PUBLIC``). Pairs are read from the ``pairs`` table; the book and the best
prices come from the pair's actor (what it holds now, at its sequence); trades, candles and the 24 h
figures are computed from the committed trades (:mod:`tradeengine.storage.market`). A halted or
delisted pair's data is still served. An unknown symbol answers 404 ``UNKNOWN_SYMBOL`` on every route.

With Redis configured (a :class:`MarketDataReader`), the order book, the ticker and the recent trades
are read from the mirror (:mod:`tradeengine.storage.marketdata`) when it holds them fresh (verified
within 2 s) and deep enough, and from the actors and PostgreSQL as above otherwise: a miss, a stale
value or a Redis error is never the client's error. Both paths render with the same functions, so the
bodies have the same shape byte for byte. Candles are always computed in SQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

import falcon
import falcon.asgi
from psycopg_pool import ConnectionPool

from tradeengine.actors.exchange import Exchange
from tradeengine.engine.errors import UnknownSymbol, ValidationError
from tradeengine.storage import market, marketdata
from tradeengine.storage.marketdata import MarketDataReader
from tradeengine.storage.pairs import PairRecord, PairRepository

from . import render
from .api import Operation, Resource, read_query, respond
from .auth import PUBLIC
from .blocking import blocking
from .errors import echoed
from .models import (
    SYMBOL_PATTERN,
    Candle,
    CandleQuery,
    Candles,
    DepthQuery,
    OrderBook,
    Pair,
    Pairs,
    PublicTradeQuery,
    PublicTrades,
    Ticker,
)


def pair(record: PairRecord) -> Pair:
    """A row of ``pairs`` as the API shows it."""
    return Pair(
        symbol=record.symbol, base_asset=record.base_asset, quote_asset=record.quote_asset,
        tick_size=render.text(record.tick_size), lot_size=render.text(record.lot_size),
        min_quantity=render.text(record.min_quantity), max_quantity=render.text(record.max_quantity),
        min_notional=render.text(record.min_notional), maker_fee=render.text(record.maker_fee),
        taker_fee=render.text(record.taker_fee), status=record.status,  # type: ignore[arg-type]
    )


def _now() -> datetime:
    return datetime.now(UTC)


_SYMBOL = re.compile(SYMBOL_PATTERN)


def known_format(symbol: str) -> str:
    """``symbol`` when it has the shape every stored symbol has; else UNKNOWN_SYMBOL without a query (a
    path segment may hold anything, a NUL byte included, which the database would refuse)."""
    if not _SYMBOL.fullmatch(symbol):
        if not symbol:  # /api/v1/pairs/: the path ends where the symbol should be
            raise UnknownSymbol("the path names no symbol: give one, e.g. BTC-USDT", field="symbol")
        raise UnknownSymbol(f"unknown symbol {echoed(symbol)}", field="symbol")
    return symbol


class PairsResource(Resource):
    """``/api/v1/pairs``: every pair with its rules and status."""

    auth = PUBLIC
    operations: ClassVar = {"GET": Operation("List the trading pairs with their rules and status", Pairs)}

    def __init__(self, pool: ConnectionPool) -> None:
        self._pairs = PairRepository(pool)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List every pair."""
        respond(resp, Pairs(pairs=[pair(record) for record in await blocking(self._pairs.list)]))


class PairResource(Resource):
    """``/api/v1/pairs/{symbol}``: one pair."""

    auth = PUBLIC
    operations: ClassVar = {"GET": Operation("Read one trading pair", Pair)}

    def __init__(self, pool: ConnectionPool) -> None:
        self._pairs = PairRepository(pool)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """Read one pair."""
        record = await blocking(self._pairs.get, known_format(symbol))
        if record is None:
            raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")
        respond(resp, pair(record))


class OrderBookResource(Resource):
    """``/api/v1/orderbook/{symbol}``: aggregated depth from the pair's actor."""

    auth = PUBLIC
    operations: ClassVar = {
        "GET": Operation("Aggregated order book, best levels first", OrderBook, query=DepthQuery, engine=True,
                         description="Levels as the pair's actor holds them at `sequence`; `orders` is the "
                                     "number of orders resting at the level."),
    }

    def __init__(self, exchange: Exchange, market_data: MarketDataReader | None = None) -> None:
        self._exchange = exchange
        self._market_data = market_data

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """Read the book."""
        query = read_query(req, DepthQuery)
        _send(resp, await blocking(self._book, known_format(symbol), query.depth))

    def _book(self, symbol: str, levels: int) -> bytes:
        spec = self._exchange.spec(symbol)
        body = None if self._market_data is None else self._market_data.book(symbol, levels)
        if body is None:
            depth = self._exchange.depth(symbol, levels)
            body = marketdata.book_body(spec, depth.sequence, depth.bids, depth.asks, _now())
        return body


def _send(resp: falcon.asgi.Response, body: bytes) -> None:
    """Answer 200 with a JSON body rendered by :mod:`tradeengine.storage.marketdata`."""
    resp.status = 200
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body


class TickerResource(Resource):
    """``/api/v1/markets/{symbol}/ticker``: best prices now and the last 24 hours."""

    auth = PUBLIC
    operations: ClassVar = {
        "GET": Operation("Best bid and ask, last price and the last 24 hours of trading", Ticker, engine=True,
                         description="Best prices and the last price from the pair's actor; the 24 h "
                                     "figures over the trades executed in (timestamp - 24 h, timestamp]. "
                                     "Null where there is no data."),
    }

    def __init__(self, exchange: Exchange, pool: ConnectionPool,
                 market_data: MarketDataReader | None = None) -> None:
        self._exchange = exchange
        self._pool = pool
        self._market_data = market_data

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """Read the ticker."""
        _send(resp, await blocking(self._ticker, known_format(symbol)))

    def _ticker(self, symbol: str) -> bytes:
        spec = self._exchange.spec(symbol)
        body = None if self._market_data is None else self._market_data.ticker(symbol)
        if body is None:
            top = self._exchange.top(symbol)
            now = _now()
            day = market.ticker_24h(self._pool, symbol, now)
            body = marketdata.ticker_body(spec, top.best_bid, top.best_ask, top.last_price, day, now)
        return body


class MarketTradesResource(Resource):
    """``/api/v1/markets/{symbol}/trades``: the pair's recent trades, newest first."""

    auth = PUBLIC
    operations: ClassVar = {
        "GET": Operation("Recent trades of a pair, newest first", PublicTrades, query=PublicTradeQuery),
    }

    def __init__(self, pool: ConnectionPool, market_data: MarketDataReader | None = None) -> None:
        self._pool = pool
        self._market_data = market_data

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """List recent trades."""
        query = read_query(req, PublicTradeQuery)
        _send(resp, await blocking(self._trades, known_format(symbol), query.limit))

    def _trades(self, symbol: str, limit: int) -> bytes:
        body = None if self._market_data is None else self._market_data.trades(symbol, limit)
        if body is None:
            body = marketdata.trades_body(market.recent_trades(self._pool, symbol, limit))
        return body


class CandlesResource(Resource):
    """``/api/v1/markets/{symbol}/candles``: OHLCV of the intervals that had trades."""

    auth = PUBLIC
    operations: ClassVar = {
        "GET": Operation(
            "Candles of a pair, ascending by open_time", Candles, query=CandleQuery,
            description="Open times are multiples of the interval since the Unix epoch (UTC); intervals "
                        "without trades have no candle. `start` and `end` are RFC 3339 with an offset "
                        "(2026-11-24T10:00:00Z) or unix seconds. `limit` (default 500, at most 1000) counts "
                        "candles. With `start`: the first `limit` candles opening at or after it (up to "
                        "the one holding `end`, when given). Without: the last `limit` candles up to the "
                        "one holding `end` (default: now)."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """List candles."""
        query = read_query(req, CandleQuery)
        start = None if query.start is None else parse_time(query.start, "start")
        end = None if query.end is None else parse_time(query.end, "end")
        rows = await blocking(market.candles, self._pool, known_format(symbol), query.interval, start, end,
                              query.limit)
        respond(resp, Candles(candles=[
            Candle(open_time=render.timestamp(row.open_time), open=render.text(row.open),
                   high=render.text(row.high), low=render.text(row.low), close=render.text(row.close),
                   volume=render.text(row.volume), quote_volume=render.text(row.quote_volume),
                   trades=row.trades)
            for row in rows]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIX_SECONDS = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,6})?")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")


def parse_time(text: str, field: str) -> datetime:
    """An aware UTC datetime from RFC 3339 (with its offset) or unix seconds; else VALIDATION_ERROR."""
    value = text.strip().upper()
    try:
        if _UNIX_SECONDS.fullmatch(value):
            return _EPOCH + timedelta(microseconds=int(Decimal(value).scaleb(6)))
        if _RFC3339.fullmatch(value):
            return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationError(f"{field} {text!r} is not a valid time", field=field) from None
    raise ValidationError(f"{field} must be RFC 3339 with an offset (2026-11-24T10:00:00Z) or unix seconds, "
                          f"got {text!r}", field=field)
