"""Matching rules: price-time priority, time in force, market orders, post-only, self-trade prevention."""

from __future__ import annotations

import pytest

from tests.engine.harness import ATOMS, Harness, of_type, trades
from tests.engine.ledger import Ledger
from tradeengine.engine import (
    FundsLocked,
    FundsReleased,
    InsufficientBalance,
    OrderAccepted,
    OrderExpired,
    OrderRejected,
    OrderStatus,
    Reason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeExecuted,
)


def test_limit_buy_without_liquidity_rests_open_and_locks_price_times_quantity() -> None:
    h = Harness()
    events = h.buy(10, 100, order_id="b1")
    assert [type(e) for e in events] == [OrderAccepted, FundsLocked]
    assert events[0].status is OrderStatus.OPEN
    assert events[1].asset == "USDT" and events[1].amount == 1000 * ATOMS
    assert h.engine.best_bid() == 100 and h.engine.counts() == (1, 0, 0)


def test_limit_sell_locks_its_quantity_of_base() -> None:
    h = Harness()
    events = h.sell(7, 100)
    assert of_type(events, FundsLocked)[0].asset == "BTC"
    assert of_type(events, FundsLocked)[0].amount == 7 * ATOMS


def test_better_price_fills_first_then_earlier_order_at_the_same_price() -> None:
    h = Harness()
    h.sell(5, 101, order_id="late-better", user="s1")
    h.sell(5, 102, order_id="first-102", user="s2")
    h.sell(5, 102, order_id="second-102", user="s3")
    events = h.buy(12, 102, order_id="taker")
    assert trades(events) == [
        (101, 5, "taker", "late-better"),
        (102, 5, "taker", "first-102"),
        (102, 2, "taker", "second-102"),
    ]
    assert h.status("second-102") == OrderStatus.PARTIALLY_FILLED
    assert h.status("taker") == OrderStatus.FILLED


def test_trade_happens_at_the_makers_price() -> None:
    h = Harness()
    h.buy(3, 105, order_id="bid")
    events = h.sell(3, 99, order_id="ask")
    assert trades(events) == [(105, 3, "bid", "ask")]
    assert of_type(events, TradeExecuted)[0].taker_side is Side.SELL


def test_buy_filled_below_its_limit_releases_the_difference_at_once() -> None:
    h = Harness()
    h.sell(4, 90)
    events = h.buy(10, 100, order_id="b")
    released = of_type(events, FundsReleased)
    assert [r.amount for r in released] == [4 * 10 * ATOMS]
    assert h.engine.get_order("b").locked == 6 * 100 * ATOMS


def test_partially_filled_gtc_order_rests_with_its_remainder() -> None:
    h = Harness()
    h.sell(4, 100)
    h.buy(10, 100, order_id="b")
    snapshot = h.engine.get_order("b")
    assert snapshot is not None
    assert snapshot.status is OrderStatus.PARTIALLY_FILLED and snapshot.remaining_quantity == 6
    assert h.engine.depth(5) == ([(100, 6, 1)], [])


def test_ioc_remainder_expires_after_a_partial_fill_and_releases_its_lock() -> None:
    h = Harness()
    h.sell(4, 100)
    events = h.buy(10, 100, order_id="ioc", time_in_force=TimeInForce.IOC)
    expired = of_type(events, OrderExpired)
    assert expired[0].filled_quantity == 4 and expired[0].remaining_quantity == 6
    assert expired[0].reason is Reason.IMMEDIATE_OR_CANCEL
    assert h.status("ioc") == OrderStatus.EXPIRED
    assert of_type(events, FundsReleased)[0].amount == 6 * 100 * ATOMS
    assert h.engine.counts() == (0, 0, 0)


def test_ioc_without_liquidity_expires_untouched() -> None:
    h = Harness()
    events = h.buy(10, 100, time_in_force=TimeInForce.IOC)
    assert of_type(events, OrderExpired)[0].filled_quantity == 0
    assert h.engine.counts() == (0, 0, 0)


def test_fok_order_without_enough_liquidity_expires_and_reserves_nothing() -> None:
    h = Harness()
    h.sell(4, 100)
    events = h.buy(10, 100, order_id="fok", time_in_force=TimeInForce.FOK)
    assert of_type(events, TradeExecuted) == [] and of_type(events, FundsLocked) == []
    assert of_type(events, OrderExpired)[0].reason is Reason.FILL_OR_KILL_UNFILLED
    assert h.engine.depth(5) == ([], [(100, 4, 1)])


def test_fok_order_with_enough_liquidity_fills_completely_across_levels() -> None:
    h = Harness()
    h.sell(4, 100)
    h.sell(6, 101)
    events = h.buy(10, 101, order_id="fok", time_in_force=TimeInForce.FOK)
    assert sum(t.quantity for t in of_type(events, TradeExecuted)) == 10
    assert h.status("fok") == OrderStatus.FILLED


def test_market_buy_by_quantity_locks_exactly_what_it_spends() -> None:
    h = Harness()
    h.sell(2, 100)
    h.sell(3, 110)
    events = h.market(Side.BUY, quantity=4, order_id="m")
    assert of_type(events, FundsLocked)[0].amount == (2 * 100 + 2 * 110) * ATOMS
    assert of_type(events, FundsReleased) == []
    assert h.status("m") == OrderStatus.FILLED


def test_market_buy_larger_than_the_book_fills_what_there_is_and_expires_the_rest() -> None:
    h = Harness()
    h.sell(2, 100)
    events = h.market(Side.BUY, quantity=5, order_id="m")
    assert of_type(events, FundsLocked)[0].amount == 200 * ATOMS
    assert of_type(events, OrderExpired)[0].remaining_quantity == 3
    assert of_type(events, FundsReleased) == []


def test_market_buy_by_quote_quantity_buys_whole_lots_within_the_budget() -> None:
    h = Harness()
    h.sell(2, 100)
    h.sell(5, 110)
    events = h.market(Side.BUY, quote_quantity=450 * ATOMS, order_id="q")
    assert trades(events) == [(100, 2, "q", "o1"), (110, 2, "q", "o2")]
    assert of_type(events, FundsLocked)[0].amount == 420 * ATOMS
    assert of_type(events, OrderAccepted)[0].quantity is None
    assert h.status("q") == OrderStatus.FILLED


def test_market_order_without_liquidity_expires_without_locking() -> None:
    h = Harness()
    events = h.market(Side.BUY, quantity=3, order_id="m")
    assert [type(e) for e in events] == [OrderAccepted, OrderExpired]


def test_market_sell_locks_its_quantity_and_releases_the_unfilled_rest() -> None:
    h = Harness()
    h.buy(2, 100)
    events = h.market(Side.SELL, quantity=5, order_id="m")
    assert of_type(events, FundsLocked)[0].amount == 5 * ATOMS
    assert of_type(events, FundsReleased)[0].amount == 3 * ATOMS


def test_market_buy_that_would_spend_more_than_available_is_refused_and_changes_nothing() -> None:
    ledger = Ledger(Harness().spec)
    h = Harness(ledger=ledger)
    ledger.deposit("bob", "BTC", 10 * ATOMS)
    ledger.deposit("carol", "USDT", 150 * ATOMS)
    h.sell(2, 100, user="bob")
    sequence = h.engine.sequence
    with pytest.raises(InsufficientBalance) as caught:
        h.market(Side.BUY, quantity=2, user="carol")
    assert caught.value.code == "INSUFFICIENT_BALANCE"
    assert h.engine.sequence == sequence and h.engine.depth(5) == ([], [(100, 2, 1)])
    assert ledger.available[("carol", "USDT")] == 150 * ATOMS


def test_limit_order_without_funds_is_refused_and_nothing_rests() -> None:
    h = Harness(ledger=Ledger(Harness().spec))
    with pytest.raises(InsufficientBalance):
        h.buy(1, 100)
    assert h.engine.counts() == (0, 0, 0) and h.engine.sequence == 0


def test_post_only_order_that_would_take_ends_rejected_with_its_reason_and_locks_nothing() -> None:
    h = Harness()
    h.sell(1, 100)
    events = h.buy(1, 100, order_id="po", post_only=True)
    assert [type(e) for e in events] == [OrderRejected]
    assert events[0].reason is Reason.POST_ONLY_WOULD_TAKE and events[0].status is OrderStatus.REJECTED
    assert h.engine.counts() == (0, 1, 0)


def test_post_only_order_that_does_not_cross_rests() -> None:
    h = Harness()
    h.sell(1, 100)
    h.buy(1, 99, order_id="po", post_only=True)
    assert h.engine.best_bid() == 99


def test_self_trade_expire_taker_expires_the_incoming_order_and_keeps_the_resting_one() -> None:
    h = Harness()
    h.sell(1, 100, user="bob", order_id="other")
    h.sell(5, 101, user="alice", order_id="own")
    events = h.buy(3, 101, user="alice", order_id="taker")
    assert trades(events) == [(100, 1, "taker", "other")]
    assert of_type(events, OrderExpired)[0].reason is Reason.SELF_TRADE_PREVENTION
    assert h.status("taker") == OrderStatus.EXPIRED and h.status("own") == OrderStatus.OPEN


def test_self_trade_expire_maker_expires_own_resting_orders_and_keeps_matching() -> None:
    h = Harness()
    h.sell(2, 100, user="alice", order_id="own")
    h.sell(2, 100, user="bob", order_id="other")
    events = h.buy(
        2, 100, user="alice", order_id="taker", self_trade_prevention=SelfTradePrevention.EXPIRE_MAKER
    )
    assert trades(events) == [(100, 2, "taker", "other")]
    assert h.status("own") == OrderStatus.EXPIRED and h.status("taker") == OrderStatus.FILLED


def test_self_trade_expire_both_expires_the_resting_and_the_incoming_order() -> None:
    h = Harness()
    h.sell(2, 100, user="alice", order_id="own")
    h.sell(2, 100, user="bob", order_id="other")
    events = h.buy(
        2, 100, user="alice", order_id="taker", self_trade_prevention=SelfTradePrevention.EXPIRE_BOTH
    )
    assert trades(events) == []
    assert h.status("own") == OrderStatus.EXPIRED and h.status("taker") == OrderStatus.EXPIRED
    assert h.engine.depth(5) == ([], [(100, 2, 1)])


@pytest.mark.parametrize(
    ("stp", "own_status", "reason"),
    [
        (SelfTradePrevention.EXPIRE_TAKER, OrderStatus.OPEN, Reason.SELF_TRADE_PREVENTION),
        (SelfTradePrevention.EXPIRE_MAKER, OrderStatus.EXPIRED, Reason.IMMEDIATE_OR_CANCEL),  # kept going
        (SelfTradePrevention.EXPIRE_BOTH, OrderStatus.EXPIRED, Reason.SELF_TRADE_PREVENTION),
    ],
)
@pytest.mark.parametrize("by_budget", [False, True])
def test_a_market_buy_meeting_its_own_order_first_applies_its_self_trade_prevention(
    stp: SelfTradePrevention, own_status: OrderStatus, reason: Reason, by_budget: bool
) -> None:
    # the walk finds nothing to buy before the own order: the match is never run, yet STP applies
    h = Harness()
    h.sell(5, 100, user="alice", order_id="own")
    size = {"quote_quantity": 300 * ATOMS} if by_budget else {"quantity": 3}
    events = h.market(Side.BUY, user="alice", order_id="taker", self_trade_prevention=stp, **size)
    assert trades(events) == []
    assert of_type(events, OrderExpired)[-1].order_id == "taker"
    assert of_type(events, OrderExpired)[-1].reason is reason
    assert h.status("own") == own_status


def test_self_trade_prevention_none_lets_a_user_trade_with_themself() -> None:
    h = Harness()
    h.sell(2, 100, user="alice", order_id="own")
    events = h.buy(2, 100, user="alice", order_id="taker", self_trade_prevention=SelfTradePrevention.NONE)
    assert trades(events) == [(100, 2, "taker", "own")]


def test_market_buy_lock_stops_at_the_first_own_order_under_expire_taker() -> None:
    h = Harness()
    h.sell(1, 100, user="bob")
    h.sell(1, 101, user="carol")
    h.sell(1, 102, user="bob")
    events = h.market(Side.BUY, user="carol", quantity=3, order_id="m")
    assert of_type(events, FundsLocked)[0].amount == 100 * ATOMS
    assert of_type(events, OrderExpired)[0].reason is Reason.SELF_TRADE_PREVENTION
    assert of_type(events, FundsReleased) == []


def test_market_buy_lock_skips_own_orders_under_expire_maker() -> None:
    h = Harness()
    h.sell(1, 100, user="carol")
    h.sell(1, 101, user="bob")
    events = h.market(
        Side.BUY,
        user="carol",
        quantity=1,
        order_id="m",
        self_trade_prevention=SelfTradePrevention.EXPIRE_MAKER,
    )
    assert of_type(events, FundsLocked)[0].amount == 101 * ATOMS
    assert trades(events) == [(101, 1, "m", "o2")]


def test_trade_facts_carry_both_orders_state_after_the_trade() -> None:
    h = Harness()
    h.sell(5, 100, order_id="ask")
    trade = of_type(h.buy(2, 100, order_id="bid"), TradeExecuted)[0]
    assert (trade.buyer_status, trade.buyer_filled, trade.buyer_cumulative_quote) == (
        OrderStatus.FILLED,
        2,
        200 * ATOMS,
    )
    assert (trade.seller_status, trade.seller_filled, trade.seller_cumulative_quote) == (
        OrderStatus.PARTIALLY_FILLED,
        2,
        200 * ATOMS,
    )
    assert trade.base_amount == 2 * ATOMS and trade.quote_amount == 200 * ATOMS
