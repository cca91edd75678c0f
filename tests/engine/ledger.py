"""A test wallet: a funds gate with real balances that applies the engine's facts and checks money rules.

Checks, per applied command:
- for every asset, the balance deltas implied by the facts (available + locked, across users and the fee
  account) sum to zero;
- no balance (available or locked) of any user goes negative;
- per order, the locked amount (locks − releases − consumption by trades) never goes negative, and is zero
  once the order is final.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tradeengine.engine import (
    FEE_ACCOUNT,
    FINAL_STATUSES,
    EngineEvent,
    FundsLocked,
    FundsReleased,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderStatus,
    PairSpec,
    StopTriggered,
    TradeExecuted,
)


@dataclass
class Ledger:
    """Balances per (user, asset), a FundsGate, and the per-order lock book implied by the facts."""

    spec: PairSpec
    available: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    locked: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    order_locks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    statuses: dict[str, OrderStatus] = field(default_factory=dict)
    granted: list[tuple[str, str, int]] = field(default_factory=list)
    refusals: int = 0
    deposits: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def deposit(self, user_id: str, asset: str, atoms: int) -> None:
        """Credit a user's available balance."""
        self.available[(user_id, asset)] += atoms
        self.deposits[(user_id, asset)] += atoms

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Lock if available covers it (the FundsGate protocol)."""
        assert amount > 0, "the engine never asks for a zero or negative lock"
        key = (user_id, asset)
        if self.available[key] < amount:
            self.refusals += 1
            return False
        self.available[key] -= amount
        self.locked[key] += amount
        self.granted.append((user_id, asset, amount))
        return True

    def total(self, asset: str) -> int:
        """Return the sum of all balances of an asset, fee account included."""
        return sum(v for (_, a), v in self.available.items() if a == asset) + sum(
            v for (_, a), v in self.locked.items() if a == asset
        )

    def apply(self, events: list[EngineEvent]) -> None:
        """Apply one command's facts and assert every money rule."""
        deltas: dict[str, int] = defaultdict(int)
        granted = list(self.granted)
        self.granted.clear()
        touched: set[str] = set()
        for event in events:
            self._apply_one(event, deltas, granted)
            if isinstance(event, TradeExecuted):
                touched.update((event.buyer_order_id, event.seller_order_id))
            else:
                touched.add(event.order_id)
        for order_id in touched:
            if self.statuses[order_id] in FINAL_STATUSES:
                assert self.order_locks[order_id] == 0, f"final order {order_id} still holds a lock"
        assert not granted, f"gate granted locks without FundsLocked facts: {granted}"
        for asset, delta in deltas.items():
            assert delta == 0, f"{asset} moved by {delta} atoms in one command"
        for key, value in list(self.available.items()) + list(self.locked.items()):
            assert value >= 0, f"balance {key} went negative: {value}"

    def _apply_one(
        self, event: EngineEvent, deltas: dict[str, int], granted: list[tuple[str, str, int]]
    ) -> None:
        if isinstance(event, FundsLocked):
            assert (event.user_id, event.asset, event.amount) in granted, "FundsLocked without a granted lock"
            granted.remove((event.user_id, event.asset, event.amount))
            self.order_locks[event.order_id] += event.amount
        elif isinstance(event, FundsReleased):
            self._move(event.user_id, event.asset, event.amount, -event.amount, deltas)
            self._consume(event.order_id, event.amount)
        elif isinstance(event, TradeExecuted):
            self._settle(event, deltas)
        elif isinstance(event, (OrderAccepted, OrderRejected)):
            self.statuses[event.order_id] = event.status
        elif isinstance(event, OrderCancelled):
            self.statuses[event.order_id] = OrderStatus.CANCELLED
        elif isinstance(event, OrderExpired):
            self.statuses[event.order_id] = OrderStatus.EXPIRED
        elif isinstance(event, StopTriggered):
            self.statuses[event.order_id] = OrderStatus.OPEN
        else:
            assert isinstance(event, OrderAmended)
            self.statuses[event.order_id] = event.status

    def _settle(self, trade: TradeExecuted, deltas: dict[str, int]) -> None:
        base, quote = self.spec.base_asset, self.spec.quote_asset
        assert trade.base_amount == trade.quantity * self.spec.base_atoms_per_lot
        assert trade.quote_amount == trade.price * trade.quantity * self.spec.quote_atoms_per_tick_lot
        self._move(trade.buyer_user_id, quote, 0, -trade.quote_amount, deltas)
        self._move(trade.buyer_user_id, base, trade.base_amount - trade.buyer_fee, 0, deltas)
        self._move(trade.seller_user_id, base, 0, -trade.base_amount, deltas)
        self._move(trade.seller_user_id, quote, trade.quote_amount - trade.seller_fee, 0, deltas)
        self._move(FEE_ACCOUNT, base, trade.buyer_fee, 0, deltas)
        self._move(FEE_ACCOUNT, quote, trade.seller_fee, 0, deltas)
        self._consume(trade.buyer_order_id, trade.quote_amount)
        self._consume(trade.seller_order_id, trade.base_amount)
        self.statuses[trade.buyer_order_id] = trade.buyer_status
        self.statuses[trade.seller_order_id] = trade.seller_status

    def _move(self, user_id: str, asset: str, available: int, locked: int, deltas: dict[str, int]) -> None:
        self.available[(user_id, asset)] += available
        self.locked[(user_id, asset)] += locked
        deltas[asset] += available + locked

    def _consume(self, order_id: str, amount: int) -> None:
        self.order_locks[order_id] -= amount
        assert self.order_locks[order_id] >= 0, f"order {order_id} lock went negative"


class RichLedger(Ledger):
    """A ledger that tops a user up before any lock, so every lock is granted (and still accounted)."""

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        """Deposit what is missing, then lock."""
        key = (user_id, asset)
        if self.available[key] < amount:
            self.deposit(user_id, asset, amount - self.available[key])
        return super().try_lock(user_id, asset, amount)
