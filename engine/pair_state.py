"""The state of one pair that commands change: books, sequence, last price; its read and recovery API.

`PairState` holds what `MatchingEngine` (its only subclass) mutates, and everything that only reads or
rebuilds it: depth, best prices, order lookups, counts, recovery from snapshots, and `check_invariants()`.

Recovery contract: a fresh engine is rebuilt from the live orders (resting and pending stops) in priority
order without emitting events, then told the sequence and last trade price to continue from. Per-order locks
are recomputed from each order's state (`required_lock`), never trusted from storage.

The engine remembers the ids of the last `finished_capacity` final orders (amortised O(1) per final
order, up to 2 × capacity entries held) so that a cancel of one answers ORDER_NOT_CANCELLABLE; older ids
answer NOT_FOUND and the actor may consult storage. A rebuilt pair starts with an empty memory.
Complexity: open_orders and counts are O(N) scans; depth(n) is O(n); the rest O(1).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from .book import OrderBook
from .errors import DuplicateOrderId, InvariantViolation, ValidationError
from .funds import FundsGate, required_lock
from .lifecycle import LIVE_STATUSES, PENDING_TRIGGER
from .order import Order, OrderSnapshot
from .pair import PairSpec
from .stops import StopBook


class PairState:
    """Book, stop book, sequence and last trade price of one pair, with the read and recovery API."""

    __slots__ = (
        "_finished",
        "_finished_limit",
        "_finished_older",
        "base_asset",
        "base_unit",
        "book",
        "finished_capacity",
        "funds",
        "last_price",
        "maker_fee_den",
        "maker_fee_num",
        "max_lots",
        "min_lots",
        "min_notional",
        "notional_unit",
        "quote_asset",
        "sequence",
        "spec",
        "stops",
        "taker_fee_den",
        "taker_fee_num",
    )

    def __init__(
        self,
        spec: PairSpec,
        funds: FundsGate,
        *,
        sequence: int = 0,
        last_price: int | None = None,
        finished_capacity: int = 10_000,
    ) -> None:
        self.spec = spec
        self.funds = funds
        self.book = OrderBook()
        self.stops = StopBook()
        self.sequence = sequence
        self.last_price = last_price
        self.base_asset = spec.base_asset
        self.quote_asset = spec.quote_asset
        # the spec's integer forms, copied flat: the hot paths read them on every command
        self.notional_unit = spec.quote_atoms_per_tick_lot
        self.base_unit = spec.base_atoms_per_lot
        self.min_lots = spec.min_quantity_lots
        self.max_lots = spec.max_quantity_lots
        self.min_notional = spec.min_notional_atoms
        self.maker_fee_num, self.maker_fee_den = spec.maker_fee_fraction
        self.taker_fee_num, self.taker_fee_den = spec.taker_fee_fraction
        self.finished_capacity = finished_capacity
        self._finished: dict[str, str] = {}
        self._finished_older: dict[str, str] = {}
        # how many ids `_finished` may hold before the oldest are forgotten: 2 × capacity minus the ids in
        # `_finished_older` (which changes only when they are forgotten)
        self._finished_limit = 2 * finished_capacity

    def _remember_finished(self, order_id: str, user_id: str) -> None:
        finished = self._finished
        finished[order_id] = user_id
        if len(finished) > self._finished_limit:
            self._forget_oldest_finished()

    def _finished_owner(self, order_id: str) -> str | None:
        """Return the user of a remembered final order, or None."""
        owner = self._finished.get(order_id)
        return self._finished_older.get(order_id) if owner is None else owner

    def _id_used(self, order_id: str) -> bool:
        """Tell whether an order id is live or a remembered final order on this pair."""
        return (order_id in self.book.orders or order_id in self.stops.orders or order_id in self._finished
                or order_id in self._finished_older)

    def _forget_oldest_finished(self) -> None:
        """Keep only the newest `finished_capacity` final ids (amortised O(1) per final order).

        Two generations instead of one dict: `_finished_older` holds at most `finished_capacity` ids, so
        when the total passes 2 × capacity the newest `capacity` are all in `_finished`; it loses its
        oldest surplus (usually one id) and becomes the older generation. No dict is copied.
        """
        finished = self._finished
        for order_id in list(islice(finished, max(0, len(finished) - self.finished_capacity))):
            del finished[order_id]
        self._finished_older = finished
        self._finished = {}
        self._finished_limit = 2 * self.finished_capacity - len(finished)

    # -- read API ----------------------------------------------------------------------------------

    def depth(self, levels: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Return up to `levels` (price ticks, total lots, order count) per side, best first: (bids, asks)."""
        return self.book.depth(levels)

    def best_bid(self) -> int | None:
        """Return the best bid price in ticks, or None."""
        return self.book.best_bid

    def best_ask(self) -> int | None:
        """Return the best ask price in ticks, or None."""
        return self.book.best_ask

    def get_order(self, order_id: str) -> OrderSnapshot | None:
        """Return a live order (resting or pending stop) by id, or None."""
        order = self.book.orders.get(order_id) or self.stops.orders.get(order_id)
        return None if order is None else order.snapshot()

    def open_orders(self, user_id: str) -> list[OrderSnapshot]:
        """Return a user's live orders on this pair (resting and pending stops), oldest first."""
        mine = [o for o in self.book.orders.values() if o.user_id == user_id]
        mine.extend(o for o in self.stops.orders.values() if o.user_id == user_id)
        mine.sort(key=by_sequence)
        return [o.snapshot() for o in mine]

    def counts(self) -> tuple[int, int, int]:
        """Return the number of resting bids, resting asks and pending stops."""
        bids = sum(level.count for level in self.book.bids.values())
        return bids, len(self.book.orders) - bids, len(self.stops.orders)

    # -- recovery ----------------------------------------------------------------------------------

    def restore(self, snapshots: Iterable[OrderSnapshot], *, sequence: int, last_price: int | None) -> None:
        """Rebuild a fresh engine from live orders (any order; sorted by priority here), emitting nothing."""
        if self.book.orders or self.stops.orders:
            raise InvariantViolation("restore needs a fresh engine")
        for snapshot in sorted(snapshots, key=_by_priority):
            self.restore_order(snapshot)
        self.resume(sequence=sequence, last_price=last_price)

    def restore_order(self, snapshot: OrderSnapshot) -> None:
        """Put back one live order without emitting events; call in priority order."""
        if snapshot.status not in LIVE_STATUSES:
            raise ValidationError(f"cannot restore an order with status {snapshot.status}", field="status")
        if snapshot.order_id in self.book.orders or snapshot.order_id in self.stops.orders:
            raise DuplicateOrderId(f"order {snapshot.order_id} restored twice", field="order_id")
        order = Order(
            snapshot.order_id, snapshot.user_id, snapshot.side, snapshot.order_type, snapshot.price,
            snapshot.stop_price, snapshot.quantity, None, snapshot.time_in_force, snapshot.post_only,
            snapshot.self_trade_prevention, snapshot.client_order_id, snapshot.status, snapshot.sequence,
        )
        order.priority = snapshot.priority
        order.filled = snapshot.filled_quantity
        order.cumulative_quote = snapshot.cumulative_quote
        order.locked = required_lock(self.spec, order)
        if order.status is PENDING_TRIGGER:
            self.stops.add(order)
        else:
            self.book.add(order)

    def resume(self, *, sequence: int, last_price: int | None) -> None:
        """Set the sequence and last trade price a rebuilt pair continues from, and check the result."""
        self.sequence = sequence
        self.last_price = last_price
        self.check_invariants()

    def check_invariants(self) -> None:
        """Raise InvariantViolation unless book, stop book and per-order locks are all consistent."""
        self.book.check_invariants()
        self.stops.check_invariants(self.last_price)
        for orders in (self.book.orders, self.stops.orders):
            for order in orders.values():
                expected = required_lock(self.spec, order)
                if order.locked != expected:
                    raise InvariantViolation(
                        f"order {order.order_id} holds {order.locked} atoms locked, needs {expected}"
                    )
        if self.book.orders.keys() & self.stops.orders.keys():
            raise InvariantViolation("an order is both resting and pending")


def by_sequence(order: Order) -> int:
    """Sort key: the order's acceptance sequence."""
    return order.sequence


def _by_priority(snapshot: OrderSnapshot) -> int:
    return snapshot.priority

