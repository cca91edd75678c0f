"""The public market-data routes with Redis: they answer from the mirror when it holds the pair fresh, from
the actors and PostgreSQL otherwise, with the same bodies either way, and never fail because of Redis
(real actors, real PostgreSQL, real Redis; the outage on a private redis-server killed mid-run)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import falcon.testing
import psycopg_pool
import pytest
import redis

from tests.actors.system_harness import database_pool, wait_until
from tests.actors.test_mirror import SYMBOLS
from tests.http.api_harness import ApiHarness, Trader, api_harness
from tests.redis_harness import PrivateRedis
from tradeengine.actors.mirror import MirrorSettings
from tradeengine.engine import PairSpec
from tradeengine.ops.server import build_worker
from tradeengine.ops.settings import Settings
from tradeengine.storage import apply_migrations
from tradeengine.storage.market import Ticker24h
from tradeengine.storage.marketdata import (
    DEFAULT_KEY_PREFIX,
    MarketDataReader,
    MarketDataStore,
    PairSnapshot,
    book_body,
    pair_key,
    ticker_body,
    trades_body,
)
from tradeengine.storage.rows import TradeRow

BOOK = "/api/v1/orderbook/BTC-USDT"
TICKER = "/api/v1/markets/BTC-USDT/ticker"
TRADES = "/api/v1/markets/BTC-USDT/trades"
ORDERS = "/api/v1/orders"


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def pool(machine_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    apply_migrations(machine_pg_url)
    with database_pool(machine_pg_url) as pool:
        yield pool


@contextlib.contextmanager
def reading(url: str, prefix: str) -> Iterator[MarketDataReader]:
    reader = MarketDataReader.from_url(url, key_prefix=prefix)
    try:
        yield reader
    finally:
        reader.close()


def place(api: ApiHarness, user: Trader, symbol: str = "BTC-USDT", **order: Any) -> None:
    response = api.post(ORDERS, user, json={"symbol": symbol, "type": "LIMIT", **order})
    assert response.status_code == 201, response.text


def trade(api: ApiHarness, seller: Trader, buyer: Trader, price: str, quantity: str = "0.1",
          symbol: str = "BTC-USDT") -> None:
    place(api, seller, symbol, side="SELL", quantity=quantity, price=price)
    place(api, buyer, symbol, side="BUY", quantity=quantity, price=price)


def traders(api: ApiHarness) -> tuple[Trader, Trader]:
    funds = {"BTC": "10", "ETH": "100", "USDT": "10000000"}
    return api.user(funds=funds), api.user(funds=funds)


def without_timestamp(body: bytes) -> tuple[list[str], dict[str, Any]]:
    """The body's fields in order and its values, the timestamp left out."""
    value: dict[str, Any] = json.loads(body)
    value.pop("timestamp", None)
    return list(json.loads(body)), value


def mirrored(api: ApiHarness, url: str, prefix: str, symbols: list[str]) -> bool:
    """True when Redis holds every one of ``symbols`` at its actor's sequence now."""
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        for symbol in symbols:
            stored = client.hget(pair_key(prefix, symbol), "sequence")
            if stored is None or int(stored) != api.system.exchange.top(symbol).sequence:
                return False
    return True


def same_answers(api: ApiHarness, plain: ApiHarness, requests: list[tuple[str, dict[str, str]]]) -> None:
    """Every request answers 200 with the same body (but its timestamp) through both apps."""
    for path, params in requests:
        ours, theirs = api.get(path, params=params), plain.get(path, params=params)
        assert (ours.status_code, theirs.status_code) == (200, 200), (path, ours.text, theirs.text)
        assert ours.headers["content-type"] == theirs.headers["content-type"]
        assert without_timestamp(ours.content) == without_timestamp(theirs.content), (path, params)


SPEC = PairSpec(symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=Decimal("0.01"),
                lot_size=Decimal("0.00001"), min_quantity=Decimal("0.00001"), max_quantity=Decimal("9000"))
MARKER_DAY = Ticker24h(Decimal("1"), Decimal("2"), Decimal("1"), Decimal("3"), Decimal("4"), 777)


def marker(verified_at: int, *, levels: int = 500) -> PairSnapshot:
    """Values no engine would have: sequence 987654, a bid at 12345, a ticker of 777 trades."""
    at = datetime.now(UTC)
    row = TradeRow(**{name: None for name in TradeRow._fields})._replace(
        id="marker", price=Decimal("12345"), quantity=Decimal("1"), taker_side="SELL", executed_at=at)
    return PairSnapshot(
        symbol="BTC-USDT", sequence=987654, verified_at=verified_at,
        book=book_body(SPEC, 987654, [(1_234_500, 100_000, 3)], [], at), book_levels=levels, book_sides=1,
        ticker=ticker_body(SPEC, (1_234_500, 100_000), None, 1_234_500, MARKER_DAY, at),
        trades=trades_body([row]), trades_limit=1, trades_count=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- from Redis, or not -------------------------------------------------------------------------------------


def test_the_routes_serve_what_redis_holds_while_it_is_fresh_and_the_actors_answer_once_it_is_stale(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str) -> None:
    with reading(redis_url, prefix) as reader, api_harness(pool, reader) as api:  # no mirror: the test writes
        store = MarketDataStore.from_url(redis_url, key_prefix=prefix)
        fresh = marker(now_ms())
        store.write([fresh])
        assert api.get(BOOK).content == fresh.book
        assert api.get(TICKER).content == fresh.ticker
        assert api.get(TRADES, params={"limit": "1"}).content == fresh.trades
        assert api.get(BOOK).headers["content-type"] == "application/json"

        store.write([marker(now_ms() - 2_500)])  # not verified for 2.5 s: the mirror has stopped
        book = api.get(BOOK).json
        assert (book["sequence"], book["bids"]) == (api.system.exchange.top("BTC-USDT").sequence, [])
        assert api.get(TICKER).json["trades_24h"] == 0
        assert api.get(TRADES).json == {"trades": []}
        store.close()


def test_a_request_deeper_than_redis_holds_is_answered_by_the_actors(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str) -> None:
    with reading(redis_url, prefix) as reader, api_harness(pool, reader) as api:
        store = MarketDataStore.from_url(redis_url, key_prefix=prefix)
        store.write([marker(now_ms(), levels=1)])
        assert api.get(BOOK, params={"depth": "1"}).json["sequence"] == 987654
        assert api.get(BOOK, params={"depth": "2"}).json["sequence"] != 987654
        assert api.get(TRADES, params={"limit": "1"}).json["trades"][0]["id"] == "marker"
        assert api.get(TRADES, params={"limit": "2"}).json == {"trades": []}
        store.close()


def test_an_unknown_symbol_is_unknown_whatever_redis_holds(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str) -> None:
    with reading(redis_url, prefix) as reader, api_harness(pool, reader) as api:
        for path in ("/api/v1/orderbook/NOPE-USDT", "/api/v1/markets/NOPE-USDT/ticker",
                     "/api/v1/markets/NOPE-USDT/trades", "/api/v1/markets/btc-usdt/trades"):
            response = api.get(path)
            assert response.status_code == 404, path
            assert response.json["error"]["code"] == "UNKNOWN_SYMBOL"


# -- with the mirror ----------------------------------------------------------------------------------------


def test_with_the_mirror_the_routes_answer_from_redis_with_the_bodies_the_actors_give(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str) -> None:
    mirror = MirrorSettings(redis_url, key_prefix=prefix, levels=3)
    with reading(redis_url, prefix) as reader, api_harness(pool, reader, market_data=mirror) as api:
        plain = ApiHarness(api.system, pool)  # the same engine without Redis
        seller, buyer = traders(api)
        for price in ("49000", "48999.99", "48000.5", "47000"):
            place(api, buyer, side="BUY", quantity="0.01", price=price)
        place(api, seller, side="SELL", quantity="0.5", price="51000")
        for n in range(3):
            trade(api, seller, buyer, price=f"5000{n}.5", quantity="0.0002")
        wait_until(lambda: mirrored(api, redis_url, prefix, SYMBOLS), 5.0, "the mirror is current")
        wait_until(lambda: json.loads(api.get(TICKER).content)["trades_24h"] == 3, 3.0,
                   "the 24 h figures count every trade")
        hits = reader.counts["hits"]
        requests: list[tuple[str, dict[str, str]]] = [
            (BOOK, {"depth": "1"}), (BOOK, {"depth": "3"}), (TICKER, {}), (TRADES, {}),
            (TRADES, {"limit": "2"}), ("/api/v1/orderbook/ETH-USDT", {"depth": "500"}),
            ("/api/v1/markets/ETH-USDT/trades", {"limit": "1000"})]
        same_answers(api, plain, requests)
        assert reader.counts["hits"] == hits + len(requests)  # every one of them from Redis
        same_answers(api, plain, [(BOOK, {"depth": "4"}), (BOOK, {})])  # deeper than the 3 levels kept
        assert reader.counts["hits"] == hits + len(requests)


def test_with_redis_killed_the_routes_answer_from_the_actors_at_once_and_from_redis_again_once_it_is_back(
        pool: psycopg_pool.ConnectionPool, private_redis: PrivateRedis, prefix: str) -> None:
    url = private_redis.url
    mirror = MirrorSettings(url, key_prefix=prefix)
    with reading(url, prefix) as reader, api_harness(pool, reader, market_data=mirror) as api:
        plain = ApiHarness(api.system, pool)
        seller, buyer = traders(api)
        trade(api, seller, buyer, price="50000")
        wait_until(lambda: mirrored(api, url, prefix, SYMBOLS), 5.0, "the mirror is current")
        wait_until(lambda: api.get(TICKER).json["trades_24h"] == 1, 3.0, "the 24 h figures count the trade")
        requests: list[tuple[str, dict[str, str]]] = [(BOOK, {}), (TICKER, {}), (TRADES, {})]
        hits = reader.counts["hits"]
        same_answers(api, plain, requests)
        assert reader.counts["hits"] == hits + 3

        private_redis.kill()
        trade(api, seller, buyer, price="50100", quantity="0.3")  # a change Redis cannot hear of
        place(api, seller, side="SELL", quantity="0.1", price="52000")
        started = time.perf_counter()
        for _ in range(10):
            same_answers(api, plain, requests)
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0  # 60 requests, half of them through the reader: no Redis timeout paid
        assert api.get(TICKER).json["last_price"] == "50100"
        assert api.get(TRADES).json["trades"][0]["quantity"] == "0.3"
        assert reader.counts["errors"] >= 1

        private_redis.start()  # the same port, empty
        wait_until(lambda: mirrored(api, url, prefix, SYMBOLS), 5.0, "the mirror has caught up")
        hits = reader.counts["hits"]
        wait_until(lambda: api.get(TICKER).status_code == 200 and reader.counts["hits"] > hits, 3.0,
                   "the routes read from Redis again")
        hits = reader.counts["hits"]
        same_answers(api, plain, requests)
        assert reader.counts["hits"] == hits + 3
        assert api.get(BOOK).json["asks"] == [{"price": "52000", "quantity": "0.1", "orders": 1}]


# -- the worker as `serve` builds it ------------------------------------------------------------------------


def hmget_calls(client: redis.Redis) -> int:
    """HMGET commands the server has run (only the routes' reader sends HMGET)."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def test_a_worker_given_a_redis_url_mirrors_market_data_and_its_routes_read_it(
        machine_pg_url: str, private_redis: PrivateRedis) -> None:
    apply_migrations(machine_pg_url)
    settings = Settings(database_pool_size=2, redis_url=private_redis.url, market_data_levels=7,
                        market_data_interval=0.02, rate_limit=0, public_rate_limit=0)  # no limiter's HMGETs
    parts = build_worker(settings, machine_pg_url)
    try:
        mirror = parts.system.mirror
        assert mirror is not None
        assert (mirror.settings.levels, mirror.settings.interval) == (7, 0.02)
        client = falcon.testing.TestClient(parts.app)
        with contextlib.closing(redis.Redis.from_url(private_redis.url)) as redis_client:
            wait_until(lambda: all(redis_client.exists(pair_key(DEFAULT_KEY_PREFIX, s)) for s in SYMBOLS),
                       5.0, "every pair is mirrored under the default prefix")
            calls = hmget_calls(redis_client)
            book = client.simulate_get(BOOK, params={"depth": "7"})
            assert book.status_code == 200 and book.json["symbol"] == "BTC-USDT"
            assert client.simulate_get(TICKER).status_code == 200
            assert client.simulate_get(TRADES).status_code == 200
            assert hmget_calls(redis_client) == calls + 3
            assert client.simulate_get(BOOK, params={"depth": "8"}).status_code == 200  # empty: complete
    finally:
        parts.close()
    assert parts.system.mirror is None


def test_every_redis_key_of_a_worker_starts_with_its_key_prefix(
        machine_pg_url: str, private_redis: PrivateRedis) -> None:
    apply_migrations(machine_pg_url)
    settings = Settings(database_pool_size=2, redis_url=private_redis.url, redis_key_prefix="exchange-a:",
                        market_data_interval=0.02)  # rate limits on: their buckets live in Redis too
    parts = build_worker(settings, machine_pg_url)
    try:
        client = falcon.testing.TestClient(parts.app)
        with contextlib.closing(redis.Redis.from_url(private_redis.url)) as redis_client:
            wait_until(lambda: all(redis_client.exists(f"exchange-a:md:{s}") for s in SYMBOLS),
                       5.0, "every pair is mirrored under the prefix")
            assert client.simulate_get(BOOK).json["symbol"] == "BTC-USDT"  # read from the mirror
            keys = sorted(key.decode() for key in redis_client.scan_iter())
        assert any(key.startswith("exchange-a:ratelimit:") for key in keys), keys
        assert all(key.startswith("exchange-a:") for key in keys), keys
    finally:
        parts.close()
