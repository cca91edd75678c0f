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

from collections.abc import Iterable
from typing import Protocol

from .events import EngineEvent, FundsReleased, TradeExecuted
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


def balance_deltas(spec: PairSpec, events: Iterable[EngineEvent]) -> dict[tuple[str, str], list[int]]:
    """Return the net movement per (user, asset), ``[available, locked]`` in atoms, of a command's facts.

    The Money rules (API.md): a `FundsReleased` moves locked → available; a `TradeExecuted` settles
    (buyer: quote locked −quote_amount, base available +(base_amount − buyer_fee); seller: base locked
    −base_amount, quote available +(quote_amount − seller_fee); the fee account: +buyer_fee base,
    +seller_fee quote). `FundsLocked` is left out: the gate moved it already. Entries appear in the
    order of the facts; a self-trade nets its two sides. Within a command locked amounts only fall and
    available amounts only rise, so checking the net result against the balances checks every step.
    """
    deltas: dict[tuple[str, str], list[int]] = {}
    base, quote = spec.base_asset, spec.quote_asset
    for event in events:
        if isinstance(event, TradeExecuted):
            buyer, seller = event.buyer_user_id, event.seller_user_id
            moves = [(buyer, quote, 0, -event.quote_amount),
                     (buyer, base, event.base_amount - event.buyer_fee, 0),
                     (seller, base, 0, -event.base_amount),
                     (seller, quote, event.quote_amount - event.seller_fee, 0)]
            if event.buyer_fee:
                moves.append((FEE_ACCOUNT, base, event.buyer_fee, 0))
            if event.seller_fee:
                moves.append((FEE_ACCOUNT, quote, event.seller_fee, 0))
        elif isinstance(event, FundsReleased):
            moves = [(event.user_id, event.asset, event.amount, -event.amount)]
        else:
            continue
        for user_id, asset, available, locked in moves:
            delta = deltas.get((user_id, asset))
            if delta is None:
                deltas[(user_id, asset)] = [available, locked]
            else:
                delta[0] += available
                delta[1] += locked
    return deltas
