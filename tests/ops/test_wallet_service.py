"""The reference wallet service (ops/walletservice/CONTRACT.md), run as `trade-engine wallet-service`
in a subprocess and called over real HTTP, on a fresh database of the machine's PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import requests

from tests.conftest import _scratch_database
from tests.wallet_service_harness import WalletService, free_port, running_wallet_service
from tradeengine.storage.embedded import EmbeddedPostgres, cluster_processes

D = Decimal


@pytest.fixture
def wallet(machine_pg_url: str) -> Iterator[WalletService]:
    """A running wallet service with fault injection on, on an empty database."""
    with running_wallet_service(machine_pg_url) as service:
        yield service


@pytest.fixture(scope="module")
def refusing_wallet(machine_pg_admin_url: str) -> Iterator[WalletService]:
    """One service for the module's tests of calls that must be refused before anything is stored."""
    with contextmanager(_scratch_database)(machine_pg_admin_url) as database_url, \
            running_wallet_service(database_url) as service:
        yield service


def key(prefix: str = "k") -> str:
    """A fresh idempotency key."""
    return f"{prefix}-{uuid.uuid4().hex}"


def post(
        service: WalletService, route: str, body: dict[str, Any], timeout: float = 10.0) -> requests.Response:
    return requests.post(f"{service.url}/v1/{route}", json=body, timeout=timeout)


def transfer(service: WalletService, route: str, user: str, asset: str, amount: str,
             idempotency_key: str | None = None) -> requests.Response:
    body = {"idempotency_key": idempotency_key or key(route), "user_id": user, "asset": asset,
            "amount": amount}
    return post(service, route, body)


def movement(user: str, asset: str, available: str = "0", locked: str = "0") -> dict[str, str]:
    return {"user_id": user, "asset": asset, "available": available, "locked": locked}


def operations_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM wallet_service.operations").fetchone()
    assert row is not None
    return int(row[0])


def worker_pids(service: WalletService) -> list[int]:
    assert service.pid is not None
    return [child.pid for child in psutil.Process(service.pid).children()]


# -- routes ------------------------------------------------------------------------------------------


def test_health_answers_ok_while_the_database_answers(refusing_wallet: WalletService) -> None:
    answer = requests.get(f"{refusing_wallet.url}/health", timeout=5)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_deposit_credits_available_and_answers_the_balance_with_its_key(wallet: WalletService) -> None:
    answer = transfer(wallet, "deposit", "1001", "USDT", "100.50", "dep-1")
    assert answer.status_code == 200
    assert answer.json() == {"idempotency_key": "dep-1", "balance": {
        "user_id": "1001", "asset": "USDT", "available": "100.5", "locked": "0"}}
    assert "Idempotent-Replayed" not in answer.headers
    assert wallet.balance("1001", "USDT") == (D("100.5"), D(0))


def test_reserve_moves_available_to_locked(wallet: WalletService) -> None:
    wallet.deposit("1001", "BTC", "1")
    answer = transfer(wallet, "reserve", "1001", "BTC", "0.25")
    assert answer.status_code == 200
    assert answer.json()["balance"] == {"user_id": "1001", "asset": "BTC", "available": "0.75",
                                        "locked": "0.25"}
    assert wallet.balance("1001", "BTC") == (D("0.75"), D("0.25"))


def test_reserve_beyond_available_is_refused_with_insufficient_funds_and_moves_nothing(
        wallet: WalletService) -> None:
    wallet.deposit("1001", "BTC", "1")
    answer = transfer(wallet, "reserve", "1001", "BTC", "1.00000001")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert wallet.balance("1001", "BTC") == (D(1), D(0))


def test_reserve_of_a_balance_never_held_is_refused(wallet: WalletService) -> None:
    answer = transfer(wallet, "reserve", "nobody", "ETH", "0.1")
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "INSUFFICIENT_FUNDS")
    assert requests.get(f"{wallet.url}/v1/balances/nobody", timeout=5).json() == {
        "user_id": "nobody", "balances": []}


def test_a_refusal_is_stored_so_a_retry_gets_the_same_refusal_even_after_funds_arrive(
        wallet: WalletService) -> None:
    refused = transfer(wallet, "reserve", "1001", "USDT", "50", "res-1")
    assert refused.status_code == 409
    wallet.deposit("1001", "USDT", "100")
    again = transfer(wallet, "reserve", "1001", "USDT", "50", "res-1")
    assert (again.status_code, again.json()) == (409, refused.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert wallet.balance("1001", "USDT") == (D(100), D(0))
    stored = wallet.operation("res-1")
    assert stored is not None and stored["status"] == 409


def test_release_moves_locked_back_to_available(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    assert transfer(wallet, "reserve", "1001", "USDT", "60").status_code == 200
    answer = transfer(wallet, "release", "1001", "USDT", "20.5")
    assert answer.status_code == 200
    assert answer.json()["balance"] == {"user_id": "1001", "asset": "USDT", "available": "60.5",
                                        "locked": "39.5"}


def test_release_beyond_locked_is_refused_with_insufficient_locked(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    transfer(wallet, "reserve", "1001", "USDT", "10")
    answer = transfer(wallet, "release", "1001", "USDT", "10.00000001")
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "INSUFFICIENT_LOCKED")
    assert wallet.balance("1001", "USDT") == (D(90), D(10))


def test_withdraw_debits_available_and_refuses_more_than_available(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    transfer(wallet, "reserve", "1001", "USDT", "30")
    assert transfer(wallet, "withdraw", "1001", "USDT", "70").json()["balance"]["available"] == "0"
    refused = transfer(wallet, "withdraw", "1001", "USDT", "1")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "INSUFFICIENT_FUNDS")
    assert wallet.balance("1001", "USDT") == (D(0), D(30))


def test_settle_applies_every_movement_and_answers_each_balance_in_user_and_asset_order(
        wallet: WalletService) -> None:
    wallet.deposit("buyer", "USDT", "10000")
    wallet.deposit("seller", "BTC", "1")
    transfer(wallet, "reserve", "buyer", "USDT", "5010")
    transfer(wallet, "reserve", "seller", "BTC", "0.1")
    answer = post(wallet, "settle", {"idempotency_key": "trade-1", "movements": [
        movement("buyer", "USDT", available="10", locked="-5010"),
        movement("buyer", "BTC", available="0.0999"),
        movement("seller", "BTC", locked="-0.1"),
        movement("seller", "USDT", available="4995"),
        movement("__fees__", "BTC", available="0.0001"),
        movement("__fees__", "USDT", available="5"),
    ]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"idempotency_key": "trade-1", "balances": [
        {"user_id": "__fees__", "asset": "BTC", "available": "0.0001", "locked": "0"},
        {"user_id": "__fees__", "asset": "USDT", "available": "5", "locked": "0"},
        {"user_id": "buyer", "asset": "BTC", "available": "0.0999", "locked": "0"},
        {"user_id": "buyer", "asset": "USDT", "available": "5000", "locked": "0"},
        {"user_id": "seller", "asset": "BTC", "available": "0.9", "locked": "0"},
        {"user_id": "seller", "asset": "USDT", "available": "4995", "locked": "0"},
    ]}


def test_settle_with_one_movement_going_negative_is_refused_and_applies_nothing(
        wallet: WalletService) -> None:
    wallet.deposit("buyer", "USDT", "100")
    transfer(wallet, "reserve", "buyer", "USDT", "100")
    answer = post(wallet, "settle", {"idempotency_key": "trade-1", "movements": [
        movement("buyer", "USDT", locked="-100"),
        movement("buyer", "BTC", available="1"),
        movement("seller", "BTC", locked="-1"),  # the seller locked nothing
        movement("seller", "USDT", available="100"),
    ]})
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "NEGATIVE_BALANCE")
    assert "seller" in answer.json()["error"]["message"]
    assert wallet.balance("buyer", "USDT") == (D(0), D(100))
    assert wallet.balance("buyer", "BTC") == (D(0), D(0))
    assert wallet.balance("seller", "USDT") == (D(0), D(0))


def test_settle_nets_two_movements_of_one_balance_as_a_self_trade_needs(wallet: WalletService) -> None:
    wallet.deposit("1001", "BTC", "1")
    transfer(wallet, "reserve", "1001", "BTC", "0.5")
    answer = post(wallet, "settle", {"idempotency_key": "self-trade", "movements": [
        movement("1001", "BTC", locked="-0.5"), movement("1001", "BTC", available="0.5")]})
    assert answer.status_code == 200
    assert answer.json()["balances"] == [{"user_id": "1001", "asset": "BTC", "available": "1", "locked": "0"}]


def test_amounts_of_30_integer_digits_and_8_places_are_kept_exactly(wallet: WalletService) -> None:
    big = "123456789012345678901234567890.12345678"
    assert wallet.deposit("whale", "USDT", big)["available"] == big
    assert transfer(wallet, "reserve", "whale", "USDT", "0.00000001").json()["balance"] == {
        "user_id": "whale", "asset": "USDT", "available": "123456789012345678901234567890.12345677",
        "locked": "0.00000001"}
    assert wallet.balance("whale", "USDT") == (D("123456789012345678901234567890.12345677"), D("0.00000001"))


def test_balances_of_a_user_lists_the_non_zero_assets_in_order(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "5")
    wallet.deposit("1001", "BTC", "1")
    wallet.deposit("1001", "ETH", "2")
    transfer(wallet, "withdraw", "1001", "ETH", "2")
    wallet.deposit("1002", "BTC", "3")
    answer = requests.get(f"{wallet.url}/v1/balances/1001", timeout=5)
    assert answer.json() == {"user_id": "1001", "balances": [
        {"user_id": "1001", "asset": "BTC", "available": "1", "locked": "0"},
        {"user_id": "1001", "asset": "USDT", "available": "5", "locked": "0"}]}


def test_all_balances_lists_every_non_zero_balance_for_reconciliation(wallet: WalletService) -> None:
    wallet.deposit("b", "USDT", "5")
    wallet.deposit("a", "BTC", "1")
    wallet.deposit("c", "ETH", "2")
    transfer(wallet, "withdraw", "c", "ETH", "2")
    answer = requests.get(f"{wallet.url}/v1/balances", timeout=5)
    assert answer.json() == {"balances": [
        {"user_id": "a", "asset": "BTC", "available": "1", "locked": "0"},
        {"user_id": "b", "asset": "USDT", "available": "5", "locked": "0"}]}


def test_an_operation_is_looked_up_by_its_key_with_request_and_response(wallet: WalletService) -> None:
    answer = transfer(wallet, "deposit", "1001", "USDT", "7.50", "dep-7")
    stored = wallet.operation("dep-7")
    assert stored is not None
    assert {k: stored[k] for k in ("idempotency_key", "operation", "status", "request", "response")} == {
        "idempotency_key": "dep-7", "operation": "deposit", "status": 200,
        "request": {"idempotency_key": "dep-7", "user_id": "1001", "asset": "USDT", "amount": "7.5"},
        "response": answer.json()}
    assert stored["applied_at"].endswith("Z")
    assert wallet.operation("never-used") is None
    missing = requests.get(f"{wallet.url}/v1/operations/never-used", timeout=5)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")


def test_unknown_routes_and_wrong_methods_answer_404_and_405_in_the_error_shape(
        refusing_wallet: WalletService) -> None:
    missing = requests.get(f"{refusing_wallet.url}/v1/nothing", timeout=5)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")
    wrong = requests.get(f"{refusing_wallet.url}/v1/reserve", timeout=5)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "POST" in wrong.headers["Allow"]


# -- validation ---------------------------------------------------------------------------------------

_TRANSFER = {"idempotency_key": "v-1", "user_id": "1001", "asset": "USDT", "amount": "1"}


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": "0.123456789"}, "amount"),
    ({"amount": "1.000000000"}, "amount"),
    ({"amount": "0"}, "amount"),
    ({"amount": "-1"}, "amount"),
    ({"amount": "1e3"}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": "1234567890123456789012345678901"}, "amount"),
    ({"asset": "usdt"}, "asset"),
    ({"asset": "U"}, "asset"),
    ({"user_id": ""}, "user_id"),
    ({"idempotency_key": "has space"}, "idempotency_key"),
    ({"idempotency_key": "k" * 129}, "idempotency_key"),
    ({"idempotency_key": None}, "idempotency_key"),
    ({"extra": 1}, "extra"),
])
def test_a_bad_transfer_is_refused_with_validation_error_naming_the_field(
        refusing_wallet: WalletService, change: dict[str, Any], field: str) -> None:
    for route in ("reserve", "release", "deposit", "withdraw"):
        answer = post(refusing_wallet, route, {**_TRANSFER, **change})
        assert answer.status_code == 400, (route, answer.text)
        assert answer.json()["error"]["code"] == "VALIDATION_ERROR"
        assert answer.json()["error"]["field"] == field
    assert operations_count(refusing_wallet.database_url) == 0


def test_a_transfer_without_a_field_is_refused_naming_it(refusing_wallet: WalletService) -> None:
    body = dict(_TRANSFER)
    del body["amount"]
    answer = post(refusing_wallet, "deposit", body)
    assert (answer.status_code, answer.json()["error"]["field"]) == (400, "amount")


@pytest.mark.parametrize(("movements", "field"), [
    ([], "movements"),
    ([movement("u", "BTC", available="1")] * 17, "movements"),
    ([movement("u", "BTC")], "movements[0]"),
    ([movement("u", "BTC", available="1"), movement("u", "BTC", locked="-0.000000001")],
     "movements[1].locked"),
    ([movement("u", "BTC", available="+1")], "movements[0].available"),
    ([{"user_id": "u", "asset": "BTC", "available": "1"}], "movements[0].locked"),
    ([{**movement("u", "BTC", available="1"), "fee": "0"}], "movements[0].fee"),
])
def test_a_bad_settle_is_refused_with_validation_error_naming_the_field(
        refusing_wallet: WalletService, movements: list[dict[str, Any]], field: str) -> None:
    answer = post(refusing_wallet, "settle", {"idempotency_key": "s-1", "movements": movements})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {**answer.json()["error"], "code": "VALIDATION_ERROR", "field": field}


@pytest.mark.parametrize("raw", [b"", b"{not json", b'{"amount": "1"'])
def test_a_body_that_is_not_json_is_refused_with_malformed_json(
        refusing_wallet: WalletService, raw: bytes) -> None:
    answer = requests.post(f"{refusing_wallet.url}/v1/deposit", data=raw, timeout=5,
                           headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "MALFORMED_JSON")


# -- idempotency --------------------------------------------------------------------------------------


def test_a_replay_answers_the_stored_response_with_the_replayed_header_and_moves_nothing(
        wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    first = transfer(wallet, "reserve", "1001", "USDT", "40", "res-1")
    again = transfer(wallet, "reserve", "1001", "USDT", "40", "res-1")
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert wallet.balance("1001", "USDT") == (D(60), D(40))


def test_amounts_equal_in_value_make_the_same_request(wallet: WalletService) -> None:
    transfer(wallet, "deposit", "1001", "USDT", "1.50", "dep-1")
    again = transfer(wallet, "deposit", "1001", "USDT", "1.5", "dep-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert wallet.balance("1001", "USDT") == (D("1.5"), D(0))


@pytest.mark.parametrize(("route", "change"), [
    ("deposit", {"amount": "2"}),
    ("deposit", {"user_id": "1002"}),
    ("deposit", {"asset": "BTC"}),
    ("withdraw", {}),
])
def test_a_key_reused_for_a_different_request_is_refused_with_422_and_moves_nothing(
        wallet: WalletService, route: str, change: dict[str, str]) -> None:
    transfer(wallet, "deposit", "1001", "USDT", "1", "dep-1")
    answer = post(wallet, route, {"idempotency_key": "dep-1", "user_id": "1001", "asset": "USDT",
                                  "amount": "1", **change})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert wallet.balance("1001", "USDT") == (D(1), D(0))
    assert wallet.balance("1002", "USDT") == (D(0), D(0))


def test_a_settle_key_reused_with_other_movements_is_refused(wallet: WalletService) -> None:
    body = {"idempotency_key": "t-1", "movements": [movement("a", "BTC", available="1")]}
    assert post(wallet, "settle", body).status_code == 200
    body["movements"] = [movement("a", "BTC", available="2")]
    assert post(wallet, "settle", body).json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_concurrent_calls_with_one_key_apply_once(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    start = threading.Barrier(12)

    def reserve() -> requests.Response:
        start.wait()
        return transfer(wallet, "reserve", "1001", "USDT", "10", "same-key")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: reserve(), range(12)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert wallet.balance("1001", "USDT") == (D(90), D(10))


def test_concurrent_reserves_on_one_balance_never_overdraw_it(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "10")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: transfer(wallet, "reserve", "1001", "USDT", "1", f"r-{i}"),
                                range(24)))
    assert sorted(a.status_code for a in answers) == [200] * 10 + [409] * 14
    assert wallet.balance("1001", "USDT") == (D(0), D(10))


def test_concurrent_settles_over_overlapping_balances_all_apply_without_deadlock(
        wallet: WalletService) -> None:
    for user in ("a", "b", "c"):
        wallet.deposit(user, "USDT", "1000")

    def settle(i: int) -> requests.Response:
        payer, payee = [("a", "b"), ("b", "c"), ("c", "a")][i % 3]
        ordered = [movement(payer, "USDT", available="-1"), movement(payee, "USDT", available="1")]
        return post(wallet, "settle", {"idempotency_key": f"t-{i}",
                                       "movements": ordered if i % 2 else ordered[::-1]})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(settle, range(60)))
    assert [a.status_code for a in answers] == [200] * 60
    assert [wallet.balance(u, "USDT") for u in ("a", "b", "c")] == [(D(1000), D(0))] * 3


# -- faults -------------------------------------------------------------------------------------------


def test_fail_next_answers_the_fail_status_without_applying_then_calls_go_through(
        wallet: WalletService) -> None:
    wallet.set_faults(fail_next=2, fail_status=502)
    for _ in range(2):
        failed = transfer(wallet, "deposit", "1001", "USDT", "5", "dep-1")
        assert (failed.status_code, failed.json()["error"]["code"]) == (502, "INJECTED_FAULT")
        assert wallet.operation("dep-1") is None
    answer = transfer(wallet, "deposit", "1001", "USDT", "5", "dep-1")
    assert answer.status_code == 200 and "Idempotent-Replayed" not in answer.headers
    assert wallet.balance("1001", "USDT") == (D(5), D(0))
    assert wallet.fault_counters()["failed"] == 2


def test_fail_status_defaults_to_503(wallet: WalletService) -> None:
    assert wallet.set_faults(fail_next=1)["fail_status"] == 503
    assert transfer(wallet, "deposit", "1001", "USDT", "5").status_code == 503


def test_drop_next_closes_the_connection_without_an_answer_and_applies_nothing(wallet: WalletService) -> None:
    workers = worker_pids(wallet)
    wallet.set_faults(drop_next=1, routes=["settle"])
    body = {"idempotency_key": "t-1", "movements": [movement("a", "BTC", available="1")]}
    with pytest.raises(requests.ConnectionError):
        post(wallet, "settle", body)
    assert wallet.operation("t-1") is None
    assert wallet.balance("a", "BTC") == (D(0), D(0))
    assert post(wallet, "settle", body).status_code == 200
    assert wallet.balance("a", "BTC") == (D(1), D(0))
    assert wallet.fault_counters()["dropped"] == 1
    assert worker_pids(wallet) == workers  # the worker survived the drop
    assert "Traceback" not in wallet.log()


def test_a_dropped_call_leaves_the_connection_pool_of_a_client_usable(wallet: WalletService) -> None:
    session = requests.Session()
    wallet.set_faults(drop_next=1, routes=["deposit"])
    body = {"idempotency_key": "d-1", "user_id": "u", "asset": "BTC", "amount": "1"}
    with pytest.raises(requests.ConnectionError):
        session.post(f"{wallet.url}/v1/deposit", json=body, timeout=5)
    answer = session.post(f"{wallet.url}/v1/deposit", json=body, timeout=5)
    assert answer.status_code == 200
    assert wallet.balance("u", "BTC") == (D(1), D(0))


def test_after_apply_fail_commits_the_movement_and_a_retry_replays_it(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100")
    wallet.set_faults(fail_next=1, fail_status=500, after_apply=True, routes=["reserve"])
    failed = transfer(wallet, "reserve", "1001", "USDT", "30", "res-1")
    assert failed.status_code == 500
    assert wallet.balance("1001", "USDT") == (D(70), D(30))
    retried = transfer(wallet, "reserve", "1001", "USDT", "30", "res-1")
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert wallet.balance("1001", "USDT") == (D(70), D(30))


def test_after_apply_drop_commits_the_movement_and_a_retry_replays_it(wallet: WalletService) -> None:
    wallet.set_faults(drop_next=1, after_apply=True, routes=["settle"])
    body = {"idempotency_key": "t-1", "movements": [movement("a", "BTC", available="1")]}
    with pytest.raises(requests.ConnectionError):
        post(wallet, "settle", body)
    assert wallet.balance("a", "BTC") == (D(1), D(0))
    stored = wallet.operation("t-1")
    assert stored is not None and stored["status"] == 200
    retried = post(wallet, "settle", body)
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert wallet.balance("a", "BTC") == (D(1), D(0))


def test_a_drop_wins_over_a_fail_when_both_are_pending(wallet: WalletService) -> None:
    wallet.set_faults(drop_next=1, fail_next=1)
    with pytest.raises(requests.ConnectionError):
        transfer(wallet, "deposit", "u", "BTC", "1")
    assert transfer(wallet, "deposit", "u", "BTC", "1").status_code == 503
    assert transfer(wallet, "deposit", "u", "BTC", "1").status_code == 200


def test_latency_delays_the_calls_of_the_faulted_routes_only(wallet: WalletService) -> None:
    wallet.set_faults(latency_ms=1000, routes=["deposit", "balances"])

    def seconds(call: Any) -> float:
        began = time.monotonic()
        call()
        return time.monotonic() - began

    assert seconds(lambda: transfer(wallet, "deposit", "u", "BTC", "1")) >= 1.0
    assert seconds(lambda: requests.get(f"{wallet.url}/v1/balances/u", timeout=5)) >= 1.0
    assert seconds(lambda: transfer(wallet, "withdraw", "u", "BTC", "1")) < 0.9
    assert seconds(lambda: requests.get(f"{wallet.url}/health", timeout=5)) < 0.9
    assert seconds(lambda: wallet.operation("whatever")) < 0.9
    assert wallet.fault_counters()["delayed"] == 2


def test_faults_hit_only_the_listed_routes(wallet: WalletService) -> None:
    wallet.set_faults(fail_next=1, routes=["release"])
    assert transfer(wallet, "deposit", "u", "BTC", "1").status_code == 200
    assert requests.get(f"{wallet.url}/v1/balances", timeout=5).status_code == 200
    assert transfer(wallet, "reserve", "u", "BTC", "1").status_code == 200
    assert transfer(wallet, "release", "u", "BTC", "1").status_code == 503
    assert transfer(wallet, "release", "u", "BTC", "1").status_code == 200


def test_faults_by_default_hit_the_balance_reads_too(wallet: WalletService) -> None:
    assert wallet.set_faults(fail_next=2)["routes"] == ["reserve", "release", "settle", "deposit", "withdraw",
                                                        "balances"]
    assert requests.get(f"{wallet.url}/v1/balances", timeout=5).status_code == 503
    assert requests.get(f"{wallet.url}/v1/balances/u", timeout=5).status_code == 503
    assert requests.get(f"{wallet.url}/v1/balances/u", timeout=5).status_code == 200


def test_get_faults_shows_the_faults_and_counts_the_calls_and_delete_clears_both(
        wallet: WalletService) -> None:
    wallet.set_faults(fail_next=1, routes=["settle"])
    transfer(wallet, "deposit", "u", "BTC", "1")
    transfer(wallet, "deposit", "u", "BTC", "1")
    post(wallet, "settle", {"idempotency_key": "t", "movements": [movement("u", "BTC", available="1")]})
    view = requests.get(f"{wallet.url}/_faults", timeout=5).json()
    assert view["faults"] == {"latency_ms": 0, "fail_status": 503, "fail_next": 0, "drop_next": 0,
                              "after_apply": False, "routes": ["settle"]}
    calls = {"reserve": 0, "release": 0, "settle": 1, "deposit": 2, "withdraw": 0, "balances": 0}
    assert view["counters"] == {"calls": calls, "delayed": 0, "failed": 1, "dropped": 0}
    wallet.clear_faults()
    view = requests.get(f"{wallet.url}/_faults", timeout=5).json()
    assert view["faults"]["routes"] == ["reserve", "release", "settle", "deposit", "withdraw", "balances"]
    assert view["counters"]["calls"]["deposit"] == 0 and view["counters"]["failed"] == 0


@pytest.mark.parametrize("body", [{"routes": ["orders"]}, {"fail_next": -1}, {"fail_status": 200},
                                  {"surprise": True}])
def test_bad_fault_settings_are_refused_with_validation_error(
        refusing_wallet: WalletService, body: dict[str, Any]) -> None:
    answer = requests.put(f"{refusing_wallet.url}/_faults", json=body, timeout=5)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "VALIDATION_ERROR")


def test_without_faults_the_fault_routes_answer_404(machine_pg_url: str) -> None:
    with running_wallet_service(machine_pg_url, faults=False) as service:
        for method in ("GET", "PUT", "DELETE"):
            answer = requests.request(method, f"{service.url}/_faults", json={}, timeout=5)
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, "NOT_FOUND")
        assert service.deposit("u", "BTC", "1")["available"] == "1"


# -- process --------------------------------------------------------------------------------------------


def test_balances_and_operations_survive_a_restart_and_a_kill(wallet: WalletService) -> None:
    wallet.deposit("1001", "USDT", "100", key="dep-1")
    transfer(wallet, "reserve", "1001", "USDT", "25", "res-1")
    assert wallet.stop() == 0
    assert wallet.balance("1001", "USDT") == (D(75), D(25))  # read from the database while down
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{wallet.url}/health", timeout=2)
    wallet.start()
    replay = transfer(wallet, "reserve", "1001", "USDT", "25", "res-1")
    assert replay.headers["Idempotent-Replayed"] == "true"
    wallet.kill()
    wallet.start()
    assert requests.get(f"{wallet.url}/v1/balances/1001", timeout=5).json()["balances"] == [
        {"user_id": "1001", "asset": "USDT", "available": "75", "locked": "25"}]
    assert wallet.operation("dep-1") is not None


def test_while_its_database_is_down_calls_answer_503_and_a_retry_applies_once_when_it_is_back(
        pg_data_dir: Path) -> None:
    database = EmbeddedPostgres(pg_data_dir, database="wallet")
    url = database.start()
    with running_wallet_service(url) as service:
        service.deposit("u", "BTC", "1")
        database.stop()
        health = requests.get(f"{service.url}/health", timeout=10)
        assert (health.status_code, health.json()["error"]["code"]) == (503, "UNAVAILABLE")
        down = transfer(service, "deposit", "u", "BTC", "2", "dep-2")
        assert (down.status_code, down.json()["error"]["code"]) == (503, "UNAVAILABLE")
        assert down.headers["Retry-After"] == "1"
        assert database.start() == url
        # The service may still be reconnecting (its pool backs off while the database is down): a client
        # retries after the Retry-After it is given.
        deadline = time.monotonic() + 20
        back = transfer(service, "deposit", "u", "BTC", "2", "dep-2")
        while back.status_code == 503 and time.monotonic() < deadline:
            assert back.json()["error"]["code"] == "UNAVAILABLE"
            time.sleep(float(back.headers["Retry-After"]))
            back = transfer(service, "deposit", "u", "BTC", "2", "dep-2")
        assert back.status_code == 200 and "Idempotent-Replayed" not in back.headers
        assert service.balance("u", "BTC") == (D(3), D(0))
        assert "Traceback" not in service.log()


def test_the_service_prints_its_url_and_stops_cleanly_on_sigint(machine_pg_url: str) -> None:
    service = WalletService(machine_pg_url, faults=False)
    try:
        service.start()
        assert f"wallet service listening on {service.url}" in service.log()
        assert service.pid is not None
        workers = worker_pids(service)
        os.kill(service.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while service.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not service.running
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in workers)
        assert "wallet service stopped" in service.log()
        assert "exit status" not in service.log()
    finally:
        service.close()


def test_a_second_service_on_a_busy_port_fails_to_start_and_says_why(wallet: WalletService) -> None:
    second = WalletService(wallet.database_url, port=wallet.port)
    try:
        with pytest.raises(AssertionError, match="exited"):
            second.start()
        assert "in use" in second.log()
    finally:
        second.close()


def test_without_a_database_url_it_runs_an_embedded_postgresql_of_its_own_and_stops_it(
        pg_data_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "TRADE_ENGINE_DATA_DIR": str(pg_data_dir), "TRADE_ENGINE_LOG_FORMAT": "text"}
    command = [str(Path(sys.executable).with_name("trade-engine")), "wallet-service", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        body = {"idempotency_key": "d", "user_id": "u", "asset": "BTC", "amount": "1"}
        assert requests.post(f"http://127.0.0.1:{port}/v1/deposit", json=body, timeout=5).status_code == 200
        assert (pg_data_dir / "wallet-service" / "postgres" / "PG_VERSION").is_file()
        assert not (pg_data_dir / "postgres").exists()  # the engine's own folder stays untouched
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    assert cluster_processes(pg_data_dir / "wallet-service" / "postgres") == []
