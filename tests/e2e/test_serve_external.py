"""``trade-engine serve`` against the machine's PostgreSQL (TRADE_ENGINE_DATABASE_URL), through a proxy
the test can cut: /ready follows the database through an outage without a restart, and an admin who
used their key before it can still list the actors."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psycopg
import requests

from tradeengine.http.auth import KEY_CACHE_SECONDS

from .conftest import Engines, TcpProxy, postgres_processes, wait_until


def test_ready_turns_503_naming_the_database_while_it_is_unreachable_and_200_when_it_returns(
        engines: Engines, pg_proxy: TcpProxy, machine_pg_url: str, tmp_path: Path) -> None:
    admin_key = "te_" + "5" * 40
    engine = engines.start(tmp_path / "data", database_url=pg_proxy.url(machine_pg_url),
                           bootstrap_admin_key=admin_key)
    engine.wait_ready()

    def actors(key: str) -> requests.Response:
        return requests.get(engine.base + "/api/v1/admin/actors", timeout=10,
                            headers={"Authorization": f"Bearer {key}"})

    assert actors(admin_key).status_code == 200
    with psycopg.connect(machine_pg_url) as conn:  # migrations ran at start, on the external database
        assert conn.execute("SELECT count(*) FROM pairs").fetchone()[0] > 0  # type: ignore[index]
    assert postgres_processes(tmp_path / "data") == []  # nothing embedded was started

    pg_proxy.cut()
    outage: dict[str, object] = {}

    def reports_the_outage() -> bool:
        started = time.monotonic()
        answer = engine.get("/ready", timeout=10)
        outage.update(status=answer.status_code, body=answer.json(), seconds=time.monotonic() - started)
        return answer.status_code == 503

    wait_until(reports_the_outage, 15, "/ready answering 503")
    body = outage["body"]
    assert isinstance(body, dict)
    assert body["status"] == "not_ready"
    assert body["checks"]["database"].startswith("unavailable: ")
    assert body["checks"]["actors"] == "ok"
    assert float(outage["seconds"]) < 3.0  # type: ignore[arg-type]  # bounded, never hangs
    assert engine.get("/health").status_code == 200
    time.sleep(KEY_CACHE_SECONDS + 0.5)  # past the key's cache period: the database is asked, cannot answer
    started = time.monotonic()
    listed = actors(admin_key)
    assert listed.status_code == 200, listed.text
    assert time.monotonic() - started < 3.0
    assert {"writer", "wallet"} <= {actor["name"] for actor in listed.json()["actors"]}, listed.json()
    unknown = actors("te_" + "6" * 40)  # never used before the outage: the database must answer for it
    assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "UNAVAILABLE"

    pg_proxy.restore()
    wait_until(lambda: engine.get("/ready", timeout=10).status_code == 200, 30, "/ready answering 200 again")
    assert engine.process.poll() is None  # the same process: no restart

    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0


def test_a_migration_error_ends_serve_with_one_line_and_a_non_zero_status(
        engines: Engines, machine_pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(machine_pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL UNIQUE,"
                     " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                     "VALUES (9999, '9999_from_the_future.sql', repeat('0', 64))")
    engine = engines.start(tmp_path / "data", database_url=machine_pg_url)
    assert engine.wait_exit(30) == 1
    plain = [line for line in engine.stderr().splitlines() if line.startswith("trade-engine:")]
    assert len(plain) == 1 and "9999_from_the_future.sql" in plain[0], engine.stderr()


def test_ready_checks_redis_and_the_broker_when_they_are_configured(
        engines: Engines, machine_pg_url: str, redis_url: str, broker_url: str, tmp_path: Path) -> None:
    engine = engines.start(tmp_path / "data", database_url=machine_pg_url, redis_url=redis_url,
                           broker_url=broker_url)
    engine.wait_ready()
    checks = engine.get("/ready").json()["checks"]
    expected = {"database": "ok", "redis": "ok", "actors": "ok"}
    if not broker_url.startswith("memory://"):
        expected["broker"] = "ok"
    assert checks == expected
    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0


def test_one_engine_per_database_and_a_port_in_use_is_refused_before_the_database_is_touched(
        engines: Engines, machine_pg_url: str, tmp_path: Path) -> None:
    first = engines.start(tmp_path / "one", database_url=machine_pg_url)
    first.wait_ready()

    second = engines.start(tmp_path / "two", database_url=machine_pg_url)
    assert second.wait_exit(60) == 1
    plain = [line for line in second.stderr().splitlines() if line.startswith("trade-engine:")]
    assert len(plain) == 1 and "another trade-engine is serving the database" in plain[0], second.stderr()
    assert f"pid {first.pid}" in plain[0]  # the holder, by its application_name

    # the port is checked first: a database that does not exist is never reached
    third = engines.start(tmp_path / "three", port=first.port, database_url=f"{machine_pg_url}_missing")
    assert third.wait_exit(30) == 1
    plain = [line for line in third.stderr().splitlines() if line.startswith("trade-engine:")]
    assert len(plain) == 1 and f"cannot listen on 127.0.0.1:{first.port}" in plain[0], third.stderr()
    assert first.get("/ready").status_code == 200  # the first engine never noticed

    # kill -9 of the first engine's master alone: its worker must not keep the lock while it lingers
    first.signal(signal.SIGKILL)
    after = engines.start(tmp_path / "four", database_url=machine_pg_url)
    after.wait_ready()


def test_a_metrics_scrape_while_the_database_hangs_answers_and_holds_no_other_request(
        engines: Engines, pg_proxy: TcpProxy, machine_pg_url: str, tmp_path: Path) -> None:
    engine = engines.start(tmp_path / "data", database_url=pg_proxy.url(machine_pg_url))
    engine.wait_ready()
    pg_proxy.hang()  # open connections that answer nothing, not even a statement timeout
    try:
        scrapes: list[requests.Response] = []
        scraper = threading.Thread(target=lambda: scrapes.append(engine.get("/metrics", timeout=30)))
        scraper.start()
        while scraper.is_alive():  # the event loop answers everything else meanwhile
            started = time.monotonic()
            assert engine.get("/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
            time.sleep(0.1)
        [scrape] = scrapes
        assert scrape.status_code == 200  # without the figures it could not read in time
        assert "trade_engine_outbox_unpublished_rows" not in scrape.text
        assert 'trade_engine_scrape_errors_total{source="outbox"} 1.0' in scrape.text
        assert 'trade_engine_actor_state{actor="writer",state="running"} 1.0' in scrape.text
    finally:
        pg_proxy.flow()
    wait_until(lambda: "trade_engine_outbox_unpublished_rows" in engine.get("/metrics", timeout=10).text,
               30, "the outbox figures scraped again")
    assert engine.process.poll() is None  # the same process: no restart

    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0
