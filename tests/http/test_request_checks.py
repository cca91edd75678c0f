"""How every route reads what the client sends: query strings (empty, repeated, unknown parameters, whole
numbers), bodies that are not objects, and what error messages repeat of the client's values."""

from __future__ import annotations

import json

import pytest

from tests.http.api_harness import ApiHarness, Trader, error_of

ORDERS = "/api/v1/orders"
ONE = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"}


@pytest.fixture
def admin(api: ApiHarness) -> Trader:
    return api.user("admin")


# -- query strings ----------------------------------------------------------------------------------------


def test_a_parameter_given_empty_is_absent_on_every_route_as_api_md_writes_the_templates(
        api: ApiHarness, bob: Trader) -> None:
    order = api.post(ORDERS, bob, json=ONE).json["order"]
    listed = api.get(f"{ORDERS}?symbol=&status=OPEN,PARTIALLY_FILLED&side=&limit=50&cursor=", bob)
    assert listed.status_code == 200, listed.text
    assert [o["id"] for o in listed.json["orders"]] == [order["id"]]
    unfiltered = api.get(f"{ORDERS}?symbol=&status=&side=&limit=&cursor=", bob)
    assert unfiltered.json["orders"] == listed.json["orders"]
    for path in ("/api/v1/trades?symbol=&limit=&cursor=", "/api/v1/orderbook/BTC-USDT?depth=",
                 "/api/v1/markets/BTC-USDT/trades?limit=",
                 "/api/v1/markets/BTC-USDT/candles?interval=1m&start=&end=&limit=",
                 "/api/v1/markets/BTC-USDT/candles?interval=&start=&end=&limit=",
                 "/api/v1/pairs?x=", "/api/v1/balances?x=&y="):
        response = api.get(path, bob)
        assert response.status_code == 200, (path, response.text)
    book = api.get("/api/v1/orderbook/BTC-USDT?depth=", bob).json
    assert book["bids"] == [{"price": "40000", "quantity": "0.001", "orders": 1}]
    cancelled = api.delete(f"{ORDERS}?symbol=", bob)
    assert cancelled.status_code == 200, cancelled.text
    assert [o["id"] for o in cancelled.json["cancelled"]] == [order["id"]]


def test_a_parameter_given_twice_is_refused_in_words(api: ApiHarness, bob: Trader) -> None:
    for path, name in ((f"{ORDERS}?limit=1&limit=2", "limit"), ("/api/v1/orderbook/BTC-USDT?depth=1&depth=1",
                                                                 "depth"),
                       ("/api/v1/pairs?x=1&x=2", "x")):
        error = error_of(api.get(path, bob), 400)
        assert error == {"code": "VALIDATION_ERROR", "field": name,
                         "message": f"{name} is given more than once"}
    # an empty repeat is no value
    assert api.get(f"{ORDERS}?limit=&limit=2", bob).status_code == 200


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/pairs"), ("GET", "/api/v1/pairs/BTC-USDT"), ("GET", "/api/v1/markets/BTC-USDT/ticker"),
    ("GET", "/api/v1/orderbook/BTC-USDT"), ("GET", "/api/v1/markets/BTC-USDT/trades"),
    ("GET", "/api/v1/markets/BTC-USDT/candles"), ("GET", ORDERS), ("DELETE", ORDERS),
    ("GET", "/api/v1/trades"), ("GET", "/api/v1/balances"), ("GET", f"{ORDERS}/1"),
    ("GET", "/api/v1/admin/actors"), ("GET", "/api/v1/admin/pairs"),
])
def test_every_route_refuses_an_unknown_query_parameter_naming_it(
        api: ApiHarness, admin: Trader, method: str, path: str) -> None:
    response = api.request(method, f"{path}?x=1", admin)
    assert error_of(response, 400) == {
        "code": "VALIDATION_ERROR", "field": "x",
        "message": "x is not a field of this request (unknown fields are refused)"}


def test_an_unknown_parameter_of_a_caller_without_a_key_is_a_401_first(api: ApiHarness) -> None:
    assert error_of(api.get(f"{ORDERS}?x=1"), 401)["code"] == "UNAUTHENTICATED"


def test_a_whole_number_is_plain_digits_leading_zeros_allowed(api: ApiHarness, bob: Trader) -> None:
    for _ in range(3):
        api.post(ORDERS, bob, json=ONE)
    assert len(api.get(f"{ORDERS}?limit=0002", bob).json["orders"]) == 2
    book = api.get("/api/v1/orderbook/BTC-USDT?depth=0001", bob)
    assert book.status_code == 200, book.text
    for path, name in ((f"{ORDERS}?limit=1.0", "limit"), ("/api/v1/orderbook/BTC-USDT?depth=1.0", "depth"),
                       ("/api/v1/orderbook/BTC-USDT?depth=1e2", "depth"),
                       ("/api/v1/markets/BTC-USDT/trades?limit=%2B5", "limit"),
                       ("/api/v1/markets/BTC-USDT/candles?limit=%205", "limit")):
        error = error_of(api.get(path, bob), 400)
        assert error == {"code": "VALIDATION_ERROR", "field": name,
                         "message": f"{name} must be a whole number"}
    for path, message in ((f"{ORDERS}?limit=0000", "limit must be at least 1"),
                          (f"{ORDERS}?limit=-3", "limit must be at least 1"),
                          (f"{ORDERS}?limit={'9' * 5000}", "limit must be at most 500")):
        assert error_of(api.get(path, bob), 400)["message"] == message


# -- bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[]", b'"str"', b"5", b"null", b"[{}]"])
def test_a_body_that_is_not_an_object_is_told_so_in_words(api: ApiHarness, bob: Trader, body: bytes) -> None:
    for path in (ORDERS, f"{ORDERS}/batch"):
        error = error_of(api.post(path, bob, body=body, headers={"Content-Type": "application/json"}), 400)
        assert error == {"code": "VALIDATION_ERROR", "message": "the request body must be a JSON object"}


def test_a_string_field_that_is_no_decimal_is_not_told_about_decimals(api: ApiHarness, admin: Trader) -> None:
    error = error_of(api.post("/api/v1/admin/users", admin, json={"name": 123}), 400)
    assert error == {"code": "VALIDATION_ERROR", "field": "name", "message": "name must be a JSON string"}
    user = api.user()
    deposit = api.post(f"/api/v1/admin/users/{user.id}/deposits", admin, json={"asset": "USDT", "amount": 5})
    assert error_of(deposit, 400)["message"] == (
        'amount must be a JSON string (every decimal is one: "0.5", not 0.5)')
    deposit = api.post(f"/api/v1/admin/users/{user.id}/deposits", admin, json={"asset": 5, "amount": "5"})
    assert error_of(deposit, 400)["message"] == "asset must be a JSON string"


@pytest.mark.parametrize(("path", "field", "body"), [
    (ORDERS, "client_order_id", {**ONE, "client_order_id": "evil\n"}),
    (ORDERS, "symbol", {**ONE, "symbol": "BTC-USDT\n"}),
    (ORDERS, "quantity", {**ONE, "quantity": "0.001\n"}),
    ("/api/v1/admin/users", "name", {"name": "alice\n"}),
    ("/api/v1/admin/pairs", "symbol", {"symbol": "AVAX-USDT\n", "tick_size": "0.01", "lot_size": "0.01",
                                       "min_quantity": "0.01", "max_quantity": "100", "min_notional": "1"}),
])
def test_a_final_newline_fails_a_pattern_as_any_other_character_and_changes_nothing(
        api: ApiHarness, admin: Trader, bob: Trader, path: str, field: str, body: dict[str, str]) -> None:
    # Python's `$` matches before a final newline; the database's CHECKs do not: such an id would pass
    # here and fail the whole commit of its batch.
    before = api.get("/api/v1/balances", bob).json
    caller = admin if "admin" in path else bob
    error = error_of(api.post(path, caller, json=body), 400)
    assert error["code"] == "VALIDATION_ERROR" and error["field"] == field
    assert api.get(ORDERS, bob).json["orders"] == [] and api.get("/api/v1/balances", bob).json == before
    deposit = api.post(f"/api/v1/admin/users/{bob.id}/deposits", admin,
                       json={"asset": "USDT\n", "amount": "1"})
    assert error_of(deposit, 400)["field"] == "asset"


def test_a_route_that_takes_no_body_refuses_one_and_changes_nothing(api: ApiHarness, admin: Trader) -> None:
    restarted = api.post("/api/v1/admin/pairs/BTC-USDT/restart", admin, body=b'{"force": true}',
                         headers={"Content-Type": "application/json"})
    error = error_of(restarted, 400)
    assert error["code"] == "VALIDATION_ERROR" and "takes no request body" in error["message"]
    assert api.get("/api/v1/admin/actors", admin).json  # still answering; nothing was restarted
    actors = {a["name"]: a for a in api.get("/api/v1/admin/actors", admin).json["actors"]}
    assert actors["pair:BTC-USDT"]["incarnation"] == 1


@pytest.mark.parametrize("content_type",
                         ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_declared_as_another_type_than_json_is_a_415_and_places_nothing(
        api: ApiHarness, bob: Trader, content_type: str) -> None:
    response = api.post(ORDERS, bob, body=json.dumps(ONE).encode(), headers={"Content-Type": content_type})
    error = error_of(response, 415)
    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE" and content_type in error["message"]
    assert api.get(ORDERS, bob).json["orders"] == []


@pytest.mark.parametrize("headers", [{"Content-Type": "application/json; charset=utf-8"},
                                     {"Content-Type": "Application/JSON"}, {}])
def test_json_with_parameters_any_case_or_undeclared_is_read(
        api: ApiHarness, bob: Trader, headers: dict[str, str]) -> None:
    response = api.post(ORDERS, bob, body=json.dumps(ONE).encode(), headers=headers)
    assert response.status_code == 201, response.text


# -- what error messages repeat ------------------------------------------------------------------------------


def test_a_404_repeats_at_most_64_characters_of_the_id(api: ApiHarness, bob: Trader, admin: Trader) -> None:
    long_digits, long_text = "9" * 5000, "a" * 5000
    cut_digits, cut_text = "9" * 64 + "…", "a" * 64 + "…"
    for method, path, user, message in (
        ("GET", f"{ORDERS}/{long_digits}", bob, f"order {cut_digits} not found"),
        ("DELETE", f"{ORDERS}/{long_text}", bob, f"order {cut_text} not found"),
        ("PATCH", f"{ORDERS}/{long_digits}", bob, f"order {cut_digits} not found"),
        ("GET", f"/api/v1/trades/{long_text}", bob, f"trade {cut_text} not found"),
        ("GET", f"{ORDERS}/by-client-id/{long_text}", bob, f"no order with client_order_id '{'a' * 63}…"),
        ("POST", f"/api/v1/admin/users/{long_digits}/deposits", admin, f"user {cut_digits} not found"),
        ("GET", f"/api/v1/pairs/{long_text}", None, f"unknown symbol {cut_text}"),
        ("GET", f"/api/v1/orderbook/{long_text}", None, f"unknown symbol {cut_text}"),
        ("GET", f"/api/v1/markets/{long_text}/ticker", None, f"unknown symbol {cut_text}"),
        ("PATCH", f"/api/v1/admin/pairs/{long_text}", admin, f"unknown symbol {cut_text}"),
        ("GET", f"/api/v1/{long_text}", None, f"no route matches /api/v1/{'a' * 120}…"),
    ):
        body = {"quantity": "1"} if method == "PATCH" and "orders" in path else None
        if "deposits" in path:
            body = {"asset": "USDT", "amount": "1"}
        if "admin/pairs" in path:
            body = {"status": "HALTED"}
        response = api.request(method, path, user, json=body)
        assert response.status_code == 404, (path[:40], response.text[:300])
        assert error_of(response)["message"] == message, path[:40]


def test_an_empty_path_segment_is_named_for_what_is_missing(
        api: ApiHarness, bob: Trader, admin: Trader) -> None:
    for path, user, code, message in (
        ("/api/v1/pairs/", None, "UNKNOWN_SYMBOL", "the path names no symbol: give one, e.g. BTC-USDT"),
        ("/api/v1/orderbook/", None, "UNKNOWN_SYMBOL", "the path names no symbol: give one, e.g. BTC-USDT"),
        (f"{ORDERS}/", bob, "NOT_FOUND", "the path names no order: its order segment is empty"),
        ("/api/v1/trades/", bob, "NOT_FOUND", "the path names no trade: its trade segment is empty"),
        (f"{ORDERS}/by-client-id/", bob, "NOT_FOUND",
         "the path names no client_order_id: its client_order_id segment is empty"),
    ):
        error = error_of(api.get(path, user), 404)
        assert (error["code"], error["message"]) == (code, message), path
    deposit = api.post("/api/v1/admin/users//deposits", admin, json={"asset": "USDT", "amount": "1"})
    assert error_of(deposit, 404)["message"] == "the path names no user: its user segment is empty"


# -- HEAD -------------------------------------------------------------------------------------------------


def test_head_answers_wherever_get_does_with_its_headers_and_no_body(api: ApiHarness, bob: Trader) -> None:
    for path, user in (("/health", None), ("/metrics", None), ("/openapi.json", None),
                       ("/api/v1/pairs/BTC-USDT", None), ("/api/v1/balances", bob)):
        got = api.get(path, user)
        head = api.request("HEAD", path, user)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path != "/metrics":  # its figures move between the two requests
            assert head.headers["content-length"] == str(len(got.content)), path
    # as GET would be: refused without a key, with an unknown parameter, on an unknown pair
    assert api.request("HEAD", "/api/v1/balances").status_code == 401
    assert api.request("HEAD", "/api/v1/pairs", params={"x": "1"}).status_code == 400
    assert api.request("HEAD", "/api/v1/pairs/NOPE-USDT").status_code == 404
    # and only where GET answers
    batch = api.request("HEAD", "/api/v1/orders/batch", bob)
    assert batch.status_code == 405 and "HEAD" not in batch.headers["allow"]
