"""Validation of new orders in integer form: each rule raises its domain error naming its field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tradeengine.engine import (
    DomainError,
    DuplicateOrderId,
    MatchingEngine,
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
