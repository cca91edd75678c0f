"""storage.market on real PostgreSQL: recent trades, candles and the 24 h ticker of a pair."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg_pool
import pytest

from tests.storage.read_side import add_traders, commit, now_us, rendered, trade, us_of, write_trades
from tests.storage.test_rows_scenarios import ALICE, BOB, Scenario
from tradeengine.engine import Side, UnknownSymbol, ValidationError
from tradeengine.storage.ids import datetime_of_us
from tradeengine.storage.market import INTERVALS, Candle, Ticker24h, candles, recent_trades, ticker_24h
from tradeengine.storage.rows import TradeRow

D = Decimal
T0 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
US = timedelta(microseconds=1)


@pytest.fixture
def pool(pg_pool: psycopg_pool.ConnectionPool) -> psycopg_pool.ConnectionPool:
    add_traders(pg_pool)
    return pg_pool


@pytest.fixture
def series(pool: psycopg_pool.ConnectionPool) -> psycopg_pool.ConnectionPool:
    """A known BTC-USDT trade series on 2026-03-10 and just after midnight, plus one ETH-USDT trade."""
    write_trades(pool, [
        # 10:00 — two trades in one instant (sequence decides), and a trade whose sequence is lower than
        # an earlier-executed one: open/close follow executed_at first, then sequence.
        trade("BTC-USDT", "100", "1", T0 + 5 * SECOND, 1),
        trade("BTC-USDT", "105", "2", T0 + 5 * SECOND, 2),
        trade("BTC-USDT", "99", "1", T0 + 30 * SECOND, 4),
        trade("BTC-USDT", "101", "0.5", T0 + MINUTE - US, 3),
        trade("BTC-USDT", "110", "1", T0 + MINUTE, 6),  # 10:01, on the bucket's first microsecond
        # 10:02 and 10:03: no trades
        trade("BTC-USDT", "90", "3", T0 + 4 * MINUTE + 30 * SECOND, 7),
        trade("BTC-USDT", "95", "1", T0 + 4 * MINUTE + 30 * SECOND, 8),
        trade("BTC-USDT", "200", "1", datetime(2026, 3, 10, 23, 59, 59, 999999, tzinfo=UTC), 9),
        trade("BTC-USDT", "300", "1", datetime(2026, 3, 11, tzinfo=UTC), 10),
        trade("ETH-USDT", "5000", "1", T0 + 10 * SECOND, 1),
    ])
    return pool


def candle(open_time: datetime, o: str, h: str, low: str, c: str, volume: str, quote: str, n: int) -> Candle:
    return Candle(open_time, D(o), D(h), D(low), D(c), D(volume), D(quote), n)


AT_10_00 = candle(T0, "100", "105", "99", "101", "4.5", "459.5", 4)
AT_10_01 = candle(T0 + MINUTE, "110", "110", "110", "110", "1", "110", 1)
AT_10_04 = candle(T0 + 4 * MINUTE, "90", "95", "90", "95", "4", "365", 2)
NEXT_DAY = datetime(2026, 3, 11, tzinfo=UTC)


def test_one_minute_candles_have_the_exact_ohlcv_of_their_trades_and_skip_empty_minutes(
    series: psycopg_pool.ConnectionPool,
) -> None:
    got = candles(series, "BTC-USDT", "1m", T0, T0 + 5 * MINUTE, None)
    assert got == [AT_10_00, AT_10_01, AT_10_04]
    assert all(c.open_time.tzinfo is UTC for c in got)
    assert rendered(got[0]) == ["2026-03-10T10:00:00.000000Z", "100", "105", "99", "101", "4.5", "459.5", 4]
    assert candles(series, "ETH-USDT", "1m", T0, T0 + 5 * MINUTE, None) == [
        candle(T0, "5000", "5000", "5000", "5000", "1", "5000", 1)]


@pytest.mark.parametrize(("interval", "expected"), [
    ("5m", [candle(T0, "100", "110", "90", "95", "9.5", "934.5", 7),
            candle(datetime(2026, 3, 10, 23, 55, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1),
            candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)]),
    ("15m", [candle(T0, "100", "110", "90", "95", "9.5", "934.5", 7),
             candle(datetime(2026, 3, 10, 23, 45, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1),
             candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)]),
    ("1h", [candle(T0, "100", "110", "90", "95", "9.5", "934.5", 7),
            candle(datetime(2026, 3, 10, 23, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1),
            candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)]),
    ("4h", [candle(datetime(2026, 3, 10, 8, tzinfo=UTC), "100", "110", "90", "95", "9.5", "934.5", 7),
            candle(datetime(2026, 3, 10, 20, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1),
            candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)]),
    ("1d", [candle(datetime(2026, 3, 10, tzinfo=UTC), "100", "200", "90", "200", "10.5", "1134.5", 8),
            candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)]),
])
def test_candles_of_every_interval_are_aligned_to_the_epoch_and_utc_midnight(
    series: psycopg_pool.ConnectionPool, interval: str, expected: list[Candle],
) -> None:
    start = datetime(2026, 3, 10, tzinfo=UTC)
    assert candles(series, "BTC-USDT", interval, start, NEXT_DAY + timedelta(days=1), None) == expected


AT_23_59 = candle(datetime(2026, 3, 10, 23, 59, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1)
AT_00_00 = candle(NEXT_DAY, "300", "300", "300", "300", "1", "300", 1)


def test_without_start_the_last_limit_candles_at_or_before_end_or_now(
    series: psycopg_pool.ConnectionPool,
) -> None:
    now = T0 + 4 * MINUTE + 45 * SECOND
    assert candles(series, "BTC-USDT", "1m", None, None, 1, now=now) == [AT_10_04]
    # limit counts candles, not intervals: the empty minutes 10:02 and 10:03 hide nothing.
    assert candles(series, "BTC-USDT", "1m", None, None, 2, now=now) == [AT_10_01, AT_10_04]
    assert candles(series, "BTC-USDT", "1m", None, None, 3, now=now) == [AT_10_00, AT_10_01, AT_10_04]
    assert candles(series, "BTC-USDT", "1m", None, None, None, now=now) == [AT_10_00, AT_10_01, AT_10_04]
    # end is inclusive of the candle it falls in: 10:01:00 opens the 10:01 candle.
    assert candles(series, "BTC-USDT", "1m", None, T0 + MINUTE, 2) == [AT_10_00, AT_10_01]
    assert candles(series, "BTC-USDT", "1m", None, T0 + MINUTE - US, 2) == [AT_10_00]
    assert candles(series, "BTC-USDT", "1m", None, T0 - US, None) == []
    # The last candle before midnight is 13 hours before it: one candle back, however far.
    assert candles(series, "BTC-USDT", "1m", None, NEXT_DAY - US, 2) == [AT_10_04, AT_23_59]
    assert candles(series, "BTC-USDT", "1d", None, NEXT_DAY, 1) == [AT_00_00]
    assert candles(series, "BTC-USDT", "1h", None, NEXT_DAY - US, 1) == [
        candle(datetime(2026, 3, 10, 23, tzinfo=UTC), "200", "200", "200", "200", "1", "200", 1)]
    # Without now: the latest candles, however long ago they were.
    assert candles(series, "BTC-USDT", "1m", None, None, 2) == [AT_23_59, AT_00_00]


def test_with_start_the_first_limit_candles_at_or_after_start(series: psycopg_pool.ConnectionPool) -> None:
    assert candles(series, "BTC-USDT", "1m", T0, None, 2) == [AT_10_00, AT_10_01]
    # limit counts candles, not intervals: the empty minutes (and the 13 empty hours) hide nothing.
    assert candles(series, "BTC-USDT", "1m", T0 + 2 * MINUTE, None, 2) == [AT_10_04, AT_23_59]
    assert candles(series, "BTC-USDT", "1m", T0 + 5 * MINUTE, None, 1) == [AT_23_59]
    # 10:00 opened before start: the first candle is 10:01.
    assert candles(series, "BTC-USDT", "1m", T0 + SECOND, None, 4) == [AT_10_01, AT_10_04, AT_23_59, AT_00_00]
    assert candles(series, "BTC-USDT", "1m", T0, T0 + MINUTE, 500) == [AT_10_00, AT_10_01]
    assert candles(series, "BTC-USDT", "1m", T0, T0 + MINUTE - US, 500) == [AT_10_00]
    assert candles(series, "BTC-USDT", "1m", T0 + 10 * SECOND, T0 + 50 * SECOND, None) == []
    assert candles(series, "BTC-USDT", "1m", T0, None, None) == [AT_10_00, AT_10_01, AT_10_04, AT_23_59,
                                                                   AT_00_00]
    assert candles(series, "BTC-USDT", "1m", NEXT_DAY + US, None, None) == []
    # A candle of a longer interval merges all its minutes, however few candles are asked for.
    assert candles(series, "BTC-USDT", "1h", T0, None, 1) == [
        candle(T0, "100", "110", "90", "95", "9.5", "934.5", 7)]
    assert candles(series, "BTC-USDT", "1d", datetime(2026, 1, 1, tzinfo=UTC), None, 1) == [
        candle(datetime(2026, 3, 10, tzinfo=UTC), "100", "200", "90", "200", "10.5", "1134.5", 8)]


def test_bad_candle_arguments_are_refused_for_their_fields(series: psycopg_pool.ConnectionPool) -> None:
    naive = datetime(2026, 3, 10, 10)
    cases: list[tuple[dict[str, object], str]] = [
        ({"interval": "2m"}, "interval"), ({"interval": "1M"}, "interval"), ({"interval": "1D"}, "interval"),
        ({"start": T0 + SECOND, "end": T0}, "start"),
        ({"start": naive}, "start"), ({"end": naive}, "end"),
        ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": True}, "limit"),
    ]
    for overrides, field in cases:
        arguments: dict[str, object] = {"interval": "1m", "start": None, "end": None, "limit": None}
        arguments.update(overrides)
        with pytest.raises(ValidationError) as error:
            candles(series, "BTC-USDT", **arguments)  # type: ignore[arg-type]
        assert error.value.field == field, overrides


def test_market_data_of_an_unknown_symbol_raises_unknown_symbol_and_of_an_idle_pair_is_empty(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    now = datetime.now(UTC)
    for read in (lambda s: recent_trades(pool, s), lambda s: candles(pool, s, "1h", None, None, None),
                 lambda s: ticker_24h(pool, s, now)):
        with pytest.raises(UnknownSymbol) as error:
            read("NOPE-USDT")
        assert error.value.field == "symbol"
    assert recent_trades(pool, "SOL-USDT") == []
    assert candles(pool, "SOL-USDT", "1h", None, None, None) == []
    assert ticker_24h(pool, "SOL-USDT", now) == Ticker24h(None, None, None, D(0), D(0), 0)


def test_recent_trades_are_newest_first_by_time_then_sequence_across_every_age(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    now = datetime_of_us(now_us())
    days = timedelta(days=1)
    rows = [
        trade("BTC-USDT", "100", "1", now - 500 * days, 1),
        trade("BTC-USDT", "101", "1", now - 40 * days, 2),
        trade("BTC-USDT", "102", "1", now - 3 * days, 3),
        *[trade("BTC-USDT", str(110 + n), "1", now - timedelta(hours=2), n) for n in range(4, 13)],
        trade("ETH-USDT", "3000", "1", now - timedelta(hours=1), 1),
    ]
    write_trades(pool, rows)
    btc = sorted(rows[:-1], key=lambda t: (t.executed_at, t.sequence), reverse=True)
    assert recent_trades(pool, "BTC-USDT") == btc
    assert [t.sequence for t in recent_trades(pool, "BTC-USDT", 3)] == [12, 11, 10]
    assert recent_trades(pool, "BTC-USDT", 11) == btc[:11]
    assert recent_trades(pool, "ETH-USDT", 1000) == rows[-1:]
    for limit in (0, 1001, -1, None):
        with pytest.raises(ValidationError) as error:
            recent_trades(pool, "BTC-USDT", limit)  # type: ignore[arg-type]
        assert error.value.field == "limit"


def test_recent_trades_read_back_equal_to_the_trade_rows_the_writer_built(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    s = Scenario()
    s.place(BOB, Side.SELL, "0.3", "50000")
    s.place(BOB, Side.SELL, "0.3", "50010")
    s.place(ALICE, Side.BUY, "0.5", "50010")
    written = commit(pool, s.facts).trades
    stored = recent_trades(pool, "BTC-USDT")
    assert stored == written[::-1]
    assert [rendered(t) for t in stored] == [rendered(t) for t in written[::-1]]


def test_the_ticker_covers_the_24_hours_before_now_excluding_the_start_including_now(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    now = datetime(2026, 3, 11, 12, tzinfo=UTC)
    day = timedelta(days=1)
    write_trades(pool, [
        trade("BTC-USDT", "1", "100", now - day, 1),  # exactly 24 h ago: out
        trade("BTC-USDT", "50", "1", now - day + US, 2),  # the first in: the open
        trade("BTC-USDT", "70", "2", now - timedelta(hours=1), 3),
        trade("BTC-USDT", "40", "1", now - timedelta(hours=1), 4),
        trade("BTC-USDT", "60", "0.5", now, 5),  # exactly now: in
        trade("BTC-USDT", "1000", "100", now + US, 6),  # after now: out
        trade("ETH-USDT", "9999", "1", now - timedelta(hours=1), 1),
    ])
    assert ticker_24h(pool, "BTC-USDT", now) == Ticker24h(D(50), D(70), D(40), D("4.5"), D(260), 4)
    # One microsecond earlier, the trade of exactly 24 h before is in (and the open), the one at now out.
    assert ticker_24h(pool, "BTC-USDT", now - US) == Ticker24h(D(1), D(70), D(1), D(104), D(330), 4)
    assert ticker_24h(pool, "BTC-USDT", now + day) == Ticker24h(D(1000), D(1000), D(1000), D(100),
                                                                  D(100000), 1)
    assert ticker_24h(pool, "BTC-USDT", now + 2 * day + US) == Ticker24h(None, None, None, D(0), D(0), 0)
    with pytest.raises(ValidationError) as error:
        ticker_24h(pool, "BTC-USDT", datetime(2026, 3, 11, 12))
    assert error.value.field == "now"


def reference_candle(trades: list[TradeRow], open_time: datetime) -> Candle:
    """The candle of `trades` computed in Python: open/close by (executed_at, sequence)."""
    ordered = sorted(trades, key=lambda t: (t.executed_at, t.sequence))
    return Candle(open_time, ordered[0].price, max(t.price for t in trades), min(t.price for t in trades),
                  ordered[-1].price, sum((t.quantity for t in trades), D(0)),
                  sum((t.quote_quantity for t in trades), D(0)), len(trades))


def test_candles_and_ticker_from_the_minute_candles_equal_those_of_the_trades_however_they_arrive(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    """Trades of a few minutes written in random batches and out of executed_at order (a later batch holds
    an earlier trade of a minute already stored): the minute candles the trigger keeps merge exactly, so
    every candle interval and every ticker window, at and between minute boundaries, equals the Python
    aggregate of the trades themselves."""
    rng = random.Random(11)
    start = datetime(2026, 3, 10, 23, 50, tzinfo=UTC)
    trades = [trade("BTC-USDT", str(rng.randint(90, 110)), str(rng.randint(1, 9) / 10),
                    start + rng.randrange(25 * 60 * 10**6) * US, sequence)
              for sequence in range(1, 400)]
    trades += [trade("BTC-USDT", "150", "0.3", start + 3 * MINUTE, 400),  # same instants: sequence decides
               trade("BTC-USDT", "50", "0.2", start + 3 * MINUTE, 401)]
    shuffled = trades[:]
    rng.shuffle(shuffled)
    while shuffled:
        size = rng.randint(1, 40)
        write_trades(pool, shuffled[:size])
        del shuffled[:size]
    with pool.connection() as conn:
        stored = conn.execute("SELECT symbol, open_time, (open_ref)[3], high, low, (close_ref)[3], volume, "
                              "quote_volume, trades FROM candles_1m ORDER BY open_time").fetchall()
    minutes = sorted({start + (t.executed_at - start) // MINUTE * MINUTE for t in trades})
    assert stored == [("BTC-USDT", *reference_candle(
        [t for t in trades if m <= t.executed_at < m + MINUTE], m)) for m in minutes]

    for interval, stride in INTERVALS.items():
        got = candles(pool, "BTC-USDT", interval, start - stride, start + 30 * MINUTE, None)
        step = stride // US
        opens = sorted({datetime_of_us(us_of(t.executed_at) // step * step) for t in trades})
        assert got == [reference_candle([t for t in trades if o <= t.executed_at < o + stride], o)
                       for o in opens], interval

    day = timedelta(days=1)
    instants = [start + 7 * MINUTE, start + 7 * MINUTE + US, start + 7 * MINUTE - US,
                *(t.executed_at for t in trades[:20]), *(t.executed_at - US for t in trades[:20])]
    for moment in instants:
        for now in (moment, moment + day):  # the window's end, then its start, inside the trades
            inside = [t for t in trades if now - day < t.executed_at <= now]
            if inside:
                whole = reference_candle(inside, now)
                expected = Ticker24h(whole.open, whole.high, whole.low, whole.volume, whole.quote_volume,
                                     whole.trades)
            else:
                expected = Ticker24h(None, None, None, D(0), D(0), 0)
            assert ticker_24h(pool, "BTC-USDT", now) == expected, now
