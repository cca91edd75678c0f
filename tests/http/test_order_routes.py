"""The order routes of API.md, through the app on real actors and a real PostgreSQL.

Every figure is worked out by hand from the Money section: BTC-USDT has tick 0.01, lot 0.00001,
maker fee 0.0008 and taker fee 0.001; each side pays its rate on what it receives, in that asset.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.http.api_harness import ApiHarness, Trader, error_of
from tradeengine.http.api import MAX_BODY_BYTES

ORDERS = "/api/v1/orders"
D = Decimal


def balances(api: ApiHarness, user: Trader | int) -> dict[str, tuple[Decimal, Decimal]]:
    """asset → (available, locked), read from the wallet."""
    user_id = user if isinstance(user, int) else user.id
    return {b.asset: (D(b.available).scaleb(-8), D(b.locked).scaleb(-8))
            for b in api.system.exchange.balances(user_id)}


def place(api: ApiHarness, user: Trader, expect: int = 201, **order: Any) -> dict[str, Any]:
    """POST one order (defaults: BTC-USDT LIMIT GTC) and check the status."""
    body = {"symbol": "BTC-USDT", "type": "LIMIT", **order}
    response = api.post(ORDERS, user, json=body)
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json
    return result





def test_a_fill_at_a_price_past_28_digits_commits_and_shows_its_average_exactly(api: ApiHarness) -> None:
    # 1e20 × 10^8 atoms needs 29 digits: the default decimal context could not even quantize the average,
    # and the failed commit restarted the engine's actors.
    price = "100000000000000000000.5"
    seller = api.user(funds={"BTC": "1"})
    buyer = api.user(funds={"USDT": "200000000000000000"})
    place(api, seller, side="SELL", quantity="0.001", price=price)
    taken = place(api, buyer, side="BUY", quantity="0.001", price=price)
    assert taken["order"]["status"] == "FILLED" and taken["order"]["average_price"] == price
    assert api.get(f"{ORDERS}/{taken['order']['id']}", buyer).json["average_price"] == price
    assert balances(api, buyer)["USDT"] == (D("200000000000000000") - D(price) * D("0.001"), D(0))


def test_a_resting_limit_then_a_crossing_order_settle_with_exact_fees_on_both_sides(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    resting = place(api, alice, side="SELL", quantity="0.5", price="50000", client_order_id="ask-1")
    order = resting["order"]
    assert resting["trades"] == []
    assert order["status"] == "OPEN" and order["filled_quantity"] == "0"
    assert order["remaining_quantity"] == "0.5" and order["average_price"] is None
    assert order["client_order_id"] == "ask-1" and order["time_in_force"] == "GTC"
    assert order["self_trade_prevention"] == "EXPIRE_TAKER" and order["post_only"] is False
    assert order["created_at"].endswith("Z")
    assert len(order["created_at"]) == len("2026-11-24T10:00:00.123456Z")
    assert balances(api, alice)["BTC"] == (D("0.5"), D("0.5"))

    taken = place(api, bob, side="BUY", quantity="0.2", price="50100")
    assert taken["order"]["status"] == "FILLED"
    assert taken["order"]["average_price"] == "50000"
    assert taken["order"]["remaining_quantity"] == "0"
    (trade,) = taken["trades"]
    assert trade == {
        "id": trade["id"], "symbol": "BTC-USDT", "price": "50000", "quantity": "0.2",
        "quote_quantity": "10000", "buyer_order_id": taken["order"]["id"],
        "seller_order_id": order["id"], "taker_side": "BUY", "buyer_fee": "0.0002", "seller_fee": "8",
        "executed_at": trade["executed_at"], "sequence": trade["sequence"],
    }
    # bob locked 0.2 × 50100 = 10020, paid 10000, got the 20 back at once; received 0.2 BTC less 0.0002.
    assert balances(api, bob) == {"BTC": (D("1.1998"), D(0)), "USDT": (D("90000"), D(0))}
    # alice sold 0.2 of her 0.5 locked BTC and received 10000 USDT less the 8 USDT maker fee.
    assert balances(api, alice) == {"BTC": (D("0.5"), D("0.3")), "USDT": (D("109992"), D(0))}
    assert balances(api, 1) == {"BTC": (D("0.0002"), D(0)), "USDT": (D("8"), D(0))}

    stored = api.get(f"{ORDERS}/{order['id']}", alice).json
    assert stored["status"] == "PARTIALLY_FILLED" and stored["filled_quantity"] == "0.2"
    assert stored["remaining_quantity"] == "0.3" and stored["average_price"] == "50000"


def test_a_buy_sweeps_several_levels_in_price_order_and_pays_each_makers_price(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    for price in ("50020", "50000", "50010"):
        place(api, alice, side="SELL", quantity="0.1", price=price)
    result = place(api, bob, side="BUY", quantity="0.25", price="50020")
    assert [(t["price"], t["quantity"]) for t in result["trades"]] == [
        ("50000", "0.1"), ("50010", "0.1"), ("50020", "0.05")]
    assert result["order"]["status"] == "FILLED"
    # (5000 + 5001 + 2501) / 0.25 = 50008
    assert result["order"]["average_price"] == "50008"
    book = api.system.exchange.depth("BTC-USDT", 10)
    assert [(level[0], level[1]) for level in book.asks] == [(5_002_000, 5_000)]


def test_ioc_leaves_no_remainder_and_fok_that_cannot_fill_expires_untouched(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    ioc = place(api, bob, side="BUY", quantity="0.3", price="50000", time_in_force="IOC")
    assert ioc["order"]["status"] == "EXPIRED" and ioc["order"]["filled_quantity"] == "0.1"
    assert balances(api, bob)["USDT"] == (D("95000"), D(0))

    place(api, alice, side="SELL", quantity="0.1", price="50000")
    fok = place(api, bob, side="BUY", quantity="0.3", price="50000", time_in_force="FOK")
    assert fok["order"]["status"] == "EXPIRED" and fok["trades"] == []
    assert fok["order"]["filled_quantity"] == "0"
    assert balances(api, bob)["USDT"] == (D("95000"), D(0))


def test_a_post_only_order_that_would_take_is_rejected_with_its_reason(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    result = place(api, bob, side="BUY", quantity="0.1", price="50000", post_only=True)
    assert result["order"]["status"] == "REJECTED"
    assert result["order"]["reject_reason"] == "POST_ONLY_WOULD_TAKE"
    assert result["trades"] == []
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))


@pytest.mark.parametrize(("mode", "taker_status", "maker_status"), [
    ("EXPIRE_TAKER", "EXPIRED", "OPEN"),
    ("EXPIRE_MAKER", "OPEN", "CANCELLED"),
    ("EXPIRE_BOTH", "EXPIRED", "CANCELLED"),
])
def test_self_trade_prevention_expires_the_side_it_names(
        api: ApiHarness, alice: Trader, mode: str, taker_status: str, maker_status: str) -> None:
    maker = place(api, alice, side="SELL", quantity="0.1", price="50000")["order"]
    taker = place(api, alice, side="BUY", quantity="0.1", price="50000", self_trade_prevention=mode)
    assert taker["trades"] == []
    assert taker["order"]["status"] == taker_status
    assert api.get(f"{ORDERS}/{maker['id']}", alice).json["status"] in (maker_status, "EXPIRED")


def test_self_trade_prevention_none_lets_a_user_trade_with_themself(api: ApiHarness, alice: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    result = place(api, alice, side="BUY", quantity="0.1", price="50000", self_trade_prevention="NONE")
    assert result["order"]["status"] == "FILLED" and len(result["trades"]) == 1


def test_a_stop_limit_waits_pending_then_triggers_on_the_last_trade_price(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    stop = place(api, bob, side="BUY", type="STOP_LIMIT", quantity="0.1", price="50600",
                 stop_price="50500")["order"]
    assert stop["status"] == "PENDING_TRIGGER" and stop["stop_price"] == "50500"
    assert balances(api, bob)["USDT"] == (D("94940"), D("5060"))  # locked like its limit form
    place(api, alice, side="SELL", quantity="0.2", price="50500")
    place(api, alice, side="BUY", quantity="0.1", price="50500", self_trade_prevention="NONE")
    triggered = api.get(f"{ORDERS}/{stop['id']}", bob).json
    assert triggered["status"] == "FILLED" and triggered["average_price"] == "50500"


def test_an_amend_that_reduces_keeps_priority_and_one_that_reprices_loses_it(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    first = place(api, alice, side="SELL", quantity="0.2", price="50000")["order"]
    second = place(api, bob, side="SELL", quantity="0.2", price="50000")["order"]
    reduced = api.patch(f"{ORDERS}/{first['id']}", alice, json={"quantity": "0.1"})
    assert reduced.status_code == 200, reduced.text
    assert reduced.json["quantity"] == "0.1" and reduced.json["status"] == "OPEN"
    assert balances(api, alice)["BTC"] == (D("0.9"), D("0.1"))
    taker = api.user(funds={"USDT": "100000"})
    trade = place(api, taker, side="BUY", quantity="0.05", price="50000")["trades"][0]
    assert trade["seller_order_id"] == first["id"]  # the reduced order kept its place

    api.patch(f"{ORDERS}/{first['id']}", alice, json={"price": "50010"})
    api.patch(f"{ORDERS}/{first['id']}", alice, json={"price": "50000"})  # back, but behind bob now
    trade = place(api, taker, side="BUY", quantity="0.05", price="50000")["trades"][0]
    assert trade["seller_order_id"] == second["id"]


def test_an_amend_to_the_current_price_and_quantity_is_a_200_that_changes_nothing(
        api: ApiHarness, alice: Trader) -> None:
    order = place(api, alice, side="SELL", quantity="0.2", price="50000")["order"]
    for change in ({"quantity": "0.2"}, {"price": "50000.00"}, {"price": "50000", "quantity": "0.20000"}):
        response = api.patch(f"{ORDERS}/{order['id']}", alice, json=change)
        assert response.status_code == 200, response.text
        assert response.json == order  # not even updated_at moved
    assert balances(api, alice)["BTC"] == (D("0.8"), D("0.2"))


def test_an_amend_below_the_filled_quantity_is_refused_and_changes_nothing(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    order = place(api, alice, side="SELL", quantity="0.3", price="50000")["order"]
    place(api, bob, side="BUY", quantity="0.2", price="50000")
    response = api.patch(f"{ORDERS}/{order['id']}", alice, json={"quantity": "0.1"})
    assert response.status_code in (400, 422), response.text
    assert api.get(f"{ORDERS}/{order['id']}", alice).json["quantity"] == "0.3"


def test_cancel_releases_the_locked_funds_and_a_second_cancel_is_409(
        api: ApiHarness, bob: Trader) -> None:
    order = place(api, bob, side="BUY", quantity="0.1", price="40000")["order"]
    assert balances(api, bob)["USDT"] == (D("96000"), D("4000"))
    cancelled = api.delete(f"{ORDERS}/{order['id']}", bob)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json["status"] == "CANCELLED" and cancelled.json["id"] == order["id"]
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))
    again = api.delete(f"{ORDERS}/{order['id']}", bob)
    assert again.status_code == 409 and error_of(again)["code"] == "ORDER_NOT_CANCELLABLE"


def test_cancel_all_cancels_every_open_order_of_the_caller_only(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    mine = {place(api, bob, side="BUY", quantity="0.1", price=p)["order"]["id"] for p in ("40000", "41000")}
    mine.add(place(api, bob, symbol="ETH-USDT", side="BUY", quantity="1", price="2000")["order"]["id"])
    theirs = place(api, alice, side="BUY", quantity="0.1", price="40000")["order"]["id"]
    one_pair = api.delete(ORDERS, bob, params={"symbol": "ETH-USDT"})
    assert one_pair.status_code == 200, one_pair.text
    assert [o["symbol"] for o in one_pair.json["cancelled"]] == ["ETH-USDT"]
    everything = api.delete(ORDERS, bob)
    assert {o["id"] for o in everything.json["cancelled"]} | {one_pair.json["cancelled"][0]["id"]} == mine
    assert all(o["status"] == "CANCELLED" for o in everything.json["cancelled"])
    assert api.get(f"{ORDERS}/{theirs}", alice).json["status"] == "OPEN"
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))


def test_a_duplicate_client_order_id_is_409_naming_the_existing_order(api: ApiHarness, bob: Trader) -> None:
    first = place(api, bob, side="BUY", quantity="0.1", price="40000", client_order_id="dup-1")["order"]
    response = api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT",
                                           "quantity": "0.1", "price": "40000", "client_order_id": "dup-1"})
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "DUPLICATE_CLIENT_ORDER_ID" and error["details"]["order_id"] == first["id"]
    found = api.get(f"{ORDERS}/by-client-id/dup-1", bob)
    assert found.status_code == 200 and found.json["id"] == first["id"]
    assert balances(api, bob)["USDT"] == (D("96000"), D("4000"))  # the duplicate reserved nothing


def test_a_batch_mixing_valid_and_invalid_orders_answers_each_in_request_order(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    orders = [
        {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "40000"},
        {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "40000.005"},
        {"symbol": "NOPE-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "1"},
        {"symbol": "BTC-USDT", "side": "BUY", "type": "MARKET", "quantity": "0.1"},
        {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "100", "price": "40000"},
    ]
    response = api.post(f"{ORDERS}/batch", bob, json={"orders": orders})
    assert response.status_code == 200, response.text
    results = response.json["results"]
    assert len(results) == 5
    assert results[0]["order"]["status"] == "OPEN" and results[0]["trades"] == []
    assert results[1] == {"error": {"code": "INVALID_TICK_SIZE", "message": results[1]["error"]["message"],
                                    "field": "price"}}
    assert results[2]["error"]["code"] == "UNKNOWN_SYMBOL"
    assert results[3]["order"]["status"] == "FILLED" and len(results[3]["trades"]) == 1
    assert results[4]["error"]["code"] == "INSUFFICIENT_BALANCE"
    # only the two orders that were accepted hold or moved funds
    assert balances(api, bob)["USDT"] == (D("100000") - D("4000") - D("5000"), D("4000"))


def test_a_body_that_is_not_a_batch_is_refused_whole_and_places_nothing(
        api: ApiHarness, bob: Trader) -> None:
    one = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"}
    for body, field, message in (
        ({"orders": [one] * 101}, "orders", "orders must hold at most 100 items"),
        ({"orders": []}, "orders", "orders must hold at least 1 item"),
        ({"orders": one}, "orders", "orders must be a JSON array"),
        ({"orders": "[]"}, "orders", "orders must be a JSON array"),
        ({}, "orders", "orders is required"),
        ({"orders": [one], "atomic": True}, "atomic",
         "atomic is not a field of this request (unknown fields are refused)"),
        ([one], None, "the request body must be a JSON object"),
        ("orders", None, "the request body must be a JSON object"),
    ):
        response = api.post(f"{ORDERS}/batch", bob, json=body)
        error = error_of(response, 400)
        assert (error["code"], error.get("field"), error["message"]) == ("VALIDATION_ERROR", field, message)
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))
    assert api.get(ORDERS, bob).json["orders"] == []


def test_a_batch_with_one_order_that_breaks_the_schema_is_refused_whole_naming_it_and_places_nothing(
        api: ApiHarness, bob: Trader) -> None:
    # API.md: wrong types and unknown or missing fields are 400; the per-order results are the engine's
    one = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"}
    for bad, field, message in (
        ({**one, "side": "HOLD"}, "orders[1].side", "orders[1].side must be one of BUY, SELL, not 'HOLD'"),
        ({**one, "colour": "red"}, "orders[1].colour",
         "orders[1].colour is not a field of this request (unknown fields are refused)"),
        ({k: v for k, v in one.items() if k != "side"}, "orders[1].side", "orders[1].side is required"),
        (5, "orders[1]", "orders[1] must be a JSON object"),
        ({**one, "client_order_id": 5}, "orders[1].client_order_id",
         "orders[1].client_order_id must be a JSON string"),
    ):
        response = api.post(f"{ORDERS}/batch", bob, json={"orders": [one, bad, one]})
        error = error_of(response, 400)
        assert (error["code"], error.get("field"), error["message"]) == ("VALIDATION_ERROR", field, message)
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))
    assert api.get(ORDERS, bob).json["orders"] == []


def test_a_body_longer_than_the_cap_is_413_and_places_nothing(api: ApiHarness, bob: Trader) -> None:
    one = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"}
    padded = json.dumps({"orders": [one], "pad": " " * MAX_BODY_BYTES}).encode()
    for path in (f"{ORDERS}/batch", ORDERS):
        response = api.post(path, bob, body=padded, headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text
        assert error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
    at_cap = json.dumps(one).encode().ljust(MAX_BODY_BYTES)  # JSON may end in whitespace: read whole
    assert api.post(ORDERS, bob, body=at_cap, headers={"Content-Type": "application/json"}).status_code == 201
    assert len(api.get(ORDERS, bob).json["orders"]) == 1


@pytest.mark.parametrize(("order", "code", "field"), [
    ({"quantity": "0.1", "price": "50000.001"}, "INVALID_TICK_SIZE", "price"),
    ({"quantity": "0.000001", "price": "50000"}, "INVALID_LOT_SIZE", "quantity"),
    ({"quantity": "10000", "price": "1"}, "QUANTITY_TOO_LARGE", "quantity"),
    ({"quantity": "0.00001", "price": "100"}, "NOTIONAL_TOO_SMALL", None),
    ({"quantity": "0.1"}, "PRICE_REQUIRED", "price"),
    ({"type": "MARKET", "quantity": "0.1", "price": "1"}, "PRICE_NOT_ALLOWED", "price"),
    ({"type": "STOP_LIMIT", "quantity": "0.1", "price": "50000"}, "STOP_PRICE_REQUIRED", "stop_price"),
    ({"quantity": "10", "price": "50000"}, "INSUFFICIENT_BALANCE", None),
])
def test_a_rule_violation_is_422_with_its_code_and_stores_nothing(
        api: ApiHarness, bob: Trader, order: dict[str, Any], code: str, field: str | None) -> None:
    response = api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", **order})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    assert balances(api, bob)["USDT"] == (D("100000"), D(0))
    assert api.get(ORDERS, bob).json["orders"] == []


def test_a_refusal_for_funds_names_the_asset_and_the_amount_in_its_units(
        api: ApiHarness, bob: Trader) -> None:
    response = api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT",
                                           "quantity": "10", "price": "50000"})
    assert response.status_code == 422, response.text
    assert error_of(response)["message"] == "not enough USDT available: the order needs 500000"


@pytest.mark.parametrize(("body", "code", "field"), [
    (b'{"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": 50000}',
     "VALIDATION_ERROR", "price"),
    (b'{"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "1", "x": 1}',
     "VALIDATION_ERROR", "x"),
    (b'{"symbol": "BTC-USDT", "type": "LIMIT", "quantity": "0.1", "price": "1"}', "VALIDATION_ERROR", "side"),
    (b'{"symbol": "BTC-USDT", "side": "HOLD", "type": "LIMIT", "quantity": "0.1", "price": "1"}',
     "VALIDATION_ERROR", "side"),
    (b'{"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "-1", "price": "1"}',
     "VALIDATION_ERROR", "quantity"),
    (b'{"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "1e3", "price": "1"}',
     "VALIDATION_ERROR", "quantity"),
    (b'{"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "client_order_id": "no spaces"}',
     "VALIDATION_ERROR", "client_order_id"),
    (b'{"symbol": "BTC-USDT", ', "MALFORMED_JSON", None),
    (b"", "MALFORMED_JSON", None),
    (b'{"symbol": "\xe9"}', "MALFORMED_JSON", None),  # not UTF-8
])
def test_a_malformed_order_is_400_naming_the_field_and_stores_nothing(
        api: ApiHarness, bob: Trader, body: bytes, code: str, field: str | None) -> None:
    response = api.post(ORDERS, bob, body=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == code
    assert error.get("field") == field
    assert api.get(ORDERS, bob).json["orders"] == []

@pytest.mark.parametrize(("order", "message"), [
    ({"quantity": "1e-1", "price": "50000"},
     'quantity must be a decimal number written as a JSON string of digits, e.g. "0.5" (at most 30 digits '
     "before and after the point; no sign, exponent or spaces)"),
    ({"quantity": "0.1", "price": 50000},
     'price must be a JSON string (every decimal is one: "0.5", not 0.5)'),
    ({"quantity": "0.1", "price": "1", "post_only": "yes"}, "post_only must be true or false"),
    ({"quantity": "0.1", "price": "1", "colour": "red"},
     "colour is not a field of this request (unknown fields are refused)"),
    ({"quantity": "0.1", "price": "1", "side": "HOLD"}, "side must be one of BUY, SELL, not 'HOLD'"),
    ({"quantity": "0.1", "price": "1", "time_in_force": "DAY"},
     "time_in_force must be one of GTC, IOC, FOK, not 'DAY'"),
    ({"quantity": "0.1", "price": "1", "client_order_id": "é"},
     "client_order_id must be 1 to 64 characters of A-Z, a-z, 0-9 and . _ : -"),
    ({"quantity": "0.1", "price": "1", "symbol": "btc-usdt"},
     'symbol must be a pair symbol BASE-QUOTE, each of 2 to 12 capital letters and digits, e.g. "BTC-USDT"'),
    # the decimal hint only on decimal fields
    ({"quantity": "0.1", "price": "1", "client_order_id": 5}, "client_order_id must be a JSON string"),
    ({"quantity": "0.1", "price": "1", "symbol": 5}, "symbol must be a JSON string"),
    ({"quantity": "0.1", "price": True}, "price must be a JSON string"),
    ({"quantity": "0.1", "price": "1", "post_only": None}, "post_only must be true or false"),
])
def test_a_malformed_field_is_told_in_words_what_it_takes(
        api: ApiHarness, bob: Trader, order: dict[str, Any], message: str) -> None:
    single = api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", **order})
    assert single.status_code == 400, single.text
    assert error_of(single)["message"] == message
    field = error_of(single)["field"]
    good = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"}
    batch = api.post(f"{ORDERS}/batch", bob, json={"orders": [
        good, {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", **order}]})
    error = error_of(batch, 400)  # a batch with an order of the wrong shape is refused whole
    assert (error["message"], error["field"]) == (f"orders[1].{message}", f"orders[1].{field}")


def test_a_malformed_query_parameter_is_told_in_words_what_it_takes(api: ApiHarness, bob: Trader) -> None:
    response = api.get(ORDERS, bob, params={"symbol": "btc"})
    assert response.status_code == 400, response.text
    assert error_of(response)["message"] == (
        'symbol must be a pair symbol BASE-QUOTE, each of 2 to 12 capital letters and digits, '
        'e.g. "BTC-USDT"')
    response = api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "type": "LIMIT", "quantity": "1"})
    assert (response.status_code, error_of(response)["message"]) == (400, "side is required")
    response = api.post(f"{ORDERS}/batch", bob, json={"orders": []})
    assert (response.status_code, error_of(response)["message"]) == (400, "orders must hold at least 1 item")
    for params, message in (({"limit": "501"}, "limit must be at most 500"),
                            ({"limit": "ten"}, "limit must be a whole number")):
        response = api.get(ORDERS, bob, params=params)
        assert (response.status_code, error_of(response)["message"]) == (400, message)
    response = api.get("/api/v1/markets/BTC-USDT/candles", params={"interval": "2m"})
    assert response.status_code == 400, response.text
    assert error_of(response) == {"code": "VALIDATION_ERROR", "field": "interval",
                                  "message": "interval must be one of 1m, 5m, 15m, 1h, 4h, 1d, not '2m'"}



def test_an_unknown_symbol_is_404(api: ApiHarness, bob: Trader) -> None:
    response = api.post(ORDERS, bob, json={"symbol": "NOPE-USDT", "side": "BUY", "type": "LIMIT",
                                           "quantity": "1", "price": "1"})
    assert response.status_code == 404 and error_of(response)["code"] == "UNKNOWN_SYMBOL"


def test_orders_are_listed_newest_first_filtered_and_paged_with_a_cursor(
        api: ApiHarness, bob: Trader) -> None:
    ids = [place(api, bob, side="BUY", quantity="0.01", price=str(40000 + i))["order"]["id"]
           for i in range(5)]
    api.delete(f"{ORDERS}/{ids[1]}", bob)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get(ORDERS, bob, params=params).json
        seen.extend(o["id"] for o in page["orders"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    open_only = api.get(ORDERS, bob, params={"status": "OPEN,PARTIALLY_FILLED"}).json["orders"]
    assert [o["id"] for o in open_only] == [ids[4], ids[3], ids[2], ids[0]]
    assert api.get(ORDERS, bob, params={"side": "SELL"}).json["orders"] == []
    for malformed in ("OPEN,WAITING", "OPEN,,FILLED", "OPEN,", ","):
        bad = api.get(ORDERS, bob, params={"status": malformed})
        assert bad.status_code == 400 and error_of(bad)["field"] == "status", malformed
    bad = api.get(ORDERS, bob, params={"limit": 501})
    assert bad.status_code == 400 and error_of(bad)["field"] == "limit"
    bad = api.get(ORDERS, bob, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and error_of(bad)["field"] == "cursor"
    bad = api.get(ORDERS, bob, params={"side": "null"})
    assert bad.status_code == 400 and error_of(bad)["field"] == "side"
    unknown = api.get(ORDERS, bob, params={"symbol": "NOPE-USDT"})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "UNKNOWN_SYMBOL"


def test_no_trader_can_read_amend_or_cancel_another_traders_order(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    order = place(api, alice, side="SELL", quantity="0.1", price="50000", client_order_id="secret")["order"]
    for response in (
        api.get(f"{ORDERS}/{order['id']}", bob),
        api.patch(f"{ORDERS}/{order['id']}", bob, json={"quantity": "0.05"}),
        api.delete(f"{ORDERS}/{order['id']}", bob),
        api.get(f"{ORDERS}/by-client-id/secret", bob),
        api.get(f"{ORDERS}/99999999999", bob),
        *(call(f"{ORDERS}/{beyond}", bob, **body)  # past the largest bigint: not an id either
          for beyond in ("9223372036854775808", "9999999999999999999")
          for call, body in ((api.get, {}), (api.patch, {"json": {"quantity": "1"}}), (api.delete, {}))),
        api.get(f"{ORDERS}/not-a-number", bob),
        api.get(f"{ORDERS}/by-client-id/a%00b", bob),
    ):
        assert response.status_code == 404, response.text
        assert error_of(response)["code"] == "NOT_FOUND"
    assert api.get(ORDERS, bob).json["orders"] == []
    cancelled = api.delete(ORDERS, bob).json["cancelled"]
    assert cancelled == []
    assert api.get(f"{ORDERS}/{order['id']}", alice).json["status"] == "OPEN"
    assert api.get(f"{ORDERS}/{order['id']}", alice).json["quantity"] == "0.1"


def test_every_order_route_needs_a_key(api: ApiHarness) -> None:
    for method, path in (("POST", ORDERS), ("GET", ORDERS), ("DELETE", ORDERS), ("POST", f"{ORDERS}/batch"),
                         ("GET", f"{ORDERS}/1"), ("PATCH", f"{ORDERS}/1"), ("DELETE", f"{ORDERS}/1"),
                         ("GET", f"{ORDERS}/by-client-id/x")):
        response = api.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert error_of(response)["code"] == "UNAUTHENTICATED"
