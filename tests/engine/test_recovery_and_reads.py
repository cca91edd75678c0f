"""Recovery (rebuild a pair from live orders without events) and the read API for the actor shell."""

from __future__ import annotations

import msgspec
import pytest

from tests.engine.harness import SIMPLE_SPEC, Harness
from tests.engine.streams import StreamSettings, random_commands
from tradeengine.engine import (
    DomainError,
    InvariantViolation,
    MatchingEngine,
    OrderSnapshot,
    OrderStatus,
    OrderType,
    Side,
    UnlimitedFunds,
    encode_events,
)


def _run(engine: MatchingEngine, commands: list) -> bytes:  # type: ignore[type-arg]
    chunks = []
    for command in commands:
        try:
            chunks.append(encode_events(engine.execute(command)))
        except DomainError as exc:
            chunks.append(exc.code.encode())
    return b"|".join(chunks)


def _live(engine: MatchingEngine) -> list[OrderSnapshot]:
    orders = list(engine.book.orders.values()) + list(engine.stops.orders.values())
    return [o.snapshot() for o in orders]


def test_a_rebuilt_pair_continues_exactly_like_the_original() -> None:
    commands = random_commands(SIMPLE_SPEC, 4000, seed=11, settings=StreamSettings(spread=12))
    # capacity 0: a rebuilt pair does not remember final order ids, so the original must not either
    original = MatchingEngine(SIMPLE_SPEC, UnlimitedFunds(), finished_capacity=0)
    _run(original, commands[:2000])
    snapshots = _live(original)
    assert len(snapshots) > 20 and any(s.status is OrderStatus.PENDING_TRIGGER for s in snapshots)
    rebuilt = MatchingEngine(SIMPLE_SPEC, UnlimitedFunds(), finished_capacity=0)
    rebuilt.restore(reversed(snapshots), sequence=original.sequence, last_price=original.last_price)
    assert rebuilt.depth(50) == original.depth(50)
    assert sorted(_live(rebuilt), key=str) == sorted(_live(original), key=str)
    assert _run(rebuilt, commands[2000:]) == _run(original, commands[2000:])


def test_restore_emits_nothing_and_continues_the_sequence() -> None:
    h = Harness()
    h.buy(3, 99, order_id="b", user="alice")
    snapshot = h.engine.get_order("b")
    assert snapshot is not None
    engine = MatchingEngine(SIMPLE_SPEC, UnlimitedFunds())
    engine.restore([snapshot], sequence=500, last_price=100)
    assert engine.sequence == 500 and engine.last_price == 100
    events = engine.cancel(msgspec.convert({"order_id": "b", "user_id": "alice"}, type=_cancel_type()))
    assert events[0].sequence == 501


def _cancel_type() -> type:
    from tradeengine.engine import CancelOrder

    return CancelOrder


def _resting(
    order_id: str, side: Side, price: int, priority: int, status: OrderStatus = OrderStatus.OPEN
) -> OrderSnapshot:
    return OrderSnapshot(
        order_id=order_id,
        user_id="u",
        side=side,
        order_type=OrderType.LIMIT,
        status=status,
        price=price,
        stop_price=None,
        quantity=1,
        priority=priority,
    )


def test_restoring_a_crossed_book_is_refused() -> None:
    engine = MatchingEngine(SIMPLE_SPEC, UnlimitedFunds())
    with pytest.raises(InvariantViolation):
        engine.restore(
            [_resting("b", Side.BUY, 101, 1), _resting("s", Side.SELL, 100, 2)], sequence=2, last_price=None
        )


def test_restoring_a_final_order_is_refused() -> None:
    engine = MatchingEngine(SIMPLE_SPEC, UnlimitedFunds())
    with pytest.raises(DomainError):
        engine.restore_order(_resting("b", Side.BUY, 1, 1, OrderStatus.FILLED))


def test_read_api_answers_depth_bests_orders_and_counts() -> None:
    h = Harness()
    h.buy(2, 99, order_id="b1", user="alice")
    h.buy(3, 99, order_id="b2", user="bob")
    h.buy(1, 98, order_id="b3", user="alice")
    h.sell(4, 101, order_id="s1", user="bob")
    h.stop(Side.SELL, 90, quantity=1, order_id="st", user="alice")
    assert h.engine.depth(1) == ([(99, 5, 2)], [(101, 4, 1)])
    assert h.engine.depth(10) == ([(99, 5, 2), (98, 1, 1)], [(101, 4, 1)])
    assert (h.engine.best_bid(), h.engine.best_ask()) == (99, 101)
    assert h.engine.counts() == (3, 1, 1)
    assert [o.order_id for o in h.engine.open_orders("alice")] == ["b1", "b3", "st"]
    snapshot = h.engine.get_order("b2")
    assert snapshot is not None and snapshot.user_id == "bob" and snapshot.remaining_quantity == 3
    assert h.engine.get_order("nope") is None
    assert h.engine.last_price is None


def test_check_invariants_catches_a_corrupted_level_total() -> None:
    h = Harness()
    h.buy(2, 99)
    h.engine.book.bids[99].total += 1
    with pytest.raises(InvariantViolation):
        h.engine.check_invariants()


def test_check_invariants_catches_a_crossed_book() -> None:
    h = Harness()
    h.buy(2, 99, order_id="b")
    h.sell(2, 101, order_id="s")
    order = h.engine.book.orders["s"]
    h.engine.book.remove(order)
    order.price = 98
    order.locked = 2 * 10**8
    h.engine.book.add(order)
    with pytest.raises(InvariantViolation, match="crossed"):
        h.engine.check_invariants()


def test_check_invariants_catches_a_wrong_lock() -> None:
    h = Harness()
    h.buy(2, 99, order_id="b")
    h.engine.book.orders["b"].locked -= 1
    with pytest.raises(InvariantViolation, match="locked"):
        h.engine.check_invariants()


def test_check_invariants_catches_an_index_that_disagrees_with_the_levels() -> None:
    h = Harness()
    h.buy(2, 99, order_id="b")
    del h.engine.book.orders["b"]
    with pytest.raises(InvariantViolation):
        h.engine.check_invariants()
