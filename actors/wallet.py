"""The wallet: the `WalletBackend` boundary, the `LedgerSlot` pairs reach it through, and `WalletActor`.

`WalletBackend` is the narrow interface the pair actors and the Exchange use (try_lock, release, apply,
deposit, withdraw, balances). The built-in backend is `actors.ledger.Ledger`; `actors.remote_wallet`
implements it over a remote wallet service (`RemoteWallet`, installed by `RemoteWalletActor`, a subclass
of `WalletActor` that moves deposits and withdrawals at the service).

`WalletActor` owns the current `Ledger`. Its `on_start` waits until the writer has committed everything
sent before it (a `Barrier`), loads the committed balances into a NEW ledger and installs it in the
`LedgerSlot`; `on_stop`/`on_failure` vacate the slot. It handles `Deposit` and `Withdraw` (move in memory,
then hand a `Commit(Transfer(...), reply, balance)` to the writer under the ledger's lock; the reply
resolves only after the commit) and answers `BalancesQuery`.

Why pairs go through a `LedgerSlot` rather than holding the ledger: the pairs call the funds gate
synchronously from their own threads (no message round trip on the hot path), yet the ledger is state of
one wallet incarnation. The wallet is restarted only together with the pairs (the one-for-all "database"
group: writer, wallet, pairs, in that order), because a ledger and the books are consistent only as a
pair — after a failed commit both are rebuilt from the database. The slot is the one place that says which
ledger is current: pair factories are built once at composition time with the slot, every call looks the
ledger up through it (never cached), and a stopped or crashed wallet empties it, so a stale ledger is
never used — a pair that asks meanwhile gets `EngineUnavailable` and is rebuilt with the group.
Known limit: a pair thread that outlives its own stop (pykka cannot kill a thread) would reach the
successor's ledger; the supervisor routes no messages to such a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Literal, Protocol

from psycopg_pool import ConnectionPool

from tradeengine.engine import (
    EngineEvent,
    EngineUnavailable,
    PairSpec,
    TradeEngineError,
    ValidationError,
)
from tradeengine.storage.balances import load_balances, user_exists
from tradeengine.storage.facts import Transfer, core_user_id

from .ledger import AssetBalance, Ledger
from .supervised import ChildLink, SupervisedActor
from .writer import Barrier, Commit

__all__ = [
    "BalancesQuery",
    "Deposit",
    "LedgerSlot",
    "LockJournal",
    "WalletActor",
    "WalletBackend",
    "Withdraw",
]

log = logging.getLogger(__name__)


class WalletBackend(Protocol):
    """What pairs and the Exchange need from a wallet (amounts in atoms, core user ids)."""

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Move `amount` from available to locked, or answer False changing nothing (the funds gate)."""
        ...

    def release(self, user_id: str, asset: str, amount: int) -> None:
        """Give back a lock granted by `try_lock` whose command produced no facts."""
        ...

    def apply(
        self, spec: PairSpec, events: Sequence[EngineEvent], *, then: Callable[[], object] | None = None
    ) -> None:
        """Apply one command's releases and settlements; run `then` right after, atomically with them."""
        ...

    def deposit(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Credit available; return the new balance."""
        ...

    def withdraw(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Debit available, or raise InsufficientBalance changing nothing."""
        ...

    def balances(self, user_id: str) -> list[AssetBalance]:
        """Return the user's balances by asset."""
        ...


class LedgerSlot:
    """Holds the current wallet incarnation's backend; pairs look it up on every call (see module doc)."""

    __slots__ = ("_backend",)

    def __init__(self, backend: WalletBackend | None = None) -> None:
        """Start empty (the wallet's on_start installs its ledger) or, in tests, with a backend."""
        self._backend = backend

    def __repr__(self) -> str:
        return f"LedgerSlot({self._backend!r})"

    def current(self) -> WalletBackend:
        """Return the current backend, or raise EngineUnavailable while no wallet is running."""
        backend = self._backend  # one read: atomic, no lock needed
        if backend is None:
            raise EngineUnavailable("the wallet is not running (restarting with its group)")
        return backend

    def install(self, backend: WalletBackend) -> None:
        """Make `backend` the current one (a starting wallet incarnation)."""
        self._backend = backend

    def vacate(self, backend: WalletBackend) -> None:
        """Empty the slot if it still holds `backend` (a late stop never empties a successor's slot)."""
        if self._backend is backend:
            self._backend = None


class LockJournal:
    """One pair's funds gate: forwards to the current wallet and remembers the locks of the command.

    A pair actor calls `begin()` before each command and `rollback()` if the command fails before its
    facts reach the writer: the locks the gate granted meanwhile are given back, so memory keeps agreeing
    with the database (which never hears of them). Each lock is given back to the backend that granted it.
    Used by one thread (its pair actor's).
    """

    __slots__ = ("_granted", "_slot")

    def __init__(self, slot: LedgerSlot) -> None:
        self._slot = slot
        self._granted: list[tuple[WalletBackend, str, str, int]] = []

    @property
    def granted(self) -> list[tuple[str, str, int]]:
        """The (user_id, asset, amount) locks granted since `begin()`."""
        return [(user_id, asset, amount) for _, user_id, asset, amount in self._granted]

    def begin(self) -> None:
        """Start a command: forget the locks of the previous one (committed or rolled back)."""
        self._granted.clear()

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Lock through the current wallet; remember a granted lock."""
        backend = self._slot.current()
        if not backend.try_lock(user_id, asset, amount):
            return False
        self._granted.append((backend, user_id, asset, amount))
        return True

    def rollback(self) -> None:
        """Give back every lock granted since `begin()`, newest first."""
        granted, self._granted = self._granted, []
        for backend, user_id, asset, amount in reversed(granted):
            backend.release(user_id, asset, amount)


# -- the actor ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Deposit:
    """Credit `amount` atoms of `asset` to user `user_id` (``users.id``); `reply` gets the new balance.

    The reply resolves only after the deposit is committed, or fails (ValidationError, StorageUnavailable,
    EngineUnavailable).
    """

    user_id: int
    asset: str
    amount: int
    reply: Future[AssetBalance]


@dataclasses.dataclass(frozen=True, slots=True)
class Withdraw:
    """Debit `amount` atoms of `asset` from user `user_id`; a refusal fails `reply` (InsufficientBalance)."""

    user_id: int
    asset: str
    amount: int
    reply: Future[AssetBalance]


@dataclasses.dataclass(frozen=True, slots=True)
class BalancesQuery:
    """Ask for user `user_id`'s balances: list[AssetBalance] from memory (possibly not yet committed)."""

    user_id: int


class WriterRef(Protocol):
    """Where the wallet sends Commits and Barriers: the writer's handle or actor ref."""

    def tell(self, message: Any) -> None:
        """Send without waiting."""


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class WalletActor(SupervisedActor):
    """The built-in wallet: owns the current Ledger, loaded from the database by each incarnation."""

    def __init__(
        self,
        link: ChildLink,
        *,
        pool: ConnectionPool,
        writer: WriterRef,
        slot: LedgerSlot,
        clock_us: Callable[[], int] = _wall_clock_us,
        barrier_timeout: float = 30.0,
        load: Callable[[ConnectionPool], Mapping[tuple[str, str], tuple[int, int]]] = load_balances,
    ) -> None:
        """`writer` gets the transfers' Commits; `slot` is where the pairs find this incarnation's ledger."""
        super().__init__(link)
        self._pool = pool
        self._writer = writer
        self._slot = slot
        self._clock_us = clock_us
        self._barrier_timeout = barrier_timeout
        self._load = load
        self.ledger: Ledger | None = None
        self.backend: WalletBackend | None = None

    def on_start(self) -> None:
        """Wait for the writer to commit what was sent before, load the balances, install the ledger."""
        barrier: Future[None] = Future()
        self._writer.tell(Barrier(barrier))
        barrier.result(timeout=self._barrier_timeout)
        self.backend = self._open_backend()
        self._slot.install(self.backend)

    def _open_backend(self) -> WalletBackend:
        """Build this incarnation's backend: the built-in ledger, loaded from the committed balances."""
        self.ledger = Ledger(self._load(self._pool))
        log.info("%s started with %d balances", self.link, len(self.ledger.snapshot()))
        return self.ledger

    def on_stop(self) -> None:
        """Vacate the slot, then report the exit."""
        self._vacate()
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Vacate the slot, then report the crash."""
        self._vacate()
        super().on_failure(exception_type, exception_value, traceback)

    def refuse_queued(self, message: Any) -> bool:
        """Fail a queued deposit or withdrawal: never handled, so nothing moved."""
        if isinstance(message, Deposit | Withdraw):
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller
                message.reply.set_exception(
                    EngineUnavailable("the wallet stopped before the transfer; retry"))
            return True
        return False

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, Deposit):
            self._transfer("DEPOSIT", message)
            return None
        if isinstance(message, Withdraw):
            self._transfer("WITHDRAWAL", message)
            return None
        if isinstance(message, BalancesQuery):
            return self._backend().balances(core_user_id(message.user_id))
        return super().on_receive(message)

    def _transfer(self, kind: Literal["DEPOSIT", "WITHDRAWAL"], message: Deposit | Withdraw) -> None:
        """Move in memory and hand the Commit to the writer atomically; any refusal fails the reply."""
        reply = message.reply
        try:
            ledger = self._ledger()
            user = core_user_id(message.user_id)
            if kind == "DEPOSIT" and not ledger.balances(user) and not user_exists(
                self._pool, message.user_id
            ):  # the database would refuse the row (users FK) and the writer break on it
                raise ValidationError(f"unknown user {message.user_id}", field="user_id")
            transfer = Transfer(kind, message.user_id, message.asset, message.amount, self._clock_us())

            def hand_off(balance: AssetBalance) -> None:
                self._writer.tell(Commit(transfer, reply, balance))

            move = ledger.deposit if kind == "DEPOSIT" else ledger.withdraw
            move(user, message.asset, message.amount, then=hand_off)
        except TradeEngineError as exc:
            _fail(reply, exc)
        except Exception as exc:  # the writer is gone: the ledger undid the movement, nothing to rebuild
            error = EngineUnavailable(f"the {kind.lower()} could not be handed to the writer: {exc!r}")
            error.__cause__ = exc
            _fail(reply, error)

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise EngineUnavailable("the wallet has not started")
        return self.ledger

    def _backend(self) -> WalletBackend:
        if self.backend is None:
            raise EngineUnavailable("the wallet has not started")
        return self.backend

    def _vacate(self) -> None:
        if self.backend is not None:
            self._slot.vacate(self.backend)


def _fail(reply: Future[Any], error: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled by its caller
        reply.set_exception(error)
