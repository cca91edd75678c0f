"""The market-data mirror on a running actor system, real PostgreSQL and real Redis: what it writes,
when it writes (coalesced, and not at all when nothing changed), what it publishes, and how it catches up
after Redis was gone (a private redis-server, killed and started again on the same port)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg_pool
import pytest
import redis

from tests.actors.system_harness import TRADERS, fund, limit, running_system, wait_until
from tests.redis_harness import PrivateRedis
from tradeengine.actors.mirror import MirrorSettings
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import Side
from tradeengine.storage.market import recent_trades
from tradeengine.storage.marketdata import book_body, channel, pair_key, trades_body

SELLER, BUYER = TRADERS[0], TRADERS[1]
LOGGER = "tests.actors.mirror"
SYMBOLS = ["ADA-USDT", "BNB-USDT", "BTC-USDT", "DOGE-USDT", "ETH-USDT", "LINK-USDT", "MATIC-USDT", "SOL-USDT",
           "USDC-USDT", "XRP-USDT"]


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        yield client


@contextlib.contextmanager
def mirrored_system(pool: psycopg_pool.ConnectionPool, url: str, prefix: str,
                    **settings: Any) -> Iterator[ActorSystem]:
    """A running, funded system whose mirror writes to ``url`` under ``prefix``."""
    with running_system(pool, market_data=MirrorSettings(url, key_prefix=prefix, **settings)) as system:
        fund(system)
        yield system


def hash_of(client: redis.Redis, prefix: str, symbol: str) -> dict[str, bytes]:
    return {name.decode(): value for name, value in client.hgetall(pair_key(prefix, symbol)).items()}


def mirrored_sequence(client: redis.Redis, prefix: str, symbol: str) -> int | None:
    value = client.hget(pair_key(prefix, symbol), "sequence")
    return None if value is None else int(value)


def wait_mirrored(system: ActorSystem, client: redis.Redis, prefix: str, symbols: list[str],
                  timeout: float = 5.0) -> None:
    """Wait until Redis holds every one of ``symbols`` at its actor's sequence now."""
    def current() -> bool:
        return all(mirrored_sequence(client, prefix, s) == system.exchange.top(s).sequence for s in symbols)

    wait_until(current, timeout, f"the mirror holds {symbols} at their sequences")


def trade(system: ActorSystem, symbol: str = "BTC-USDT", price: str = "50000", quantity: str = "0.1") -> None:
    system.exchange.place(SELLER, limit(symbol, Side.SELL, quantity, price))
    system.exchange.place(BUYER, limit(symbol, Side.BUY, quantity, price))


def without_timestamp(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    value.pop("timestamp")
    return value


def next_message(subscriber: Any, timeout: float) -> dict[str, Any] | None:
    """The next published message within ``timeout`` s (subscription confirmations skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = subscriber.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            return message  # type: ignore[no-any-return]
    return None


def drain(subscriber: Any, quiet: float) -> list[dict[str, Any]]:
    """Every message until none came for ``quiet`` s."""
    messages = []
    while (message := next_message(subscriber, quiet)) is not None:
        messages.append(message)
    return messages


# -- what is written ----------------------------------------------------------------------------------------


def test_every_pair_is_in_redis_once_the_system_has_started(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    with mirrored_system(pool, redis_url, prefix) as system:
        wait_mirrored(system, client, prefix, SYMBOLS)
        stored = hash_of(client, prefix, "ETH-USDT")
        assert set(stored) == {"sequence", "verified_at", "book", "book_levels", "book_sides", "ticker",
                               "trades", "trades_limit", "trades_count"}
        assert json.loads(stored["book"])["bids"] == []
        assert json.loads(stored["trades"]) == {"trades": []}
        assert (stored["book_levels"], stored["trades_limit"]) == (b"500", b"1000")  # complete: all of it
        assert abs(time.time() * 1000 - int(stored["verified_at"])) < 2000


def test_after_a_trade_redis_holds_the_book_ticker_and_trades_the_actors_and_database_show(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    with mirrored_system(pool, redis_url, prefix) as system:
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "0.5", "51000"))
        system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.25", "49000"))
        trade(system, price="50000.5", quantity="0.2")
        wait_mirrored(system, client, prefix, ["BTC-USDT"])
        spec = system.exchange.spec("BTC-USDT")
        depth = system.exchange.depth("BTC-USDT", 50)
        stored = hash_of(client, prefix, "BTC-USDT")
        assert without_timestamp(stored["book"]) == without_timestamp(
            book_body(spec, depth.sequence, depth.bids, depth.asks, datetime.now(UTC)))
        assert json.loads(stored["trades"]) == json.loads(trades_body(recent_trades(pool, "BTC-USDT", 100)))
        assert len(json.loads(stored["trades"])["trades"]) == 1

        def ticker() -> dict[str, Any]:
            return json.loads(client.hget(pair_key(prefix, "BTC-USDT"), "ticker") or b"{}")  # type: ignore[no-any-return]

        # The 24 h figures are recomputed at most once a second: they follow within about that.
        wait_until(lambda: ticker()["trades_24h"] == 1, 3.0, "the ticker counts the trade")
        assert {k: v for k, v in ticker().items() if k != "timestamp"} == {
            "symbol": "BTC-USDT", "last_price": "50000.5", "best_bid": "49000", "best_bid_quantity": "0.25",
            "best_ask": "51000", "best_ask_quantity": "0.5", "open_24h": "50000.5", "high_24h": "50000.5",
            "low_24h": "50000.5", "volume_24h": "0.2", "quote_volume_24h": "10000.1", "trades_24h": 1}


def test_a_last_price_outside_the_24h_high_and_low_has_them_recomputed_at_once(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    """Volumes and count may lag by up to a refresh (here 60 s); a new extreme (or a first trade) never
    leaves the ticker contradicting itself."""
    def ticker() -> dict[str, Any]:
        return json.loads(client.hget(pair_key(prefix, "BTC-USDT"), "ticker") or b"{}")  # type: ignore[no-any-return]

    def consistent(last: str) -> bool:
        body = ticker()
        return (body.get("last_price") == last and body["trades_24h"] >= 1
                and Decimal(body["low_24h"]) <= Decimal(last) <= Decimal(body["high_24h"]))

    with mirrored_system(pool, redis_url, prefix, refresh=60.0) as system:
        wait_mirrored(system, client, prefix, ["BTC-USDT"])
        for price in ("50000", "50100", "49900"):  # the first trade, a new high, a new low
            trade(system, price=price)
            wait_until(functools.partial(consistent, price), 3.0, f"the ticker agrees with {price}")
        assert (ticker()["high_24h"], ticker()["low_24h"]) == ("50100", "49900")


def test_the_book_in_redis_is_cut_at_the_configured_levels_and_says_so(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    with mirrored_system(pool, redis_url, prefix, levels=2) as system:
        for price in ("49000", "48000", "47000"):
            system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.1", price))
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "0.1", "51000"))
        wait_mirrored(system, client, prefix, ["BTC-USDT"])
        stored = hash_of(client, prefix, "BTC-USDT")
        book = json.loads(stored["book"])
        assert [level["price"] for level in book["bids"]] == ["49000", "48000"]
        assert [level["price"] for level in book["asks"]] == ["51000"]
        assert (stored["book_levels"], stored["book_sides"]) == (b"2", b"2")


# -- when it is written -------------------------------------------------------------------------------------


def test_many_changes_within_an_interval_make_one_write_and_no_change_makes_none(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    subscriber = client.pubsub()
    subscriber.subscribe(channel(prefix, "BTC-USDT"))
    try:
        with mirrored_system(pool, redis_url, prefix, interval=0.5, refresh=60.0) as system:
            mirror = system.mirror
            assert mirror is not None
            wait_mirrored(system, client, prefix, SYMBOLS)
            assert len(drain(subscriber, 1.2)) == 1  # the start: every pair is announced once
            orders = [limit("BTC-USDT", Side.BUY, "0.01", str(40000 + n)) for n in range(30)]
            results = system.exchange.place_batch(BUYER, orders)
            assert not [r for r in results if isinstance(r, Exception)]
            wait_mirrored(system, client, prefix, ["BTC-USDT"])
            announced = drain(subscriber, 1.2)
            assert 1 <= len(announced) <= 2  # 30 commands, one or two ticks (the batch may straddle one)
            assert json.loads(announced[-1]["data"])["sequence"] == system.exchange.top("BTC-USDT").sequence

            written, verified = mirror.counts["pairs_written"], client.hget(pair_key(prefix, "BTC-USDT"),
                                                                             "verified_at")
            ticks = mirror.counts["ticks"]
            time.sleep(2.0)  # four intervals without a change
            assert mirror.counts["ticks"] >= ticks + 3
            assert mirror.counts["pairs_written"] == written
            assert client.hget(pair_key(prefix, "BTC-USDT"), "verified_at") == verified
            assert drain(subscriber, 0.1) == []
    finally:
        subscriber.close()


def test_every_pair_is_rewritten_once_per_refresh_without_an_announcement(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    subscriber = client.pubsub()
    subscriber.subscribe(channel(prefix, "ETH-USDT"))
    try:
        with mirrored_system(pool, redis_url, prefix, refresh=0.5) as system:
            wait_mirrored(system, client, prefix, SYMBOLS)
            drain(subscriber, 0.3)
            seen = set()
            for _ in range(15):  # 1.5 s: the value is never older than a refresh (and a tick's work)
                verified_at = int(client.hget(pair_key(prefix, "ETH-USDT"), "verified_at") or 0)
                assert time.time() * 1000 - verified_at < 800
                seen.add(verified_at)
                time.sleep(0.1)
            assert len(seen) >= 2
            assert drain(subscriber, 0.1) == []
    finally:
        subscriber.close()


def test_a_subscriber_on_a_pairs_channel_hears_of_a_trade_with_its_sequence_and_price(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    with mirrored_system(pool, redis_url, prefix) as system:
        wait_mirrored(system, client, prefix, SYMBOLS)
        subscriber = client.pubsub()
        subscriber.subscribe(channel(prefix, "SOL-USDT"))
        try:
            drain(subscriber, 0.2)
            trade(system, "SOL-USDT", price="150.25", quantity="2")
            updates = []  # the resting sell may have been seen on its own first: one or two updates
            while (message := next_message(subscriber, 3.0)) is not None:
                updates.append(json.loads(message["data"]))
                if updates[-1]["last_price"] is not None:
                    break
            assert 1 <= len(updates) <= 2
            update = updates[-1]
            assert (update["symbol"], update["last_price"]) == ("SOL-USDT", "150.25")
            assert update["sequence"] == system.exchange.top("SOL-USDT").sequence
            assert set(update) == {"symbol", "sequence", "best_bid", "best_ask", "last_price", "timestamp"}
        finally:
            subscriber.close()


def test_a_restarted_pair_is_written_and_announced_again(
        pool: psycopg_pool.ConnectionPool, redis_url: str, prefix: str, client: redis.Redis) -> None:
    with mirrored_system(pool, redis_url, prefix, refresh=60.0) as system:
        trade(system)
        wait_mirrored(system, client, prefix, SYMBOLS)
        subscriber = client.pubsub()
        subscriber.subscribe(channel(prefix, "BTC-USDT"))
        try:
            drain(subscriber, 0.2)
            sequence = system.exchange.top("BTC-USDT").sequence
            system.restart_pair("BTC-USDT")
            message = next_message(subscriber, 3.0)
            assert message is not None
            assert json.loads(message["data"])["sequence"] == sequence  # same sequence, new incarnation
        finally:
            subscriber.close()


# -- Redis gone and back ------------------------------------------------------------------------------------


def test_when_redis_comes_back_empty_the_mirror_rewrites_every_pair_at_its_current_sequence(
        pool: psycopg_pool.ConnectionPool, private_redis: PrivateRedis, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with contextlib.closing(redis.Redis.from_url(private_redis.url)) as client, \
            mirrored_system(pool, private_redis.url, prefix) as system, \
            caplog.at_level(logging.INFO, logger="tradeengine.actors.mirror"):
        mirror = system.mirror
        assert mirror is not None
        wait_mirrored(system, client, prefix, SYMBOLS)
        private_redis.kill()
        trade(system, "BTC-USDT")
        trade(system, "ETH-USDT", price="3000", quantity="1")
        wait_until(lambda: mirror.redis_down, 3.0, "the mirror notices Redis is gone")
        time.sleep(1.5)  # a few retries, each failing
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "Redis does not answer" in warnings[0].getMessage()

        private_redis.start()  # the same port, and empty
        wait_mirrored(system, client, prefix, SYMBOLS, timeout=5.0)
        assert not mirror.redis_down
        assert "answers again" in caplog.records[-1].getMessage() or any(
            "answers again" in r.getMessage() for r in caplog.records)
        trades = json.loads(client.hget(pair_key(prefix, "ETH-USDT"), "trades") or b"{}")["trades"]
        assert [(t["price"], t["quantity"]) for t in trades] == [("3000", "1")]
