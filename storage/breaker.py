"""Circuit breakers, optionally shared between processes through Redis, that still open when Redis is down.

`make_breaker` builds a `pybreaker.CircuitBreaker`. Without `redis_url` its state lives in this process.
With one, state, counters and the opening time live in Redis under ``<key_prefix><name>:pybreaker:*``
(pybreaker's `CircuitRedisStorage` layout), so every process of the engine sees one breaker: one process
opening it opens it for all.

pybreaker's Redis storage answers "closed" and "no failures" whenever Redis fails, so with Redis down a
breaker could never open. `SharedBreakerStorage` wraps it: every write also goes to an in-memory copy and
every read refreshes it; on a Redis error the breaker runs on that copy (it still counts failures and
opens), the outage is logged once, and Redis is tried again at most once per `retry_interval` (so an open
breaker keeps answering at once). When Redis answers again it is the source of truth again, except that a
breaker this process opened during the outage is published there (the pessimistic view wins).

Known limits: the counters are not transactional across processes (two processes may both count the
N-th failure, which only opens the breaker a call early); while Redis is down each process has its own
breaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["DEFAULT_KEY_PREFIX", "RedisUnreachable", "SharedBreakerStorage", "close_breaker", "make_breaker"]

log = logging.getLogger(__name__)

KEY_SPACE = "breaker:"
"""What the breakers' keys start with after the engine's Redis key prefix."""
DEFAULT_KEY_PREFIX = "tradeengine:" + KEY_SPACE
#: Redis connect and read timeout: a breaker read must stay far below the wallet call it guards.
REDIS_TIMEOUT = 0.25
#: While Redis is unreachable, it is tried again at most this often (seconds).
REDIS_RETRY_INTERVAL = 1.0

T = TypeVar("T")


def make_breaker(
    name: str,
    *,
    fail_max: int,
    reset_timeout: float,
    redis_url: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
) -> pybreaker.CircuitBreaker:
    """Build a breaker that opens after `fail_max` consecutive failures, shared through Redis if given.

    Listeners (e.g. ``EngineMetrics.breaker_listener(name)``) are told the initial state at once, so a
    breaker that starts open because another process opened it is reported open from the start.
    """
    storage: pybreaker.CircuitBreakerStorage
    if redis_url is None:
        storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    else:
        storage = SharedBreakerStorage(redis_client(redis_url), f"{key_prefix}{name}")
    breaker = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout, state_storage=storage,
                                       listeners=list(listeners), name=name)
    initial = breaker.state
    for listener in listeners:
        listener.state_change(breaker, None, initial)
    return breaker


def close_breaker(breaker: pybreaker.CircuitBreaker) -> None:
    """Close the Redis connections of a breaker built by `make_breaker` (nothing to do without Redis)."""
    storage = breaker._state_storage  # pybreaker has no public reader for it
    if isinstance(storage, SharedBreakerStorage):
        storage.close()


def redis_client(url: str, timeout: float = REDIS_TIMEOUT) -> redis.Redis:
    """A Redis client with short connect and read timeouts and no client-side retries."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


class RedisUnreachable(Exception):
    """Redis failed; raised past `CircuitRedisStorage`, which would otherwise swallow the error."""


class _RaisingRedis:
    """A Redis client whose errors become `RedisUnreachable`, which pybreaker's storage does not catch."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except redis.RedisError as exc:
                raise RedisUnreachable(f"{type(exc).__name__}: {exc}") from exc

        return call


class _RedisStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage with the opening time kept to the microsecond.

    pybreaker stores whole seconds, which would let a breaker with a sub-second reset_timeout half-open
    as soon as it opened. The precise time has a key of its own, so pybreaker's own key keeps its format.
    """

    @property
    def opened_at(self) -> datetime | None:
        raw = self._redis.get(self._namespace("opened_at_us"))
        return None if raw is None else datetime.fromtimestamp(int(raw) / 1e6, UTC)

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._redis.set(self._namespace("opened_at_us"), round(now.timestamp() * 1e6))


class _LocalStorage(pybreaker.CircuitMemoryStorage):
    """The in-memory copy of the shared state; it can take over counter values read from Redis."""

    def mirror_counters(self, failures: int | None = None, successes: int | None = None) -> None:
        if failures is not None:
            self._fail_counter = failures
        if successes is not None:
            self._success_counter = successes


class SharedBreakerStorage(pybreaker.CircuitBreakerStorage):
    """Breaker state in Redis, shared by every process; kept in memory while Redis is unreachable."""

    def __init__(self, client: redis.Redis, namespace: str, *,
                 retry_interval: float = REDIS_RETRY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("redis")
        self._redis = client
        self._client = _RaisingRedis(client)
        self._namespace = namespace
        self._retry_interval = retry_interval
        self._clock = clock
        self._local = _LocalStorage(pybreaker.STATE_CLOSED)
        self._remote: _RedisStorage | None = None
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_try = 0.0

    def close(self) -> None:
        """Close the Redis client's connections (a later call reconnects)."""
        self._redis.close()

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and the breaker runs on this process's copy."""
        return self._down_since is not None

    # -- pybreaker's storage interface ----------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._read(self._remote_state, lambda: self._local.state)

    @state.setter
    def state(self, state: str) -> None:
        self._local.state = state
        self._write(lambda remote: setattr(remote, "state", state))

    def increment_counter(self) -> None:
        self._local.increment_counter()
        self._write(lambda remote: remote.increment_counter())

    def reset_counter(self) -> None:
        self._local.reset_counter()
        self._write(lambda remote: remote.reset_counter())

    def increment_success_counter(self) -> None:
        self._local.increment_success_counter()
        self._write(lambda remote: remote.increment_success_counter())

    def reset_success_counter(self) -> None:
        self._local.reset_success_counter()
        self._write(lambda remote: remote.reset_success_counter())

    @property
    def counter(self) -> int:
        return self._read(self._remote_counter, lambda: self._local.counter)

    @property
    def success_counter(self) -> int:
        return self._read(self._remote_success_counter, lambda: self._local.success_counter)

    @property
    def opened_at(self) -> datetime | None:
        return self._read(self._remote_opened_at, lambda: self._local.opened_at)

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._local.opened_at = now
        self._write(lambda remote: setattr(remote, "opened_at", now))

    # -- reads refresh the local copy -------------------------------------------------------------------

    def _remote_state(self, remote: _RedisStorage) -> str:
        state = remote.state
        self._local.state = state
        return state

    def _remote_counter(self, remote: _RedisStorage) -> int:
        failures = remote.counter
        self._local.mirror_counters(failures=failures)
        return failures

    def _remote_success_counter(self, remote: _RedisStorage) -> int:
        successes = remote.success_counter
        self._local.mirror_counters(successes=successes)
        return successes

    def _remote_opened_at(self, remote: _RedisStorage) -> datetime | None:
        opened_at = remote.opened_at
        if opened_at is not None:
            self._local.opened_at = opened_at
        return opened_at

    # -- failover -----------------------------------------------------------------------------------------

    def _read(self, remote: Callable[[_RedisStorage], T], local: Callable[[], T]) -> T:
        storage = self._available_remote()
        if storage is None:
            return local()
        try:
            return remote(storage)
        except RedisUnreachable as exc:
            self._went_down(exc)
            return local()

    def _write(self, remote: Callable[[_RedisStorage], object]) -> None:
        storage = self._available_remote()
        if storage is None:
            return
        try:
            remote(storage)
        except RedisUnreachable as exc:
            self._went_down(exc)

    def _available_remote(self) -> _RedisStorage | None:
        """Return the Redis storage to use now, or None while Redis is down and not due for a new try."""
        with self._lock:
            if self._down_since is not None and self._clock() < self._next_try:
                return None
            remote, was_down = self._remote, self._down_since is not None
        try:
            if remote is None:
                remote = _RedisStorage(pybreaker.STATE_CLOSED, self._client,  # type: ignore[arg-type]
                                       namespace=self._namespace)
            if was_down:
                self._publish_local_opening(remote)
        except RedisUnreachable as exc:
            self._went_down(exc)
            return None
        with self._lock:
            self._remote = remote
            if self._down_since is not None:
                log.warning("breaker storage: Redis answers again after %.1f s; breaker %s is shared again",
                            self._clock() - self._down_since, self._namespace)
                self._down_since = None
        return remote

    def _publish_local_opening(self, remote: _RedisStorage) -> None:
        """After an outage, publish a breaker this process opened meanwhile; otherwise adopt Redis's state."""
        if self._local.state == pybreaker.STATE_OPEN and remote.state == pybreaker.STATE_CLOSED:
            opened_at = self._local.opened_at
            if opened_at is not None:
                remote.opened_at = opened_at
            remote.state = pybreaker.STATE_OPEN

    def _went_down(self, exc: RedisUnreachable) -> None:
        with self._lock:
            now = self._clock()
            self._next_try = now + self._retry_interval
            if self._down_since is not None:
                return
            self._down_since = now
        log.warning("breaker storage: Redis unreachable (%s); breaker %s runs on this process's copy "
                    "until Redis answers again", exc, self._namespace)
