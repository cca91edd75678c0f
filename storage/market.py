"""Public market data of one pair, computed from the committed trades: recent trades, candles, 24 h ticker.

Every function raises `UnknownSymbol(field="symbol")` when no pair has the symbol (checked only when
there is nothing to return, so a busy pair pays nothing for it); a delisted pair still has its data.
Timestamps are UTC (`datetime.UTC`); amounts are Decimals as stored (8 decimal places; render them
with `engine.format_decimal`). Trades come back as the writer's `storage.rows.TradeRow`.

Recent trades read one executed_at range of one pair from trades_by_symbol_time_sequence (symbol,
executed_at DESC, sequence DESC), migration 0006, with constant bounds, so PostgreSQL prunes the daily
partitions outside the range. Candles and the 24 h ticker read the pair's minute candles (candles_1m,
kept by PostgreSQL as trades are inserted, migration 0011): a candle is the merge of its minutes, and the
ticker merges the whole minutes of its window with the trades of its two partial ends. Their cost grows
with the minutes of the range (1,440 a day), not with its trades: on 2 M trades in a day the ticker took
~0.5 s and the 1 h candles of the day ~2 s from the trades themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg import sql
from psycopg_pool import ConnectionPool

from tradeengine.engine.errors import ValidationError
from tradeengine.storage.database import storage_errors
from tradeengine.storage.history import (
    TRADE_SELECT,
    TRADE_WINDOWS,
    check_limit,
    raise_if_unknown_symbol,
    trade_row,
    utc,
    window_conditions,
    windows,
)
from tradeengine.storage.ids import datetime_of_us
from tradeengine.storage.rows import TradeRow

__all__ = [
    "DEFAULT_CANDLE_LIMIT",
    "DEFAULT_RECENT_TRADES",
    "INTERVALS",
    "MAX_CANDLE_LIMIT",
    "MAX_RECENT_TRADES",
    "Candle",
    "Ticker24h",
    "candles",
    "recent_trades",
    "ticker_24h",
]

DEFAULT_RECENT_TRADES = 100
MAX_RECENT_TRADES = 1000
DEFAULT_CANDLE_LIMIT = 500
MAX_CANDLE_LIMIT = 1000

INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}
"""The candle intervals; buckets are aligned to the Unix epoch (so 1d candles open at UTC midnight)."""

_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Candle(NamedTuple):
    """One interval of trading: open/close are the first/last trade by (executed_at, sequence)."""

    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int


class Ticker24h(NamedTuple):
    """Trading over (now - 24 h, now]: prices None and volumes 0 when there was no trade."""

    open_24h: Decimal | None
    high_24h: Decimal | None
    low_24h: Decimal | None
    volume_24h: Decimal
    quote_volume_24h: Decimal
    trades_24h: int


_RECENT_TRADES = sql.SQL(
    "SELECT {columns} FROM trades AS t WHERE t.symbol = %(symbol)s AND {window} "
    "ORDER BY t.executed_at DESC, t.sequence DESC LIMIT %(limit)s"
)


def recent_trades(pool: ConnectionPool, symbol: str, limit: int = DEFAULT_RECENT_TRADES) -> list[TradeRow]:
    """Return the pair's last `limit` trades (1..1000, default 100), newest first.

    Newest first is executed_at DESC, then sequence DESC (one command's trades share its timestamp).
    Read in time windows widening backwards from now (a day, a week, a month, a year, the rest; see
    `storage.history`), stopping once `limit` trades are found: a busy pair reads one or two partitions.
    """
    limit = check_limit(limit, MAX_RECENT_TRADES)
    rows: list[TradeRow] = []
    with storage_errors(f"reading the recent trades of {symbol}"), pool.connection() as conn:
        for lower, upper in windows(datetime.now(UTC), None, TRADE_WINDOWS):
            params: dict[str, Any] = {"symbol": symbol, "limit": limit - len(rows)}
            window = window_conditions("t", "executed_at", lower, upper, params) or [sql.SQL("true")]
            query = _RECENT_TRADES.format(columns=TRADE_SELECT, window=sql.SQL(" AND ").join(window))
            rows += map(trade_row, conn.execute(query, params).fetchall())
            if len(rows) >= limit:
                break
        if not rows:
            raise_if_unknown_symbol(conn, symbol)
    return rows


# open and close: the price of the least / greatest (executed_at, sequence), as the third element of a
# numeric array ARRAY[extract(epoch FROM executed_at), sequence, price] compared element by element: one
# pass, constant memory per bucket, no sort. candles_1m keeps the least and greatest such array of each
# minute (open_ref, close_ref: migration 0011), so minutes merge exactly. Every candle interval is a whole
# number of minutes aligned to the epoch: a candle is the merge of its minutes.
#
# Intervals without trades have no minute rows, so "the first `limit` candles at or after start" (or the
# last before end) cannot be a fixed window of `limit` intervals. The buckets that hold trades are found
# first by a loose index scan (a recursive CTE): from a bound, the next minute row in the wanted direction
# (one descent of the primary key, LIMIT 1), its bucket, then the next row past that bucket, `limit`
# times at most. The minutes of the first to the last of those buckets are then merged in one range scan,
# which reads exactly the minute rows of the candles returned.
_CANDLES = """
WITH RECURSIVE buckets(open_time, n) AS (
    (SELECT date_bin(%(stride)s, open_time, TIMESTAMPTZ '1970-01-01 00:00:00+00'), 1
     FROM candles_1m
     WHERE symbol = %(symbol)s AND open_time >= %(lower)s AND open_time < %(upper)s
     ORDER BY open_time {direction} LIMIT 1)
    UNION ALL
    SELECT date_bin(%(stride)s, following.open_time, TIMESTAMPTZ '1970-01-01 00:00:00+00'), b.n + 1
    FROM buckets AS b
    CROSS JOIN LATERAL (
        SELECT open_time FROM candles_1m
        WHERE symbol = %(symbol)s AND {past_bucket} AND open_time >= %(lower)s AND open_time < %(upper)s
        ORDER BY open_time {direction} LIMIT 1) AS following
    WHERE b.n < %(limit)s
)
SELECT date_bin(%(stride)s, open_time, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS open_time,
       (min(open_ref))[3], max(high), min(low), (max(close_ref))[3],
       sum(volume), sum(quote_volume), sum(trades)::bigint
FROM candles_1m
WHERE symbol = %(symbol)s AND open_time >= (SELECT min(open_time) FROM buckets)
      AND open_time < (SELECT max(open_time) FROM buckets) + %(stride)s
GROUP BY 1
ORDER BY 1
"""
_CANDLES_FORWARD = _CANDLES.format(past_bucket="open_time >= b.open_time + %(stride)s", direction="ASC")
"""The first `limit` candles with open times in [lower, upper)."""
_CANDLES_BACKWARD = _CANDLES.format(past_bucket="open_time < b.open_time", direction="DESC")
"""The last `limit` candles with open times in [lower, upper)."""
# Far bounds of a one-sided search (timestamptz holds both; no minute of a trade lies beyond them).
_FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

# (now - 24 h, now]: the whole minutes [first_minute, last_minute) from candles_1m, the trades of the two
# partial ends, (now - 24 h, first_minute) and [last_minute, now], from trades.
_TRADES_OF_AN_END = """
SELECT min(ARRAY[extract(epoch FROM executed_at), sequence, price]) AS open_ref,
       max(price) AS high, min(price) AS low, sum(quantity) AS volume, sum(quote_quantity) AS quote_volume,
       count(*) AS trades
FROM trades
WHERE symbol = %(symbol)s AND"""
_TICKER = f"""
WITH parts AS (
{_TRADES_OF_AN_END} executed_at > %(lower)s AND executed_at < %(first_minute)s
UNION ALL
SELECT min(open_ref), max(high), min(low), sum(volume), sum(quote_volume), sum(trades)
FROM candles_1m
WHERE symbol = %(symbol)s AND open_time >= %(first_minute)s AND open_time < %(last_minute)s
UNION ALL
{_TRADES_OF_AN_END} executed_at >= %(last_minute)s AND executed_at <= %(upper)s
)
SELECT (min(open_ref))[3], max(high), min(low), coalesce(sum(volume), 0), coalesce(sum(quote_volume), 0),
       coalesce(sum(trades), 0)::bigint
FROM parts
"""


def candles(
    pool: ConnectionPool,
    symbol: str,
    interval: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    *,
    now: datetime | None = None,
) -> list[Candle]:
    """Return the pair's candles of `interval` (1m 5m 15m 1h 4h 1d), ascending by open_time.

    A candle covers [open_time, open_time + interval); open times are multiples of the interval since
    the Unix epoch (1d candles open at UTC midnight, 4h ones at 00, 04, 08 ... UTC). Only intervals
    with at least one trade are candles (no empty candles); `limit` (1..1000, default 500 for None)
    counts candles, so a gap without trades never hides the candles after it:

    - `start` given: the first `limit` candles whose open_time is at or after `start` (a candle that
      opened before `start` is left out), up to `end` when given (open_time <= end: the candle holding
      `end` is the last one). Page forwards with start = the last open_time + 1 µs;
    - `start` None: the last `limit` candles whose open_time is at or before `end` (default: `now`,
      itself defaulting to the current time; the last candle may still be open). Page backwards with
      end = the first open_time - 1 µs.

    start and end must be timezone-aware; start after end raises ValidationError(field="start"); a bad
    interval ValidationError(field="interval"), a bad limit ValidationError(field="limit").
    Cost: one index descent per candle returned (to find the buckets that hold trades) and one range scan
    of exactly the minute rows of those candles (the primary key of candles_1m), however far apart.
    """
    stride = INTERVALS.get(interval) if isinstance(interval, str) else None
    if stride is None:
        raise ValidationError(
            f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}", field="interval")
    count = check_limit(DEFAULT_CANDLE_LIMIT if limit is None else limit, MAX_CANDLE_LIMIT)
    start_us = None if start is None else _us(start, "start")
    end_us = None if end is None else _us(end, "end")
    if start_us is not None and end_us is not None and start_us > end_us:
        raise ValidationError("start must not be after end", field="start")
    if start_us is None and end_us is None:
        end_us = _us(now or datetime.now(UTC), "now")
    step = stride // _MICROSECOND
    try:
        # [lower, upper): the open times allowed, bucket-aligned; None: unbounded on that side.
        lower = None if start_us is None else datetime_of_us(-(-start_us // step) * step)
        upper = None if end_us is None else datetime_of_us(end_us // step * step + step)
    except OverflowError as exc:
        field = "start" if start is not None else "end"
        raise ValidationError("start or end is out of range", field=field) from exc
    if lower is not None and upper is not None and lower >= upper:
        return []  # start and end inside one interval, after its open time
    query = _CANDLES_FORWARD if start_us is not None else _CANDLES_BACKWARD
    params = {"stride": stride, "symbol": symbol, "limit": count, "lower": lower or _FAR_PAST,
              "upper": upper or _FAR_FUTURE}
    with storage_errors(f"computing the candles of {symbol}"), pool.connection() as conn:
        rows = conn.execute(query, params).fetchall()
        if not rows:
            raise_if_unknown_symbol(conn, symbol)
    return [Candle(utc(row[0]), *row[1:]) for row in rows]


def ticker_24h(pool: ConnectionPool, symbol: str, now: datetime) -> Ticker24h:
    """Return the pair's trading over the 24 hours before `now`: trades with executed_at in (now - 24 h, now].

    open_24h is the price of the first of those trades by (executed_at, sequence); high/low their
    extremes; volumes are base and quote sums. No trade: open/high/low None, volumes 0, trades 0.
    `now` must be timezone-aware (ValidationError(field="now") otherwise).
    """
    _us(now, "now")
    lower = now - _DAY
    params = {"symbol": symbol, "lower": lower, "upper": now,
              "first_minute": _next_minute(lower), "last_minute": _minute_of(now)}
    with storage_errors(f"computing the 24 h ticker of {symbol}"), pool.connection() as conn:
        row = conn.execute(_TICKER, params).fetchone()
        assert row is not None  # an aggregate without GROUP BY always has one row
        if row[5] == 0:
            raise_if_unknown_symbol(conn, symbol)
    return Ticker24h(*row)


def _minute_of(moment: datetime) -> datetime:
    """The start of the UTC minute that contains `moment` (timezone-aware)."""
    return moment - (moment - _EPOCH) % _MINUTE


def _next_minute(moment: datetime) -> datetime:
    """The start of the first UTC minute after the one that contains `moment`."""
    return _minute_of(moment) + _MINUTE


def _us(moment: object, field: str) -> int:
    """Microseconds since the Unix epoch of an aware datetime, else ValidationError(field=field)."""
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValidationError(f"{field} must be a timezone-aware datetime, got {moment!r}", field=field)
    return (moment - _EPOCH) // _MICROSECOND
