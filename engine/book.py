"""The resting order book of one pair: price levels per side, FIFO within a level, an id index.

Structure:
- per side a `SortedDict` price (ticks) → `Level`; a level is a doubly linked FIFO list of orders (links
  live on the orders, so a level costs no per-order container) and keeps its total remaining lots and its
  order count;
- `orders`: order_id → Order for every resting order;
- the best bid / best ask prices are cached and refreshed only when a best level empties.

Complexity: add O(1) to an existing level, O(log L) for a new level; remove O(1) (plus O(log L) when the
level empties); best bid/ask O(1); depth(n) O(n); check_invariants O(N).

Invariants (check_invariants raises InvariantViolation): the book is uncrossed (best bid < best ask); no
empty level; every level's total and count equal the sums of its orders' remaining lots; links are
consistent and every order in a level is in the index with that level's price and side and a live resting
status; index and levels hold the same orders; priorities increase along each level; cached bests are right.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

from sortedcontainers import SortedDict

from .errors import InvariantViolation
from .lifecycle import OPEN, PARTIALLY_FILLED
from .order import BUY, Order, Side


class Level:
    """All resting orders at one price on one side, oldest first."""

    __slots__ = ("count", "head", "price", "tail", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0
        self.count = 0

    def __iter__(self) -> Iterator[Order]:
        order = self.head
        while order is not None:
            yield order
            order = order.next


class OrderBook:
    """Resting limit orders of one pair, by side and price, in time priority within a price."""

    __slots__ = ("asks", "best_ask", "best_bid", "bids", "orders")

    def __init__(self) -> None:
        self.bids: SortedDict[int, Level] = SortedDict()
        self.asks: SortedDict[int, Level] = SortedDict()
        self.orders: dict[str, Order] = {}
        self.best_bid: int | None = None
        self.best_ask: int | None = None

    def __len__(self) -> int:
        return len(self.orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.orders

    def side(self, side: Side) -> SortedDict[int, Level]:
        """Return the price → level map of one side."""
        return self.bids if side is BUY else self.asks

    def add(self, order: Order) -> None:
        """Append an order at the back of its price level (creating the level if needed)."""
        price = order.price
        assert price is not None
        levels = self.bids if order.side is BUY else self.asks
        level = levels.get(price)
        if level is None:
            level = levels[price] = Level(price)
            if order.side is BUY:
                if self.best_bid is None or price > self.best_bid:
                    self.best_bid = price
            elif self.best_ask is None or price < self.best_ask:
                self.best_ask = price
        tail = level.tail
        order.prev = tail
        order.next = None
        if tail is None:
            level.head = order
        else:
            tail.next = order
        level.tail = order
        level.total += order.quantity - order.filled
        level.count += 1
        self.orders[order.order_id] = order

    def remove(self, order: Order) -> None:
        """Take an order out of the book (its remaining lots leave its level's total)."""
        price = order.price
        assert price is not None
        is_buy = order.side is BUY
        levels = self.bids if is_buy else self.asks
        level = levels[price]
        prev, nxt = order.prev, order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        order.prev = order.next = None
        level.total -= order.quantity - order.filled
        level.count -= 1
        del self.orders[order.order_id]
        if level.count == 0:
            self.drop_level(levels, level.price, is_buy)

    def drop_level(self, levels: SortedDict[int, Level], price: int, is_buy: bool) -> None:
        """Delete an empty level and refresh the cached best price of its side."""
        del levels[price]
        if is_buy:
            if price == self.best_bid:
                self.best_bid = levels.peekitem(-1)[0] if levels else None
        elif price == self.best_ask:
            self.best_ask = levels.peekitem(0)[0] if levels else None

    def best(self, side: Side) -> int | None:
        """Return the best price of a side, or None if the side is empty."""
        return self.best_bid if side is BUY else self.best_ask

    def depth(self, levels: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Return up to `levels` (price, total lots, order count) per side, best first: (bids, asks)."""
        bids = [(p, lv.total, lv.count) for p, lv in _take(reversed(self.bids.items()), levels)]
        asks = [(p, lv.total, lv.count) for p, lv in _take(iter(self.asks.items()), levels)]
        return bids, asks

    def check_invariants(self) -> None:
        """Raise InvariantViolation if the book is crossed or any structure disagrees with another."""
        seen = 0
        for side, levels in ((Side.BUY, self.bids), (Side.SELL, self.asks)):
            for price, level in levels.items():
                seen += self._check_level(side, price, level)
        if seen != len(self.orders):
            _fail(f"index holds {len(self.orders)} orders but levels hold {seen}")
        expected_bid = self.bids.peekitem(-1)[0] if self.bids else None
        expected_ask = self.asks.peekitem(0)[0] if self.asks else None
        if (self.best_bid, self.best_ask) != (expected_bid, expected_ask):
            _fail(f"cached best {self.best_bid}/{self.best_ask} != {expected_bid}/{expected_ask}")
        if expected_bid is not None and expected_ask is not None and expected_bid >= expected_ask:
            _fail(f"book crossed: best bid {expected_bid} >= best ask {expected_ask}")

    def _check_level(self, side: Side, price: int, level: Level) -> int:
        if level.price != price or level.count == 0 or level.head is None:
            _fail(f"{side} level {price} is empty or mislabelled")
        total = count = 0
        prev: Order | None = None
        last_priority = -1
        for order in level:
            if order.prev is not prev:
                _fail(f"broken link before {order.order_id}")
            if self.orders.get(order.order_id) is not order:
                _fail(f"order {order.order_id} in level {price} is not indexed")
            if order.side is not side or order.price != price:
                _fail(f"order {order.order_id} sits in the wrong level")
            if order.status is not OPEN and order.status is not PARTIALLY_FILLED:
                _fail(f"resting order {order.order_id} has status {order.status}")
            if not 0 <= order.filled < order.quantity:
                _fail(f"resting order {order.order_id} has filled {order.filled} of {order.quantity}")
            if order.priority <= last_priority:
                _fail(f"level {price} is out of time priority at {order.order_id}")
            last_priority = order.priority
            total += order.quantity - order.filled
            count += 1
            prev = order
        if level.tail is not prev:
            _fail(f"level {price} tail is wrong")
        if total != level.total or count != level.count:
            _fail(f"level {price} sums {total}/{count} but says {level.total}/{level.count}")
        return count


def _take(items: Iterator[tuple[int, Level]], n: int) -> Iterator[tuple[int, Level]]:
    for _ in range(n):
        item = next(items, None)
        if item is None:
            return
        yield item


def _fail(message: str) -> NoReturn:
    raise InvariantViolation(message)
