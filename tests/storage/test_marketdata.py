"""The Redis market-data layout: the API bodies it holds, the store that writes them, the reader that
serves them only when fresh, and how the reader behaves when Redis is not there (real Redis throughout)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis

from tests.e2e.conftest import free_port
from tradeengine.engine import PairSpec
from tradeengine.http.models import OrderBook, PublicTrades, Ticker, encode
from tradeengine.storage.market import Ticker24h
from tradeengine.storage.marketdata import (
    MarketDataReader,
    MarketDataStore,
    PairSnapshot,
    book_body,
    channel,
    pair_key,
    ticker_body,
    trades_body,
    update_message,
)
from tradeengine.storage.rows import TradeRow

LOGGER = "tests.storage.marketdata"
SPEC = PairSpec(symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=Decimal("0.01"),
                lot_size=Decimal("0.00001"), min_quantity=Decimal("0.00001"), max_quantity=Decimal("9000"))
AT = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
BIDS = [(4_900_000, 35_000, 2), (4_899_999, 30_000, 1), (4_800_000, 1, 1)]
ASKS = [(5_050_050, 20, 1), (5_100_000, 50_000, 1)]
DAY = Ticker24h(Decimal("50000"), Decimal("50500.5"), Decimal("49000"), Decimal("0.75000000"),
                Decimal("37612.50000000"), 4)
EMPTY_DAY = Ticker24h(None, None, None, Decimal(0), Decimal(0), 0)


def trade_row(**values: Any) -> TradeRow:
    """A trades row with the fields the market routes show (the rest left empty)."""
    return TradeRow(**{name: values.get(name) for name in TradeRow._fields})


TRADES = [trade_row(id=f"{1000 - n}", price=Decimal("50000.50000000") + n, quantity=Decimal("0.10000000"),
                    taker_side="BUY" if n % 2 else "SELL", executed_at=AT) for n in range(5)]


def next_message(subscriber: Any, timeout: float) -> dict[str, Any] | None:
    """The next published message within ``timeout`` s (subscription confirmations skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = subscriber.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            return message  # type: ignore[no-any-return]
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def snapshot(symbol: str = "BTC-USDT", *, verified_at: int | None = None, levels: int = 500,
             trades_limit: int = 1000, update: bytes | None = None) -> PairSnapshot:
    return PairSnapshot(
        symbol=symbol, sequence=41, verified_at=now_ms() if verified_at is None else verified_at,
        book=book_body(SPEC, 42, BIDS, ASKS, AT), book_levels=levels, book_sides=3,
        ticker=ticker_body(SPEC, (4_900_000, 35_000), (5_050_050, 20), 5_000_000, DAY, AT),
        trades=trades_body(TRADES), trades_limit=trades_limit, trades_count=5, update=update)


# -- the bodies -------------------------------------------------------------------------------------------


def test_the_bodies_are_the_api_responses_field_for_field_and_byte_for_byte() -> None:
    for body, kind in ((book_body(SPEC, 42, BIDS, ASKS, AT), OrderBook),
                       (ticker_body(SPEC, (4_900_000, 35_000), None, 5_000_000, DAY, AT), Ticker),
                       (ticker_body(SPEC, None, None, None, EMPTY_DAY, AT), Ticker),
                       (trades_body(TRADES), PublicTrades)):
        assert encode(msgspec.json.decode(body, type=kind)) == body


def test_the_book_body_renders_prices_and_quantities_in_the_pairs_units() -> None:
    book = json.loads(book_body(SPEC, 42, BIDS, ASKS, AT))
    assert book == {
        "symbol": "BTC-USDT", "sequence": 42,
        "bids": [{"price": "49000", "quantity": "0.35", "orders": 2},
                 {"price": "48999.99", "quantity": "0.3", "orders": 1},
                 {"price": "48000", "quantity": "0.00001", "orders": 1}],
        "asks": [{"price": "50500.5", "quantity": "0.0002", "orders": 1},
                 {"price": "51000", "quantity": "0.5", "orders": 1}],
        "timestamp": "2026-11-24T10:00:00.123456Z"}


def test_the_ticker_body_is_null_where_there_is_no_data_and_zero_volumes_without_trades() -> None:
    ticker = json.loads(ticker_body(SPEC, None, None, None, EMPTY_DAY, AT))
    assert ticker == {"symbol": "BTC-USDT", "last_price": None, "best_bid": None, "best_bid_quantity": None,
                      "best_ask": None, "best_ask_quantity": None, "open_24h": None, "high_24h": None,
                      "low_24h": None, "volume_24h": "0", "quote_volume_24h": "0", "trades_24h": 0,
                      "timestamp": "2026-11-24T10:00:00.123456Z"}
    full = json.loads(ticker_body(SPEC, (4_900_000, 35_000), (5_050_050, 20), 5_000_000, DAY, AT))
    assert (full["last_price"], full["best_bid"], full["best_bid_quantity"], full["best_ask"],
            full["best_ask_quantity"]) == ("50000", "49000", "0.35", "50500.5", "0.0002")
    assert (full["open_24h"], full["high_24h"], full["volume_24h"], full["quote_volume_24h"]) == (
        "50000", "50500.5", "0.75", "37612.5")


def test_an_update_message_carries_the_sequence_and_the_best_and_last_prices() -> None:
    message = json.loads(update_message(SPEC, 42, (4_900_000, 35_000), None, 5_000_000, AT))
    assert message == {"symbol": "BTC-USDT", "sequence": 42, "best_bid": "49000", "best_ask": None,
                       "last_price": "50000", "timestamp": "2026-11-24T10:00:00.123456Z"}


# -- store and reader on the machine's Redis ----------------------------------------------------------------


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        yield client


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[MarketDataStore]:
    store = MarketDataStore.from_url(redis_url, key_prefix=prefix)
    yield store
    store.close()


@pytest.fixture
def reader(redis_url: str, prefix: str) -> Iterator[MarketDataReader]:
    reader = MarketDataReader.from_url(redis_url, key_prefix=prefix, logger=logging.getLogger(LOGGER))
    yield reader
    reader.close()


def test_a_pair_is_one_hash_under_the_prefix_that_expires_unless_rewritten(
        store: MarketDataStore, client: redis.Redis, prefix: str) -> None:
    written = snapshot()
    store.write([written, snapshot("ETH-USDT")])
    key = pair_key(prefix, "BTC-USDT")
    assert key == f"{prefix}BTC-USDT"
    stored = client.hgetall(key)
    assert stored == {name.encode(): value if isinstance(value, bytes) else str(value).encode()
                      for name, value in written.fields().items()}
    assert 59_000 < client.pttl(key) <= 60_000
    assert client.exists(pair_key(prefix, "ETH-USDT"))


def test_a_snapshot_with_an_update_is_published_on_the_pairs_channel(
        store: MarketDataStore, client: redis.Redis, prefix: str) -> None:
    subscriber = client.pubsub()
    subscriber.subscribe(channel(prefix, "BTC-USDT"))
    try:
        message = update_message(SPEC, 42, None, None, None, AT)
        store.write([snapshot(update=message), snapshot("ETH-USDT")])  # ETH-USDT announces nothing
        received = next_message(subscriber, 2.0)
        assert received is not None and received["data"] == message
        assert received["channel"] == f"{prefix}BTC-USDT".encode()
        assert next_message(subscriber, 0.3) is None
    finally:
        subscriber.close()


def test_the_reader_serves_fresh_values_as_they_are_stored(store: MarketDataStore,
                                                           reader: MarketDataReader) -> None:
    written = snapshot()
    store.write([written])
    assert reader.book("BTC-USDT", 50) == written.book
    assert reader.book("BTC-USDT", 3) == written.book
    assert reader.ticker("BTC-USDT") == written.ticker
    assert reader.trades("BTC-USDT", 100) == written.trades
    assert reader.counts["hits"] == 4


def test_a_shallower_request_gets_the_best_levels_and_the_newest_trades(store: MarketDataStore,
                                                                        reader: MarketDataReader) -> None:
    store.write([snapshot()])
    book = json.loads(reader.book("BTC-USDT", 1) or b"{}")
    full = json.loads(book_body(SPEC, 42, BIDS, ASKS, AT))
    assert book == {**full, "bids": full["bids"][:1], "asks": full["asks"][:1]}
    assert list(book) == list(full)
    trades = json.loads(reader.trades("BTC-USDT", 2) or b"{}")
    assert [t["id"] for t in trades["trades"]] == ["1000", "999"]


def test_a_request_deeper_than_what_is_stored_is_not_answered(store: MarketDataStore,
                                                              reader: MarketDataReader) -> None:
    store.write([snapshot(levels=3, trades_limit=5)])
    assert reader.book("BTC-USDT", 3) is not None
    assert reader.book("BTC-USDT", 4) is None
    assert reader.trades("BTC-USDT", 5) is not None
    assert reader.trades("BTC-USDT", 6) is None
    assert reader.counts["misses"] == 2


def test_values_not_verified_within_the_max_age_are_not_served(store: MarketDataStore,
                                                               reader: MarketDataReader) -> None:
    store.write([snapshot(verified_at=now_ms() - 2_500)])
    assert reader.book("BTC-USDT", 50) is None
    assert reader.ticker("BTC-USDT") is None
    assert reader.trades("BTC-USDT", 100) is None
    store.write([snapshot(verified_at=now_ms() - 1_500)])
    assert reader.ticker("BTC-USDT") is not None
    assert reader.counts["stale"] == 3


def test_an_absent_pair_or_a_half_written_hash_is_a_miss(client: redis.Redis, prefix: str,
                                                          reader: MarketDataReader) -> None:
    assert reader.book("BTC-USDT", 50) is None
    client.hset(pair_key(prefix, "BTC-USDT"), mapping={"verified_at": now_ms(), "ticker": b"{}"})
    assert reader.ticker("BTC-USDT") == b"{}"
    assert reader.book("BTC-USDT", 50) is None
    assert reader.counts["misses"] == 2


def test_a_garbled_value_is_not_served_and_raises_nothing(client: redis.Redis, prefix: str,
                                                          reader: MarketDataReader) -> None:
    client.hset(pair_key(prefix, "BTC-USDT"), mapping={
        "verified_at": "soon", "book": b"{}", "book_levels": 50, "book_sides": 1})
    assert reader.book("BTC-USDT", 50) is None  # not a time: stale
    client.hset(pair_key(prefix, "BTC-USDT"), mapping={
        "verified_at": now_ms(), "book": b"not json", "book_levels": "many", "book_sides": 9})
    assert reader.book("BTC-USDT", 5) is None
    client.hset(pair_key(prefix, "BTC-USDT"), mapping={"book_levels": 50})
    assert reader.book("BTC-USDT", 5) is None  # fewer levels asked than stored: the body is cut
    assert reader.counts["errors"] == 2


def test_a_garbled_value_does_not_stop_the_reader_using_redis(store: MarketDataStore, client: redis.Redis,
                                                               prefix: str, reader: MarketDataReader) -> None:
    client.hset(pair_key(prefix, "ETH-USDT"), mapping={
        "verified_at": now_ms(), "book": b"not json", "book_levels": 50, "book_sides": 9})
    assert reader.book("ETH-USDT", 5) is None
    store.write([snapshot()])
    assert reader.book("BTC-USDT", 50) == snapshot().book
    assert reader.counts["skipped"] == 0


# -- without Redis ----------------------------------------------------------------------------------------


def test_an_unreachable_redis_answers_none_at_once_then_is_skipped_and_tried_once_a_second(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    reader = MarketDataReader.from_url(f"redis://127.0.0.1:{free_port()}/0", logger=logging.getLogger(LOGGER),
                                       monotonic=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reader.book("BTC-USDT", 50) is None
        for _ in range(50):
            assert reader.ticker("BTC-USDT") is None
        assert reader.counts == {"hits": 0, "misses": 0, "stale": 0, "errors": 1, "skipped": 50}
        clock[0] += 1.0
        assert reader.trades("BTC-USDT", 100) is None  # the one try after a second, failing again
    assert reader.counts["errors"] == 2
    assert len(caplog.records) == 1
    assert "Redis read failed" in caplog.records[0].getMessage()
    reader.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_a_redis_that_never_answers_costs_one_read_its_timeout_and_the_next_nothing(silent_port: int) -> None:
    reader = MarketDataReader.from_url(f"redis://127.0.0.1:{silent_port}/0", timeout=0.1,
                                       logger=logging.getLogger(LOGGER))
    started = time.perf_counter()
    assert reader.book("BTC-USDT", 50) is None
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(200):
        assert reader.book("BTC-USDT", 50) is None
    rest = time.perf_counter() - started
    assert 0.09 < first < 0.5
    assert rest < 0.1
    reader.close()
