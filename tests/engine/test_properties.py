"""Property tests (hypothesis) over random command streams, with every money and book rule checked per step.

After every command: `check_invariants()` (uncrossed, level sums, index, stop book, per-order locks); the
ledger asserts that each asset's movements sum to zero (fees included), that no balance or per-order lock
goes negative and that final orders hold nothing. Across the stream: filled + remaining = quantity for
every order that ended, no self-trade unless the taker chose NONE, trades never worse than the taker's
limit, and makers of one taker consumed in price-time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.harness import Harness
from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    DomainError,
    EngineEvent,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderType,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeExecuted,
)

USERS = ["u0", "u1", "u2"]
MID = 100

place_op = st.tuples(
    st.just("place"),
    st.sampled_from(list(Side)),
    st.sampled_from(list(OrderType)),
    st.integers(1, 6),  # quantity
    st.integers(-4, 4),  # price offset
    st.integers(-4, 4),  # stop offset
    st.sampled_from(list(TimeInForce)),
    st.booleans(),  # post_only
    st.sampled_from(list(SelfTradePrevention)),
    st.sampled_from(USERS),
    st.booleans(),  # market buy by quote
)
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 1000), st.booleans())
amend_op = st.tuples(
    st.just("amend"),
    st.integers(0, 1000),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 8)),
    st.one_of(st.none(), st.integers(-4, 4)),
)
cancel_all_op = st.tuples(st.just("cancel_all"), st.sampled_from(USERS), st.booleans())
streams = st.lists(
    st.one_of(place_op, place_op, place_op, cancel_op, amend_op, cancel_all_op), min_size=1, max_size=80
)


def to_commands(ops: list[tuple[Any, ...]]) -> list[Command]:
    """Turn drawn operations into commands (ids in order; cancels/amends name earlier orders)."""
    commands: list[Command] = []
    placed: list[tuple[str, str]] = []
    for ts, op in enumerate(ops, 1):
        if op[0] == "place":
            _, side, kind, qty, offset, stop_offset, tif, post_only, stp, user, by_quote = op
            order_id = f"o{len(placed)}"
            placed.append((order_id, user))
            is_limit = kind in (OrderType.LIMIT, OrderType.STOP_LIMIT)
            is_stop = kind in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
            quote = by_quote and kind is OrderType.MARKET and side is Side.BUY
            commands.append(
                PlaceOrder(
                    order_id=order_id,
                    user_id=user,
                    side=side,
                    order_type=kind,
                    quantity=None if quote else qty,
                    quote_quantity=qty * MID * 10**8 + offset * 10**7 if quote else None,
                    price=MID + offset if is_limit else None,
                    stop_price=MID + stop_offset if is_stop else None,
                    time_in_force=tif if is_limit else None,
                    post_only=post_only and kind is OrderType.LIMIT and tif is TimeInForce.GTC,
                    self_trade_prevention=stp,
                    timestamp=ts,
                )
            )
        elif not placed:
            continue
        elif op[0] == "cancel":
            order_id, owner = placed[op[1] % len(placed)]
            commands.append(
                CancelOrder(order_id=order_id, user_id=owner if op[2] else USERS[0], timestamp=ts)
            )
        elif op[0] == "amend":
            order_id, owner = placed[op[1] % len(placed)]
            price = None if op[4] is None else MID + op[4]
            commands.append(
                AmendOrder(
                    order_id=order_id,
                    user_id=owner if op[2] else USERS[0],
                    quantity=op[3],
                    price=price,
                    timestamp=ts,
                )
            )
        else:
            commands.append(CancelAll(user_id=op[1], include_stops=op[2], timestamp=ts))
    return commands


@dataclass
class Observer:
    """What the stream has told us so far about every order."""

    accepted: dict[str, OrderAccepted] = field(default_factory=dict)
    quantities: dict[str, int] = field(default_factory=dict)

    def check(self, h: Harness, events: list[EngineEvent], before: dict[str, tuple[int, int]]) -> None:
        """Assert the per-command properties on one command's events."""
        last_taker: str | None = None
        last_key: tuple[int, int] | None = None
        for event in events:
            if isinstance(event, OrderAccepted):
                self.accepted[event.order_id] = event
            elif isinstance(event, (OrderCancelled, OrderExpired)):
                quantity = self._quantity(h, event.order_id)
                if quantity is not None:
                    assert event.filled_quantity + event.remaining_quantity == quantity
            elif isinstance(event, TradeExecuted):
                last_taker, last_key = self._check_trade(event, before, last_taker, last_key)

    def _quantity(self, h: Harness, order_id: str) -> int | None:
        accepted = self.accepted.get(order_id)
        return self.quantities.get(order_id, accepted.quantity if accepted else None)

    def _check_trade(
        self,
        trade: TradeExecuted,
        before: dict[str, tuple[int, int]],
        last_taker: str | None,
        last_key: tuple[int, int] | None,
    ) -> tuple[str, tuple[int, int] | None]:
        is_buy = trade.taker_side is Side.BUY
        taker_id = trade.buyer_order_id if is_buy else trade.seller_order_id
        maker_id = trade.seller_order_id if is_buy else trade.buyer_order_id
        taker = self.accepted[taker_id]
        if trade.buyer_user_id == trade.seller_user_id:
            assert taker.self_trade_prevention is SelfTradePrevention.NONE
        if taker.price is not None:
            assert trade.price <= taker.price if is_buy else trade.price >= taker.price
        if taker_id != last_taker:
            last_key = None
        key = before.get(maker_id)
        if key is not None:
            ordered = (key[0] if is_buy else -key[0], key[1])
            assert last_key is None or ordered > last_key, "makers out of price-time order"
            last_key = ordered
        return taker_id, last_key


def resting_positions(h: Harness) -> dict[str, tuple[int, int]]:
    """Map each resting order to (price, position in its level)."""
    positions = {}
    for levels in (h.engine.book.bids, h.engine.book.asks):
        for price, level in levels.items():
            for index, order in enumerate(level):
                positions[order.order_id] = (price, index)
    return positions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_random_streams_keep_every_book_and_money_rule(ops: list[tuple[Any, ...]]) -> None:
    h = Harness()
    observer = Observer()
    for command in to_commands(ops):
        before = resting_positions(h)
        amended = None
        if isinstance(command, AmendOrder) and command.quantity is not None:
            amended = command.order_id
        try:
            events = h.run(command)  # ledger checks + check_invariants
        except DomainError:
            h.engine.check_invariants()
            continue
        if amended is not None:
            observer.quantities[amended] = command.quantity  # type: ignore[union-attr]
        observer.check(h, events, before)
    for order in list(h.engine.book.orders.values()) + list(h.engine.stops.orders.values()):
        assert order.filled + order.remaining == order.quantity
        assert order.locked >= 0
