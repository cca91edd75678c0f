"""Shared service fixtures: PostgreSQL (the machine's server and an embedded one), Redis, the broker.

Service URLs come from the environment, with loopback defaults:

    TRADE_ENGINE_TEST_DATABASE_URL  postgresql://postgres@127.0.0.1:5432/postgres  (a superuser: tests
                                    create and drop their own databases)
    TRADE_ENGINE_TEST_REDIS_URL     redis://127.0.0.1:6379/0
    TRADE_ENGINE_TEST_BROKER_URL    amqp://guest:guest@127.0.0.1:5672//

An unreachable service skips the tests that need it, with the reason; with
TRADE_ENGINE_REQUIRE_SERVICES=1 (CI) it fails them instead.

PostgreSQL fixtures give every test its own database, created with a unique name and dropped (WITH
FORCE) afterwards, so runs never collide:

    machine_pg_url    empty database on the machine's server
    embedded_pg_url   empty database on a session-wide embedded server (pgserver binaries, tmp dir)
    pg_url            parametrized over both: the test runs once on each ("machine", "embedded")
    migrated_pg_url   pg_url with every migration applied
    pg_pool           a small open pool on migrated_pg_url
    embedded_pg       the session's EmbeddedPostgres itself
    pg_data_dir       a folder for a test's own EmbeddedPostgres (server stopped, folder deleted after)
    redis_url, broker_url   reachable service URLs (reachability only, for now)
    engines           real ``trade-engine serve`` subprocesses (tests.e2e.conftest.Engines), stopped after
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Generator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import psycopg_pool
import pytest
from psycopg import sql

from tradeengine.storage import (
    EmbeddedPostgres,
    StorageUnavailable,
    apply_migrations,
    check_database,
    create_pool,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Engines

pytest_plugins = ["pytester", "tests.broker_harness", "tests.redis_harness"]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
TEST_DATABASE_PREFIX = "te_test_"

# Throw-away test clusters need no crash safety; these settings make them several times faster.
# Never use them for real data.
_FAST_UNSAFE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def services_required() -> bool:
    """True when an unreachable service must fail the test instead of skipping it."""
    return os.environ.get("TRADE_ENGINE_REQUIRE_SERVICES") == "1"


def service_unavailable(service: str, url: str, reason: object) -> NoReturn:
    """Skip the current test because ``service`` is unreachable, or fail it when services are required."""
    message = f"{service} is not reachable at {url}: {reason}"
    if services_required():
        pytest.fail(f"{message} (TRADE_ENGINE_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(f"{message} (set TRADE_ENGINE_REQUIRE_SERVICES=1 to fail instead)")


def url_with_database(url: str, database: str) -> str:
    """Return the PostgreSQL URL ``url`` pointing at ``database`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def machine_pg_admin_url() -> str:
    """The URL of the machine's PostgreSQL server (admin database), once it answered."""
    url = os.environ.get("TRADE_ENGINE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        check_database(url, timeout=3.0)
    except StorageUnavailable as exc:
        service_unavailable("PostgreSQL", url, exc)
    return url


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server from the pgserver wheel, data in a temp dir, for the whole session."""
    stop_orphaned_test_servers()
    data_dir = make_pg_data_dir()
    server = EmbeddedPostgres(data_dir, server_settings=_FAST_UNSAFE_SETTINGS)
    try:
        server.start()
        yield server
    finally:
        discard_pg_data_dir(data_dir)


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """A fresh folder for an ``EmbeddedPostgres`` of the test's own; any server in it is stopped after."""
    data_dir = make_pg_data_dir()
    try:
        yield data_dir
    finally:
        discard_pg_data_dir(data_dir)


# Embedded test servers keep their data in /tmp/tradeengine-test-pg-*, NOT under pytest's tmp_path:
# under root the server runs as the `pgserver` user, and every pytest session (ours, a colleague's,
# a pytester run) resets /tmp/pytest-of-<user> to mode 0700, which would cut a running server off
# from its own files.
_DATA_DIR_PREFIX = "tradeengine-test-pg-"
_OWNER_FILE = "owner.pid"


def make_pg_data_dir(root: Path | None = None) -> Path:
    """Create a data folder for an embedded test server, stamped with this process as its owner."""
    data_dir = Path(tempfile.mkdtemp(prefix=_DATA_DIR_PREFIX, dir=root))
    (data_dir / _OWNER_FILE).write_text(str(os.getpid()))
    return data_dir


def discard_pg_data_dir(data_dir: Path) -> None:
    """Stop the server of ``data_dir`` if one runs, then delete the folder."""
    EmbeddedPostgres(data_dir).stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def stop_orphaned_test_servers(root: Path | None = None) -> None:
    """Stop and delete the embedded test servers whose pytest process died without cleaning up.

    A session killed with SIGKILL (or by a CI timeout) never runs its finalizers, so its server would
    run forever. Folders of live processes (other sessions running now) are left alone.
    """
    for data_dir in Path(root or tempfile.gettempdir()).glob(f"{_DATA_DIR_PREFIX}*"):
        try:
            owner = int((data_dir / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if not psutil.pid_exists(owner):
            discard_pg_data_dir(data_dir)


def _scratch_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    """Create a uniquely named database (empty, or a copy of ``template``), yield its URL, drop it after."""
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield url_with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def machine_pg_url(machine_pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the machine's PostgreSQL server."""
    yield from _scratch_database(machine_pg_admin_url)


@pytest.fixture
def embedded_pg_url(embedded_pg: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, empty database on the session's embedded PostgreSQL server."""
    yield from _scratch_database(embedded_pg.url("postgres"))


@pytest.fixture(params=["machine", "embedded"])
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database; the test runs once on the machine's server and once on the embedded one."""
    url: str = request.getfixturevalue(f"{request.param}_pg_url")
    return url


class _MigratedTemplates:
    """Databases with every migration applied, for the session's tests to copy: copying one costs a third
    of migrating a fresh one (~0.15 s against ~0.4 s, a few hundred times a run). One per UTC day: the
    migrations create the time partitions of the day they run and of the days ahead, so a run that
    crosses midnight migrates a new one. Nobody connects to a template once it is migrated (PostgreSQL
    copies only a database without sessions); all are dropped at the end of the session."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._by_day: dict[date, str] = {}
        self._databases: list[Generator[str, None, None]] = []

    def today(self) -> str:
        """The name of today's template (migrated now if there is none yet)."""
        day = datetime.now(UTC).date()
        if day not in self._by_day:
            databases = _scratch_database(self._admin_url)
            url = next(databases)
            self._databases.append(databases)
            apply_migrations(url)
            self._by_day[day] = urlsplit(url).path.lstrip("/")
        return self._by_day[day]

    def close(self) -> None:
        """Drop every template."""
        for databases in self._databases:
            databases.close()


@pytest.fixture(scope="session")
def machine_migrated_templates(machine_pg_admin_url: str) -> Iterator[_MigratedTemplates]:
    """Migrated databases on the machine's server, to copy (see ``_MigratedTemplates``)."""
    templates = _MigratedTemplates(machine_pg_admin_url)
    yield templates
    templates.close()


@pytest.fixture(scope="session")
def embedded_migrated_templates(embedded_pg: EmbeddedPostgres) -> Iterator[_MigratedTemplates]:
    """Migrated databases on the embedded server, to copy (see ``_MigratedTemplates``)."""
    templates = _MigratedTemplates(embedded_pg.url("postgres"))
    yield templates
    templates.close()


@pytest.fixture(params=["machine", "embedded"])
def migrated_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database with every migration applied (a copy of today's migrated template); the
    test runs once on the machine's server and once on the embedded one, like ``pg_url``."""
    if request.param == "machine":
        admin_url: str = request.getfixturevalue("machine_pg_admin_url")
    else:
        admin_url = request.getfixturevalue("embedded_pg").url("postgres")
    templates: _MigratedTemplates = request.getfixturevalue(f"{request.param}_migrated_templates")
    yield from _scratch_database(admin_url, templates.today())


@pytest.fixture
def pg_pool(migrated_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    """A small open connection pool on a migrated database."""
    pool = create_pool(migrated_pg_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    """Start real ``trade-engine serve`` processes with ``engines.start(...)``; every one is stopped after
    the test (the end-to-end suite and the command line's tests against a running engine)."""
    from tests.e2e.conftest import Engines

    started = Engines(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def tcp_unreachable_reason(url: str, default_port: int, timeout: float = 2.0) -> str | None:
    """Return why the host:port of ``url`` does not accept TCP connections, or None when it does."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis server."""
    url = os.environ.get("TRADE_ENGINE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if urlsplit(url).scheme == "unix":
        reason = None if Path(urlsplit(url).path).exists() else "no such socket"
    else:
        reason = tcp_unreachable_reason(url, default_port=6379)
    if reason is not None:
        service_unavailable("Redis", url, reason)
    return url


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The URL of a reachable message broker (``memory://`` needs no server)."""
    url = os.environ.get("TRADE_ENGINE_TEST_BROKER_URL", DEFAULT_BROKER_URL)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return url
    reason = tcp_unreachable_reason(url, default_port=5671 if scheme == "amqps" else 5672)
    if reason is not None:
        service_unavailable("The message broker", url, reason)
    return url
