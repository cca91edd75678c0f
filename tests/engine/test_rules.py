"""Validation of new orders in integer form: each rule raises its domain error naming its field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tradeengine.engine import (
    DomainError,
    DuplicateOrderId,
    MatchingEngine,
    OrderExpired,
    OrderType,
    PairSpec,
    PlaceOrder,
    Side,
    TimeInForce,
    UnlimitedFunds,
)

SPEC = PairSpec(
    symbol="ETH-USDT",
    base_asset="ETH",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.001"),
    min_quantity=Decimal("0.01"),
    max_quantity=Decimal("10"),
    min_notional=Decimal("5"),
)


def _place(**fields: Any) -> PlaceOrder:
    base: dict[str, Any] = dict(
        order_id="o1", user_id="u", side=Side.BUY, order_type=OrderType.LIMIT, quantity=100, price=100_00
    )
    base.update(fields)
    return PlaceOrder(**base)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"quantity": 5}, "QUANTITY_TOO_SMALL", "quantity"),
        ({"quantity": 10_001}, "QUANTITY_TOO_LARGE", "quantity"),
        ({"quantity": None}, "VALIDATION_ERROR", "quantity"),
        ({"quantity": 0}, "VALIDATION_ERROR", "quantity"),
        ({"price": 1_00, "quantity": 10}, "NOTIONAL_TOO_SMALL", None),
        ({"price": None}, "PRICE_REQUIRED", "price"),
        ({"price": -1}, "VALIDATION_ERROR", "price"),
        ({"order_type": OrderType.MARKET}, "PRICE_NOT_ALLOWED", "price"),
        ({"order_type": OrderType.STOP_LIMIT}, "STOP_PRICE_REQUIRED", "stop_price"),
        ({"order_type": OrderType.STOP_MARKET, "price": None}, "STOP_PRICE_REQUIRED", "stop_price"),
        ({"stop_price": 5}, "VALIDATION_ERROR", "stop_price"),
        (
            {"order_type": OrderType.MARKET, "price": None, "time_in_force": TimeInForce.GTC},
            "VALIDATION_ERROR",
            "time_in_force",
        ),
        ({"post_only": True, "time_in_force": TimeInForce.IOC}, "VALIDATION_ERROR", "post_only"),
        (
            {"post_only": True, "order_type": OrderType.STOP_LIMIT, "stop_price": 5},
            "VALIDATION_ERROR",
            "post_only",
        ),
        ({"quote_quantity": 10**9}, "VALIDATION_ERROR", "quote_quantity"),
        (
            {"order_type": OrderType.MARKET, "price": None, "quantity": None, "quote_quantity": 10**8},
            "NOTIONAL_TOO_SMALL",
            "quote_quantity",
        ),
        (
            {"order_type": OrderType.MARKET, "price": None, "quote_quantity": 10**9},
            "VALIDATION_ERROR",
            "quote_quantity",
        ),
        (
            {
                "order_type": OrderType.MARKET,
                "side": Side.SELL,
                "price": None,
                "quantity": None,
                "quote_quantity": 10**9,
            },
            "VALIDATION_ERROR",
            "quote_quantity",
        ),
        ({"order_id": ""}, "VALIDATION_ERROR", None),
        ({"client_order_id": "evil\n"}, "VALIDATION_ERROR", "client_order_id"),
        ({"client_order_id": ""}, "VALIDATION_ERROR", "client_order_id"),
        ({"client_order_id": "x" * 65}, "VALIDATION_ERROR", "client_order_id"),
        ({"client_order_id": "a b"}, "VALIDATION_ERROR", "client_order_id"),
        (
            {"order_type": OrderType.STOP_MARKET, "price": None, "stop_price": 1_00, "quantity": 10},
            "NOTIONAL_TOO_SMALL",
            None,
        ),
    ],
)
def test_an_order_breaking_a_rule_raises_its_code_and_field_and_changes_nothing(
    fields: dict[str, Any], code: str, field: str | None
) -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    with pytest.raises(DomainError) as caught:
        engine.place(_place(**fields))
    assert (caught.value.code, caught.value.field) == (code, field)
    assert engine.sequence == 0 and engine.counts() == (0, 0, 0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quantity": Decimal("1")}, "quantity"),
        ({"quantity": 1.0}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"price": 100.0}, "price"),
        ({"price": "100"}, "price"),
        ({"price": True}, "price"),
        ({"order_type": OrderType.STOP_LIMIT, "stop_price": 5.0}, "stop_price"),
        ({"order_type": OrderType.MARKET, "price": None, "quantity": None, "quote_quantity": 1e9},
         "quote_quantity"),
    ],
)
def test_an_ill_typed_number_is_refused_with_its_field_and_changes_nothing(
    fields: dict[str, Any], field: str
) -> None:
    # the same answer from the pure and the compiled build (tests/engine/test_accelerated.py)
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    with pytest.raises(DomainError) as caught:
        engine.place(_place(**fields))
    assert (caught.value.code, caught.value.field) == ("VALIDATION_ERROR", field)
    assert engine.sequence == 0 and engine.counts() == (0, 0, 0)


def test_a_live_order_id_cannot_be_reused() -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    engine.place(_place())
    with pytest.raises(DuplicateOrderId):
        engine.place(_place())


def test_market_orders_default_to_ioc_and_limits_to_gtc() -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    accepted = engine.place(_place())[0]
    assert accepted.time_in_force is TimeInForce.GTC
    market = engine.place(_place(order_id="m", order_type=OrderType.MARKET, price=None))[0]
    assert market.time_in_force is TimeInForce.IOC


def _book(engine: MatchingEngine) -> None:
    engine.place(_place(order_id="ask", user_id="maker", side=Side.SELL, quantity=100, price=100_00))
    engine.place(_place(order_id="bid", user_id="maker", quantity=100, price=99_00))


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_a_market_order_by_quantity_worth_less_than_the_minimum_notional_at_the_best_price_is_refused(
    side: Side,
) -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    _book(engine)
    before = engine.sequence
    small = _place(order_type=OrderType.MARKET, side=side, price=None, quantity=40)  # 0.04 × ~100 < 5
    with pytest.raises(DomainError) as caught:
        engine.place(small)
    assert (caught.value.code, caught.value.field) == ("NOTIONAL_TOO_SMALL", "quantity")
    assert "minimum notional 5" in str(caught.value)
    assert engine.sequence == before
    engine.place(_place(order_id="o2", order_type=OrderType.MARKET, side=side, price=None, quantity=51))


def test_a_market_order_on_an_empty_side_is_not_held_to_the_minimum_notional() -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    events = engine.place(_place(order_type=OrderType.MARKET, price=None, quantity=10))
    assert isinstance(events[-1], OrderExpired) and events[-1].filled_quantity == 0


@pytest.mark.parametrize(
    ("price", "budget", "code", "said"),
    [
        (3000_00, 9 * 10**8, "QUANTITY_TOO_SMALL",  # 9 USDT buys 0.003 ETH at 3000: below min 0.01
         "quote_quantity buys 0.003 at the book's prices, which is below the minimum 0.01"),
        (100_00, 1001 * 10**8, "QUANTITY_TOO_LARGE",  # 1001 USDT would buy 10.01 ETH: above max 10
         "quote_quantity buys 10.01 at the book's prices, which is above the maximum 10"),
    ],
)
def test_what_a_quote_budget_buys_is_held_to_the_quantity_rules(
    price: int, budget: int, code: str, said: str
) -> None:
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    engine.place(_place(order_id="ask", user_id="maker", side=Side.SELL, quantity=10_000, price=price))
    engine.place(_place(order_id="ask2", user_id="maker", side=Side.SELL, quantity=10_000, price=price))
    before = engine.sequence
    with pytest.raises(DomainError) as caught:
        engine.place(_place(order_type=OrderType.MARKET, price=None, quantity=None, quote_quantity=budget))
    assert (caught.value.code, caught.value.field) == (code, "quote_quantity")
    assert str(caught.value) == said
    assert engine.sequence == before


def test_what_a_quote_budget_spends_is_held_to_the_minimum_notional() -> None:
    # at 100.03 a lot of 0.001 ETH costs 0.10003 USDT: a budget of 5 buys 49 lots for 4.90147 < 5
    engine = MatchingEngine(SPEC, UnlimitedFunds())
    engine.place(_place(order_id="ask", user_id="maker", side=Side.SELL, quantity=100, price=100_03))
    with pytest.raises(DomainError) as caught:
        engine.place(_place(order_type=OrderType.MARKET, price=None, quantity=None, quote_quantity=5 * 10**8))
    assert (caught.value.code, caught.value.field) == ("NOTIONAL_TOO_SMALL", "quote_quantity")
