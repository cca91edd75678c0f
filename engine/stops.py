"""Pending stop orders of one pair, waiting for a trade price to reach their stop price.

A BUY stop triggers when a trade prints at or above its stop_price, a SELL stop at or below it. Per side
a `SortedDict` stop price → insertion-ordered dict of orders (placement order = sequence order, also on
recovery, which restores in sequence order), plus an id index.

`next_triggered(low, high)` returns the triggered stop with the smallest sequence, given the lowest and
highest trade prices seen (a command's trades and the last price before them), so a cascade inside one
command is resolved one stop at a time, oldest first, re-evaluated after each stop's trades.
Complexity: add/remove O(log S) worst case (O(1) for an existing stop price); next_triggered
O(log S + triggered price levels).
"""

from __future__ import annotations

from sortedcontainers import SortedDict

from .errors import InvariantViolation
from .lifecycle import PENDING_TRIGGER
from .order import BUY, Order


class StopBook:
    """Stops of one pair, PENDING_TRIGGER, keyed by side and stop price."""

    __slots__ = ("buys", "orders", "sells")

    def __init__(self) -> None:
        self.buys: SortedDict[int, dict[str, Order]] = SortedDict()
        self.sells: SortedDict[int, dict[str, Order]] = SortedDict()
        self.orders: dict[str, Order] = {}

    def __len__(self) -> int:
        return len(self.orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.orders

    def add(self, order: Order) -> None:
        """Park a stop until its stop price is reached."""
        stop = order.stop_price
        assert stop is not None
        levels = self.buys if order.side is BUY else self.sells
        level = levels.get(stop)
        if level is None:
            level = levels[stop] = {}
        level[order.order_id] = order
        self.orders[order.order_id] = order

    def remove(self, order: Order) -> None:
        """Take a stop out (cancelled or triggered)."""
        stop = order.stop_price
        assert stop is not None
        levels = self.buys if order.side is BUY else self.sells
        level = levels[stop]
        del level[order.order_id]
        if not level:
            del levels[stop]
        del self.orders[order.order_id]

    def next_triggered(self, low: int | None, high: int | None = None) -> Order | None:
        """Return the oldest stop a price in [low, high] reaches (high defaults to low), or None."""
        if low is None or not self.orders:
            return None
        if high is None:
            high = low
        oldest: Order | None = None
        for stop in self.buys.irange(maximum=high):
            first = next(iter(self.buys[stop].values()))
            if oldest is None or first.sequence < oldest.sequence:
                oldest = first
        for stop in self.sells.irange(minimum=low):
            first = next(iter(self.sells[stop].values()))
            if oldest is None or first.sequence < oldest.sequence:
                oldest = first
        return oldest

    def check_invariants(self, last_price: int | None) -> None:
        """Raise InvariantViolation if indexes disagree or a stop should already have triggered."""
        count = 0
        for levels, is_buy in ((self.buys, True), (self.sells, False)):
            for stop, level in levels.items():
                if not level:
                    raise InvariantViolation(f"empty stop level {stop}")
                last_sequence = -1
                for order in level.values():
                    count += 1
                    if self.orders.get(order.order_id) is not order:
                        raise InvariantViolation(f"stop {order.order_id} is not indexed")
                    if (order.side is BUY) != is_buy or order.stop_price != stop:
                        raise InvariantViolation(f"stop {order.order_id} sits in the wrong level")
                    if order.status is not PENDING_TRIGGER:
                        raise InvariantViolation(f"stop {order.order_id} has status {order.status}")
                    if order.sequence <= last_sequence:
                        raise InvariantViolation(f"stop level {stop} is out of sequence order")
                    last_sequence = order.sequence
        if count != len(self.orders):
            raise InvariantViolation("stop index and stop levels disagree")
        if self.next_triggered(last_price) is not None:
            raise InvariantViolation(f"a stop is left untriggered at last price {last_price}")
