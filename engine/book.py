"""The resting order book of one pair: price levels per side, FIFO within a level, an id index.

Structure:
- per side a `SortedDict` price (ticks) → `Level` (the price order), and a plain dict holding the same
  levels (`bid_levels` / `ask_levels`) for O(1) lookups: sortedcontainers' `SortedDict` methods run as
  Python code, so the hot paths only touch it when a level is created or finally dropped;
- the levels of a side, live and parked, are also linked in price order (`Level.lower` / `higher`), so
  the next level away from the touch is one attribute read, without a dict probe or a SortedDict search;
- a level is a doubly linked FIFO list of orders (links live on the orders, so a level costs no per-order
  container) and keeps its total remaining lots and its order count;
- `orders`: order_id → Order for every resting order;
- the best bid / best ask prices are cached and refreshed only when a best level empties.

Parked levels: a level whose last order leaves stays in both maps and in the price links, *parked*
(count 0), instead of being deleted. Near the touch levels empty and fill again all the time, and a
SortedDict insert + delete costs about 2 µs of interpreted code; a parked level is made live again for the
price of a dict lookup. Parked levels hold no orders, are skipped by every read (depth, bests, counts,
`live_levels`) and are dropped for good
- when a best-price refresh, walking the price links to the next live level, passes more than `PROBES`
  parked levels that lie more than `PROBES` ticks away (so no search passes them again; the parked
  levels near the touch are kept, as they are the likeliest to fill again), and
- all at once when they outnumber the live levels by more than `PARKED_SLACK` (memory stays bounded).

Complexity: add O(1) to an existing or parked level, O(log L) for a new level; remove O(1), plus, when a
best level empties, a walk over the parked levels up to the next live one (amortised O(PROBES): a walk
passes at most PROBES parked levels within PROBES ticks and at most PROBES further ones it does not drop);
best bid/ask O(1); depth(n) O(n + parked); check_invariants O(N + L).

Invariants (check_invariants raises InvariantViolation): the book is uncrossed (best live bid < best live
ask); the plain dicts and the SortedDicts hold the same levels, linked in price order; parked levels are
empty and counted; every live level's total and count equal the sums of its orders' remaining lots; links
are consistent and every order in a level is in the index with that level's price and side and a live
resting status; index and levels hold the same orders; priorities increase along each level; cached bests
are right.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Final, NoReturn

from sortedcontainers import SortedDict

from .errors import InvariantViolation
from .lifecycle import OPEN, PARTIALLY_FILLED
from .order import BUY, SELL, Order, Side

PROBES: Final = 32
"""A best-price refresh drops the parked levels it passes more than PROBES ticks away from the emptied
best level when there are more than PROBES of them."""
PARKED_SLACK: Final = 64
"""Parked levels allowed beyond the number of live levels before all parked levels are dropped."""


class Level:
    """All resting orders at one price on one side, oldest first (parked while count is 0).

    `lower` / `higher` link the side's levels, live and parked, in price order (the SortedDict's order).
    """

    __slots__ = ("count", "head", "higher", "lower", "price", "tail", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0
        self.count = 0
        self.lower: Level | None = None
        self.higher: Level | None = None

    def __iter__(self) -> Iterator[Order]:
        order = self.head
        while order is not None:
            yield order
            order = order.next


class OrderBook:
    """Resting limit orders of one pair, by side and price, in time priority within a price."""

    __slots__ = ("ask_levels", "asks", "best_ask", "best_bid", "bid_levels", "bids", "orders", "parked")

    def __init__(self) -> None:
        self.bids: SortedDict[int, Level] = SortedDict()
        self.asks: SortedDict[int, Level] = SortedDict()
        self.bid_levels: dict[int, Level] = {}
        self.ask_levels: dict[int, Level] = {}
        self.orders: dict[str, Order] = {}
        self.best_bid: int | None = None
        self.best_ask: int | None = None
        self.parked = 0

    def __len__(self) -> int:
        return len(self.orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.orders

    def side(self, side: Side) -> SortedDict[int, Level]:
        """Return the sorted price → level map of one side (live and parked levels)."""
        return self.bids if side is BUY else self.asks

    def level(self, side: Side, price: int) -> Level:
        """Return the level (live or parked) at a price of one side; KeyError if there is none."""
        return (self.bid_levels if side is BUY else self.ask_levels)[price]

    def add(self, order: Order) -> None:
        """Append an order at the back of its price level (creating or unparking the level if needed)."""
        price = order.price
        assert price is not None
        if order.side is BUY:
            level = self.bid_levels.get(price)
            if level is None:
                level = self._new_level(self.bid_levels, self.bids, price)
            elif not level.count:
                self.parked -= 1
            best = self.best_bid
            if best is None or price > best:
                self.best_bid = price
        else:
            level = self.ask_levels.get(price)
            if level is None:
                level = self._new_level(self.ask_levels, self.asks, price)
            elif not level.count:
                self.parked -= 1
            best = self.best_ask
            if best is None or price < best:
                self.best_ask = price
        tail = level.tail
        order.level = level
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

    @staticmethod
    def _new_level(index: dict[int, Level], levels: SortedDict[int, Level], price: int) -> Level:
        """Create the level at a price with no level yet, linked between its neighbours in price order."""
        level = Level(price)
        position = levels.bisect_left(price)
        if position:
            lower = levels.peekitem(position - 1)[1]
            level.lower = lower
            lower.higher = level
        if position < len(levels):
            higher = levels.peekitem(position)[1]
            level.higher = higher
            higher.lower = level
        index[price] = levels[price] = level
        return level

    def remove(self, order: Order) -> None:
        """Take an order out of the book (its remaining lots leave its level's total)."""
        level = order.level
        assert level is not None
        prev, nxt = order.prev, order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        order.prev = order.next = order.level = None
        level.total -= order.quantity - order.filled
        level.count -= 1
        del self.orders[order.order_id]
        if level.count == 0:
            self._park(level, order.side is BUY)

    def _park(self, level: Level, is_buy: bool) -> None:
        """Keep an emptied level as parked; refresh the cached best price if it was the best."""
        self.parked += 1
        if is_buy:
            if level.price == self.best_bid:
                self.best_bid = self._next_live(level, True)
        elif level.price == self.best_ask:
            self.best_ask = self._next_live(level, False)
        if self.parked > len(self.bid_levels) + len(self.ask_levels) - self.parked + PARKED_SLACK:
            self.drop_parked()

    def _next_live(self, start: Level, is_buy: bool) -> int | None:
        """Return the price of the first live level beyond `start` going away from the touch, or None.

        Walks the price links over the parked levels in between; those more than PROBES ticks from `start`
        are dropped when there are more than PROBES of them, so that no later search passes them again.
        """
        if is_buy:
            level = start.lower
            while level is not None and not level.count:
                level = level.lower
        else:
            level = start.higher
            while level is not None and not level.count:
                level = level.higher
        # more than PROBES parked levels lie beyond the first PROBES ticks only if the walk went further
        # than 2 × PROBES + 1 ticks (levels have distinct prices): then walk again to drop them
        if level is None:
            self._drop_far_parked(start, None, is_buy)
            return None
        if (start.price - level.price if is_buy else level.price - start.price) > 2 * PROBES + 1:
            self._drop_far_parked(start, level, is_buy)
        return level.price

    def _drop_far_parked(self, start: Level, stop: Level | None, is_buy: bool) -> None:
        """Drop the parked levels between `start` and `stop` more than PROBES ticks from `start`, if there
        are more than PROBES of them."""
        near = start.price - PROBES if is_buy else start.price + PROBES  # the last of the near ticks
        far: list[Level] = []
        level = start.lower if is_buy else start.higher
        while level is not stop:
            assert level is not None
            if level.price < near if is_buy else level.price > near:
                far.append(level)
            level = level.lower if is_buy else level.higher
        if len(far) > PROBES:
            index, levels = (self.bid_levels, self.bids) if is_buy else (self.ask_levels, self.asks)
            for parked in far:
                self._unlink(index, levels, parked)
            self.parked -= len(far)

    @staticmethod
    def _unlink(index: dict[int, Level], levels: SortedDict[int, Level], level: Level) -> None:
        """Delete a level from both maps and from the price links."""
        lower, higher = level.lower, level.higher
        if lower is not None:
            lower.higher = higher
        if higher is not None:
            higher.lower = lower
        level.lower = level.higher = None
        del index[level.price]
        del levels[level.price]

    def drop_level(self, levels: SortedDict[int, Level], price: int, is_buy: bool) -> None:
        """Delete an empty level for good and refresh the cached best price of its side."""
        index = self.bid_levels if is_buy else self.ask_levels
        level = index[price]
        if level.count:
            _fail(f"level {price} still holds orders")
        if price == (self.best_bid if is_buy else self.best_ask):  # a parked level is never the best: safety
            if is_buy:
                self.best_bid = self._next_live(level, True)
            else:
                self.best_ask = self._next_live(level, False)
        self._unlink(index, levels, level)
        self.parked -= 1

    def drop_parked(self) -> None:
        """Drop every parked level for good."""
        for index, levels in ((self.bid_levels, self.bids), (self.ask_levels, self.asks)):
            for level in [level for level in index.values() if not level.count]:
                self._unlink(index, levels, level)
        self.parked = 0

    def live_levels(self, side: Side) -> Iterator[Level]:
        """Yield the live levels of one side, best first (following the price links from the best)."""
        if side is BUY:
            best = self.best_bid
            level = None if best is None else self.bid_levels[best]
            while level is not None:
                if level.count:
                    yield level
                level = level.lower
        else:
            best = self.best_ask
            level = None if best is None else self.ask_levels[best]
            while level is not None:
                if level.count:
                    yield level
                level = level.higher

    def best(self, side: Side) -> int | None:
        """Return the best price of a side, or None if the side is empty."""
        return self.best_bid if side is BUY else self.best_ask

    def depth(self, levels: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Return up to `levels` (price, total lots, order count) per side, best first: (bids, asks)."""
        bids = [(lv.price, lv.total, lv.count) for lv in islice(self.live_levels(BUY), max(levels, 0))]
        asks = [(lv.price, lv.total, lv.count) for lv in islice(self.live_levels(SELL), max(levels, 0))]
        return bids, asks

    def check_invariants(self) -> None:
        """Raise InvariantViolation if the book is crossed or any structure disagrees with another."""
        seen = parked = 0
        bests: list[int | None] = []
        sides = ((Side.BUY, self.bids, self.bid_levels), (Side.SELL, self.asks, self.ask_levels))
        for side, levels, index in sides:
            if len(index) != len(levels):
                _fail(f"{side} index holds {len(index)} levels but the sorted map {len(levels)}")
            live: list[int] = []
            lower: Level | None = None
            for price, level in levels.items():
                if index.get(price) is not level:
                    _fail(f"{side} level {price} is missing from the index")
                if level.lower is not lower or (lower is not None and lower.higher is not level):
                    _fail(f"{side} level {price} is not linked to the level below it")
                lower = level
                if level.count:
                    seen += self._check_level(side, price, level)
                    live.append(price)
                else:
                    parked += 1
                    if level.price != price or level.head or level.tail or level.total:
                        _fail(f"parked {side} level {price} is not empty or is mislabelled")
            if lower is not None and lower.higher is not None:
                _fail(f"{side} level {lower.price} is linked to a level above the highest")
            bests.append((live[-1] if side is Side.BUY else live[0]) if live else None)
        if seen != len(self.orders):
            _fail(f"index holds {len(self.orders)} orders but levels hold {seen}")
        if parked != self.parked:
            _fail(f"{parked} parked levels but the book counts {self.parked}")
        if parked > len(self.bids) + len(self.asks) - parked + PARKED_SLACK:
            _fail(f"{parked} parked levels were never dropped")
        expected_bid, expected_ask = bests
        if (self.best_bid, self.best_ask) != (expected_bid, expected_ask):
            _fail(f"cached best {self.best_bid}/{self.best_ask} != {expected_bid}/{expected_ask}")
        if expected_bid is not None and expected_ask is not None and expected_bid >= expected_ask:
            _fail(f"book crossed: best bid {expected_bid} >= best ask {expected_ask}")

    def _check_level(self, side: Side, price: int, level: Level) -> int:
        if level.price != price or level.head is None:
            _fail(f"{side} level {price} is empty or mislabelled")
        total = count = 0
        prev: Order | None = None
        last_priority = -1
        for order in level:
            if order.prev is not prev or order.level is not level:
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


def _fail(message: str) -> NoReturn:
    raise InvariantViolation(message)
