"""Stop orders: pending, triggering on a trade price, cascades, funds of STOP_MARKET BUY."""

from __future__ import annotations

from tests.engine.harness import ATOMS, Harness, of_type, trades
from tests.engine.ledger import Ledger
from tradeengine.engine import (
    FundsLocked,
    FundsReleased,
    OrderAccepted,
    OrderExpired,
    OrderStatus,
    Reason,
    Side,
    StopTriggered,
    TradeExecuted,
)


def _trade_at(h: Harness, price: int) -> None:
    h.sell(1, price, user="mm1")
    h.buy(1, price, user="mm2")


def test_stop_limit_rests_pending_and_locks_like_its_limit() -> None:
    h = Harness()
    events = h.stop(Side.BUY, 105, price=106, quantity=2, order_id="s")
    assert events[0].status is OrderStatus.PENDING_TRIGGER
    assert of_type(events, FundsLocked)[0].amount == 2 * 106 * ATOMS
    assert h.engine.counts() == (0, 0, 1)


def test_stop_market_sell_locks_its_quantity_when_placed() -> None:
    h = Harness()
    events = h.stop(Side.SELL, 95, quantity=3)
    assert of_type(events, FundsLocked)[0].amount == 3 * ATOMS


def test_stop_market_buy_locks_nothing_while_pending() -> None:
    h = Harness()
    events = h.stop(Side.BUY, 105, quantity=3)
    assert [type(e) for e in events] == [OrderAccepted]


def test_buy_stop_triggers_when_the_last_price_reaches_it_and_trades_in_the_same_command() -> None:
    h = Harness()
    _trade_at(h, 100)
    h.stop(Side.BUY, 105, quantity=1, order_id="s")
    h.sell(5, 106, user="mm1", order_id="ask106")
    _trade_at(h, 104)
    assert h.status("s") == OrderStatus.PENDING_TRIGGER
    h.sell(1, 105, user="mm1")
    events = h.buy(1, 105, user="mm2")
    assert of_type(events, StopTriggered)[0].order_id == "s"
    assert trades(events)[-1] == (106, 1, "s", "ask106")
    locked = of_type(events, FundsLocked)
    assert locked[-1].order_id == "s" and locked[-1].amount == 106 * ATOMS
    assert h.status("s") == OrderStatus.FILLED


def test_sell_stop_triggers_when_the_last_price_falls_to_it() -> None:
    h = Harness()
    _trade_at(h, 100)
    h.stop(Side.SELL, 95, price=94, quantity=1, order_id="s")
    _trade_at(h, 96)
    assert h.status("s") == OrderStatus.PENDING_TRIGGER
    h.sell(1, 95, user="mm1")
    events = h.buy(1, 95, user="mm2")
    assert of_type(events, StopTriggered)[0].order_id == "s"
    assert h.engine.get_order("s").status is OrderStatus.OPEN  # rests at 94 (no bids)
    assert h.engine.best_ask() == 94


def test_a_sell_stop_triggers_on_a_trade_in_the_middle_of_a_rising_sweep() -> None:
    # last 103, a SELL stop at 102; a BUY sweep prints 100 then 105: the print at 100 reached the stop
    h = Harness()
    _trade_at(h, 103)
    h.stop(Side.SELL, 102, quantity=1, order_id="s", user="dave")
    h.sell(1, 100, user="mm1")
    h.sell(1, 105, user="mm1")
    h.buy(1, 90, user="mm2", order_id="bid90")
    events = h.market(Side.BUY, quantity=2)
    assert [price for price, *_ in trades(events)] == [100, 105, 90]
    triggered = of_type(events, StopTriggered)
    assert [(t.order_id, t.last_price) for t in triggered] == [("s", 100)]
    assert trades(events)[-1] == (90, 1, "bid90", "s")


def test_a_buy_stop_triggers_on_a_trade_in_the_middle_of_a_falling_sweep_back_to_the_last_price() -> None:
    # last 100, a BUY stop at 104; a SELL sweep prints 105 then 100: the last price is unchanged, yet the
    # print at 105 reached the stop
    h = Harness()
    _trade_at(h, 100)
    h.stop(Side.BUY, 104, price=110, quantity=1, order_id="s", user="dave")
    h.buy(1, 105, user="mm1")
    h.buy(1, 100, user="mm1")
    events = h.sell(2, 100, user="mm2")
    assert [price for price, *_ in trades(events)] == [105, 100]
    assert h.engine.last_price == 100
    assert [(t.order_id, t.last_price) for t in of_type(events, StopTriggered)] == [("s", 105)]
    assert h.status("s") == OrderStatus.OPEN and h.engine.best_bid() == 110


def test_stop_already_met_when_placed_triggers_at_once() -> None:
    h = Harness()
    _trade_at(h, 100)
    events = h.stop(Side.BUY, 99, price=101, quantity=1, order_id="s")
    assert [type(e) for e in events[:3]] == [OrderAccepted, FundsLocked, StopTriggered]
    assert h.engine.get_order("s").status is OrderStatus.OPEN


def test_stop_without_any_trade_yet_waits() -> None:
    h = Harness()
    h.stop(Side.BUY, 1, price=101, quantity=1, order_id="s")
    assert h.status("s") == OrderStatus.PENDING_TRIGGER


def test_a_cascade_of_stops_resolves_oldest_first_inside_one_command() -> None:
    h = Harness()
    _trade_at(h, 100)
    h.sell(1, 101, user="mm1", order_id="a101")
    h.sell(1, 102, user="mm1", order_id="a102")
    h.sell(1, 103, user="mm1", order_id="a103")
    h.stop(Side.BUY, 102, quantity=1, order_id="second", user="s2")  # waits for 102
    h.stop(Side.BUY, 101, quantity=1, order_id="first", user="s1")  # waits for 101
    h.stop(Side.BUY, 101, quantity=1, order_id="third", user="s3")
    events = h.buy(1, 101, user="mm2", order_id="spark")
    triggered = [e.order_id for e in of_type(events, StopTriggered)]
    assert triggered == ["first", "second", "third"]
    assert trades(events) == [
        (101, 1, "spark", "a101"),
        (102, 1, "first", "a102"),
        (103, 1, "second", "a103"),
    ]
    assert h.status("third") == OrderStatus.EXPIRED
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


def test_triggered_stop_market_buy_without_funds_expires_with_insufficient_balance() -> None:
    ledger = Ledger(Harness().spec)
    h = Harness(ledger=ledger)
    for user in ("mm1", "mm2"):
        ledger.deposit(user, "BTC", 100 * ATOMS)
        ledger.deposit(user, "USDT", 100_000 * ATOMS)
    _trade_at(h, 100)
    h.sell(5, 110, user="mm1")
    h.stop(Side.BUY, 100, quantity=1, user="poor", order_id="s")
    assert h.status("s") != OrderStatus.PENDING_TRIGGER
    expired = [e for e in h.ledger.statuses.items() if e[0] == "s"]
    assert expired == [("s", OrderStatus.EXPIRED)]


def test_triggered_stop_market_buy_refused_mid_cascade_expires_and_the_cascade_goes_on() -> None:
    ledger = Ledger(Harness().spec)
    h = Harness(ledger=ledger)
    for user in ("mm1", "mm2", "rich"):
        ledger.deposit(user, "BTC", 100 * ATOMS)
        ledger.deposit(user, "USDT", 100_000 * ATOMS)
    _trade_at(h, 100)
    h.sell(5, 110, user="mm1")
    h.stop(Side.BUY, 105, quantity=1, user="poor", order_id="s-poor")
    h.stop(Side.BUY, 105, quantity=1, user="rich", order_id="s-rich")
    h.sell(1, 105, user="mm1")
    events = h.buy(1, 105, user="mm2")
    expired = of_type(events, OrderExpired)
    assert [(e.order_id, e.reason) for e in expired] == [("s-poor", Reason.INSUFFICIENT_BALANCE)]
    assert any(t.buyer_order_id == "s-rich" for t in of_type(events, TradeExecuted))


def test_cancelling_a_pending_stop_releases_its_lock() -> None:
    h = Harness()
    h.stop(Side.SELL, 90, quantity=2, order_id="s", user="dave")
    events = h.cancel("s", "dave")
    assert of_type(events, FundsReleased)[0].amount == 2 * ATOMS
    assert h.engine.counts() == (0, 0, 0)
