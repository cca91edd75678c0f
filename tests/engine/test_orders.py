"""Cancel, cancel-all and amend: ownership, final orders, queue priority, funds deltas."""

from __future__ import annotations

import pytest

from tests.engine.harness import ATOMS, Harness, of_type, trades
from tests.engine.ledger import Ledger
from tradeengine.engine import (
    FundsLocked,
    FundsReleased,
    InsufficientBalance,
    OrderAmended,
    OrderCancelled,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderNotFound,
    OrderStatus,
    PostOnlyWouldTake,
    QuantityTooSmall,
    Side,
    ValidationError,
)


def test_owner_cancels_a_resting_order_and_gets_its_lock_back() -> None:
    h = Harness()
    h.buy(3, 100, order_id="b", user="alice")
    events = h.cancel("b", "alice")
    assert [type(e) for e in events] == [OrderCancelled, FundsReleased]
    assert events[1].amount == 300 * ATOMS
    assert h.engine.counts() == (0, 0, 0)


def test_cancel_of_a_partially_filled_order_releases_only_the_remainder() -> None:
    h = Harness()
    h.buy(3, 100, order_id="b", user="alice")
    h.sell(1, 100)
    events = h.cancel("b", "alice")
    assert events[0].filled_quantity == 1 and events[0].remaining_quantity == 2
    assert events[1].amount == 200 * ATOMS


def test_another_users_order_cannot_be_cancelled_and_looks_unknown() -> None:
    h = Harness()
    h.buy(3, 100, order_id="b", user="alice")
    with pytest.raises(OrderNotFound) as caught:
        h.cancel("b", "mallory")
    assert caught.value.code == "NOT_FOUND"


def test_cancelling_an_unknown_order_is_not_found() -> None:
    with pytest.raises(OrderNotFound):
        Harness().cancel("nope", "alice")


def test_cancelling_a_filled_order_is_not_cancellable() -> None:
    h = Harness()
    h.buy(1, 100, order_id="b", user="alice")
    h.sell(1, 100)
    with pytest.raises(OrderNotCancellable) as caught:
        h.cancel("b", "alice")
    assert caught.value.code == "ORDER_NOT_CANCELLABLE"


def test_cancelling_twice_is_not_cancellable() -> None:
    h = Harness()
    h.buy(1, 100, order_id="b", user="alice")
    h.cancel("b", "alice")
    with pytest.raises(OrderNotCancellable):
        h.cancel("b", "alice")


def test_cancel_all_cancels_every_live_order_of_the_user_including_stops_oldest_first() -> None:
    h = Harness()
    h.buy(1, 99, order_id="b1", user="alice")
    h.sell(1, 120, order_id="s1", user="alice")
    h.stop(Side.BUY, 130, quantity=1, order_id="st", user="alice")
    h.buy(1, 98, order_id="other", user="bob")
    events = h.cancel_all("alice")
    assert [e.order_id for e in of_type(events, OrderCancelled)] == ["b1", "s1", "st"]
    assert h.engine.counts() == (1, 0, 0)


def test_cancel_all_can_leave_pending_stops_alone() -> None:
    h = Harness()
    h.buy(1, 99, order_id="b1", user="alice")
    h.stop(Side.BUY, 130, quantity=1, order_id="st", user="alice")
    h.cancel_all("alice", include_stops=False)
    assert h.engine.counts() == (0, 0, 1)


def test_reducing_quantity_keeps_queue_priority_and_releases_the_difference() -> None:
    h = Harness()
    h.sell(5, 100, order_id="first", user="s1")
    h.sell(5, 100, order_id="second", user="s2")
    events = h.amend("first", "s1", quantity=2)
    amended = of_type(events, OrderAmended)[0]
    assert not amended.requeued and amended.remaining_quantity == 2
    assert of_type(events, FundsReleased)[0].amount == 3 * ATOMS
    assert trades(h.buy(3, 100))[0][3] == "first"


def test_increasing_quantity_requeues_at_the_back_and_locks_more() -> None:
    h = Harness()
    h.sell(5, 100, order_id="first", user="s1")
    h.sell(5, 100, order_id="second", user="s2")
    events = h.amend("first", "s1", quantity=6)
    assert of_type(events, OrderAmended)[0].requeued
    assert of_type(events, FundsLocked)[0].amount == 1 * ATOMS
    assert trades(h.buy(3, 100))[0][3] == "second"


def test_changing_the_price_requeues_and_adjusts_the_lock_of_a_buy() -> None:
    h = Harness()
    h.buy(2, 100, order_id="b", user="alice")
    events = h.amend("b", "alice", price=90)
    assert of_type(events, OrderAmended)[0].requeued
    assert of_type(events, FundsReleased)[0].amount == 20 * ATOMS
    assert h.engine.best_bid() == 90


def test_amend_below_the_filled_quantity_is_refused() -> None:
    h = Harness()
    h.buy(5, 100, order_id="b", user="alice")
    h.sell(3, 100)
    with pytest.raises(QuantityTooSmall) as caught:
        h.amend("b", "alice", quantity=2)
    assert caught.value.field == "quantity"


def test_amend_down_to_the_filled_quantity_completes_the_order_and_releases_its_lock() -> None:
    h = Harness()
    h.buy(5, 100, order_id="b", user="alice")
    h.sell(3, 100)
    events = h.amend("b", "alice", quantity=3)
    amended = of_type(events, OrderAmended)[0]
    assert (amended.status, amended.quantity, amended.remaining_quantity) == (OrderStatus.FILLED, 3, 0)
    assert of_type(events, FundsReleased)[0].amount == 2 * 100 * ATOMS
    assert h.status("b") == OrderStatus.FILLED and h.engine.best_bid() is None
    with pytest.raises(OrderNotAmendable):
        h.amend("b", "alice", quantity=4)


def test_amend_to_a_crossing_price_matches_like_a_new_taker() -> None:
    h = Harness()
    h.sell(2, 105, order_id="ask", user="bob")
    h.buy(3, 100, order_id="b", user="alice")
    events = h.amend("b", "alice", price=105)
    assert trades(events) == [(105, 2, "b", "ask")]
    assert h.engine.get_order("b").status is OrderStatus.PARTIALLY_FILLED
    assert h.engine.best_bid() == 105


def test_amend_of_a_post_only_order_to_a_crossing_price_is_refused() -> None:
    h = Harness()
    h.sell(2, 105, user="bob")
    h.buy(3, 100, order_id="b", user="alice", post_only=True)
    with pytest.raises(PostOnlyWouldTake):
        h.amend("b", "alice", price=106)
    assert h.engine.best_bid() == 100


def test_amend_that_needs_more_funds_than_available_changes_nothing() -> None:
    ledger = Ledger(Harness().spec)
    ledger.deposit("alice", "USDT", 300 * ATOMS)
    h = Harness(ledger=ledger)
    h.buy(3, 100, order_id="b", user="alice")
    with pytest.raises(InsufficientBalance):
        h.amend("b", "alice", quantity=4)
    assert h.engine.get_order("b").quantity == 3


def test_pending_stops_and_final_orders_cannot_be_amended() -> None:
    h = Harness()
    h.stop(Side.BUY, 130, quantity=1, order_id="st", user="alice")
    with pytest.raises(OrderNotAmendable):
        h.amend("st", "alice", quantity=2)
    h.buy(1, 100, order_id="b", user="alice")
    h.cancel("b", "alice")
    with pytest.raises(OrderNotAmendable):
        h.amend("b", "alice", quantity=2)


def test_amend_without_changes_is_a_validation_error() -> None:
    h = Harness()
    h.buy(1, 100, order_id="b", user="alice")
    with pytest.raises(ValidationError):
        h.amend("b", "alice")


def test_amend_to_the_current_price_and_quantity_changes_nothing_and_keeps_the_place_in_the_queue() -> None:
    h = Harness()
    h.buy(2, 100, order_id="first", user="alice")
    h.buy(2, 100, order_id="second", user="carol")
    sequence = h.engine.sequence
    assert h.amend("first", "alice", quantity=2) == []
    assert h.amend("first", "alice", price=100) == []
    assert h.amend("first", "alice", price=100, quantity=2) == []
    assert h.engine.sequence == sequence
    h.sell(2, 100)
    assert h.status("first") == OrderStatus.FILLED and h.status("second") == OrderStatus.OPEN
