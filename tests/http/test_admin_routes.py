"""The admin routes of API.md, through the app on real actors and PostgreSQL, with a real admin's key.

Users, deposits and withdrawals (through the running wallet), pairs added, halted, resumed, re-priced
and restarted while the engine runs, and the supervision tree.
"""

from __future__ import annotations

import logging
import re
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.http.api_harness import ApiHarness, Trader, error_of
from tradeengine.http.auth import ADMIN
from tradeengine.http.blocking import DEFAULT_LIMIT, limit_blocking_calls
from tradeengine.http.routes import api_endpoints
from tradeengine.storage.users import UserRepository

ORDERS = "/api/v1/orders"
D = Decimal

AVAX_USDT = {"symbol": "AVAX-USDT", "base_asset": "AVAX", "quote_asset": "USDT", "tick_size": "0.001",
             "lot_size": "0.01", "max_quantity": "100000", "maker_fee": "0.001", "taker_fee": "0.002"}

# A body each admin operation accepts (by its body type): a new body type needs an entry here.
SAMPLE_BODIES: dict[str, dict[str, Any]] = {
    "NewUser": {"name": "mallory", "role": "admin"},
    "Transfer": {"asset": "USDT", "amount": "1000"},
    "NewPair": AVAX_USDT,
    "PairChange": {"status": "HALTED"},
}



def place(api: ApiHarness, user: Trader, expect: int = 201, **order: Any) -> dict[str, Any]:
    response = api.post(ORDERS, user, json={"symbol": "BTC-USDT", "type": "LIMIT", **order})
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json
    return result


@pytest.fixture
def admin(api: ApiHarness) -> Trader:
    return api.user("admin")




# -- who may call ---------------------------------------------------------------------------------------


def test_no_admin_route_answers_a_trader_or_a_caller_without_a_key(api: ApiHarness, alice: Trader) -> None:
    admin_operations = [(endpoint.path, method, operation)
                        for endpoint in api_endpoints(system=api.system, pool=api.pool)
                        if endpoint.auth == ADMIN for method, operation in endpoint.operations.items()]
    assert len(admin_operations) >= 8
    for path, method, operation in admin_operations:
        concrete = (path.replace("{user_id}", str(alice.id)).replace("{symbol}", "BTC-USDT")
                    .replace("{key_id}", "1"))
        body = None if operation.body is None else SAMPLE_BODIES[operation.body.__name__]
        as_trader = api.request(method, concrete, alice, json=body)
        assert error_of(as_trader, 403)["code"] == "FORBIDDEN", (method, path)
        anonymous = api.request(method, concrete, json=body)
        assert error_of(anonymous, 401)["code"] == "UNAUTHENTICATED", (method, path)
    # nothing happened: no user, no money, no pair, no halt, no key issued or revoked
    assert api.balances(alice) == {"BTC": (D(1), D(0)), "USDT": (D(100000), D(0))}
    assert [(key.id, key.revoked_at) for key in api.users.keys(alice.id)] == [(1, None)]
    assert api.get("/api/v1/pairs/AVAX-USDT").status_code == 404
    assert api.get("/api/v1/pairs/BTC-USDT").json["status"] == "ACTIVE"
    with api.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE name = 'mallory'").fetchone() == (0,)


# -- users ----------------------------------------------------------------------------------------------


def test_an_admin_creates_a_user_whose_key_is_shown_once_and_works(api: ApiHarness, admin: Trader) -> None:
    response = api.post("/api/v1/admin/users", admin, json={"name": "carol"})
    assert response.status_code == 201, response.text
    created = response.json
    assert set(created) == {"user", "api_key"}
    user = created["user"]
    assert set(user) == {"id", "name", "role", "created_at"}
    assert re.fullmatch(r"[0-9]+", user["id"]) and (user["name"], user["role"]) == ("carol", "trader")
    assert user["created_at"].endswith("Z") and len(user["created_at"]) == len("2026-11-24T10:00:00.123456Z")
    key = created["api_key"]
    assert api.get("/api/v1/balances", headers={"Authorization": f"Bearer {key}"}).json == {"balances": []}
    new_admin = api.post("/api/v1/admin/users", admin, json={"name": "dave", "role": "admin"}).json
    assert new_admin["user"]["role"] == "admin"
    dave = Trader(int(new_admin["user"]["id"]), "dave", new_admin["api_key"])
    assert api.get("/api/v1/admin/actors", dave).status_code == 200


def test_creating_a_user_refuses_a_taken_name_and_a_bad_body(api: ApiHarness, admin: Trader) -> None:
    assert api.post("/api/v1/admin/users", admin, json={"name": "erin"}).status_code == 201
    taken = error_of(api.post("/api/v1/admin/users", admin, json={"name": "erin"}), 409)
    assert (taken["code"], taken["field"]) == ("USER_EXISTS", "name")
    for body, field in (({"name": "has space"}, "name"), ({"name": ""}, "name"), ({"name": "x" * 65}, "name"),
                        ({"name": "frank", "role": "system"}, "role"), ({}, "name"),
                        ({"name": "frank", "email": "f@x"}, "email")):
        error = error_of(api.post("/api/v1/admin/users", admin, json=body), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), body
    assert error_of(api.post("/api/v1/admin/users", admin, body=b"{nope"), 400)["code"] == "MALFORMED_JSON"


def test_users_are_listed_page_by_page_in_id_order_and_found_by_name(api: ApiHarness, admin: Trader) -> None:
    made = [api.user() for _ in range(3)]
    first = api.get("/api/v1/admin/users", admin, params={"limit": 2}).json
    assert [(u["id"], u["name"], u["role"]) for u in first["users"]] == [("1", "fees", "system"),
                                                                        (str(admin.id), admin.name, "admin")]
    rest = api.get("/api/v1/admin/users", admin, params={"limit": 2, "cursor": first["next_cursor"]}).json
    assert [u["name"] for u in rest["users"]] == [made[0].name, made[1].name]
    last = api.get("/api/v1/admin/users", admin, params={"limit": 2, "cursor": rest["next_cursor"]}).json
    assert ([u["name"] for u in last["users"]], last["next_cursor"]) == ([made[2].name], None)
    named = api.get("/api/v1/admin/users", admin, params={"name": made[1].name}).json
    assert named == {"users": [rest["users"][1]], "next_cursor": None}
    assert api.get("/api/v1/admin/users", admin, params={"name": "nobody"}).json["users"] == []
    for params, field in (({"cursor": "x1"}, "cursor"), ({"limit": 0}, "limit"), ({"name": "a b"}, "name"),
                          ({"name": made[0].name, "cursor": rest["next_cursor"]}, "cursor")):
        error = error_of(api.get("/api/v1/admin/users", admin, params=params), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), params


def test_a_key_is_rotated_and_a_revoked_key_is_refused_from_the_next_request_on(
        api: ApiHarness, admin: Trader, alice: Trader) -> None:
    keys = f"/api/v1/admin/users/{alice.id}/keys"
    assert api.get("/api/v1/balances", alice).status_code == 200  # the old key is remembered now
    issued = api.post(keys, admin)
    assert issued.status_code == 201, issued.text
    new_key = issued.json["api_key"]
    assert set(issued.json["key"]) == {"id", "user_id", "prefix", "created_at", "revoked_at"}
    assert (issued.json["key"]["prefix"], issued.json["key"]["revoked_at"]) == (new_key[:10], None)
    listed = api.get(keys, admin).json["keys"]
    assert [k["prefix"] for k in listed] == [alice.key[:10], new_key[:10]]
    assert new_key not in api.get(keys, admin).text and alice.key not in api.get(keys, admin).text

    revoked = api.delete(f"{keys}/{listed[0]['id']}", admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json["id"] == listed[0]["id"] and revoked.json["revoked_at"] is not None
    assert error_of(api.get("/api/v1/balances", alice), 401)["code"] == "UNAUTHENTICATED"
    assert api.balances(Trader(alice.id, alice.name, new_key)) == {"BTC": (D(1), D(0)),
                                                                  "USDT": (D(100000), D(0))}
    # revoking again answers the key as it is
    assert api.delete(f"{keys}/{listed[0]['id']}", admin).json == revoked.json


def test_a_revocation_made_after_its_request_was_answered_504_is_forgotten_at_once(
        api: ApiHarness, admin: Trader, alice: Trader, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.get("/api/v1/balances", alice).status_code == 200  # remembered for the cache period (5 s)
    [key] = api.users.keys(alice.id)
    revoke = UserRepository.revoke_key

    def slow_revoke(self: UserRepository, user_id: int, key_id: int) -> Any:
        time.sleep(0.5)  # longer than the blocking limit below
        return revoke(self, user_id, key_id)

    monkeypatch.setattr(UserRepository, "revoke_key", slow_revoke)
    limit_blocking_calls(0.2)
    try:
        answer = api.delete(f"/api/v1/admin/users/{alice.id}/keys/{key.id}", admin)
    finally:
        limit_blocking_calls(DEFAULT_LIMIT)
    assert error_of(answer, 504)["code"] == "ENGINE_TIMEOUT"
    deadline = time.monotonic() + 5
    while api.users.keys(alice.id)[0].revoked_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # The revoking thread forgets the keys right after its commit: give it a moment, well within the
    # 5 s the key stays remembered otherwise (it was remembered about 0.6 s ago).
    deadline = time.monotonic() + 2
    while api.get("/api/v1/balances", alice).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert error_of(api.get("/api/v1/balances", alice), 401)["code"] == "UNAUTHENTICATED"


def test_key_routes_refuse_unknown_users_and_keys_of_others_and_the_fee_account(
        api: ApiHarness, admin: Trader, alice: Trader) -> None:
    bob = api.user()
    [bobs_key] = api.get(f"/api/v1/admin/users/{bob.id}/keys", admin).json["keys"]
    for method, path in (("GET", "/api/v1/admin/users/999999/keys"), ("POST", "/api/v1/admin/users/x/keys"),
                         ("DELETE", f"/api/v1/admin/users/{alice.id}/keys/{bobs_key['id']}"),
                         ("DELETE", f"/api/v1/admin/users/{alice.id}/keys/nope"),
                         ("DELETE", f"/api/v1/admin/users/999999/keys/{bobs_key['id']}")):
        assert error_of(api.request(method, path, admin), 404)["code"] == "NOT_FOUND", (method, path)
    assert api.get("/api/v1/balances", bob).status_code == 200
    assert error_of(api.post("/api/v1/admin/users/1/keys", admin), 409)["code"] == "SYSTEM_ACCOUNT"
    assert api.get("/api/v1/admin/users/1/keys", admin).json == {"keys": []}
    assert error_of(api.post(f"/api/v1/admin/users/{bob.id}/keys", admin, json={}), 400)["code"] == \
        "VALIDATION_ERROR"
    assert len(api.users.keys(bob.id)) == 1
    [admins_key] = api.get(f"/api/v1/admin/users/{admin.id}/keys", admin).json["keys"]
    last = error_of(api.delete(f"/api/v1/admin/users/{admin.id}/keys/{admins_key['id']}", admin), 409)
    assert last["code"] == "LAST_ADMIN_KEY"
    assert api.get("/api/v1/admin/actors", admin).status_code == 200


# -- deposits and withdrawals ---------------------------------------------------------------------------


def test_deposits_and_withdrawals_move_the_running_wallet_and_answer_the_new_balance(
        api: ApiHarness, admin: Trader) -> None:
    carol = api.user()
    deposits = f"/api/v1/admin/users/{carol.id}/deposits"
    withdrawals = f"/api/v1/admin/users/{carol.id}/withdrawals"
    first = api.post(deposits, admin, json={"asset": "USDT", "amount": "1000.5"})
    assert first.status_code == 201, first.text
    assert first.json == {"user_id": str(carol.id), "asset": "USDT", "available": "1000.5", "locked": "0"}
    second = api.post(deposits, admin, json={"asset": "USDT", "amount": "0.00000001"})
    assert second.json["available"] == "1000.50000001"
    place(api, carol, side="BUY", quantity="0.01", price="50000")  # locks 500 USDT
    out = api.post(withdrawals, admin, json={"asset": "USDT", "amount": "400"})
    assert out.status_code == 201, out.text
    assert out.json == {"user_id": str(carol.id), "asset": "USDT", "available": "100.50000001",
                        "locked": "500"}
    too_much = error_of(api.post(withdrawals, admin, json={"asset": "USDT", "amount": "100.50000002"}), 422)
    assert too_much["code"] == "INSUFFICIENT_BALANCE"
    never_held = error_of(api.post(withdrawals, admin, json={"asset": "BTC", "amount": "1"}), 422)
    assert never_held["code"] == "INSUFFICIENT_BALANCE"
    assert api.balances(carol) == {"USDT": (D("100.50000001"), D(500))}
    with api.pool.connection() as conn:  # committed before the answer
        row = conn.execute("SELECT available, locked FROM balances WHERE user_id = %s AND asset = 'USDT'",
                           (carol.id,)).fetchone()
    assert row == (D("100.50000001"), D(500))


def test_the_fees_collected_are_withdrawn_from_the_fee_account_which_takes_no_deposits(
        api: ApiHarness, admin: Trader, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    place(api, bob, side="BUY", quantity="0.1", price="50000")  # fees: maker 0.001, taker 0.002 (seeded)
    def fees_held() -> dict[str, Decimal]:
        answer = api.get("/api/v1/admin/users/1/balances", admin)
        assert answer.status_code == 200, answer.text
        assert all(b["locked"] == "0" for b in answer.json["balances"])
        return {b["asset"]: D(b["available"]) for b in answer.json["balances"]}

    fees = fees_held()
    refused = error_of(api.post("/api/v1/admin/users/1/deposits", admin,
                                json={"asset": "USDT", "amount": "1"}), 409)
    assert refused["code"] == "SYSTEM_ACCOUNT" and "takes no deposits" in refused["message"]
    assert fees_held() == fees  # nothing moved
    assert fees == {"BTC": D("0.0001"), "USDT": D("4")}  # maker 0.0008 of 5,000 USDT, taker 0.001 of 0.1 BTC
    collected = api.post("/api/v1/admin/users/1/withdrawals", admin, json={"asset": "USDT", "amount": "4"})
    assert collected.status_code == 201, collected.text
    assert collected.json == {"user_id": "1", "asset": "USDT", "available": "0", "locked": "0"}
    assert fees_held() == {"BTC": D("0.0001"), "USDT": D(0)}
    with api.pool.connection() as conn:  # what the route shows is what is committed
        assert dict(conn.execute("SELECT asset, available FROM balances WHERE user_id = 1").fetchall()) == \
            {"BTC": D("0.0001"), "USDT": D(0)}
    # a user's balances as the user sees them; an unknown user is not found
    assert api.get(f"/api/v1/admin/users/{alice.id}/balances", admin).json == \
        api.get("/api/v1/balances", alice).json
    for user_id in ("999999", "abc"):
        answer = api.get(f"/api/v1/admin/users/{user_id}/balances", admin)
        assert error_of(answer, 404)["code"] == "NOT_FOUND"


def test_a_transfer_to_an_unknown_user_is_not_found(api: ApiHarness, admin: Trader) -> None:
    for user_id in ("999999", "abc", "99999999999999999999999", "%C2%B2", "%D9%A1%D9%A2"):
        for kind in ("deposits", "withdrawals"):
            response = api.post(f"/api/v1/admin/users/{user_id}/{kind}", admin,
                                json={"asset": "USDT", "amount": "1"})
            assert error_of(response, 404)["code"] == "NOT_FOUND", (user_id, kind)


def test_a_transfer_refuses_an_untraded_asset_and_a_bad_amount_naming_the_field(
        api: ApiHarness, admin: Trader) -> None:
    carol = api.user()
    path = f"/api/v1/admin/users/{carol.id}/deposits"
    for body, field in (({"asset": "NOPE", "amount": "1"}, "asset"),
                        ({"asset": "usdt", "amount": "1"}, "asset"),
                        ({"asset": "USDT", "amount": "0.000000001"}, "amount"),
                        ({"asset": "USDT", "amount": "0"}, "amount"),
                        ({"asset": "USDT", "amount": "-1"}, "amount"),
                        ({"asset": "USDT", "amount": 5}, "amount"), ({"asset": "USDT"}, "amount"),
                        ({"asset": "USDT", "amount": "1" * 31}, "amount")):
        error = error_of(api.post(path, admin, json=body), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), body
    assert api.balances(carol) == {}


def test_a_transfer_is_exact_at_any_size_up_to_what_a_balance_holds(api: ApiHarness, admin: Trader) -> None:
    carol = api.user()
    huge = "1" * 30 + ".12345678"  # past the 28 digits of Python's default decimal context
    deposit = api.post(f"/api/v1/admin/users/{carol.id}/deposits", admin,
                       json={"asset": "USDT", "amount": huge})
    assert (deposit.status_code, deposit.json["available"]) == (201, huge)
    error = error_of(api.post(f"/api/v1/admin/users/{carol.id}/deposits", admin,
                              json={"asset": "USDT", "amount": "9" * 30}), 400)
    assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "amount")  # the total would pass 10^30
    withdrawal = api.post(f"/api/v1/admin/users/{carol.id}/withdrawals", admin,
                          json={"asset": "USDT", "amount": huge})
    assert (withdrawal.status_code, withdrawal.json["available"]) == (201, "0")


# -- pairs ----------------------------------------------------------------------------------------------


def test_admin_pairs_show_each_pair_with_its_running_actor_and_open_orders(
        api: ApiHarness, admin: Trader, alice: Trader) -> None:
    place(api, alice, side="BUY", quantity="0.01", price="40000")
    place(api, alice, side="SELL", quantity="0.01", price="60000")
    response = api.get("/api/v1/admin/pairs", admin)
    assert response.status_code == 200
    pairs = {p["symbol"]: p for p in response.json["pairs"]}
    assert len(pairs) == 10
    assert pairs["BTC-USDT"] == {"symbol": "BTC-USDT", "status": "ACTIVE", "actor": {
        "state": "running", "incarnation": 1, "restarts": 0, "mailbox": 0, "last_failure": None,
        "open_orders": 2}}
    assert pairs["ETH-USDT"]["actor"]["open_orders"] == 0


def test_a_pair_added_at_runtime_trades_at_once(api: ApiHarness, admin: Trader) -> None:
    response = api.post("/api/v1/admin/pairs", admin, json=AVAX_USDT)
    assert response.status_code == 201, response.text
    expected = {**AVAX_USDT, "min_quantity": "0.01", "min_notional": "0", "status": "ACTIVE"}
    assert response.json == expected
    assert api.get("/api/v1/pairs/AVAX-USDT").json == expected
    seller = api.user(funds={"AVAX": "10"})
    buyer = api.user(funds={"USDT": "1000"})
    place(api, seller, symbol="AVAX-USDT", side="SELL", quantity="2.5", price="30.001")
    taken = place(api, buyer, symbol="AVAX-USDT", side="BUY", quantity="2.5", price="30.001")
    assert taken["order"]["status"] == "FILLED"
    (trade,) = taken["trades"]
    # 2.5 × 30.001 = 75.0025 USDT; the buyer (taker, 0.002) pays 0.005 AVAX, the seller (maker, 0.001)
    # pays 0.0750025 → rounded up to 8 places: 0.0750025.
    assert (trade["quote_quantity"], trade["buyer_fee"], trade["seller_fee"]) == ("75.0025", "0.005",
                                                                                 "0.0750025")
    assert api.balances(buyer) == {"AVAX": (D("2.495"), D(0)), "USDT": (D("924.9975"), D(0))}
    names = [a["name"] for a in api.get("/api/v1/admin/actors", admin).json["actors"]]
    assert "pair:AVAX-USDT" in names
    listed = {p["symbol"]: p for p in api.get("/api/v1/admin/pairs", admin).json["pairs"]}
    assert listed["AVAX-USDT"]["actor"]["state"] == "running"


def test_adding_a_pair_refuses_a_taken_symbol_inconsistent_rules_and_bad_fields(
        api: ApiHarness, admin: Trader) -> None:
    path = "/api/v1/admin/pairs"
    btc = {**AVAX_USDT, "symbol": "BTC-USDT", "base_asset": "BTC"}
    exists = error_of(api.post(path, admin, json=btc), 409)
    assert (exists["code"], exists["field"]) == ("PAIR_EXISTS", "symbol")
    for change, field in (({"symbol": "AVAX-USDC"}, "symbol"), ({"taker_fee": "1"}, "taker_fee"),
                          ({"max_quantity": "100000.005"}, "max_quantity"),
                          ({"min_quantity": "0.001"}, "min_quantity"),
                          ({"tick_size": "0.0001", "lot_size": "0.00001"}, None),  # their product
                          ({"tick_size": "0"}, "tick_size"), ({"min_quantity": "200000"}, "min_quantity"),
                          ({"quote_asset": "AVAX", "symbol": "AVAX-AVAX"}, "quote_asset")):
        error = error_of(api.post(path, admin, json={**AVAX_USDT, **change}), 422)
        assert (error["code"], error.get("field")) == ("INVALID_PAIR_SPEC", field), change
    for change, field in (({"tick_size": "0.000000001"}, "tick_size"),
                          ({"maker_fee": "0.000000005"}, "maker_fee"),
                          ({"max_quantity": None}, "max_quantity"), ({"lot_size": 1}, "lot_size"),
                          ({"max_quantity": "1" * 16}, "max_quantity"), ({"symbol": "avax-usdt"}, "symbol"),
                          ({"status": "OPEN"}, "status"), ({"colour": "red"}, "colour")):
        body = {k: v for k, v in {**AVAX_USDT, **change}.items() if v is not None}
        error = error_of(api.post(path, admin, json=body), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), change
    assert api.get("/api/v1/pairs/AVAX-USDT").status_code == 404


def test_a_halted_pair_refuses_new_orders_keeps_cancels_and_market_data_and_resumes(
        api: ApiHarness, admin: Trader, alice: Trader, bob: Trader) -> None:
    resting = place(api, alice, side="SELL", quantity="0.1", price="50000")["order"]
    halted = api.patch("/api/v1/admin/pairs/BTC-USDT", admin, json={"status": "HALTED"})
    assert halted.status_code == 200, halted.text
    assert halted.json["status"] == "HALTED" and halted.json["maker_fee"] == "0.0008"
    assert api.get("/api/v1/pairs/BTC-USDT").json["status"] == "HALTED"
    refused = error_of(api.post(ORDERS, bob, json={"symbol": "BTC-USDT", "type": "LIMIT", "side": "BUY",
                                                   "quantity": "0.1", "price": "50000"}), 409)
    assert refused["code"] == "PAIR_NOT_TRADING"
    book = api.get("/api/v1/orderbook/BTC-USDT").json
    assert book["asks"] == [{"price": "50000", "quantity": "0.1", "orders": 1}]
    assert api.get("/api/v1/markets/BTC-USDT/ticker").json["best_ask"] == "50000"
    cancelled = api.delete(f"{ORDERS}/{resting['id']}", alice)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "CANCELLED"
    assert api.get("/api/v1/orderbook/BTC-USDT").json["asks"] == []

    resumed = api.patch("/api/v1/admin/pairs/BTC-USDT", admin, json={"status": "ACTIVE"})
    assert resumed.status_code == 200 and resumed.json["status"] == "ACTIVE"
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    assert place(api, bob, side="BUY", quantity="0.1", price="50000")["order"]["status"] == "FILLED"


def test_every_change_an_admin_makes_is_logged_with_the_admin_and_the_change(
        api: ApiHarness, admin: Trader, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tradeengine.http.audit")
    user = api.post("/api/v1/admin/users", admin, json={"name": "carol"}).json["user"]
    api.post(f"/api/v1/admin/users/{user['id']}/deposits", admin, json={"asset": "USDT", "amount": "12.5"})
    api.post(f"/api/v1/admin/users/{user['id']}/withdrawals", admin, json={"asset": "USDT", "amount": "2"})
    api.patch("/api/v1/admin/pairs/BTC-USDT", admin, json={"status": "HALTED", "maker_fee": "0.001"})
    api.post("/api/v1/admin/pairs/BTC-USDT/restart", admin)
    api.patch("/api/v1/admin/pairs/BTC-USDT", admin, json={"status": "NOPE"})  # refused: no audit line
    key = api.post(f"/api/v1/admin/users/{user['id']}/keys", admin).json["key"]
    api.delete(f"/api/v1/admin/users/{user['id']}/keys/{key['id']}", admin)
    api.delete(f"/api/v1/admin/users/{user['id']}/keys/{key['id']}", admin)  # revoked already: no line
    lines = [r.getMessage() for r in caplog.records if r.name == "tradeengine.http.audit"]
    assert lines == [
        f"admin {admin.id} created user carol (trader, id {user['id']})",
        f"admin {admin.id} deposited 12.5 USDT for user {user['id']} (available now 12.5)",
        f"admin {admin.id} withdrew 2 USDT for user {user['id']} (available now 10.5)",
        f"admin {admin.id} changed pair BTC-USDT: status HALTED, maker_fee 0.001",
        f"admin {admin.id} restarted pair BTC-USDT (incarnation 3)",
        f"admin {admin.id} issued API key {key['prefix']} (id {key['id']}) for user {user['id']}",
        f"admin {admin.id} revoked API key {key['prefix']} (id {key['id']}) of user {user['id']}",
    ]


def test_a_pair_added_halted_takes_no_order_until_resumed(api: ApiHarness, admin: Trader) -> None:
    added = api.post("/api/v1/admin/pairs", admin, json={**AVAX_USDT, "status": "HALTED"})
    assert added.status_code == 201 and added.json["status"] == "HALTED"
    seller = api.user(funds={"AVAX": "10"})
    order = {"symbol": "AVAX-USDT", "type": "LIMIT", "side": "SELL", "quantity": "1", "price": "30"}
    assert error_of(api.post(ORDERS, seller, json=order), 409)["code"] == "PAIR_NOT_TRADING"
    assert api.patch("/api/v1/admin/pairs/AVAX-USDT", admin, json={"status": "ACTIVE"}).status_code == 200
    assert api.post(ORDERS, seller, json=order).status_code == 201


def test_a_fee_change_applies_to_the_next_trade_and_keeps_the_book(
        api: ApiHarness, admin: Trader, alice: Trader, bob: Trader) -> None:
    resting = place(api, alice, side="SELL", quantity="0.2", price="50000")["order"]
    changed = api.patch("/api/v1/admin/pairs/BTC-USDT", admin, json={"maker_fee": "0.002"})
    assert changed.status_code == 200, changed.text
    assert (changed.json["maker_fee"], changed.json["taker_fee"], changed.json["status"]) == (
        "0.002", "0.001", "ACTIVE")
    (trade,) = place(api, bob, side="BUY", quantity="0.1", price="50000")["trades"]
    assert trade["seller_order_id"] == resting["id"]
    assert (trade["seller_fee"], trade["buyer_fee"]) == ("10", "0.0001")  # 5000 × 0.002, 0.1 × 0.001
    both = api.patch("/api/v1/admin/pairs/BTC-USDT", admin,
                     json={"maker_fee": "0", "taker_fee": "0.0005", "status": "HALTED"})
    assert (both.json["maker_fee"], both.json["taker_fee"], both.json["status"]) == ("0", "0.0005", "HALTED")


def test_a_pair_change_refuses_nothing_to_change_bad_values_and_an_unknown_symbol(
        api: ApiHarness, admin: Trader) -> None:
    path = "/api/v1/admin/pairs/BTC-USDT"
    assert error_of(api.patch(path, admin, json={}), 400)["code"] == "VALIDATION_ERROR"
    for body, field in (({"status": "PAUSED"}, "status"), ({"maker_fee": "-0.1"}, "maker_fee"),
                        ({"taker_fee": "0.000000001"}, "taker_fee"), ({"tick_size": "1"}, "tick_size")):
        error = error_of(api.patch(path, admin, json=body), 400)
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", field), body
    assert error_of(api.patch(path, admin, json={"taker_fee": "1"}), 422)["code"] == "INVALID_PAIR_SPEC"
    unknown = error_of(api.patch("/api/v1/admin/pairs/NOPE-USDT", admin, json={"status": "HALTED"}), 404)
    assert unknown["code"] == "UNKNOWN_SYMBOL"
    assert api.get("/api/v1/pairs/BTC-USDT").json["taker_fee"] == "0.001"


def test_a_restart_answers_once_the_new_incarnation_has_rebuilt_the_book(
        api: ApiHarness, admin: Trader, alice: Trader, bob: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    place(api, alice, side="SELL", quantity="0.2", price="50000")
    place(api, alice, side="BUY", quantity="0.1", price="40000")
    before = api.get("/api/v1/orderbook/BTC-USDT").json
    response = api.post("/api/v1/admin/pairs/BTC-USDT/restart", admin)
    assert response.status_code == 200, response.text
    assert response.json == {"symbol": "BTC-USDT", "status": "ACTIVE", "actor": {
        "state": "running", "incarnation": 2, "restarts": 1, "mailbox": 0, "last_failure": None,
        "open_orders": 3}}
    after = api.get("/api/v1/orderbook/BTC-USDT").json
    assert (after["bids"], after["asks"], after["sequence"]) == (before["bids"], before["asks"],
                                                                 before["sequence"])
    (first, second) = place(api, bob, side="BUY", quantity="0.3", price="50000")["trades"]
    assert (first["quantity"], second["quantity"]) == ("0.1", "0.2")  # time priority survived
    for symbol in ("NOPE-USDT", "BTC-USDT%00"):
        unknown = error_of(api.post(f"/api/v1/admin/pairs/{symbol}/restart", admin), 404)
        assert unknown["code"] == "UNKNOWN_SYMBOL"


# -- actors ---------------------------------------------------------------------------------------------


def test_the_supervision_tree_lists_every_actor_with_state_and_restarts(api: ApiHarness,
                                                                        admin: Trader, alice: Trader) -> None:
    place(api, alice, side="SELL", quantity="0.1", price="50000")
    assert api.post("/api/v1/admin/pairs/ETH-USDT/restart", admin).status_code == 200
    response = api.get("/api/v1/admin/actors", admin)
    assert response.status_code == 200
    tree = response.json
    assert tree["supervisor"] == "supervisor"
    actors = {a["name"]: a for a in tree["actors"]}
    assert list(actors)[:2] == ["writer", "wallet"]
    assert set(list(actors)[2:]) == {
        f"pair:{s}" for s in ("BTC-USDT", "ETH-USDT", "BNB-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT",
                              "DOGE-USDT", "LINK-USDT", "MATIC-USDT", "USDC-USDT")}
    assert actors["writer"] == {"name": "writer", "group": "database", "policy": "permanent",
                                "state": "running", "incarnation": 1, "restarts": 0, "mailbox": 0,
                                "last_failure": None, "open_orders": None}
    assert (actors["pair:BTC-USDT"]["open_orders"], actors["pair:ETH-USDT"]["open_orders"]) == (1, 0)
    assert (actors["pair:ETH-USDT"]["incarnation"], actors["pair:ETH-USDT"]["restarts"]) == (2, 1)
    assert (actors["pair:BTC-USDT"]["incarnation"], actors["pair:BTC-USDT"]["restarts"]) == (1, 0)
    assert all(a["state"] == "running" and a["group"] == "database" for a in actors.values())


def test_a_failed_pair_answers_its_orders_503_saying_an_operator_must_restart_it(
        api: ApiHarness, admin: Trader, alice: Trader) -> None:
    from tests.actors.system_harness import wait_until

    resting = place(api, alice, side="SELL", quantity="0.1", price="50000")["order"]
    with api.pool.connection() as conn:  # a stored order the pair cannot rebuild: every start fails
        conn.execute("UPDATE orders SET price = 50000.005 WHERE id = %s", (int(resting["id"]),))
    assert api.post("/api/v1/admin/pairs/BTC-USDT/restart", admin).status_code == 503

    def actor_state() -> str:
        [btc] = [p for p in api.get("/api/v1/admin/pairs", admin).json["pairs"] if p["symbol"] == "BTC-USDT"]
        return str(btc["actor"]["state"])

    wait_until(lambda: actor_state() == "failed", 30, "the pair failing")
    refused = api.post(ORDERS, alice, json={"symbol": "BTC-USDT", "type": "LIMIT", "side": "SELL",
                                            "quantity": "0.1", "price": "50000"})
    assert error_of(refused, 503) == {"code": "UNAVAILABLE", "message": (
        "the pair BTC-USDT has failed and takes no commands until an operator restarts it; retry later")}
    assert refused.headers["retry-after"] == "30"  # it will not come back by itself within a second
    ready = api.get("/ready")  # one failed pair does not take the process (and the other pairs) out
    assert (ready.status_code, ready.json["checks"]) == (200, {"actors": "ok"})
    # the other pairs trade on
    other = place(api, alice, symbol="ETH-USDT", side="BUY", quantity="0.01", price="1000")
    assert other["order"]["status"] == "OPEN"
