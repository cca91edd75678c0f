"""Per-client rate limits: token buckets, answered with 429 ``RATE_LIMITED`` and ``Retry-After``.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request takes
``cost`` tokens or, when the bucket holds fewer, is refused with the seconds until it would have them.
A refused request takes nothing, so a client that keeps retrying too early is not pushed back further.
A cost above ``burst`` is charged as ``burst`` (the request waits for a full bucket, never forever).

Who is counted (:class:`RateLimitMiddleware`, after :class:`tradeengine.http.auth.AuthMiddleware`):

- a request with an authenticated principal (``req.context.principal``) counts against its user
  (``user:<id>``), whatever key or address it comes from, with the client limit;
- any other request (public market data) counts against its client address (``addr:<ip>``) with the
  lower public limit;
- ``/health``, ``/ready`` and ``/metrics`` are never limited (probes and scrapers must always get
  through, and they cost nothing); nor are CORS preflights and unmatched routes (404/405 are cheap).

Cost: every counted request takes ``rate_cost`` tokens, a resource's class attribute (default 1), when
it passes the middleware. A cost known only from the body is charged by the resource once it has read
the body: ``await charge(...)`` takes more tokens from the same bucket, or raises the same 429. The
batch route (``POST /api/v1/orders/batch``, up to 100 orders) awaits ``charge(req, len(orders) - 1)``
once it has decoded its body and before it places anything, so a batch of n orders costs n tokens and
a refused batch places nothing (it keeps the one token it took on the way in). The limit protects the
engine, whose work (matching, reserving, committing) is per order: at one token a batch, a client
could place 100 times its budget. Batching still saves round trips, only not budget. (The middleware
does not read the body itself: the resources read the raw stream once, with msgspec.)

Backends (:class:`RateLimiter`):

- :class:`InProcessRateLimiter`: a lock and an ``OrderedDict`` in least-recently-used order; O(1) per
  call (amortized). A bucket that has refilled completely is the same as no bucket, so it is dropped;
  every call drops such buckets from the old end. ``max_keys`` caps memory under a flood of distinct
  addresses: beyond it the least recently used bucket is dropped even if not full (its client gets a
  fresh bucket — lenient, never wrongly strict).
- :class:`RedisRateLimiter`: one Lua script per call (EVALSHA, loaded on NOSCRIPT), so limits hold across
  processes; it reads the Redis server's ``TIME``, so the clocks of the callers do not matter. Each
  bucket is a hash under ``key_prefix`` that expires when it would be full again. When Redis fails
  (short socket timeouts, no client-side retries) the call is served by an in-process bucket, Redis is
  tried again at most once per ``retry_interval`` (one caller probes, the others do not wait), and a
  warning is logged at most once per ``warn_interval``; the first answer after an outage switches back.

Known limits: a request that fails authentication (401) is refused before it is counted, so key
guessing is limited only by the auth cache's miss TTL; behind a reverse proxy every public client has
the proxy's address unless ``client_address`` is given a way to read the real one (never trust
``X-Forwarded-For`` from the open internet). During a Redis outage each process limits on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any, Protocol

import falcon
import falcon.asgi
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tradeengine.storage.outage import OutageGate

from .blocking import blocking

#: Routes that are never limited.
OPERATIONAL_PATHS = frozenset({"/health", "/ready", "/metrics"})

KEY_SPACE = "ratelimit:"
"""What the rate-limit keys start with after the engine's Redis key prefix."""
DEFAULT_KEY_PREFIX = "tradeengine:" + KEY_SPACE

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket's shape: ``rate`` tokens per second, at most ``burst`` tokens."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be greater than 0, not {self.rate}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")

    def charge(self, cost: int) -> int:
        """The tokens a request of ``cost`` takes: at least 1, at most the whole bucket."""
        return min(max(cost, 1), self.burst)


class RateLimiter(Protocol):
    """Token buckets by key. ``blocks``: whether ``acquire`` waits on I/O (then it runs on a thread, see
    :mod:`tradeengine.http.blocking`; an in-process limiter answers on the event loop)."""

    blocks: bool

    def acquire(self, key: str, limit: Limit, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when allowed, else the seconds to wait."""


class _Bucket:
    __slots__ = ("at", "full_at", "tokens")

    def __init__(self, tokens: float, at: float, full_at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.full_at = full_at


class InProcessRateLimiter:
    """Token buckets in this process's memory; thread-safe, O(1) per call, idle buckets dropped."""

    blocks = False

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of buckets held (keys seen recently whose bucket is not full)."""
        return len(self._buckets)

    def acquire(self, key: str, limit: Limit, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when allowed, else the seconds to wait."""
        cost = limit.charge(cost)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                tokens = float(limit.burst)
            else:
                self._buckets.move_to_end(key)
                tokens = min(float(limit.burst), bucket.tokens + max(now - bucket.at, 0.0) * limit.rate)
            if tokens < cost:
                return (cost - tokens) / limit.rate
            tokens -= cost
            full_at = now + (limit.burst - tokens) / limit.rate
            if bucket is None:
                self._buckets[key] = _Bucket(tokens, now, full_at)
                self._drop_idle(now)
            else:
                bucket.tokens, bucket.at, bucket.full_at = tokens, now, full_at
        return 0.0

    def _drop_idle(self, now: float) -> None:
        """Drop full buckets from the least recently used end, and any beyond ``max_keys``."""
        buckets = self._buckets
        while buckets:
            oldest = buckets[next(iter(buckets))]
            if oldest.full_at > now and len(buckets) <= self._max_keys:
                return
            buckets.popitem(last=False)


# KEYS[1]: the bucket (a hash: tokens, at). ARGV: rate, burst, cost (cost already within 1..burst).
# Answers the seconds to wait as a string ("0" when allowed). A refusal writes nothing. The bucket
# expires when it would be full again (plus a second): a missing bucket is a full one.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tokens = burst
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if state[1] and state[2] then
  local elapsed = math.max(now - tonumber(state[2]), 0)
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
end
if tokens < cost then
  return string.format('%.17g', (cost - tokens) / rate)
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every process using the same ``key_prefix``; falls back to
    in-process buckets while Redis is unreachable."""

    blocks = True

    def __init__(self, client: redis.Redis, *, key_prefix: str = DEFAULT_KEY_PREFIX,
                 fallback: InProcessRateLimiter | None = None, retry_interval: float = 1.0,
                 warn_interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self._client = client
        self._script = client.register_script(_TOKEN_BUCKET_LUA)
        self._prefix = key_prefix
        self._fallback = fallback if fallback is not None else InProcessRateLimiter(clock=clock)
        self._log = logger if logger is not None else _log
        self._lock = threading.Lock()
        self._outage = OutageGate(retry_interval=retry_interval, warn_interval=warn_interval, clock=clock)
        self._local_calls = 0  # calls served in process since the last warning

    @classmethod
    def from_url(cls, url: str, *, socket_timeout: float = 0.25, **kwargs: Any) -> RedisRateLimiter:
        """A limiter on its own client with short timeouts and no client-side retries."""
        client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                      socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
        return cls(client, **kwargs)

    def acquire(self, key: str, limit: Limit, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when allowed, else the seconds to wait."""
        cost = limit.charge(cost)
        if self._outage.should_try():
            try:
                wait = self._script(keys=[self._prefix + key], args=[limit.rate, limit.burst, cost])
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            else:
                if self._outage.down:
                    self._recovered()
                return float(wait)
        with self._lock:
            self._local_calls += 1
        return self._fallback.acquire(key, limit, cost)

    def close(self) -> None:
        """Close the Redis client's connections."""
        self._client.close()

    def _failed(self, exc: Exception) -> None:
        down_for = self._outage.failed()
        if down_for is None:
            return
        with self._lock:
            local_calls, self._local_calls = self._local_calls, 0
        since = f" for {down_for:.1f} s" if down_for >= 0.1 else ""
        self._log.warning("rate limits: Redis is not answering (%s: %s)%s; limiting in process "
                          "(%d call(s) since the last warning), trying Redis again every %.1f s",
                          type(exc).__name__, exc, since, local_calls, self._outage.retry_interval)

    def _recovered(self) -> None:
        ended = self._outage.succeeded()
        if ended is not None and ended[1]:
            self._log.info("rate limits: Redis answers again after %.1f s; limits are shared again", ended[0])


def remote_address(req: falcon.asgi.Request) -> str:
    """The address of the peer that connected (not ``X-Forwarded-For``, which any client can forge)."""
    return req.remote_addr or "unknown"


class RateLimitMiddleware:
    """Refuse requests beyond their bucket with 429 ``RATE_LIMITED``; runs after the auth middleware.

    ``client_limit`` applies per authenticated user, ``public_limit`` per client address on routes
    without a principal; None turns that limit off.
    """

    def __init__(self, limiter: RateLimiter, *, client_limit: Limit | None, public_limit: Limit | None,
                 exempt_paths: Collection[str] = OPERATIONAL_PATHS,
                 client_address: Callable[[falcon.asgi.Request], str] = remote_address) -> None:
        self.limiter = limiter
        self._client_limit = client_limit
        self._public_limit = public_limit
        self._exempt_paths = frozenset(exempt_paths)
        self._client_address = client_address

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, params: dict[str, Any]) -> None:
        """Take the request's cost from its client's bucket, or raise 429 with ``Retry-After``."""
        if resource is None or req.method == "OPTIONS" or req.path in self._exempt_paths:
            return
        principal = getattr(req.context, "principal", None)
        if principal is not None:
            key, limit = f"user:{principal.user_id}", self._client_limit
        else:
            key, limit = f"addr:{self._client_address(req)}", self._public_limit
        if limit is None:
            return
        account = _Account(self.limiter, key, limit)
        await account.take(int(getattr(resource, "rate_cost", 1)))
        req.context.rate_limit = account


class _Account:
    """The bucket a request was counted against, so its resource can :func:`charge` more."""

    __slots__ = ("key", "limit", "limiter")

    def __init__(self, limiter: RateLimiter, key: str, limit: Limit) -> None:
        self.limiter = limiter
        self.key = key
        self.limit = limit

    async def take(self, tokens: int) -> None:
        limiter = self.limiter
        if limiter.blocks:
            wait = await blocking(limiter.acquire, self.key, self.limit, tokens)
        else:
            wait = limiter.acquire(self.key, self.limit, tokens)
        if wait > 0:
            seconds = max(math.ceil(wait), 1)
            raise falcon.HTTPTooManyRequests(
                title="Rate limited", retry_after=seconds, code="RATE_LIMITED",
                description=f"rate limit of {self.limit.rate:g} requests/s (burst {self.limit.burst}) "
                            f"exceeded; retry in {seconds} s",
            )


async def charge(req: falcon.asgi.Request, tokens: int) -> None:
    """Take ``tokens`` more from the bucket ``req`` was counted against; raise 429 when it lacks them.

    Nothing happens when the request is not rate limited (no middleware, an exempt route, a limit
    turned off) or ``tokens`` is below 1.
    """
    account = getattr(req.context, "rate_limit", None)
    if isinstance(account, _Account) and tokens >= 1:
        await account.take(tokens)


def build_rate_limit(*, rate: float, burst: int, public_rate: float, public_burst: int,
                     redis_url: str | None, key_prefix: str = DEFAULT_KEY_PREFIX,
                     logger: logging.Logger | None = None) -> RateLimitMiddleware | None:
    """The middleware for these limits (a rate of 0 turns a limit off; None when both are off), on
    Redis when ``redis_url`` is given, else in process."""
    client_limit = Limit(rate, burst) if rate > 0 else None
    public_limit = Limit(public_rate, public_burst) if public_rate > 0 else None
    if client_limit is None and public_limit is None:
        return None
    limiter: RateLimiter
    if redis_url:
        limiter = RedisRateLimiter.from_url(redis_url, key_prefix=key_prefix, logger=logger)
    else:
        limiter = InProcessRateLimiter()
    return RateLimitMiddleware(limiter, client_limit=client_limit, public_limit=public_limit)
