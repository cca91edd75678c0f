"""The remote wallet backend: balances live at a wallet service (ops/walletservice/CONTRACT.md).

With ``TRADE_ENGINE_WALLET_URL`` set, the "wallet" child of the database group is a `RemoteWalletActor`
and the pairs' funds gate is a `RemoteWallet`:

- `try_lock` is a synchronous ``reserve`` at the service with a fresh key per call
  (``reserve:<incarnation uuid>:<n>``; every retry of the call carries the same key, so a retried call
  never reserves twice). A refusal answers False (INSUFFICIENT_BALANCE). When the service cannot be
  used (breaker open: at once, no HTTP; or retries exhausted) it raises `WalletServiceUnavailable` (503). If a
  call was sent and its outcome is unknown, a ``void`` command is committed at once (directly, not
  through the writer): the settler sends the same reserve again (it applies now or replays) and then
  releases it, so an unknown reserve never stays locked;
- `apply` moves nothing: the command's facts go to the writer (`then`), which commits, in the same
  transaction, the wallet commands (settle, release) the settler delivers afterwards
  (`storage.wallet_commands`, `actors.settler`);
- `release` (a lock whose command never reached the writer) is committed at once as a wallet command
  (``unlock:<incarnation uuid>:<n>``) and delivered by the settler; if even that fails (database down),
  the start-up reconciliation of the next wallet incarnation gives it back;
- `deposit`, `withdraw` and `balances` go to the service directly (it is the source of truth; a key per
  admin request: a transfer whose request went out unanswered is EngineTimeout (504, the outcome is
  unknown: look at the balance before a retry, which is a new request); one the breaker kept from the
  service is WalletServiceUnavailable (503, nothing happened).

Until the settler has delivered every pending command and reconciled the service's locked balances with
what open orders reserve (`WalletSettler`), `try_lock` answers WalletServiceUnavailable("the wallet
service is not reconciled yet"): the group start never blocks on the service, orders wait for it.

Single-engine assumption: the engine that reconciles is the only one reserving at this wallet service
for these users (the reconciliation releases every locked amount no open order of THIS database
explains).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import InvalidStateError
from typing import Any, Literal

import pybreaker

from tradeengine.engine import (
    EngineEvent,
    EngineTimeout,
    PairSpec,
    TradeEngineError,
    ValidationError,
    WalletServiceUnavailable,
)
from tradeengine.storage.balances import user_exists
from tradeengine.storage.breaker import DEFAULT_KEY_PREFIX as BREAKER_KEY_PREFIX
from tradeengine.storage.breaker import make_breaker
from tradeengine.storage.errors import StorageError
from tradeengine.storage.facts import core_user_id
from tradeengine.storage.wallet_client import WalletBalance, WalletClient, WalletRejected, WalletUnavailable
from tradeengine.storage.wallet_commands import WalletCommandRow, encode_movements, insert_command

from .ledger import ASSET_PATTERN, MAX_TRANSFER_ATOMS, AssetBalance
from .settler import SettlerSettings
from .wallet import Deposit, WalletActor, WalletBackend, Withdraw

__all__ = ["RemoteWallet", "RemoteWalletActor", "RemoteWalletSettings"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteWalletSettings:
    """Where the wallet service is and how the engine talks to it."""

    url: str
    timeout: float = 1.0
    """Seconds per attempt (connect and read)."""
    retries: int = 3
    """Retries of a call after a connect error, timeout or 5xx (never after a 4xx)."""
    breaker_fail_max: int = 5
    breaker_reset_timeout: float = 10.0
    redis_url: str | None = None
    """Shares the breaker's state between processes when set."""
    redis_key_prefix: str = BREAKER_KEY_PREFIX
    """What the breaker's keys in Redis start with."""
    breaker_listeners: tuple[pybreaker.CircuitBreakerListener, ...] = ()
    settler: SettlerSettings = dataclasses.field(default_factory=SettlerSettings)

    def client(self) -> WalletClient:
        """Build the client (with its breaker) that every part of one system shares."""
        breaker = make_breaker("wallet", fail_max=self.breaker_fail_max,
                               reset_timeout=self.breaker_reset_timeout, redis_url=self.redis_url,
                               key_prefix=self.redis_key_prefix, listeners=self.breaker_listeners)
        return WalletClient(self.url, timeout=self.timeout, retries=self.retries, breaker=breaker)


def _balance(balance: WalletBalance) -> AssetBalance:
    return AssetBalance(balance.asset, balance.available, balance.locked)


class RemoteWallet(WalletBackend):
    """One wallet incarnation's view of the wallet service (see the module docstring). Thread-safe."""

    def __init__(self, client: WalletClient, pool: Any, *, on_command: Callable[[], object] = lambda: None,
                 database_timeout: float = 2.0) -> None:
        self.client = client
        self.boot = uuid.uuid4().hex
        self._pool = pool
        self._on_command = on_command
        self._database_timeout = database_timeout
        self._counter = itertools.count(1)  # next() is atomic in CPython: pairs share it
        self._reconciled = threading.Event()

    def __repr__(self) -> str:
        return f"<RemoteWallet {self.boot} reconciled={self.reconciled}>"

    @property
    def reconciled(self) -> bool:
        """True once the settler has drained the pending commands and reconciled the locked balances."""
        return self._reconciled.is_set()

    def mark_reconciled(self) -> None:
        """Let reserves through (the settler calls this)."""
        self._reconciled.set()

    # -- the funds gate -------------------------------------------------------------------------------

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Reserve at the service; False when refused; WalletServiceUnavailable when it cannot be used."""
        if not self._reconciled.is_set():
            raise WalletServiceUnavailable("the wallet service is not reconciled yet; retry")
        key = f"reserve:{self.boot}:{next(self._counter)}"
        try:
            return self.client.reserve(key, user_id, asset, amount)
        except WalletUnavailable as exc:
            if exc.__cause__ is not None:  # a request went out: its outcome is unknown
                self._commit(WalletCommandRow(f"void:{key}", "void",
                                              encode_movements([(user_id, asset, -amount, amount)])))
            raise WalletServiceUnavailable(f"the wallet service is unavailable: {exc}") from exc
        except WalletRejected as exc:  # a 4xx other than a refusal: never applied, but a bug
            log.error("the wallet service refused reserve %s: %s", key, exc)
            raise WalletServiceUnavailable(f"the wallet service refused the reserve: {exc}") from exc

    def release(self, user_id: str, asset: str, amount: int) -> None:
        """Commit the release of a lock whose command produced no facts; the settler delivers it."""
        key = f"unlock:{self.boot}:{next(self._counter)}"
        self._commit(WalletCommandRow(key, "release", encode_movements([(user_id, asset, amount, -amount)])))

    def apply(
        self, spec: PairSpec, events: Sequence[EngineEvent], *, then: Callable[[], object] | None = None
    ) -> None:
        """Move nothing now: the writer commits the command's wallet commands with its facts (`then`)."""
        if then is not None:
            then()

    # -- transfers and reads --------------------------------------------------------------------------

    def deposit(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Credit available at the service; return the new balance."""
        with _unavailable("deposit"):
            balance = _balance(self.client.deposit(f"deposit:{uuid.uuid4().hex}", user_id, asset, amount))
        if then is not None:
            then(balance)
        return balance

    def withdraw(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Debit available at the service, or raise InsufficientBalance."""
        with _unavailable("withdrawal"):
            balance = _balance(self.client.withdraw(f"withdraw:{uuid.uuid4().hex}", user_id, asset, amount))
        if then is not None:
            then(balance)
        return balance

    def balances(self, user_id: str) -> list[AssetBalance]:
        """Return the user's balances at the service, by asset."""
        with _unavailable("balance read", changes=False):
            return [_balance(b) for b in self.client.balances(user_id)]

    # -- internals ------------------------------------------------------------------------------------

    def _commit(self, row: WalletCommandRow) -> None:
        try:
            insert_command(self._pool, row, timeout=self._database_timeout)
        except StorageError:
            log.exception("wallet command %s could not be recorded; the next reconciliation of the "
                          "wallet service (a restart of the database group) gives the funds back",
                          row.idempotency_key)
            return
        with contextlib.suppress(Exception):
            self._on_command()


@contextlib.contextmanager
def _unavailable(what: str, *, changes: bool = True) -> Any:
    try:
        yield
    except WalletUnavailable as exc:
        if changes and exc.__cause__ is not None:  # a request went out unanswered: it may have been applied
            raise EngineTimeout(f"the wallet service did not answer the {what}; it may or may not have "
                                f"happened (look at the balance): {exc}") from exc
        raise WalletServiceUnavailable(f"the wallet service is unavailable: {exc}") from exc


class RemoteWalletActor(WalletActor):
    """The wallet child in remote mode: installs a `RemoteWallet`; moves transfers at the service."""

    def __init__(self, link: Any, *, client: WalletClient, on_installed: Callable[[], object] = lambda: None,
                 on_command: Callable[[], object] = lambda: None, **options: Any) -> None:
        super().__init__(link, **options)
        self._client = client
        self._on_installed = on_installed
        self._on_command = on_command

    def on_start(self) -> None:
        """As the built-in wallet (wait for the writer), then ask the settler to reconcile."""
        super().on_start()
        with contextlib.suppress(Exception):
            self._on_installed()

    def _open_backend(self) -> WalletBackend:
        backend = RemoteWallet(self._client, self._pool, on_command=self._on_command)
        log.info("wallet %s uses the wallet service (incarnation %s); reserves wait for its reconciliation",
                 self.link, backend.boot)
        return backend

    def _transfer(self, kind: Literal["DEPOSIT", "WITHDRAWAL"], message: Deposit | Withdraw) -> None:
        reply = message.reply
        try:
            if not ASSET_PATTERN.fullmatch(message.asset):
                raise ValidationError(f"asset {message.asset!r} must be 2-12 upper-case letters or digits",
                                      field="asset")
            if not 0 < message.amount <= MAX_TRANSFER_ATOMS:
                raise ValidationError("amount must be a positive number of atoms", field="amount")
            if not user_exists(self._pool, message.user_id):
                raise ValidationError(f"unknown user {message.user_id}", field="user_id")
            backend = self._backend()
            move = backend.deposit if kind == "DEPOSIT" else backend.withdraw
            balance = move(core_user_id(message.user_id), message.asset, message.amount)
        except TradeEngineError as exc:
            with contextlib.suppress(InvalidStateError):
                reply.set_exception(exc)
            return
        with contextlib.suppress(InvalidStateError):
            reply.set_result(balance)
