"""The shared service fixtures of tests/conftest.py skip, or fail when services are required."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tradeengine.storage import EmbeddedPostgres
from tradeengine.storage.embedded import cluster_processes

CONFTEST = Path(__file__).parents[1] / "conftest.py"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run_with_fixture(pytester: pytest.Pytester, fixture: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(f"def test_needs_the_service({fixture}):\n    assert {fixture}\n")
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")


SERVICES = [
    ("machine_pg_url", "TRADE_ENGINE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:{port}/postgres"),
    ("redis_url", "TRADE_ENGINE_TEST_REDIS_URL", "redis://127.0.0.1:{port}/0"),
    ("broker_url", "TRADE_ENGINE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:{port}//"),
]


@pytest.mark.parametrize(("fixture", "variable", "url"), SERVICES)
def test_an_unreachable_service_skips_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fixture: str, variable: str, url: str
) -> None:
    monkeypatch.delenv("TRADE_ENGINE_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv(variable, url.format(port=closed_port()))

    result = run_with_fixture(pytester, fixture)

    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*is not reachable at *127.0.0.1*set TRADE_ENGINE_REQUIRE_SERVICES=1*"])


@pytest.mark.parametrize(("fixture", "variable", "url"), SERVICES)
def test_an_unreachable_service_fails_when_services_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fixture: str, variable: str, url: str
) -> None:
    monkeypatch.setenv("TRADE_ENGINE_REQUIRE_SERVICES", "1")
    monkeypatch.setenv(variable, url.format(port=closed_port()))

    result = run_with_fixture(pytester, fixture)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*is not reachable at *(TRADE_ENGINE_REQUIRE_SERVICES=1)*"])


@pytest.mark.parametrize(("fixture", "variable", "url"), SERVICES[1:])
def test_a_reachable_service_gives_its_url(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    listening_port: int,
    fixture: str,
    variable: str,
    url: str,
) -> None:
    monkeypatch.setenv("TRADE_ENGINE_REQUIRE_SERVICES", "1")
    monkeypatch.setenv(variable, url.format(port=listening_port))

    run_with_fixture(pytester, fixture).assert_outcomes(passed=1)


def test_the_in_memory_broker_needs_no_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADE_ENGINE_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("TRADE_ENGINE_TEST_BROKER_URL", "memory://")
    run_with_fixture(pytester, "broker_url").assert_outcomes(passed=1)


def test_each_test_gets_its_own_empty_database(machine_pg_url: str, embedded_pg_url: str) -> None:
    for url in (machine_pg_url, embedded_pg_url):
        with psycopg.connect(url) as conn:
            name = conn.execute("SELECT current_database()").fetchone()
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert name is not None and name[0].startswith("te_test_")
        assert tables == (0,)


def test_an_embedded_server_orphaned_by_a_killed_session_is_stopped(
    request: pytest.FixtureRequest, pg_data_dir: Path
) -> None:
    conftest = request.config.pluginmanager.get_plugin(str(CONFTEST))
    assert conftest is not None, "tests/conftest.py is not registered under its path"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan_dir = conftest.make_pg_data_dir(root=pg_data_dir)
    (orphan_dir / "owner.pid").write_text(str(gone.pid))
    live_dir = conftest.make_pg_data_dir(root=pg_data_dir)
    orphan = EmbeddedPostgres(orphan_dir, server_settings={"fsync": "off"})
    alive = EmbeddedPostgres(live_dir, server_settings={"fsync": "off"})
    try:
        orphan.start()
        alive.start()

        conftest.stop_orphaned_test_servers(root=pg_data_dir)

        assert cluster_processes(orphan.pgdata) == []
        assert not orphan_dir.exists()
        assert cluster_processes(alive.pgdata) != []
    finally:
        alive.stop()
