"""The ``trade-engine`` command as a real process: help, version, a bad setting, migrate, pairs list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_ENGINE_")}
    env.update({f"TRADE_ENGINE_{key.upper()}": value for key, value in settings.items()})
    env.setdefault("TRADE_ENGINE_DATA_DIR", str(cwd / "data"))
    return subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_bad_setting_ends_serve_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = _run("serve", cwd=tmp_path, http_port="abc")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TRADE_ENGINE_HTTP_PORT" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing was started


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = _run("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("trade-engine ")


def test_help_and_serve_help_list_commands_and_settings(tmp_path: Path) -> None:
    top = _run("--help", cwd=tmp_path)
    assert top.returncode == 0
    assert "serve" in top.stdout and "migrate" in top.stdout
    serve = _run("serve", "--help", cwd=tmp_path)
    assert serve.returncode == 0
    assert "TRADE_ENGINE_HTTP_PORT" in serve.stdout and "gunicorn" in serve.stdout


def test_migrate_then_pairs_list_against_a_fresh_database(machine_pg_url: str, tmp_path: Path) -> None:
    first = _run("migrate", cwd=tmp_path, database_url=machine_pg_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied ") and not first.stdout.startswith("applied 0 ")
    again = _run("migrate", cwd=tmp_path, database_url=machine_pg_url)
    assert again.stdout.strip() == "applied 0 migration(s)"
    listed = _run("pairs", "list", cwd=tmp_path, database_url=machine_pg_url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["SYMBOL", "STATUS"]
    # decimals as the API renders them (no trailing zeros)
    assert ["BTC-USDT", "ACTIVE", "0.01", "0.00001", "0.00001", "9000", "10", "0.0008", "0.001"] in [
        row.split() for row in rows]
    as_json = _run("pairs", "list", "--json", cwd=tmp_path, database_url=machine_pg_url)
    assert as_json.returncode == 0, as_json.stderr
    pairs = {p["symbol"]: p for p in json.loads(as_json.stdout)["pairs"]}
    assert len(pairs) == len(rows)
    assert pairs["BTC-USDT"] == {"symbol": "BTC-USDT", "base_asset": "BTC", "quote_asset": "USDT",
                                 "tick_size": "0.01", "lot_size": "0.00001", "min_quantity": "0.00001",
                                 "max_quantity": "9000", "min_notional": "10", "maker_fee": "0.0008",
                                 "taker_fee": "0.001", "status": "ACTIVE"}
    assert not (tmp_path / "data").exists()  # an external database needs no data folder


def test_migrate_with_the_embedded_database_starts_and_stops_it(tmp_path: Path) -> None:
    import psutil

    result = _run("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied ")
    # the migrated embedded database is then used as it is by the commands that do not migrate
    made = _run("users", "create", "alice", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("created trader alice ")
    data_dir = str((tmp_path / "data").resolve())
    left = [p for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and any(data_dir in a for a in p.info["cmdline"] or ())]
    assert left == []


def test_users_create_prints_a_key_once_that_authenticates_the_new_user(machine_pg_url: str,
                                                                       tmp_path: Path) -> None:
    import json
    import re

    from tradeengine.storage import create_pool
    from tradeengine.storage.users import UserRepository

    assert _run("migrate", cwd=tmp_path, database_url=machine_pg_url).returncode == 0
    made = _run("users", "create", "alice", "--role", "admin", "--json", cwd=tmp_path,
                database_url=machine_pg_url)
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    assert answer["user"]["name"] == "alice" and answer["user"]["role"] == "admin"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", answer["user"]["created_at"])  # as the API
    pool = create_pool(machine_pg_url, min_size=1, max_size=1)
    try:
        principal = UserRepository(pool).authenticate(answer["api_key"])
    finally:
        pool.close()
    assert principal is not None and str(principal.user_id) == answer["user"]["id"]

    again = _run("users", "create", "alice", cwd=tmp_path, database_url=machine_pg_url)
    assert again.returncode == 1
    assert again.stderr.strip() == "trade-engine: a user named alice exists already"


def test_users_list_keys_issue_key_and_revoke_key_rotate_a_key_on_the_database(machine_pg_url: str,
                                                                               tmp_path: Path) -> None:
    import json

    from tradeengine.storage import create_pool
    from tradeengine.storage.users import UserRepository

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run("users", *args, cwd=tmp_path, database_url=machine_pg_url)

    assert _run("migrate", cwd=tmp_path, database_url=machine_pg_url).returncode == 0
    old_key = json.loads(run("create", "bob", "--json").stdout)["api_key"]
    issued = run("issue-key", "bob")
    assert issued.returncode == 0, issued.stderr
    new_key = issued.stdout.split("api key (shown once, keep it safe): ")[1].strip()
    header, *rows = run("list").stdout.splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "CREATED", "ACTIVE", "KEYS"]
    assert [(r.split()[1], r.split()[2], r.split()[4]) for r in rows] == [("fees", "system", "0"),
                                                                        ("bob", "trader", "2")]
    keys = json.loads(run("keys", "bob", "--json").stdout)["keys"]
    assert [(k["prefix"], k["revoked_at"]) for k in keys] == [(old_key[:10], None), (new_key[:10], None)]

    revoked = run("revoke-key", "bob", keys[0]["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == (f"revoked key {keys[0]['id']} ({old_key[:10]}…) of bob: "
                                      "a running engine refuses it within 5 s")
    again = run("revoke-key", "bob", keys[0]["id"])
    assert again.returncode == 0 and again.stdout.startswith(f"key {keys[0]['id']} ({old_key[:10]}…) of bob "
                                                             "was revoked already, at 20"), again.stdout
    table = run("keys", "bob").stdout.splitlines()
    assert table[1].split()[:2] == [keys[0]["id"], old_key[:10]] and table[1].split()[3] != "-"
    assert table[2].split()[3] == "-"
    pool = create_pool(machine_pg_url, min_size=1, max_size=1)
    try:
        users = UserRepository(pool)
        assert users.authenticate(old_key) is None
        assert users.authenticate(new_key) is not None
    finally:
        pool.close()

    for args, message in ((("keys", "nobody"), "no user is named nobody"),
                          (("revoke-key", "bob", "999999"), "bob holds no key 999999"),
                          (("issue-key", "fees"), "user 1 (fees) is an account of the exchange itself")):
        refused = run(*args)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith(f"trade-engine: {message}"), refused.stderr
    bad_id = run("revoke-key", "bob", "first")
    assert bad_id.returncode == 2 and "'first' is not a key id" in bad_id.stderr


def test_the_revoke_key_help_states_the_engines_key_cache_time(tmp_path: Path) -> None:
    from tradeengine.http.auth import KEY_CACHE_SECONDS

    shown = _run("users", "revoke-key", "--help", cwd=tmp_path)
    assert f"within {KEY_CACHE_SECONDS:g} s" in " ".join(shown.stdout.split())


def test_version_runs_whatever_the_environment_holds_and_an_early_ctrl_c_is_quiet(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tradeengine.ops import cli

    assert cli.main(["version"], environ={"TRADE_ENGINE_FOO": "1"}) == 0  # reads no setting
    assert capsys.readouterr().out.startswith("trade-engine ")
    assert cli.main(["migrate"], environ={"TRADE_ENGINE_FOO": "1"}) == 2  # reads settings: refused
    assert "TRADE_ENGINE_FOO: unknown setting" in capsys.readouterr().err

    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt  # as a Ctrl-C while a command's modules load

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["version"]) == 130
    assert capsys.readouterr().err == ""
