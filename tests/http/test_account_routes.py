"""The trader's account routes of API.md (balances, own trades), on real actors and a real PostgreSQL.

BTC-USDT has tick 0.01, lot 0.00001, maker fee 0.0008 and taker fee 0.001: each side pays its rate on
what it receives, in that asset (a buyer in BTC, a seller in USDT).
"""

from __future__ import annotations

from typing import Any

from tests.http.api_harness import ApiHarness, Trader, error_of

ORDERS = "/api/v1/orders"
TRADES = "/api/v1/trades"
BALANCES = "/api/v1/balances"


def place(api: ApiHarness, user: Trader, **order: Any) -> dict[str, Any]:
    """POST one BTC-USDT LIMIT order; it must be accepted."""
    response = api.post(ORDERS, user, json={"symbol": "BTC-USDT", "type": "LIMIT", **order})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json
    return result





# -- balances -------------------------------------------------------------------------------------------


def test_balances_show_every_held_asset_with_available_and_locked_as_decimal_strings(api: ApiHarness) -> None:
    carol = api.user(funds={"USDT": "1500.25", "ETH": "0.00000001"})
    response = api.get(BALANCES, carol)
    assert response.status_code == 200
    assert response.json == {"balances": [
        {"asset": "ETH", "available": "0.00000001", "locked": "0"},
        {"asset": "USDT", "available": "1500.25", "locked": "0"},
    ]}
    place(api, carol, side="BUY", quantity="0.01", price="50000.5")  # locks 500.005 USDT
    assert api.get(BALANCES, carol).json["balances"][1] == {
        "asset": "USDT", "available": "1000.245", "locked": "500.005"}


def test_a_user_who_never_held_anything_has_no_balances(api: ApiHarness) -> None:
    response = api.get(BALANCES, api.user())
    assert response.status_code == 200
    assert response.json == {"balances": []}


def test_the_account_routes_need_a_known_key(api: ApiHarness, alice: Trader) -> None:
    for path in (BALANCES, TRADES, f"{TRADES}/BTC-USDT:1"):
        assert error_of(api.get(path), 401)["code"] == "UNAUTHENTICATED"
        unknown = api.get(path, headers={"Authorization": "Bearer te_not-a-key-of-anyone"})
        assert error_of(unknown, 401)["code"] == "UNAUTHENTICATED"


# -- trades ---------------------------------------------------------------------------------------------


def test_each_party_sees_the_trade_from_its_own_side_with_its_role_and_fee(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    resting = place(api, alice, side="SELL", quantity="0.5", price="50000")["order"]
    taken = place(api, bob, side="BUY", quantity="0.2", price="50100")
    (trade,) = taken["trades"]
    common = {
        "id": trade["id"], "symbol": "BTC-USDT", "price": "50000", "quantity": "0.2",
        "quote_quantity": "10000", "buyer_order_id": taken["order"]["id"],
        "seller_order_id": resting["id"], "taker_side": "BUY", "buyer_fee": "0.0002", "seller_fee": "8",
        "executed_at": trade["executed_at"], "sequence": trade["sequence"],
    }
    alice_view = {**common, "order_id": resting["id"], "side": "SELL", "role": "MAKER", "fee": "8",
                  "fee_asset": "USDT"}
    bob_view = {**common, "order_id": taken["order"]["id"], "side": "BUY", "role": "TAKER", "fee": "0.0002",
                "fee_asset": "BTC"}
    assert api.get(TRADES, alice).json == {"trades": [alice_view], "next_cursor": None}
    assert api.get(TRADES, bob).json == {"trades": [bob_view], "next_cursor": None}
    assert api.get(f"{TRADES}/{trade['id']}", alice).json == alice_view
    assert api.get(f"{TRADES}/{trade['id']}", bob).json == bob_view


def test_another_users_trade_and_an_unknown_id_are_both_not_found(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    (trade,) = place(api, bob, side="BUY", quantity="0.1", price="50000")["trades"]
    carol = api.user()
    for user, trade_id in ((carol, trade["id"]), (alice, "BTC-USDT:999999"), (alice, "no-such-trade")):
        error = error_of(api.get(f"{TRADES}/{trade_id}", user), 404)
        assert error["code"] == "NOT_FOUND"
    assert api.get(TRADES, carol).json == {"trades": [], "next_cursor": None}


def test_a_self_trade_is_listed_from_both_sides_and_read_by_id_from_the_takers(
        api: ApiHarness, alice: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    taken = place(api, alice, side="BUY", quantity="0.1", price="50000", self_trade_prevention="NONE")
    (trade,) = taken["trades"]
    listed = api.get(TRADES, alice).json["trades"]
    assert [(t["id"], t["side"], t["role"], t["fee_asset"]) for t in listed] == [
        (trade["id"], "BUY", "TAKER", "BTC"), (trade["id"], "SELL", "MAKER", "USDT")]
    single = api.get(f"{TRADES}/{trade['id']}", alice).json
    assert (single["side"], single["role"], single["order_id"]) == ("BUY", "TAKER", taken["order"]["id"])


def test_trades_page_newest_first_through_the_cursor(api: ApiHarness, alice: Trader, bob: Trader) -> None:
    ids = []
    for price in ("50000", "50001", "50002"):
        place(api, alice, side="SELL", quantity="0.01", price=price)
        ids.append(place(api, bob, side="BUY", quantity="0.01", price=price)["trades"][0]["id"])
    first = api.get(TRADES, bob, params={"limit": "2"}).json
    assert [t["id"] for t in first["trades"]] == [ids[2], ids[1]]
    assert isinstance(first["next_cursor"], str)
    second = api.get(TRADES, bob, params={"limit": "2", "cursor": first["next_cursor"]}).json
    assert [t["id"] for t in second["trades"]] == [ids[0]]
    assert second["next_cursor"] is None


def test_the_trades_list_filters_by_symbol_and_refuses_bad_filters_naming_the_field(
        api: ApiHarness, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    place(api, bob, side="BUY", quantity="0.1", price="50000")
    assert len(api.get(TRADES, bob, params={"symbol": "BTC-USDT"}).json["trades"]) == 1
    assert api.get(TRADES, bob, params={"symbol": "ETH-USDT"}).json["trades"] == []
    unknown = error_of(api.get(TRADES, bob, params={"symbol": "NOPE-USDT"}), 404)
    assert (unknown["code"], unknown["field"]) == ("UNKNOWN_SYMBOL", "symbol")
    for params, field in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"cursor": "not-a-cursor"}, "cursor"), ({"symbol": "btc"}, "symbol"),
                          ({"colour": "red"}, "colour")):
        error = error_of(api.get(TRADES, bob, params=params), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), params
