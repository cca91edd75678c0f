"""The built-in wallet's ledger: balances per (user, asset), `available` and `locked`, in integer atoms.

`Ledger` is a plain thread-safe object, not an actor: pair actors call `try_lock` (the engine's funds gate)
synchronously from their own threads, so it must be fast — one dict lookup per level and two integer
updates under one `threading.Lock`. Every other movement arrives as the facts of a command (`apply`), or as
a deposit or withdrawal.

Movements (ARCHITECTURE.md and API.md, Money):
- `try_lock`: available → locked, or refuse (False) changing nothing. Called by the core while it runs a
  command; the command's `FundsLocked` facts report these locks and are therefore never applied again.
- `apply(spec, events)`: `FundsReleased` locked → available; `TradeExecuted` settles (buyer: quote locked
  −quote_amount, base available +(base_amount − buyer_fee); seller: base locked −base_amount, quote
  available +(quote_amount − seller_fee); fee account: base +buyer_fee, quote +seller_fee).
- `release`: give back a lock granted by `try_lock` whose command never produced facts (see
  `actors.wallet.LockJournal`).
- `deposit` / `withdraw`: available ±amount; a withdrawal larger than available is refused.

Invariants: no available or locked amount is ever negative (a movement that would make one negative raises
`NegativeBalance` and changes nothing: it is a bug upstream, e.g. facts applied twice); engine facts move
money without creating or destroying any, so per asset the total of all balances changes only by deposits
and withdrawals. Each call is atomic: a command's facts are checked as a whole, then applied as a whole.

Ordering with the writer: a credit must reach the writer no later than any movement that spends it, or a
batch boundary could make a database balance briefly negative (a CHECK violation). So `apply`, `deposit`
and `withdraw` take an optional `then` callback that runs under the ledger's lock right after the
movement: hand the facts to the writer there (a pykka `tell`, a non-blocking queue put). If `then` raises,
the movement is undone and the error propagates. `then` must not call back into the ledger (the lock is
not re-entrant).

Complexity: try_lock, release, deposit, withdraw O(1); apply O(events); balances(user) O(assets of the
user); snapshot and totals O(balances).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from tradeengine.engine import (
    EngineEvent,
    InsufficientBalance,
    InvariantViolation,
    PairSpec,
    ValidationError,
    balance_deltas,
    format_atoms,
)

__all__ = [
    "MAX_TRANSFER_ATOMS",
    "AssetBalance",
    "Ledger",
    "LedgerInvariantViolation",
    "NegativeBalance",
]

ASSET_PATTERN = re.compile(r"[A-Z0-9]{2,12}")
"""An asset code, as the database's balances.asset CHECK has it."""
MAX_TRANSFER_ATOMS = 10**38 - 1
"""The largest amount NUMERIC(38,8) holds, in atoms."""

Key = tuple[str, str]
Deltas = dict[Key, list[int]]
"""(user_id, asset) → [available delta, locked delta]."""


class LedgerInvariantViolation(InvariantViolation):
    """The ledger was asked for a movement that breaks its rules: a bug upstream, never a client error."""


class NegativeBalance(LedgerInvariantViolation):
    """A movement would make an available or locked amount negative; nothing was changed."""


class AssetBalance(NamedTuple):
    """One user's balance of one asset, in atoms."""

    asset: str
    available: int
    locked: int


class Ledger:
    """Balances per (user, asset) in atoms; the engine's funds gate; applies every other movement."""

    __slots__ = ("_accounts", "_lock", "_supply")

    def __init__(self, balances: Mapping[Key, tuple[int, int]] | None = None) -> None:
        """Start from `balances` ((user_id, asset) → (available, locked) atoms), e.g. `load_balances`."""
        self._lock = threading.Lock()
        # user_id → asset → [available, locked]: two dict lookups reach a mutable pair, and a user's
        # balances are listed without scanning everyone's.
        self._accounts: dict[str, dict[str, list[int]]] = {}
        for (user_id, asset), (available, locked) in (balances or {}).items():
            if not (_is_atoms(available) and _is_atoms(locked)):
                raise NegativeBalance(f"balance of {user_id} {asset} must be whole atoms ≥ 0, got "
                                      f"available={available!r} locked={locked!r}")
            self._accounts.setdefault(user_id, {})[asset] = [available, locked]
        # asset → the sum of every balance of it: deposits minus withdrawals (trades and fees only move it)
        self._supply: dict[str, int] = {}
        for account in self._accounts.values():
            for asset, (available, locked) in account.items():
                self._supply[asset] = self._supply.get(asset, 0) + available + locked

    def __repr__(self) -> str:
        return f"<Ledger users={len(self._accounts)}>"

    # -- the funds gate --------------------------------------------------------------------------------

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Move `amount` atoms from available to locked; False (nothing changed) if not available."""
        if amount <= 0:
            raise LedgerInvariantViolation(f"a lock must be positive, got {amount} atoms")
        with self._lock:
            account = self._accounts.get(user_id)
            balance = None if account is None else account.get(asset)
            if balance is None or balance[0] < amount:
                return False
            balance[0] -= amount
            balance[1] += amount
        return True

    def release(self, user_id: str, asset: str, amount: int) -> None:
        """Move `amount` atoms from locked back to available (undo a lock whose command crashed)."""
        if amount <= 0:
            raise LedgerInvariantViolation(f"a release must be positive, got {amount} atoms")
        with self._lock:
            self._check_and_add({(user_id, asset): [amount, -amount]})

    # -- facts -----------------------------------------------------------------------------------------

    def apply(
        self, spec: PairSpec, events: Iterable[EngineEvent], *, then: Callable[[], object] | None = None
    ) -> None:
        """Apply one command's releases and settlements (never its FundsLocked), all or nothing.

        `then` runs under the lock right after the movement (see the module docstring).
        """
        deltas = balance_deltas(spec, events)
        with self._lock:
            self._check_and_add(deltas)
            if then is not None:
                self._run_or_undo(then, deltas)

    def deposit(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Credit `amount` atoms to available; return the new balance (also given to `then`).

        Refused (VALIDATION_ERROR, nothing changed) when the asset's total on the exchange would pass
        `MAX_TRANSFER_ATOMS`: every balance is part of that total, so none can outgrow what the database
        holds, whatever trades and fees later move.
        """
        _check_transfer(asset, amount)
        deltas = {(user_id, asset): [amount, 0]}
        with self._lock:
            supply = self._supply.get(asset, 0) + amount
            if supply > MAX_TRANSFER_ATOMS:
                raise ValidationError(
                    f"a deposit of {format_atoms(amount)} {asset} would take the {asset} held on the "
                    f"exchange past {format_atoms(MAX_TRANSFER_ATOMS)}, the most a balance can hold",
                    field="amount")
            self._check_and_add(deltas)
            balance = self._balance(user_id, asset)
            if then is not None:
                self._run_or_undo(lambda: then(balance), deltas)
            self._supply[asset] = supply
        return balance

    def withdraw(
        self, user_id: str, asset: str, amount: int, *, then: Callable[[AssetBalance], object] | None = None
    ) -> AssetBalance:
        """Debit `amount` atoms from available, or raise InsufficientBalance changing nothing."""
        _check_transfer(asset, amount)
        deltas = {(user_id, asset): [-amount, 0]}
        with self._lock:
            available = self._balance(user_id, asset).available
            if available < amount:
                raise InsufficientBalance(
                    f"cannot withdraw {format_atoms(amount)} {asset}: {format_atoms(available)} available"
                )
            self._check_and_add(deltas)
            balance = self._balance(user_id, asset)
            if then is not None:
                self._run_or_undo(lambda: then(balance), deltas)
            self._supply[asset] -= amount
        return balance

    # -- reads -----------------------------------------------------------------------------------------

    def balance(self, user_id: str, asset: str) -> AssetBalance:
        """Return one balance (zero if the user never held the asset)."""
        with self._lock:
            return self._balance(user_id, asset)

    def balances(self, user_id: str) -> list[AssetBalance]:
        """Return every balance the user holds, by asset."""
        with self._lock:
            account = self._accounts.get(user_id, {})
            return [AssetBalance(asset, *account[asset]) for asset in sorted(account)]

    def snapshot(self) -> dict[Key, tuple[int, int]]:
        """Return every balance: (user_id, asset) → (available, locked), the shape `load_balances` gives."""
        with self._lock:
            return {
                (user_id, asset): (balance[0], balance[1])
                for user_id, account in self._accounts.items()
                for asset, balance in account.items()
            }

    def totals(self, asset: str) -> int:
        """Return the sum of every balance (available + locked, fee account included) of an asset."""
        with self._lock:
            return sum(sum(account[asset]) for account in self._accounts.values() if asset in account)

    # -- internals (the caller holds the lock) ---------------------------------------------------------

    def _balance(self, user_id: str, asset: str) -> AssetBalance:
        balance = self._accounts.get(user_id, {}).get(asset)
        return AssetBalance(asset, 0, 0) if balance is None else AssetBalance(asset, balance[0], balance[1])

    def _check_and_add(self, deltas: Deltas) -> None:
        """Add every delta, or raise NegativeBalance before changing anything."""
        accounts = self._accounts
        for (user_id, asset), (available, locked) in deltas.items():
            now = accounts.get(user_id, {}).get(asset, _ZERO)
            if now[0] + available < 0 or now[1] + locked < 0:
                raise NegativeBalance(
                    f"{user_id} {asset}: available {now[0]} {available:+d}, locked {now[1]} "
                    f"{locked:+d} would go negative"
                )
        for (user_id, asset), (available, locked) in deltas.items():
            account = accounts.get(user_id)
            if account is None:
                account = accounts[user_id] = {}
            balance = account.get(asset)
            if balance is None:
                balance = account[asset] = [0, 0]
            balance[0] += available
            balance[1] += locked

    def _run_or_undo(self, then: Callable[[], object], deltas: Deltas) -> None:
        try:
            then()
        except BaseException:
            self._check_and_add({key: [-available, -locked] for key, (available, locked) in deltas.items()})
            raise


_ZERO: list[int] = [0, 0]  # read only


def _check_transfer(asset: str, amount: int) -> None:
    if not ASSET_PATTERN.fullmatch(asset):
        raise ValidationError(f"asset {asset!r} must be 2-12 upper-case letters or digits", field="asset")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_TRANSFER_ATOMS:
        raise ValidationError(f"amount must be a positive number of atoms, got {amount!r}", field="amount")


def _is_atoms(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
