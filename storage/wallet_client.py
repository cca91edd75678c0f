"""HTTP client of the wallet service (ops/walletservice/CONTRACT.md): retries, idempotency, a circuit breaker.

Amounts are integer atoms (1e-8) here and decimal strings on the wire. Every mutating call carries the
caller's idempotency key, and every attempt of one call carries the same key, so a retried call never
moves funds twice (the service replays the stored answer, header ``Idempotent-Replayed: true``, which
is a success like any other).

Failures, and what they do:

- connection refused, reset or dropped without an answer, a connect or read timeout, a 5xx: retryable.
  Each counts as a failure for the breaker; the call is retried up to `retries` times with exponential
  backoff and full jitter, then raises `WalletUnavailable`.
- any 4xx is an answer: never retried and never counted (it resets the breaker's failure count like a
  success). The expected refusals become ``False`` (reserve) or `InsufficientBalance` (withdraw); any
  other 4xx raises `WalletRejected`.
- while the breaker is open a call raises `WalletUnavailable` at once, without any HTTP; a failure that
  opens it stops the retries at once. After `reset_timeout` the breaker half-opens and the next attempt
  of this client is the probe (other calls of this client fail fast meanwhile); its answer closes the
  breaker, its failure opens it again. With a breaker shared through Redis, each process may probe once.

The breaker guards each attempt, but the HTTP exchange runs outside it: pybreaker holds its lock for the
whole guarded call, which would serialise every wallet call of the process behind the slowest one. The
client checks the state first, performs the attempt, then reports the outcome through `breaker.call` with
a function that returns or raises at once, so pybreaker's own state machine and listeners do the
counting.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

import msgspec
import pybreaker
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from tradeengine.engine.errors import InsufficientBalance
from tradeengine.engine.units import ATOM_PLACES, format_atoms
from tradeengine.storage.errors import StorageError, StorageUnavailable

__all__ = ["Movement", "WalletBalance", "WalletClient", "WalletRejected", "WalletUnavailable"]

log = logging.getLogger(__name__)

Movement = tuple[str, str, int, int]
"""(user_id, asset, available_delta_atoms, locked_delta_atoms) of one `settle`."""

T = TypeVar("T")

_RETRYABLE_TRANSPORT = (Urllib3Timeout, ProtocolError, NewConnectionError)


class WalletUnavailable(StorageUnavailable):
    """The wallet service cannot be used now: the breaker is open, or the retries ran out."""


class WalletRejected(StorageError):
    """The wallet service refused a call with a 4xx other than the expected refusals."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"wallet service answered {status} {code}: {message}")
        self.status = status
        self.code = code  # the service's error code (e.g. IDEMPOTENCY_KEY_REUSED), not a class constant
        self.message = message


@dataclass(frozen=True, slots=True)
class WalletBalance:
    """One (user, asset) balance at the wallet service, in atoms."""

    user_id: str
    asset: str
    available: int
    locked: int


# -- wire shapes -----------------------------------------------------------------------------------------


class _Balance(msgspec.Struct):
    user_id: str
    asset: str
    available: str
    locked: str

    def to_balance(self) -> WalletBalance:
        available, locked = _parse_atoms(self.available), _parse_atoms(self.locked)
        return WalletBalance(self.user_id, self.asset, available, locked)


class _BalanceAnswer(msgspec.Struct):
    balance: _Balance


class _BalancesAnswer(msgspec.Struct):
    balances: list[_Balance]


class _ErrorDetail(msgspec.Struct):
    code: str = "UNKNOWN"
    message: str = ""


class _ErrorAnswer(msgspec.Struct):
    error: _ErrorDetail


def _parse_atoms(text: str) -> int:
    """Return a decimal string of the wire (8 places at most, any sign) as atoms."""
    try:
        scaled = Decimal(text).scaleb(ATOM_PLACES)
    except InvalidOperation as exc:
        raise StorageError(f"wallet service sent a malformed amount {text!r}") from exc
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise StorageError(f"wallet service sent an amount that is not whole atoms: {text!r}")
    return int(scaled)


# -- outcomes of one attempt -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """An HTTP answer below 500: the service worked, whatever it said."""

    status: int
    body: bytes

    def decode(self, kind: type[T]) -> T:
        try:
            return msgspec.json.decode(self.body, type=kind)
        except msgspec.DecodeError as exc:
            raise StorageError(f"wallet service answered {self.status} with an unexpected body: {exc}") \
                from exc

    def reject(self) -> NoReturn:
        try:
            detail = msgspec.json.decode(self.body, type=_ErrorAnswer).error
        except msgspec.DecodeError:
            detail = _ErrorDetail(message=self.body[:200].decode("utf-8", "replace"))
        raise WalletRejected(self.status, detail.code, detail.message)

    def error_code(self) -> str:
        try:
            return msgspec.json.decode(self.body, type=_ErrorAnswer).error.code
        except msgspec.DecodeError:
            return "UNKNOWN"


class _AttemptFailed(Exception):
    """An attempt got no answer below 500; it counts for the breaker, and is retried if `retryable`."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.retryable = retryable


def _answered() -> None:
    """What the breaker runs to record an answered attempt."""


def _raise(exc: BaseException) -> NoReturn:
    """What the breaker runs to record a failed attempt."""
    raise exc


# -- the client ------------------------------------------------------------------------------------------


class WalletClient:
    """Thread-safe client of one wallet service; one keep-alive connection pool, one breaker."""

    def __init__(self, base_url: str, *, timeout: float = 1.0, retries: int = 3, backoff: float = 0.05,
                 backoff_max: float = 1.0, breaker: pybreaker.CircuitBreaker | None = None,
                 pool_size: int = 16) -> None:
        """Talk to the service at `base_url` (``http(s)://host:port[/prefix]``).

        `timeout` bounds connecting and each read of one attempt (seconds); `retries` is the number of
        attempts after the first; the wait before retry n (from 0) is uniform in
        [0, min(backoff_max, backoff * 2**n)]. Without `breaker` the client has a private one (5
        failures, 30 s). `pool_size` keep-alive connections are kept for reuse.
        """
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"wallet service URL must be http(s)://host[:port][/path], got {base_url!r}")
        self._prefix = parts.path.rstrip("/")
        self._pool = urllib3.connection_from_url(
            base_url, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._retries = retries
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._breaker = breaker or pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, name="wallet")
        self._gate = threading.Lock()
        self._probing = False
        self._random = random.Random()

    # -- the contract's routes ------------------------------------------------------------------------

    def reserve(self, key: str, user_id: str, asset: str, amount: int) -> bool:
        """Move `amount` from available to locked; False when the user has not enough available."""
        answer = self._post("/v1/reserve", _transfer(key, user_id, asset, amount))
        if answer.status == 409 and answer.error_code() == "INSUFFICIENT_FUNDS":
            return False
        self._expect_ok(answer)
        return True

    def release(self, key: str, user_id: str, asset: str, amount: int) -> None:
        """Move `amount` from locked back to available (409 INSUFFICIENT_LOCKED raises WalletRejected)."""
        self._expect_ok(self._post("/v1/release", _transfer(key, user_id, asset, amount)))

    def settle(self, key: str, movements: Sequence[Movement]) -> None:
        """Apply all movements atomically (409 NEGATIVE_BALANCE raises WalletRejected)."""
        body = {"idempotency_key": key, "movements": [
            {"user_id": user_id, "asset": asset, "available": format_atoms(available),
             "locked": format_atoms(locked)}
            for user_id, asset, available, locked in movements]}
        self._expect_ok(self._post("/v1/settle", body))

    def deposit(self, key: str, user_id: str, asset: str, amount: int) -> WalletBalance:
        """Credit `amount` to available; return the new balance."""
        answer = self._post("/v1/deposit", _transfer(key, user_id, asset, amount))
        self._expect_ok(answer)
        return answer.decode(_BalanceAnswer).balance.to_balance()

    def withdraw(self, key: str, user_id: str, asset: str, amount: int) -> WalletBalance:
        """Debit `amount` from available; return the new balance, or raise InsufficientBalance."""
        answer = self._post("/v1/withdraw", _transfer(key, user_id, asset, amount))
        if answer.status == 409 and answer.error_code() == "INSUFFICIENT_FUNDS":
            raise InsufficientBalance(f"not enough {asset} available to withdraw {format_atoms(amount)}")
        self._expect_ok(answer)
        return answer.decode(_BalanceAnswer).balance.to_balance()

    def balances(self, user_id: str) -> list[WalletBalance]:
        """Return the user's balances, by asset."""
        answer = self._request("GET", f"/v1/balances/{quote(user_id, safe='')}", None)
        self._expect_ok(answer)
        return [balance.to_balance() for balance in answer.decode(_BalancesAnswer).balances]

    def all_balances(self) -> list[WalletBalance]:
        """Return every non-zero balance the service holds (for reconciliation)."""
        answer = self._request("GET", "/v1/balances", None)
        self._expect_ok(answer)
        return [balance.to_balance() for balance in answer.decode(_BalancesAnswer).balances]

    def operation(self, key: str) -> dict[str, Any] | None:
        """Return the service's record of the call with idempotency key `key`, or None if it never applied."""
        answer = self._request("GET", f"/v1/operations/{quote(key, safe='')}", None)
        if answer.status == 404:
            return None
        self._expect_ok(answer)
        return answer.decode(dict[str, Any])

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()

    # -- one logical call: attempts, backoff, breaker -------------------------------------------------

    @staticmethod
    def _expect_ok(answer: _Answer) -> None:
        if not 200 <= answer.status < 300:
            answer.reject()

    def _post(self, route: str, body: dict[str, Any]) -> _Answer:
        return self._request("POST", route, msgspec.json.encode(body))

    def _request(self, method: str, route: str, body: bytes | None) -> _Answer:
        """Perform one logical call: the same request at most 1 + `retries` times, behind the breaker."""
        attempt = 0
        while True:
            probe = self._admit(route)
            try:
                answer = self._attempt(method, route, body)
            except _AttemptFailed as exc:
                self._record_failure(exc, route)
                if not exc.retryable or attempt >= self._retries:
                    attempts = "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"
                    raise WalletUnavailable(f"wallet service {route}: {exc} (gave up after {attempts})") \
                        from exc
                delay = self._random.uniform(0, min(self._backoff_max, self._backoff * 2**attempt))
                log.info("wallet service %s: %s; retrying in %.3f s (attempt %d of %d)",
                         route, exc, delay, attempt + 2, self._retries + 1)
                attempt += 1
                time.sleep(delay)
                continue
            finally:
                if probe:
                    with self._gate:
                        self._probing = False
            self._record_answer()
            return answer

    def _attempt(self, method: str, route: str, body: bytes | None) -> _Answer:
        """Send the request once; return an answer below 500 or raise `_AttemptFailed`."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._pool.urlopen(method, self._prefix + route, body=body, headers=headers,
                                          retries=False, redirect=False, timeout=self._timeout)
        except _RETRYABLE_TRANSPORT as exc:
            raise _AttemptFailed(f"{type(exc).__name__}: {exc}") from exc
        except HTTPError as exc:  # TLS, proxy or URL errors: the same again would fail the same way
            raise _AttemptFailed(f"{type(exc).__name__}: {exc}", retryable=False) from exc
        if response.status >= 500:
            raise _AttemptFailed(f"answered {response.status}")
        return _Answer(response.status, response.data)

    def _admit(self, route: str) -> bool:
        """Let an attempt through the breaker or raise WalletUnavailable; True for the half-open probe."""
        # Reading `state` also notices changes made by other processes (and tells the listeners).
        if self._breaker.state.name == pybreaker.STATE_CLOSED:
            return False  # the common case decides without the gate
        with self._gate:
            state = self._breaker.state.name
            if state == pybreaker.STATE_CLOSED:
                return False
            if state == pybreaker.STATE_OPEN:
                if not self._reset_timeout_elapsed():
                    raise WalletUnavailable(f"wallet service {route}: circuit breaker open")
                self._breaker.half_open()
            elif self._probing:
                raise WalletUnavailable(f"wallet service {route}: circuit breaker half-open, probe in flight")
            self._probing = True
            return True

    def _reset_timeout_elapsed(self) -> bool:
        # pybreaker keeps the opening time in its storage and exposes no public reader for it.
        opened_at: datetime | None = self._breaker._state_storage.opened_at
        reset_timeout = timedelta(seconds=self._breaker.reset_timeout)
        return opened_at is None or datetime.now(UTC) >= opened_at + reset_timeout

    def _record_answer(self) -> None:
        """Tell the breaker an attempt was answered: the failure count restarts, a probe closes it."""
        with contextlib.suppress(pybreaker.CircuitBreakerError):  # another caller opened it meanwhile
            self._breaker.call(_answered)

    def _record_failure(self, exc: _AttemptFailed, route: str) -> None:
        """Count a failed attempt; raise WalletUnavailable if the breaker is open now."""
        try:
            self._breaker.call(_raise, exc)
        except pybreaker.CircuitBreakerError:
            raise WalletUnavailable(f"wallet service {route}: {exc}; circuit breaker opened") from exc
        except _AttemptFailed:
            pass  # counted; the caller decides on retrying


def _transfer(key: str, user_id: str, asset: str, amount: int) -> dict[str, Any]:
    return {"idempotency_key": key, "user_id": user_id, "asset": asset, "amount": format_atoms(amount)}
