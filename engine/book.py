"""The resting order book of one pair: price levels per side, FIFO within a level, an id index.

Structure:
- per side a `SortedDict` price (ticks) → `Level` (the price order), and a plain dict holding the same
  levels (`bid_levels` / `ask_levels`) for O(1) lookups: sortedcontainers' `SortedDict` methods run as
  Python code, so the hot paths only touch it when a level is created or finally dropped;
- a level is a doubly linked FIFO list of orders (links live on the orders, so a level costs no per-order
  container) and keeps its total remaining lots and its order count;
- `orders`: order_id → Order for every resting order;
- the best bid / best ask prices are cached and refreshed only when a best level empties.

Parked levels: a level whose last order leaves stays in both maps, *parked* (count 0), instead of being
deleted. Near the touch levels empty and fill again all the time, and a SortedDict insert + delete costs
about 2 µs of interpreted code; a parked level is made live again for the price of a dict lookup. Parked
levels hold no orders, are skipped by every read (depth, bests, counts, `live_levels`) and are dropped
for good
- when a best-price refresh, having probed the next `PROBES` ticks in the plain dict, searches the
  SortedDict and passes more than `PROBES` parked levels there (so no search passes them again), and
- all at once when they outnumber the live levels by more than `PARKED_SLACK` (memory stays bounded).

Complexity: add O(1) to an existing or parked level, O(log L) for a new level; remove O(1), plus, when a
best level empties, up to PROBES dict probes for the next live level near it, else an O(log L) search
(amortised: a search passes at most PROBES parked levels it does not drop); best bid/ask O(1);
depth(n) O(n + parked); check_invariants O(N + L).

Invariants (check_invariants raises InvariantViolation): the book is uncrossed (best live bid < best live
ask); the plain dicts and the SortedDicts hold the same levels; parked levels are empty and counted; every
live level's total and count equal the sums of its orders' remaining lots; links are consistent and every
order in a level is in the index with that level's price and side and a live resting status; index and
levels hold the same orders; priorities increase along each level; cached bests are right.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NoReturn

from sortedcontainers import SortedDict

from .errors import InvariantViolation
from .lifecycle import OPEN, PARTIALLY_FILLED
from .order import BUY, Order, Side

PROBES: Final = 32
"""Ticks probed in the plain dict for the next live level before searching the SortedDict; also the
number of parked levels a search may pass before it drops them."""
PARKED_SLACK: Final = 64
"""Parked levels allowed beyond the number of live levels before all parked levels are dropped."""


class Level:
    """All resting orders at one price on one side, oldest first (parked while count is 0)."""

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
                level = self.bid_levels[price] = self.bids[price] = Level(price)
            elif not level.count:
                self.parked -= 1
            best = self.best_bid
            if best is None or price > best:
                self.best_bid = price
        else:
            level = self.ask_levels.get(price)
            if level is None:
                level = self.ask_levels[price] = self.asks[price] = Level(price)
            elif not level.count:
                self.parked -= 1
            best = self.best_ask
            if best is None or price < best:
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
        level = (self.bid_levels if is_buy else self.ask_levels)[price]
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
            self._park(price, is_buy)

    def _park(self, price: int, is_buy: bool) -> None:
        """Keep an emptied level as parked; refresh the cached best price if it was the best."""
        self.parked += 1
        if is_buy:
            if price == self.best_bid:
                self.best_bid = self._next_live(self.bid_levels, self.bids, price, -1)
        elif price == self.best_ask:
            self.best_ask = self._next_live(self.ask_levels, self.asks, price, 1)
        if self.parked > len(self.bid_levels) + len(self.ask_levels) - self.parked + PARKED_SLACK:
            self.drop_parked()

    def _next_live(self, index: dict[int, Level], levels: SortedDict[int, Level], price: int, step: int
                   ) -> int | None:
        """Return the next live price after `price` going in `step` direction, or None."""
        probe = price
        for _ in range(PROBES):  # near the touch the next level is usually a few ticks away
            probe += step
            level = index.get(probe)
            if level is not None and level.count:
                return probe
        if step < 0:
            prices = levels.irange(maximum=probe, inclusive=(False, False), reverse=True)
        else:
            prices = levels.irange(minimum=probe, inclusive=(False, False))
        passed = []
        found: int | None = None
        for candidate in prices:
            if index[candidate].count:
                found = candidate
                break
            passed.append(candidate)
        if len(passed) > PROBES:  # drop them, so that no later search passes them again
            for candidate in passed:
                del index[candidate]
                del levels[candidate]
            self.parked -= len(passed)
        return found

    def drop_level(self, levels: SortedDict[int, Level], price: int, is_buy: bool) -> None:
        """Delete an empty level for good and refresh the cached best price of its side."""
        index = self.bid_levels if is_buy else self.ask_levels
        if index[price].count:
            _fail(f"level {price} still holds orders")
        del index[price]
        del levels[price]
        self.parked -= 1
        if is_buy:
            if price == self.best_bid:
                self.best_bid = self._next_live(index, levels, price, -1)
        elif price == self.best_ask:
            self.best_ask = self._next_live(index, levels, price, 1)

    def drop_parked(self) -> None:
        """Drop every parked level for good."""
        for index, levels in ((self.bid_levels, self.bids), (self.ask_levels, self.asks)):
            for price in [price for price, level in index.items() if not level.count]:
                del index[price]
                del levels[price]
        self.parked = 0

    def live_levels(self, side: Side) -> Iterator[Level]:
        """Yield the live levels of one side, best first (the best one without touching the SortedDict)."""
        if side is BUY:
            best, index, levels = self.best_bid, self.bid_levels, self.bids
        else:
            best, index, levels = self.best_ask, self.ask_levels, self.asks
        if best is None:
            return
        yield index[best]
        if side is BUY:
            prices = levels.irange(maximum=best, inclusive=(False, False), reverse=True)
        else:
            prices = levels.irange(minimum=best, inclusive=(False, False))
        for price in prices:
            level = index[price]
            if level.count:
                yield level

    def best(self, side: Side) -> int | None:
        """Return the best price of a side, or None if the side is empty."""
        return self.best_bid if side is BUY else self.best_ask

    def depth(self, levels: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Return up to `levels` (price, total lots, order count) per side, best first: (bids, asks)."""
        bids = [(lv.price, lv.total, lv.count) for lv in _live(reversed(self.bids.values()), levels)]
        asks = [(lv.price, lv.total, lv.count) for lv in _live(iter(self.asks.values()), levels)]
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
            for price, level in levels.items():
                if index.get(price) is not level:
                    _fail(f"{side} level {price} is missing from the index")
                if level.count:
                    seen += self._check_level(side, price, level)
                    live.append(price)
                else:
                    parked += 1
                    if level.price != price or level.head or level.tail or level.total:
                        _fail(f"parked {side} level {price} is not empty or is mislabelled")
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


def _live(levels: Iterator[Level], n: int) -> Iterator[Level]:
    """Yield the first n live (not parked) levels."""
    if n <= 0:
        return
    for level in levels:
        if level.count:
            yield level
            n -= 1
            if not n:
                return


def _fail(message: str) -> NoReturn:
    raise InvariantViolation(message)
