"""``trade-engine serve`` with ``TRADE_ENGINE_WALLET_URL``: trading over HTTP with the balances at a real
wallet service, and the crash scenario of issue #7 (settles failing, ``kill -9``, restart, service fixed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.wallet_service_harness import WalletService, running_wallet_service
from tradeengine.storage.wallet_client import WalletClient

from .conftest import Engine, Engines, wait_until

D = Decimal
ADMIN_KEY = "te_" + "w" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def wallet(machine_pg_url: str) -> Iterator[WalletService]:
    with running_wallet_service(machine_pg_url) as service:
        yield service


def call(engine: Engine, method: str, path: str, status: int, body: Any = None,
         headers: dict[str, str] = ADMIN) -> Any:
    answer = requests.request(method, engine.base + path, json=body, headers=headers, timeout=10)
    assert answer.status_code == status, f"{method} {path}: {answer.status_code} {answer.text}"
    return answer.json()


def traders(engine: Engine) -> tuple[tuple[str, dict[str, str]], tuple[str, dict[str, str]]]:
    """Alice (10 BTC) and Bob (100000 USDT), funded through the admin API (so at the wallet service)."""
    made = []
    for name, asset, amount in (("alice", "BTC", "10"), ("bob", "USDT", "100000")):
        created = call(engine, "POST", "/api/v1/admin/users", 201, {"name": name, "role": "trader"})
        user_id = str(created["user"]["id"])
        call(engine, "POST", f"/api/v1/admin/users/{user_id}/deposits", 201,
             {"asset": asset, "amount": amount})
        made.append((user_id, {"Authorization": f"Bearer {created['api_key']}"}))
    return made[0], made[1]


def order(engine: Engine, who: dict[str, str], side: str, quantity: str, price: str) -> Any:
    return call(engine, "POST", "/api/v1/orders", 201, {
        "symbol": "BTC-USDT", "side": side, "type": "LIMIT", "quantity": quantity, "price": price,
    }, headers=who)


def pending_commands(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM wallet_commands WHERE delivered_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def start(engines: Engines, data: Path, url: str, wallet: WalletService) -> Engine:
    return engines.start(data, database_url=url, bootstrap_admin_key=ADMIN_KEY, wallet_url=wallet.url,
                         wallet_retries="1", wallet_timeout="0.5", rate_limit="0")


def test_trading_over_http_keeps_the_balances_at_the_wallet_service_exactly(
        engines: Engines, wallet: WalletService, machine_pg_url: str, tmp_path: Path) -> None:
    engine = start(engines, tmp_path / "data", machine_pg_url, wallet)
    engine.wait_ready(30)
    assert engine.get("/ready").json()["checks"]["wallet"] == "ok"
    (alice, alice_key), (bob, bob_key) = traders(engine)
    sell = order(engine, alice_key, "SELL", "1", "50000")
    bought = order(engine, bob_key, "BUY", "0.4", "50100")
    assert bought["order"]["status"] == "FILLED" and len(bought["trades"]) == 1
    wait_until(lambda: pending_commands(machine_pg_url) == 0, 15, "the settlement delivered")
    assert wallet.balance(bob, "USDT") == (D(80_000), D(0))  # 20040 locked, 20000 paid, 40 released
    assert wallet.balance(bob, "BTC") == (D("0.3996"), D(0))  # taker fee 0.1 % in BTC
    assert wallet.balance(alice, "USDT") == (D(19_984), D(0))  # maker fee 0.08 % in USDT
    assert wallet.balance(alice, "BTC") == (D(9), D("0.6"))
    assert wallet.balance("__fees__", "USDT") == (D(16), D(0))
    listed = call(engine, "GET", "/api/v1/balances", 200, headers=alice_key)["balances"]
    balances = {b["asset"]: b for b in listed}
    assert (D(balances["BTC"]["available"]), D(balances["BTC"]["locked"])) == (D(9), D("0.6"))
    call(engine, "DELETE", f"/api/v1/orders/{sell['order']['id']}", 200, headers=alice_key)
    wait_until(lambda: pending_commands(machine_pg_url) == 0, 15, "the release delivered")
    assert wallet.balance(alice, "BTC") == (D("9.6"), D(0))
    withdrawn = call(engine, "POST", f"/api/v1/admin/users/{bob}/withdrawals", 201,
                     {"asset": "USDT", "amount": "1000"})
    assert D(withdrawn["available"]) == D(79_000)
    call(engine, "POST", f"/api/v1/admin/users/{bob}/withdrawals", 422, {"asset": "USDT", "amount": "80000"})


def test_settles_failing_then_kill_9_then_restart_then_service_fixed_settles_each_trade_exactly_once(
        engines: Engines, wallet: WalletService, machine_pg_url: str, tmp_path: Path) -> None:
    engine = start(engines, tmp_path / "data", machine_pg_url, wallet)
    engine.wait_ready(30)
    (alice, alice_key), (_bob, bob_key) = traders(engine)
    order(engine, alice_key, "SELL", "1", "50000")
    wallet.set_faults(fail_next=1_000_000, fail_status=503, routes=["settle", "release"])
    trades = [order(engine, bob_key, "BUY", "0.1", "50000")["trades"][0]["sequence"] for _ in range(3)]
    wait_until(lambda: pending_commands(machine_pg_url) >= 3, 10, "the settles waiting in wallet_commands")
    # A reservation of a command that never committed (what a kill -9 mid-command leaves behind).
    client = WalletClient(wallet.url)
    try:
        assert client.reserve("reserve:killed-engine:1", alice, "BTC", 2 * 10**8)
    finally:
        client.close()
    engine.kill_everything()

    engine = start(engines, tmp_path / "data", machine_pg_url, wallet)
    wait_until(lambda: _answers(engine), 30, "the restarted engine answering /health")
    ready = engine.get("/ready", timeout=10)
    assert ready.status_code == 503 and "reconciled" in ready.json()["checks"]["wallet"]
    refused = requests.post(engine.base + "/api/v1/orders", headers=bob_key, timeout=10, json={
        "symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.1", "price": "50000"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "UNAVAILABLE"
    assert wallet.balance(alice, "USDT") == (D(0), D(0))  # nothing settled yet

    wallet.clear_faults()
    engine.wait_ready(30)
    wait_until(lambda: pending_commands(machine_pg_url) == 0, 15, "the backlog delivered")
    # 0.3 BTC sold at 50000 = 15000 USDT; maker fee 12 USDT; taker fee 0.0003 BTC; each settle once.
    assert wallet.balance(alice, "USDT") == (D(14_988), D(0))
    assert wallet.balance(alice, "BTC") == (D(9), D("0.7"))  # the stray 2 BTC released; 0.7 still on sale
    assert wallet.balance(_bob, "USDT") == (D(85_000), D(0))
    assert wallet.balance(_bob, "BTC") == (D("0.2997"), D(0))
    assert wallet.balance("__fees__", "USDT") == (D(12), D(0))
    for sequence in trades:
        operation = wallet.operation(f"settle:BTC-USDT:{sequence}")
        assert operation is not None and operation["status"] == 200
    assert order(engine, bob_key, "BUY", "0.1", "50000")["order"]["status"] == "FILLED"


def _answers(engine: Engine) -> bool:
    try:
        return engine.get("/health", 1).status_code == 200
    except requests.RequestException:
        time.sleep(0.1)
        return False
