"""TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY creates the first admin when the engine starts, and only once."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg

from tradeengine.storage.users import key_digest

from .conftest import Engines


def _admins(url: str) -> list[tuple[str, bytes]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT u.name, k.key_hash FROM users u JOIN api_keys k ON k.user_id = u.id "
                            "WHERE u.role = 'admin' ORDER BY u.id").fetchall()
    return [(name, bytes(digest)) for name, digest in rows]


def test_serve_creates_the_bootstrap_admin_once_and_a_second_key_changes_nothing(
        engines: Engines, machine_pg_url: str, tmp_path: Path) -> None:
    key = "te_" + "b" * 32
    engine = engines.start(tmp_path / "data", database_url=machine_pg_url, bootstrap_admin_key=key)
    engine.wait_ready()
    assert _admins(machine_pg_url) == [("admin", key_digest(key))]
    assert "created the bootstrap admin" in engine.stderr()
    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0

    same = engines.start(tmp_path / "data", database_url=machine_pg_url, bootstrap_admin_key=key)
    same.wait_ready()
    assert "BOOTSTRAP_ADMIN_KEY" not in same.stderr()  # the admin's own key: nothing to say
    same.signal(signal.SIGTERM)
    assert same.wait_exit() == 0

    again = engines.start(tmp_path / "data", database_url=machine_pg_url,
                          bootstrap_admin_key="te_" + "c" * 32)
    again.wait_ready()
    assert _admins(machine_pg_url) == [("admin", key_digest(key))]  # an admin exists: nothing added
    warnings = [r for r in again.log_records() if "BOOTSTRAP_ADMIN_KEY" in r.get("message", "")]
    assert [r["level"] for r in warnings] == ["WARNING"], again.stderr()
    assert "users create NAME --role admin" in warnings[0]["message"]
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0
