"""The book's parked levels and plain level maps stay invisible to every read and consistent underneath."""

from __future__ import annotations

import random

import pytest

from tests.engine.harness import Harness
from tradeengine.engine import (
    DuplicateOrderId,
    InvariantViolation,
    OrderNotCancellable,
    OrderNotFound,
    PlaceOrder,
    Side,
)
from tradeengine.engine.book import PARKED_SLACK, PROBES


def test_an_emptied_level_is_parked_and_invisible_to_depth_and_bests() -> None:
    h = Harness()
    h.buy(1, 99, order_id="b1")
    h.buy(1, 98, order_id="b2")
    h.cancel("b1", "alice")
    assert h.engine.book.parked == 1 and 99 in h.engine.book.bids
    assert h.engine.best_bid() == 98
    assert h.engine.depth(5) == ([(98, 1, 1)], [])
    assert h.engine.counts() == (1, 0, 0)


def test_an_order_at_a_parked_price_makes_the_level_live_again_and_best() -> None:
    h = Harness()
    h.buy(1, 99, order_id="b1")
    h.buy(1, 98, order_id="b2")
    h.cancel("b1", "alice")
    h.buy(2, 99, order_id="b3")
    assert h.engine.book.parked == 0
    assert h.engine.best_bid() == 99
    assert h.engine.depth(5) == ([(99, 2, 1), (98, 1, 1)], [])


def test_a_taker_skips_parked_levels_and_finds_the_next_live_price_beyond_the_probes() -> None:
    h = Harness()
    far = 100 + 4 * PROBES
    h.sell(1, far, order_id="far")
    for n in range(3 * PROBES):  # live bids, so that the parked asks below are not all dropped at once
        h.buy(1, 1 + n, order_id=f"bid{n}")
    for n in range(3 * PROBES):  # parked asks between the best and the far level
        h.sell(1, 100 + n, order_id=f"s{n}")
        h.cancel(f"s{n}", "bob")
    h.sell(1, 99, order_id="best")
    h.buy(1, 99)
    assert h.engine.best_ask() == far
    # the search passed more than PROBES parked levels beyond the probed ticks and dropped them
    assert h.engine.book.parked == 1 + PROBES
    assert min(h.engine.book.asks) == 99 and h.engine.book.asks.peekitem(-2)[0] == 99 + PROBES
    h.market(Side.BUY, quantity=1)
    assert h.engine.best_ask() is None


def test_market_buys_walk_only_live_levels_from_the_best() -> None:
    h = Harness()
    h.sell(1, 90, order_id="low")
    h.cancel("low", "bob")  # a parked ask below the best
    h.sell(1, 100)
    h.sell(1, 105)
    events = h.market(Side.BUY, quantity=2)
    assert [t.price for t in events if type(t).__name__ == "TradeExecuted"] == [100, 105]


def test_parked_levels_are_dropped_once_they_outnumber_the_live_levels() -> None:
    h = Harness()
    h.buy(1, 1, order_id="keep")
    for n in range(PARKED_SLACK + 2):
        h.buy(1, 10 + n, order_id=f"b{n}")
        h.cancel(f"b{n}", "alice")
    assert h.engine.book.parked <= 1 + PARKED_SLACK
    assert len(h.engine.book.bids) == len(h.engine.book.bid_levels) == 1 + h.engine.book.parked


def test_check_invariants_catches_a_level_missing_from_the_plain_map() -> None:
    h = Harness()
    h.buy(1, 99)
    del h.engine.book.bid_levels[99]
    with pytest.raises(InvariantViolation, match="index"):
        h.engine.check_invariants()


def test_check_invariants_catches_a_wrong_parked_count() -> None:
    h = Harness()
    h.buy(1, 99, order_id="b")
    h.cancel("b", "alice")
    h.engine.book.parked = 0
    with pytest.raises(InvariantViolation, match="parked"):
        h.engine.check_invariants()


def test_a_random_walk_of_places_cancels_and_takes_keeps_the_book_consistent() -> None:
    rng = random.Random(7)
    h = Harness()
    live: list[tuple[str, str]] = []
    for n in range(3_000):
        roll = rng.random()
        if roll < 0.3 and live:
            order_id, user = live.pop(rng.randrange(len(live)))
            if order_id in h.engine.book.orders:
                h.cancel(order_id, user)
        elif roll < 0.45:
            h.market(rng.choice((Side.BUY, Side.SELL)), quantity=rng.randint(1, 8))
        else:
            side = rng.choice((Side.BUY, Side.SELL))
            price = 1000 + (-1 if side is Side.BUY else 1) * rng.randint(1, 80) + rng.randint(-5, 5)
            user = rng.choice(("alice", "bob"))
            order_id = f"r{n}"
            (h.buy if side is Side.BUY else h.sell)(rng.randint(1, 5), price, user, order_id=order_id)
            live.append((order_id, user))  # Harness.run checks the invariants after every step


def test_place_order_field_order_is_what_the_engine_unpacks() -> None:
    # MatchingEngine.place reads a PlaceOrder with one msgspec.structs.astuple call, in this order
    assert PlaceOrder.__struct_fields__ == (
        "order_id", "user_id", "side", "order_type", "quantity", "price", "stop_price", "quote_quantity",
        "time_in_force", "post_only", "self_trade_prevention", "client_order_id", "timestamp",
    )


@pytest.mark.parametrize("capacity", [0, 1, 2, 3, 7])
def test_final_ids_are_remembered_as_the_newest_capacity_once_twice_capacity_is_passed(capacity: int) -> None:
    h = Harness(finished_capacity=capacity)
    model: dict[str, str] = {}  # the documented rule: above 2 × capacity, keep the newest capacity
    for n in range(30):
        order_id = f"f{n}"
        h.buy(1, 100, order_id=order_id)
        h.cancel(order_id, "alice")
        model[order_id] = "alice"
        if len(model) > 2 * capacity:
            model = dict(list(model.items())[len(model) - capacity:])
        for k in range(n + 1):
            probe = f"f{k}"
            with pytest.raises(OrderNotCancellable if probe in model else OrderNotFound):
                h.cancel(probe, "alice")
    forgotten = next((f"f{k}" for k in range(30) if f"f{k}" not in model), None)
    if forgotten is not None:  # a forgotten id may be used again; a remembered one may not
        h.buy(1, 100, order_id=forgotten)
    if model:
        with pytest.raises(DuplicateOrderId):
            h.buy(1, 100, order_id=next(iter(model)))
