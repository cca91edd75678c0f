"""The command line's admin commands against a real ``trade-engine serve``, through its admin API:
``deposit`` / ``withdraw`` (the money moves through the running engine's wallet, so it can be traded at
once), ``pairs add|halt|resume|restart`` and ``actors`` (the supervisor acts at once); failures end with
one clear line.

The README's first steps, end to end: serve → users create → deposit → place an order that fills.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Engine, Engines, engine_env, free_port, run_cli

ADMIN_KEY = "te_" + "d" * 40


def cli(engine: Engine, *args: str, cwd: Path, **settings: str) -> tuple[int, str, str]:
    """Run ``trade-engine ARGS`` with the engine's port and bootstrap key, unless `settings` override them."""
    env = engine_env(cwd / "data", engine.port, **{"bootstrap_admin_key": ADMIN_KEY, **settings})
    env = {k: v for k, v in env.items() if v != ""}  # an empty override removes the setting
    result = run_cli(*args, env=env, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def order(engine: Engine, key: str, **fields: Any) -> dict[str, Any]:
    response = requests.post(f"{engine.base}/api/v1/orders", headers={"Authorization": f"Bearer {key}"},
                             json={"symbol": "BTC-USDT", "type": "LIMIT", **fields}, timeout=10)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def balances(engine: Engine, key: str) -> dict[str, tuple[str, str]]:
    response = requests.get(f"{engine.base}/api/v1/balances", headers={"Authorization": f"Bearer {key}"},
                            timeout=10)
    assert response.status_code == 200, response.text
    return {b["asset"]: (b["available"], b["locked"]) for b in response.json()["balances"]}


def serve_with_alice(engines: Engines, database_url: str, tmp_path: Path) -> tuple[Engine, str, str]:
    """A running engine with the bootstrap admin, and alice made by ``users create``: her id and key."""
    engine = engines.start(tmp_path / "data", database_url=database_url, bootstrap_admin_key=ADMIN_KEY)
    engine.wait_ready()
    status, out, err = cli(engine, "users", "create", "alice", "--json", cwd=tmp_path,
                           database_url=database_url)
    assert status == 0, err
    alice = json.loads(out)
    return engine, alice["user"]["id"], alice["api_key"]


def test_deposit_goes_through_the_running_engine_and_the_funds_trade_at_once(
        engines: Engines, machine_pg_url: str, tmp_path: Path) -> None:
    engine, alice_id, alice_key = serve_with_alice(engines, machine_pg_url, tmp_path)

    # settings give the URL (HTTP host and port) and the key (the bootstrap admin's)
    status, out, err = cli(engine, "deposit", alice_id, "USDT", "100000", cwd=tmp_path)
    assert status == 0, err
    assert one_line(out) == f"deposited 100000 USDT (user {alice_id}): USDT available 100000, locked 0"
    status, out, err = cli(engine, "deposit", alice_id, "BTC", "2", "--json", cwd=tmp_path)
    assert status == 0, err
    assert json.loads(out) == {"user_id": alice_id, "asset": "BTC", "available": "2", "locked": "0"}
    assert balances(engine, alice_key) == {"BTC": ("2", "0"), "USDT": ("100000", "0")}

    # --url and --key instead of the settings
    made = requests.post(f"{engine.base}/api/v1/admin/users", json={"name": "bob"}, timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert made.status_code == 201, made.text
    bob_id, bob_key = made.json()["user"]["id"], made.json()["api_key"]
    status, out, err = cli(engine, "deposit", bob_id, "USDT", "30000", "--url", engine.base + "/",
                           "--key", ADMIN_KEY, cwd=tmp_path, http_port=str(free_port()),
                           bootstrap_admin_key="")
    assert status == 0, err
    assert one_line(out).endswith("USDT available 30000, locked 0")

    order(engine, alice_key, side="SELL", quantity="0.5", price="50000")
    filled = order(engine, bob_key, side="BUY", quantity="0.5", price="50000")
    assert filled["order"]["status"] == "FILLED"
    # alice receives 25000 USDT less the 0.0008 maker fee (20); bob 0.5 BTC less the 0.001 taker fee
    assert balances(engine, alice_key) == {"BTC": ("1.5", "0"), "USDT": ("124980", "0")}
    assert balances(engine, bob_key) == {"BTC": ("0.4995", "0"), "USDT": ("5000", "0")}
    # the fee account's balances are the fees collected; they are taken out with a withdrawal
    status, out, err = cli(engine, "balances", "1", cwd=tmp_path)
    assert status == 0, err
    assert out.splitlines() == ["ASSET  AVAILABLE  LOCKED", "BTC    0.0005     0", "USDT   20         0"]
    assert cli(engine, "withdraw", "1", "USDT", "20", cwd=tmp_path)[0] == 0
    status, out, err = cli(engine, "deposit", "1", "USDT", "1", cwd=tmp_path)
    assert status == 1 and "409 SYSTEM_ACCOUNT" in one_line(err)
    status, out, err = cli(engine, "balances", "1", "--json", cwd=tmp_path)
    assert json.loads(out) == {"balances": [{"asset": "BTC", "available": "0.0005", "locked": "0"},
                                            {"asset": "USDT", "available": "0", "locked": "0"}]}
    status, out, err = cli(engine, "balances", alice_id, "--json", cwd=tmp_path)
    assert {b["asset"]: (b["available"], b["locked"]) for b in json.loads(out)["balances"]} == \
        balances(engine, alice_key)

    status, out, err = cli(engine, "withdraw", alice_id, "USDT", "1000.5", cwd=tmp_path)
    assert status == 0, err
    assert one_line(out) == f"withdrew 1000.5 USDT (user {alice_id}): USDT available 123979.5, locked 0"
    status, out, err = cli(engine, "withdraw", alice_id, "USDT", "123979.50000001", cwd=tmp_path)
    assert status == 1 and out == ""
    assert one_line(err).startswith("trade-engine: withdraw refused by ")
    assert "422 INSUFFICIENT_BALANCE" in err
    assert balances(engine, alice_key)["USDT"] == ("123979.5", "0")

    status, out, err = cli(engine, "deposit", "999999", "USDT", "1", cwd=tmp_path)
    assert status == 1 and "404 NOT_FOUND" in one_line(err)
    status, out, err = cli(engine, "deposit", alice_id, "USDT", "1.000000001", cwd=tmp_path)
    assert status == 1 and "400 VALIDATION_ERROR" in one_line(err)

    for key, refusal in (("te_" + "x" * 40, "401 UNAUTHENTICATED"), (alice_key, "403 FORBIDDEN")):
        status, out, err = cli(engine, "deposit", alice_id, "USDT", "5", "--key", key, cwd=tmp_path)
        assert status == 1 and out == ""
        line = one_line(err)
        assert line.startswith("trade-engine: the admin key was refused by ") and refusal in line
    assert balances(engine, alice_key)["USDT"] == ("123979.5", "0")


def test_deposit_says_so_in_one_line_when_no_engine_answers_or_no_key_is_given(tmp_path: Path) -> None:
    port = free_port()
    env = engine_env(tmp_path / "data", port, bootstrap_admin_key=ADMIN_KEY)
    result = run_cli("deposit", "1000", "USDT", "5", env=env, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(f"trade-engine: no engine answers at http://127.0.0.1:{port} (")
    assert "trade-engine serve" in line

    no_key = {k: v for k, v in env.items() if k != "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY"}
    result = run_cli("withdraw", "1000", "USDT", "5", env=no_key, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == ("trade-engine: no admin key: pass --key or set "
                                       "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY")
    assert not (tmp_path / "data").exists()  # the command starts no database


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://127.0.0.1", "http://"])
def test_a_url_that_is_not_http_is_refused_before_any_request(tmp_path: Path, url: str) -> None:
    env = engine_env(tmp_path / "data", free_port(), bootstrap_admin_key=ADMIN_KEY)
    result = run_cli("deposit", "1000", "USDT", "5", "--url", url, env=env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"trade-engine deposit: error: argument --url: {url!r} is not an http:// or https:// URL "
        "(e.g. http://127.0.0.1:8080)")


@pytest.mark.parametrize("amount", ["-1", "0", "0.000", "1e3", "abc", "1,5", "1" * 31])
def test_a_deposit_or_withdrawal_of_no_positive_decimal_is_refused_before_any_request(
        tmp_path: Path, amount: str) -> None:
    port = free_port()  # nothing listens: a request would fail as "no engine answers"
    env = engine_env(tmp_path / "data", port, bootstrap_admin_key=ADMIN_KEY)
    for command in ("deposit", "withdraw"):
        result = run_cli(command, "1000", "USDT", "--", amount, env=env, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.splitlines()[-1] == (
            f"trade-engine {command}: error: argument amount: {amount!r} is not a positive decimal of "
            "digits, e.g. 1000.5 (at most 30 digits before the point and 30 after)")


def test_operators_add_halt_resume_and_restart_pairs_and_list_the_actors_of_the_running_engine(
        engines: Engines, machine_pg_url: str, tmp_path: Path) -> None:
    engine, alice_id, alice_key = serve_with_alice(engines, machine_pg_url, tmp_path)
    assert cli(engine, "deposit", alice_id, "BTC", "1", cwd=tmp_path)[0] == 0

    status, out, err = cli(engine, "pairs", "add", "ETH-BTC", "--tick-size", "0.00001", "--lot-size", "0.001",
                           "--max-quantity", "1000", "--maker-fee", "0.001", "--taker-fee", "0.002",
                           cwd=tmp_path)
    assert status == 0, err
    assert one_line(out) == ("added ETH-BTC (ACTIVE): tick 0.00001, lot 0.001, quantity 0.001–1000, "
                             "min notional 0, fees maker 0.001 taker 0.002")
    resting = order(engine, alice_key, symbol="ETH-BTC", side="BUY", quantity="2", price="0.05")
    assert resting["order"]["status"] == "OPEN"  # it trades at once
    status, out, err = cli(engine, "pairs", "add", "ETH-BTC", "--tick-size", "0.00001", "--lot-size", "0.001",
                           "--max-quantity", "1000", cwd=tmp_path)
    assert status == 1 and out == ""
    assert one_line(err).startswith("trade-engine: pairs add refused by ") and "409 PAIR_EXISTS" in err
    status, out, err = cli(engine, "pairs", "add", "SOL-BTC", "--tick-size", "0.01", "--lot-size", "1",
                           "--max-quantity", "10", "--taker-fee", "1.5", cwd=tmp_path)
    assert status == 1 and "422 INVALID_PAIR_SPEC: taker_fee must be in [0, 1), got 1.5" in one_line(err)
    status, out, err = cli(engine, "pairs", "add", "SOL-BTC", "--tick-size", "0", "--lot-size", "1",
                           "--max-quantity", "10", cwd=tmp_path)
    assert status == 2 and "argument --tick-size: '0' is not a positive decimal" in err

    status, out, err = cli(engine, "pairs", "halt", "ETH-BTC", cwd=tmp_path)
    assert (status, out) == (0, "ETH-BTC: HALTED\n"), err
    response = requests.post(f"{engine.base}/api/v1/orders", headers={"Authorization": f"Bearer {alice_key}"},
                             json={"symbol": "ETH-BTC", "side": "BUY", "type": "LIMIT", "quantity": "1",
                                   "price": "0.05"}, timeout=10)
    assert response.status_code == 409 and response.json()["error"]["code"] == "PAIR_NOT_TRADING"
    status, out, err = cli(engine, "pairs", "delist", "ETH-BTC", cwd=tmp_path)
    assert (status, out) == (0, "ETH-BTC: DELISTED\n"), err
    status, out, err = cli(engine, "pairs", "resume", "ETH-BTC", "--json", cwd=tmp_path)
    assert status == 0, err
    assert json.loads(out)["status"] == "ACTIVE"

    status, out, err = cli(engine, "pairs", "fees", "ETH-BTC", "--taker-fee", "0.0025", cwd=tmp_path)
    assert (status, out) == (0, "ETH-BTC: fees maker 0.001 taker 0.0025\n"), err  # the actor restarted
    status, out, err = cli(engine, "pairs", "fees", "ETH-BTC", cwd=tmp_path)
    assert status == 2 and "give --maker-fee, --taker-fee or both" in err

    status, out, err = cli(engine, "pairs", "restart", "ETH-BTC", cwd=tmp_path)
    assert status == 0, err
    assert one_line(out) == ("restarted ETH-BTC (ACTIVE): actor running, incarnation 3, 1 open order(s) "
                             "rebuilt")
    status, out, err = cli(engine, "pairs", "halt", "NOPE-BTC", cwd=tmp_path)
    assert status == 1 and "404 UNKNOWN_SYMBOL" in one_line(err)

    status, out, err = cli(engine, "actors", cwd=tmp_path)
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "STATE", "INCARNATION", "RESTARTS", "MAILBOX", "OPEN", "ORDERS", "LAST",
                              "FAILURE"]
    actors = {row.split()[0]: row.split()[1:] for row in rows}
    assert actors["pair:ETH-BTC"][:3] == ["running", "3", "2"] and actors["pair:BTC-USDT"][:3] == [
        "running", "1", "0"]
    assert actors["pair:ETH-BTC"][4] == "1" and actors["pair:BTC-USDT"][4] == "0"  # open orders
    assert actors["writer"][4] == "-"
    assert {"writer", "wallet", "relay"} <= set(actors)
    status, out, err = cli(engine, "actors", "--json", cwd=tmp_path)
    assert status == 0 and {a["name"] for a in json.loads(out)["actors"]} == set(actors)

    status, out, err = cli(engine, "actors", "--key", alice_key, cwd=tmp_path)
    assert status == 1 and "the admin key was refused" in one_line(err) and "403 FORBIDDEN" in err
