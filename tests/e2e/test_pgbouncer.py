"""``trade-engine serve`` behind a real PgBouncer in transaction mode (TRADE_ENGINE_DATABASE_PREPARE=false).

Everything goes through PgBouncer: the migrations at start, the bootstrap admin, and the trading path over
HTTP (users and deposits through the admin API, crossing orders, a cancel, order lists, balances), each
repeated past psycopg's prepare threshold, so a server-side prepared statement or any session state
(a session advisory lock, a session SET, LISTEN) would break here. Then the engine is restarted through
PgBouncer: the migrations find nothing to do and the rebuilt book trades on.

PgBouncer runs with ops/pgbouncer/pgbouncer.ini, the file ops/compose.yaml deploys, changed only where it
listens, where its password file is and which server it pools for (checked below).
"""

from __future__ import annotations

import configparser
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests

from tests.conftest import services_required
from tradeengine.storage.migrate import load_migrations

from .conftest import Engine, Engines, free_port

ROOT = Path(__file__).resolve().parents[2]
PGBOUNCER_INI = ROOT / "ops" / "pgbouncer" / "pgbouncer.ini"
#: The only [pgbouncer] settings the test changes; [databases] is the test's own.
REPLACED = frozenset({"listen_addr", "listen_port", "auth_file"})
ADMIN_KEY = "te_" + "pgbouncer" * 4
PAIR = "BTC-USDT"
START_LIMIT = 10.0


def read_ini(text: str) -> dict[str, dict[str, str]]:
    """The sections of a PgBouncer ini file, names and values as written."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"),
                                       inline_comment_prefixes=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def render_ini(sections: dict[str, dict[str, str]]) -> str:
    """An ini file holding ``sections``."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()) + "\n"
                   for name, settings in sections.items())


def bouncer_config(*, port: int, auth_file: Path, database: str, server_host: str,
                   server_port: int) -> dict[str, dict[str, str]]:
    """The deployed ini with the test's listener, password file and server in place of compose's."""
    shipped = read_ini(PGBOUNCER_INI.read_text())
    settings = dict(shipped["pgbouncer"])
    settings.update(listen_addr="127.0.0.1", listen_port=str(port), auth_file=str(auth_file))
    return {
        "databases": {database: f"host={server_host} port={server_port} dbname={database}"},
        "pgbouncer": settings,
    }


def test_the_test_runs_pgbouncer_with_the_deployed_settings_changed_only_where_it_listens() -> None:
    shipped = read_ini(PGBOUNCER_INI.read_text())
    ours = bouncer_config(port=7777, auth_file=Path("/x/userlist.txt"), database="db", server_host="h",
                          server_port=5)
    assert set(ours) == set(shipped) == {"databases", "pgbouncer"}
    assert set(ours["pgbouncer"]) == set(shipped["pgbouncer"])
    changed = {key for key, value in ours["pgbouncer"].items() if shipped["pgbouncer"][key] != value}
    assert changed == REPLACED
    assert shipped["pgbouncer"]["pool_mode"] == "transaction"
    # both pool one database the same way: host, port and dbname, nothing else
    ((name, target),) = shipped["databases"].items()
    assert sorted(part.split("=")[0] for part in target.split()) == ["dbname", "host", "port"]
    assert f"dbname={name}" in target.split()
    assert read_ini(render_ini(ours)) == ours


@dataclass
class PgBouncer:
    """A pgbouncer process on a loopback port, pooling one database of the machine's server."""

    port: int
    user: str
    password: str
    database: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None)
    if found is None:
        message = "pgbouncer is not installed (Debian/Ubuntu package `pgbouncer`; .ci/run installs it)"
        if services_required():
            pytest.fail(f"{message} (TRADE_ENGINE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(f"{message} (set TRADE_ENGINE_REQUIRE_SERVICES=1 to fail instead)")
    return found


@pytest.fixture
def pgbouncer(machine_pg_url: str) -> Iterator[PgBouncer]:
    binary = _pgbouncer_binary()
    server = urlsplit(machine_pg_url)
    database = server.path.lstrip("/")
    user = server.username or "postgres"
    # PgBouncer logs in to the server with the password it checks clients against: the server's own
    # when it has one, any (a trusting server asks for none) otherwise.
    password = server.password or secrets.token_hex(12)
    # Not under pytest's tmp_path: as root, pgbouncer must run as another user (it refuses root), who
    # cannot enter /tmp/pytest-of-root.
    workdir = Path(tempfile.mkdtemp(prefix="tradeengine-test-pgbouncer-"))
    port = free_port()
    auth_file = workdir / "userlist.txt"
    auth_file.write_text(f'"{user}" "{password}"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(render_ini(bouncer_config(port=port, auth_file=auth_file, database=database,
                                             server_host=server.hostname or "127.0.0.1",
                                             server_port=server.port or 5432)))
    command = [binary, str(ini)]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (workdir, auth_file, ini):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        command[1:1] = ["-u", "nobody"]
    log = workdir / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    bouncer = PgBouncer(port, user, password, database, log, process)
    try:
        _wait_accepting(bouncer)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_accepting(bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + START_LIMIT
    while True:
        if bouncer.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {bouncer.process.returncode}:\n{bouncer.output()}")
        try:
            with socket.create_connection(("127.0.0.1", bouncer.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer not listening within {START_LIMIT:g} s:\n"
                                     f"{bouncer.output()}") from None
            time.sleep(0.05)


class Api:
    """The engine's HTTP API with one key."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key

    def call(self, method: str, path: str, expect: int, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, self.base + path, json=body, timeout=10,
                                    headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        rows = self.call("GET", "/api/v1/balances", 200)["balances"]
        return {row["asset"]: (Decimal(row["available"]), Decimal(row["locked"])) for row in rows}

    def order(self, expect: int = 201, **order: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/api/v1/orders", expect,
                                           {"symbol": PAIR, "type": "LIMIT", **order})
        return result


def _fee(amount: Decimal, rate: Decimal) -> Decimal:
    return (amount * rate).quantize(Decimal("0.00000001"), rounding=ROUND_UP)


def _signed_in_through(bouncer: PgBouncer) -> int:
    """How many times the engine's connections logged in to PgBouncer (log_connections = 1)."""
    return sum(1 for line in bouncer.output().splitlines()
               if "login attempt" in line and f"db={bouncer.database}" in line)


def test_serve_trades_end_to_end_through_pgbouncer_in_transaction_mode(
        engines: Engines, pgbouncer: PgBouncer, machine_pg_url: str, tmp_path: Path) -> None:
    def start() -> Engine:
        return engines.start(tmp_path / "data", database_url=pgbouncer.url, database_prepare="false",
                             bootstrap_admin_key=ADMIN_KEY)

    engine = start()
    engine.wait_ready()
    with psycopg.connect(machine_pg_url) as conn:  # migrated through PgBouncer, every file once
        applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert applied == [m.name for m in load_migrations()]

    admin = Api(engine.base, ADMIN_KEY)
    users = {}
    for name in ("alice", "bob"):
        created = admin.call("POST", "/api/v1/admin/users", 201, {"name": name, "role": "trader"})
        users[name] = (created["user"]["id"], Api(engine.base, created["api_key"]))
    (alice_id, alice), (bob_id, bob) = users["alice"], users["bob"]
    admin.call("POST", f"/api/v1/admin/users/{alice_id}/deposits", 201, {"asset": "BTC", "amount": "1"})
    admin.call("POST", f"/api/v1/admin/users/{bob_id}/deposits", 201, {"asset": "USDT", "amount": "100000"})
    pair = admin.call("GET", f"/api/v1/pairs/{PAIR}", 200)
    maker, taker = Decimal(pair["maker_fee"]), Decimal(pair["taker_fee"])

    resting = alice.order(side="SELL", quantity="0.5", price="50000")["order"]
    assert resting["status"] == "OPEN"
    first = bob.order(side="BUY", quantity="0.2", price="50100")
    assert first["order"]["status"] == "FILLED"
    assert [(t["price"], t["quantity"]) for t in first["trades"]] == [("50000", "0.2")]
    for _ in range(8):  # past psycopg's prepare threshold (5) on every connection of the pool
        fill = bob.order(side="BUY", quantity="0.01", price="50000")
        assert fill["order"]["status"] == "FILLED" and fill["trades"][0]["seller_order_id"] == resting["id"]
    bought = Decimal("0.28")
    for i in range(8):
        placed = alice.order(side="SELL", quantity="0.1", price="60000", client_order_id=f"far-{i}")["order"]
        cancelled = alice.call("DELETE", f"/api/v1/orders/{placed['id']}", 200)
        assert cancelled["status"] == "CANCELLED"
    for _ in range(8):
        listed = alice.call("GET", f"/api/v1/orders?symbol={PAIR}&limit=100", 200)["orders"]
        assert sorted(o["status"] for o in listed) == ["CANCELLED"] * 8 + ["PARTIALLY_FILLED"]
        assert alice.call("GET", "/api/v1/orders/by-client-id/far-0", 200)["status"] == "CANCELLED"
        trades = bob.call("GET", f"/api/v1/trades?symbol={PAIR}&limit=100", 200)["trades"]
        assert len(trades) == 9 and {t["role"] for t in trades} == {"TAKER"}

    remaining = Decimal("0.5") - bought
    proceeds = bought * 50000
    expected_bob = {"BTC": (bought - _fee(Decimal("0.2"), taker) - 8 * _fee(Decimal("0.01"), taker),
                            Decimal(0)),
                    "USDT": (Decimal(100000) - proceeds, Decimal(0))}
    expected_alice = {"BTC": (Decimal("0.5"), remaining),
                      "USDT": (proceeds - _fee(Decimal(10000), maker) - 8 * _fee(Decimal(500), maker),
                               Decimal(0))}
    for _ in range(6):
        assert bob.balances() == expected_bob
        assert alice.balances() == expected_alice
    with psycopg.connect(machine_pg_url) as conn:  # fees went to the fee account: nothing made or lost
        totals: dict[str, Decimal] = dict(
            conn.execute("SELECT asset, sum(available + locked) FROM balances GROUP BY asset").fetchall())
    assert totals == {"BTC": Decimal(1), "USDT": Decimal(100000)}

    logins = _signed_in_through(pgbouncer)
    assert logins >= 1, pgbouncer.output()
    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0

    again = start()  # migrations again: nothing to do, no lock left
    again.wait_ready()
    assert _signed_in_through(pgbouncer) > logins
    book = requests.get(f"{again.base}/api/v1/orderbook/{PAIR}", timeout=10).json()
    assert [(Decimal(level["price"]), Decimal(level["quantity"])) for level in book["asks"]] == [
        (Decimal(50000), remaining)]
    bob_again = Api(again.base, bob.key)
    last = bob_again.order(side="BUY", quantity=str(remaining), price="50000")
    assert last["order"]["status"] == "FILLED"
    assert last["trades"][0]["seller_order_id"] == resting["id"]
    alice_again = Api(again.base, alice.key)
    assert alice_again.call("GET", f"/api/v1/orders/{resting['id']}", 200)["status"] == "FILLED"
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0

    problems = [record for e in (engine, again) for record in e.log_records()
                if record.get("level") in ("ERROR", "CRITICAL")]
    assert problems == []
    assert "prepared statement" not in pgbouncer.output()
