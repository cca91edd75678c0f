"""Rate limits: token-bucket arithmetic, the in-process and Redis buckets, and 429 RATE_LIMITED answers.

The Redis limiter runs against the machine's Redis (each test under its own key prefix); its outage
tests point it at a closed port, at a listener that never answers, and through a cuttable proxy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.conftest import service_unavailable
from tests.e2e.conftest import TcpProxy, free_port
from tradeengine.http import ratelimit
from tradeengine.http.auth import PUBLIC, AuthMiddleware
from tradeengine.http.errors import register_error_handlers
from tradeengine.http.middleware import RequestIdMiddleware
from tradeengine.http.operations import HealthResource, MetricsResource, ReadyResource
from tradeengine.http.ratelimit import (
    InProcessRateLimiter,
    Limit,
    RateLimiter,
    RateLimitMiddleware,
    RedisRateLimiter,
    build_rate_limit,
    charge,
)
from tradeengine.http.readiness import Readiness

LOGGER = "tests.http.ratelimit"
SCRIPT_SHA = hashlib.sha1(ratelimit._TOKEN_BUCKET_LUA.encode()).hexdigest()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def take(limiter: RateLimiter, key: str, limit: Limit, times: int, cost: int = 1) -> list[float]:
    return [limiter.acquire(key, limit, cost) for _ in range(times)]


def hammer(limiters: list[RateLimiter], key: str, limit: Limit, threads_each: int, calls: int) -> int:
    """Call ``acquire`` from ``threads_each`` threads per limiter, all at once; return how many passed."""
    allowed: list[int] = []
    workers = [limiter for limiter in limiters for _ in range(threads_each)]
    start = threading.Barrier(len(workers))

    def work(limiter: RateLimiter) -> None:
        start.wait()
        allowed.append(sum(1 for _ in range(calls) if limiter.acquire(key, limit) == 0.0))

    threads = [threading.Thread(target=work, args=(limiter,)) for limiter in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(allowed)


# --- bucket arithmetic (in process, injected clock) ---------------------------------------------------


def test_a_new_key_may_spend_its_whole_burst_at_once_then_waits_for_the_next_token() -> None:
    limiter = InProcessRateLimiter(clock=FakeClock())
    assert take(limiter, "k", Limit(rate=2, burst=5), 5) == [0.0] * 5
    assert limiter.acquire("k", Limit(rate=2, burst=5)) == pytest.approx(0.5)


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    limit = Limit(rate=2, burst=5)
    take(limiter, "k", limit, 5)
    clock.advance(1.0)
    assert take(limiter, "k", limit, 3) == [0.0, 0.0, pytest.approx(0.5)]
    clock.advance(3600.0)
    assert take(limiter, "k", limit, 6) == [0.0] * 5 + [pytest.approx(0.5)]


def test_the_wait_is_the_time_until_the_missing_tokens_refill_and_a_refusal_takes_nothing() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    limit = Limit(rate=2, burst=5)
    take(limiter, "k", limit, 4)
    assert limiter.acquire("k", limit, cost=3) == pytest.approx(1.0)  # 1 token left, 2 missing at 2/s
    assert limiter.acquire("k", limit, cost=3) == pytest.approx(1.0)  # the refusal took nothing
    clock.advance(1.0)
    assert limiter.acquire("k", limit, cost=3) == 0.0
    assert limiter.acquire("k", limit) == pytest.approx(0.5)


def test_a_cost_above_the_burst_waits_for_a_full_bucket_instead_of_forever() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    limit = Limit(rate=10, burst=5)
    assert limiter.acquire("k", limit, cost=100) == 0.0
    assert limiter.acquire("k", limit, cost=100) == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.acquire("k", limit, cost=100) == 0.0


def test_keys_have_separate_buckets() -> None:
    limiter = InProcessRateLimiter(clock=FakeClock())
    limit = Limit(rate=1, burst=1)
    assert take(limiter, "a", limit, 2) == [0.0, 1.0]
    assert limiter.acquire("b", limit) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_limit_without_a_positive_rate_and_burst_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limit(rate=rate, burst=burst)


def test_threads_hammering_one_key_never_get_more_than_the_burst() -> None:
    limiter = InProcessRateLimiter(clock=FakeClock())  # time stands still: no refill at all
    assert hammer([limiter], "k", Limit(rate=1, burst=1000), threads_each=8, calls=400) == 1000


def test_a_bucket_idle_until_full_is_dropped_and_its_key_starts_again_from_a_full_bucket() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    limit = Limit(rate=10, burst=10)
    take(limiter, "a", limit, 10)
    take(limiter, "b", limit, 1)
    assert len(limiter) == 2
    clock.advance(0.5)  # b is full again (0.1 s), a is not (1 s)
    limiter.acquire("c", limit)
    assert len(limiter) == 3  # a, not yet full, is the oldest: the sweep stops there
    clock.advance(1.0)
    limiter.acquire("d", limit)
    assert len(limiter) == 1  # a, b and c refilled and were dropped; d is held
    assert take(limiter, "a", limit, 11) == [0.0] * 10 + [pytest.approx(0.1)]


def test_a_flood_of_distinct_keys_keeps_at_most_max_keys_buckets_dropping_the_least_recent() -> None:
    limiter = InProcessRateLimiter(max_keys=1000, clock=FakeClock())  # nothing refills: only the cap
    limit = Limit(rate=1, burst=1)
    for n in range(50_000):
        limiter.acquire(f"addr:{n}", limit)
    assert len(limiter) == 1000
    assert limiter.acquire("addr:49999", limit) == 1.0  # recent keys keep their (empty) bucket
    assert limiter.acquire("addr:0", limit) == 0.0  # the oldest was dropped: a fresh bucket


def test_buckets_of_keys_seen_over_time_do_not_accumulate() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock)
    limit = Limit(rate=100, burst=1)  # a bucket refills in 10 ms
    for n in range(50_000):
        clock.advance(0.001)
        limiter.acquire(f"addr:{n}", limit)
    assert len(limiter) <= 11


# --- Redis ----------------------------------------------------------------------------------------------


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url, decode_responses=True)) as client:
        yield client


LimiterFactory = Callable[..., RedisRateLimiter]


@pytest.fixture
def make_limiter(prefix: str) -> Iterator[LimiterFactory]:
    made: list[RedisRateLimiter] = []

    def make(url: str, **kwargs: Any) -> RedisRateLimiter:
        kwargs.setdefault("key_prefix", prefix)
        kwargs.setdefault("logger", logging.getLogger(LOGGER))
        limiter = RedisRateLimiter.from_url(url, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


def test_a_redis_bucket_spends_its_burst_then_answers_the_wait_for_the_next_token(
        redis_url: str, make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(redis_url)
    limit = Limit(rate=0.01, burst=3)  # slow enough that the time between calls hardly shows
    assert take(limiter, "user:1", limit, 3) == [0.0] * 3
    assert 99.0 < limiter.acquire("user:1", limit) <= 100.0
    assert 299.0 < limiter.acquire("user:1", limit, cost=3) <= 300.0


def test_two_limiters_on_one_redis_share_one_bucket_as_two_processes_would(
        redis_url: str, make_limiter: LimiterFactory) -> None:
    first, second = make_limiter(redis_url), make_limiter(redis_url)
    limit = Limit(rate=0.001, burst=5)
    assert take(first, "user:7", limit, 3) == [0.0] * 3
    assert take(second, "user:7", limit, 2) == [0.0] * 2
    assert first.acquire("user:7", limit) > 900
    assert second.acquire("user:7", limit) > 900
    assert second.acquire("user:8", limit) == 0.0


def test_threads_of_two_limiters_hammering_one_redis_bucket_never_get_more_than_the_burst(
        redis_url: str, make_limiter: LimiterFactory) -> None:
    limiters: list[RateLimiter] = [make_limiter(redis_url), make_limiter(redis_url)]
    assert hammer(limiters, "user:1", Limit(rate=0.001, burst=100), threads_each=4, calls=50) == 100


def test_a_redis_bucket_lives_under_the_prefix_and_expires_once_it_would_be_full_again(
        redis_url: str, make_limiter: LimiterFactory, redis_client: redis.Redis, prefix: str) -> None:
    limiter = make_limiter(redis_url)
    take(limiter, "user:1", Limit(rate=10, burst=10), 4)
    key = prefix + "user:1"
    assert float(redis_client.hget(key, "tokens") or "nan") == pytest.approx(6.0, abs=0.05)
    assert 0 < redis_client.pttl(key) <= 400 + 1000  # 4 tokens at 10/s, plus a second
    assert limiter.acquire("user:1", Limit(rate=10, burst=10), cost=10) > 0  # refused: nothing written
    assert float(redis_client.hget(key, "tokens") or "nan") == pytest.approx(6.0, abs=0.05)


@pytest.fixture
def own_redis_url(redis_url: str) -> Iterator[str]:
    """A Redis server of this test's own (its script cache may be flushed without disturbing others)."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable("redis-server (the binary)", "PATH", "not found")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_redis_that_forgot_the_script_is_sent_it_again(
        own_redis_url: str, make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(own_redis_url)
    limit = Limit(rate=0.001, burst=2)
    assert limiter.acquire("user:1", limit) == 0.0
    with contextlib.closing(redis.Redis.from_url(own_redis_url)) as client:
        client.script_flush()  # as a restarted server would have
        assert client.script_exists(SCRIPT_SHA) == [False]
        assert take(limiter, "user:1", limit, 2) == [0.0, pytest.approx(1000.0, rel=0.01)]
        assert client.script_exists(SCRIPT_SHA) == [True]


def test_an_unreachable_redis_falls_back_to_in_process_buckets_and_warns_once_per_interval(
        make_limiter: LimiterFactory, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = make_limiter(f"redis://127.0.0.1:{free_port()}/0", clock=clock, warn_interval=60.0)
    limit = Limit(rate=1, burst=10)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert take(limiter, "user:1", limit, 11) == [0.0] * 10 + [1.0]  # still limited, in process
        for _ in range(30):
            clock.advance(1.0)  # Redis is tried again every second, and still fails
            limiter.acquire("user:2", limit)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Redis is not answering" in warnings[0].getMessage()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        clock.advance(60.0)
        limiter.acquire("user:2", limit)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_while_redis_is_down_calls_do_not_wait_for_its_timeout_and_it_is_retried_once_a_second(
        silent_listener: int, make_limiter: LimiterFactory) -> None:
    clock = FakeClock()
    limiter = make_limiter(f"redis://127.0.0.1:{silent_listener}/0", clock=clock, socket_timeout=0.3)
    limit = Limit(rate=1000, burst=1000)

    def timed(calls: int) -> float:
        started = time.perf_counter()
        take(limiter, "user:1", limit, calls)
        return time.perf_counter() - started

    assert timed(1) >= 0.3  # the first call finds out
    assert timed(200) < 0.3  # later calls do not try Redis at all
    clock.advance(1.0)
    assert timed(1) >= 0.3  # one caller tries again after the retry interval
    assert timed(200) < 0.3


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy.before(redis_url, 6379)
    try:
        yield proxy
    finally:
        proxy.cut()


def test_the_limiter_goes_back_to_redis_once_it_answers_again(
        redis_proxy: TcpProxy, make_limiter: LimiterFactory, redis_client: redis.Redis, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = make_limiter(f"redis://127.0.0.1:{redis_proxy.port}/0", clock=clock)
    limit = Limit(rate=0.001, burst=10)
    key = prefix + "user:1"

    def shared_tokens() -> float:
        return float(redis_client.hget(key, "tokens") or "nan")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        take(limiter, "user:1", limit, 2)
        assert shared_tokens() == pytest.approx(8.0, abs=0.01)
        redis_proxy.cut()
        assert take(limiter, "user:1", limit, 3) == [0.0] * 3  # in process, from a full local bucket
        assert shared_tokens() == pytest.approx(8.0, abs=0.01)
        redis_proxy.restore()
        assert limiter.acquire("user:1", limit) == 0.0  # within the retry interval: still local
        assert shared_tokens() == pytest.approx(8.0, abs=0.01)
        clock.advance(1.0)
        assert take(limiter, "user:1", limit, 2) == [0.0] * 2
        assert shared_tokens() == pytest.approx(6.0, abs=0.01)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO]
    assert "answers again" in messages[1][1]


# --- the middleware (falcon.testing) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class User:
    user_id: int
    role: str


KEYS = {"te_alice": User(1, "trader"), "te_bob": User(2, "trader")}


class Whoami:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"user_id": req.context.principal.user_id}


class Market:
    auth = PUBLIC

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"pairs": []}


class Batch:
    """Reads its raw body as the API's resources do, then charges a token per order beyond the first."""

    def __init__(self) -> None:
        self.placed: list[Any] = []

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        orders = json.loads(await req.stream.read())["orders"]
        await charge(req, len(orders) - 1)
        self.placed.extend(orders)
        resp.media = {"results": len(orders)}


class Candles:
    """A public route that costs five tokens a call."""

    auth = PUBLIC
    rate_cost = 5

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"candles": []}


def limited_client(middleware: RateLimitMiddleware | None, batches: Batch | None = None
                   ) -> falcon.testing.TestClient:
    """A small app in create_app's middleware order: request id, auth, then the rate limit."""
    app = falcon.asgi.App(middleware=[RequestIdMiddleware(lambda: "rid-1"), AuthMiddleware(KEYS.get),
                                      *([middleware] if middleware else [])])
    register_error_handlers(app, logging.getLogger(LOGGER))
    registry = CollectorRegistry()
    app.add_route("/health", HealthResource("1.0"))
    app.add_route("/ready", ReadyResource(Readiness({}, 1.0)))
    app.add_route("/metrics", MetricsResource(registry))
    app.add_route("/api/v1/me", Whoami())
    app.add_route("/api/v1/pairs", Market())
    app.add_route("/api/v1/orders/batch", batches or Batch())
    app.add_route("/api/v1/candles", Candles())
    return falcon.testing.TestClient(app)


def middleware(client_limit: Limit | None = None, public_limit: Limit | None = None,
               clock: FakeClock | None = None) -> RateLimitMiddleware:
    limiter = InProcessRateLimiter(clock=clock or FakeClock())
    return RateLimitMiddleware(limiter, client_limit=client_limit, public_limit=public_limit)


def me(client: falcon.testing.TestClient, key: str, addr: str = "10.0.0.1") -> falcon.testing.Result:
    return client.simulate_get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}, remote_addr=addr)


def batch(client: falcon.testing.TestClient, orders: int) -> falcon.testing.Result:
    return client.simulate_post("/api/v1/orders/batch", headers={"Authorization": "Bearer te_alice"},
                                json={"orders": [{"n": n} for n in range(orders)]})


def test_a_client_beyond_its_burst_gets_429_rate_limited_in_the_one_error_shape_with_retry_after() -> None:
    client = limited_client(middleware(client_limit=Limit(rate=0.4, burst=2)))
    assert [me(client, "te_alice").status_code for _ in range(2)] == [200, 200]
    refused = me(client, "te_alice")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"  # 2.5 s, rounded up
    assert refused.headers["x-request-id"] == "rid-1"
    assert refused.json == {"error": {"code": "RATE_LIMITED", "message": refused.json["error"]["message"]},
                            "request_id": "rid-1"}
    assert "0.4 requests/s (burst 2)" in refused.json["error"]["message"]


@pytest.mark.parametrize(("rate", "retry_after"), [(100.0, "1"), (1.0, "1"), (0.25, "4"), (0.3, "4")])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(rate: float, retry_after: str) -> None:
    client = limited_client(middleware(client_limit=Limit(rate=rate, burst=1)))
    me(client, "te_alice")
    assert me(client, "te_alice").headers["retry-after"] == retry_after


def test_a_client_may_call_again_once_its_tokens_have_refilled() -> None:
    clock = FakeClock()
    client = limited_client(middleware(client_limit=Limit(rate=1, burst=1), clock=clock))
    assert [me(client, "te_alice").status_code for _ in range(2)] == [200, 429]
    clock.advance(1.0)
    assert me(client, "te_alice").status_code == 200


def test_each_user_has_its_own_bucket_whatever_address_it_calls_from() -> None:
    client = limited_client(middleware(client_limit=Limit(rate=1, burst=1)))
    assert me(client, "te_alice", "10.0.0.1").status_code == 200
    assert me(client, "te_alice", "10.0.0.2").status_code == 429
    assert me(client, "te_bob", "10.0.0.1").status_code == 200


def test_public_routes_are_limited_per_client_address_with_the_public_limit() -> None:
    client = limited_client(middleware(client_limit=Limit(rate=1, burst=5), public_limit=Limit(1, 1)))

    def pairs(addr: str) -> int:
        return client.simulate_get("/api/v1/pairs", remote_addr=addr).status_code

    assert [pairs("10.0.0.1"), pairs("10.0.0.1"), pairs("10.0.0.2")] == [200, 429, 200]
    assert me(client, "te_alice", "10.0.0.1").status_code == 200  # a user is counted as the user


def test_operational_routes_preflights_and_unmatched_routes_are_never_limited() -> None:
    client = limited_client(middleware(client_limit=Limit(1, 1), public_limit=Limit(rate=1, burst=1)))
    for _ in range(5):
        for path in ("/health", "/ready", "/metrics"):
            assert client.simulate_get(path).status_code == 200, path
        assert client.simulate_options("/api/v1/pairs").status_code == 200
        assert client.simulate_get("/nowhere").status_code == 404
    assert client.simulate_get("/api/v1/pairs").status_code == 200  # none of the above took a token
    assert client.simulate_get("/api/v1/pairs").status_code == 429


def test_a_batch_costs_one_token_per_order_and_a_refused_batch_places_nothing() -> None:
    batches = Batch()
    client = limited_client(middleware(client_limit=Limit(rate=0.5, burst=10)), batches)
    assert batch(client, 7).json == {"results": 7}
    refused = batch(client, 4)  # 3 tokens left: one taken on the way in, 3 more lacking one
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "RATE_LIMITED"
    assert refused.headers["retry-after"] == "2"
    assert len(batches.placed) == 7
    assert batch(client, 2).json == {"results": 2}  # the refused batch kept only its first token
    assert len(batches.placed) == 9


def test_charging_more_does_nothing_where_the_request_is_not_limited() -> None:
    for unlimited in (None, middleware(client_limit=None, public_limit=Limit(1, 1))):
        client = limited_client(unlimited)
        assert {batch(client, 100).status_code for _ in range(5)} == {200}


def test_a_resource_may_declare_a_higher_fixed_cost() -> None:
    client = limited_client(middleware(public_limit=Limit(rate=1, burst=12)))
    statuses = [client.simulate_get("/api/v1/candles").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # 2 tokens left, 5 needed
    assert [client.simulate_get("/api/v1/pairs").status_code for _ in range(3)] == [200, 200, 429]


def test_a_limit_set_to_none_is_not_applied() -> None:
    client = limited_client(middleware(client_limit=None, public_limit=Limit(rate=1, burst=1)))
    assert {me(client, "te_alice").status_code for _ in range(20)} == {200}
    assert [client.simulate_get("/api/v1/pairs").status_code for _ in range(2)] == [200, 429]


def test_the_factory_turns_a_zero_rate_off_and_chooses_redis_only_when_it_has_a_url(
        redis_url: str, prefix: str) -> None:
    assert build_rate_limit(rate=0, burst=10, public_rate=0, public_burst=10, redis_url=redis_url) is None
    local = build_rate_limit(rate=500, burst=1000, public_rate=0, public_burst=10, redis_url=None)
    assert local is not None
    assert isinstance(local.limiter, InProcessRateLimiter)
    client = limited_client(local)
    assert {client.simulate_get("/api/v1/pairs").status_code for _ in range(20)} == {200}
    shared = build_rate_limit(rate=500, burst=1000, public_rate=100, public_burst=200, redis_url=redis_url,
                              key_prefix=prefix)
    assert shared is not None
    assert isinstance(shared.limiter, RedisRateLimiter)
    try:
        assert me(limited_client(shared), "te_alice").status_code == 200
    finally:
        shared.limiter.close()
