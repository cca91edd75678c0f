"""The funds gate: the one question the core asks the outside world, and the fee account.

The core holds no balances. Whenever an order needs funds locked before it may rest or take (a new order,
a triggered STOP_MARKET BUY, an amend that needs more), the core calls `FundsGate.try_lock` once with the
exact amount in atoms. A gate that answers True must have moved available → locked already; the core then
emits the matching `FundsLocked` fact. Every other movement (releases, settlements, fees) is only reported
as a fact for the wallet to apply; the gate is never told about them.

Determinism: the core's events depend only on the commands and on the gate's answers. A gate consulted in a
stop cascade may refuse funds that trades earlier in the same command would have credited (the wallet has
not applied those facts yet): the refusal is conservative, never unsafe.
"""

from __future__ import annotations

from typing import Protocol

from .order import BUY, Order
from .pair import PairSpec

FEE_ACCOUNT = "__fees__"
"""User id of the exchange's fee account: trade fees are credited to it, per asset."""


class FundsGate(Protocol):
    """Lock funds for an order, or refuse."""

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Move `amount` atoms of `asset` from available to locked for the user; False if not available."""
        ...


class UnlimitedFunds:
    """A gate that grants every lock (benchmarks, and tests that are not about funds)."""

    __slots__ = ()

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Grant the lock."""
        return True


def required_lock(spec: PairSpec, order: Order) -> int:
    """Return the atoms a live order must hold locked, given its current state.

    Resting BUY: price × remaining in quote; SELL: remaining in base. Pending stops as placed: STOP_LIMIT BUY
    price × quantity, STOP_MARKET BUY nothing, SELL stops their quantity.
    """
    remaining = order.quantity - order.filled
    if order.side is BUY:
        if order.price is None:
            return 0
        return order.price * remaining * spec.quote_atoms_per_tick_lot
    return remaining * spec.base_atoms_per_lot
