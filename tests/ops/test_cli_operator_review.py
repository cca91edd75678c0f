"""What an operator meets when something is wrong: one line and a clear exit status, never a traceback,
and commands that only read never change the database (only ``migrate`` and ``serve`` migrate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import free_port
from tradeengine.ops import database as ops_database
from tradeengine.ops.database import DatabaseRefused, StartupError, wait_for_database
from tradeengine.storage.errors import StorageUnavailable
from tradeengine.storage.migrate import apply_migrations, load_migrations


def _run(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_ENGINE_")}
    env.update({f"TRADE_ENGINE_{key.upper()}": value for key, value in settings.items()})
    env.setdefault("TRADE_ENGINE_DATA_DIR", str(cwd / "data"))
    env.setdefault("TRADE_ENGINE_HTTP_PORT", str(free_port()))  # no engine answers there
    return subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return [row[0] for row in rows]


# -- 1. the read commands do not migrate ---------------------------------------------------------------


@pytest.mark.parametrize("command", [("pairs", "list"), ("users", "create", "alice")],
                         ids=["pairs-list", "users-create"])
def test_a_read_command_refuses_an_empty_database_and_leaves_it_empty(
        machine_pg_url: str, tmp_path: Path, command: tuple[str, ...]) -> None:
    url = machine_pg_url.replace("postgres@", "postgres:pw@", 1)  # trust: the password is not checked
    result = _run(*command, cwd=tmp_path, database_url=url)
    assert result.returncode == 1
    shown = url.replace(":pw@", ":***@")
    assert _one_line(result) == (f"trade-engine: the database at {shown} is not migrated (no migrations "
                                 "applied); run `trade-engine migrate` (or wait: a `serve` starting "
                                 "on it applies them)")
    assert result.stdout == ""
    assert _tables(machine_pg_url) == []


def test_a_read_command_refuses_a_database_behind_the_code(machine_pg_url: str, tmp_path: Path) -> None:
    shipped = load_migrations()
    older = tmp_path / "older"
    older.mkdir()
    for migration in shipped[:-1]:
        (older / migration.name).write_bytes(migration.sql)
    apply_migrations(machine_pg_url, source=older)  # type: ignore[arg-type]  # a Path is a Traversable
    with psycopg.connect(machine_pg_url) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()

    result = _run("users", "create", "alice", cwd=tmp_path, database_url=machine_pg_url)
    assert result.returncode == 1
    line = _one_line(result)
    assert f"(1 of {len(shipped)} migrations pending, the first {shipped[-1].name})" in line
    assert line.endswith("run `trade-engine migrate` (or wait: a `serve` starting on it applies them)")
    with psycopg.connect(machine_pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == users  # nobody created

    assert _run("migrate", cwd=tmp_path, database_url=machine_pg_url).returncode == 0
    assert _run("users", "create", "alice", cwd=tmp_path, database_url=machine_pg_url).returncode == 0


def test_users_create_on_a_fresh_embedded_folder_starts_nothing_and_says_to_migrate(tmp_path: Path) -> None:
    result = _run("users", "create", "alice", cwd=tmp_path)
    assert result.returncode == 1
    pgdata = (tmp_path / "data" / "postgres").absolute()
    assert _one_line(result) == (f"trade-engine: the database at {pgdata} is not migrated (no embedded "
                                 "PostgreSQL there yet); run `trade-engine migrate`")
    assert not pgdata.exists()  # no cluster initialised only to be refused


# -- 2. an unusable data folder -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("pairs", "list"), ("serve",), ("migrate",)])
@pytest.mark.parametrize("folder", ["under-proc", "a-regular-file"])
def test_an_unusable_data_folder_is_one_line_naming_the_setting(
        tmp_path: Path, command: tuple[str, ...], folder: str) -> None:
    if folder == "under-proc":
        data_dir, error = "/proc/nope", "No such file or directory"
    else:
        (tmp_path / "file").write_text("")
        data_dir, error = str(tmp_path / "file"), "File exists"
    result = _run(*command, cwd=tmp_path, data_dir=data_dir)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith(f"trade-engine: TRADE_ENGINE_DATA_DIR {data_dir} cannot be used")
    assert error in line


# -- 3. errors no retry can fix are not retried ----------------------------------------------------------


@pytest.mark.parametrize(("database", "user", "sqlstate"), [
    ("te_test_no_such_database", "postgres", "3D000"), ("postgres", "te_test_no_such_role", "28000"),
], ids=["no-such-database", "no-such-role"])
def test_waiting_for_a_database_fails_at_once_when_it_refuses(
        machine_pg_admin_url: str, database: str, user: str, sqlstate: str) -> None:
    url = machine_pg_admin_url.replace("postgres@", f"{user}:s3cret@", 1).rsplit("/", 1)[0] + f"/{database}"
    started = time.monotonic()
    with pytest.raises(DatabaseRefused) as caught:
        wait_for_database(url, 30, pause=0.2)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"SQLSTATE {sqlstate}; not retried" in message and "\n" not in message
    assert "s3cret" not in message
    assert isinstance(caught.value, StartupError)  # serve prints it as its one line


def test_serve_on_a_database_that_does_not_exist_ends_at_once(machine_pg_admin_url: str,
                                                             tmp_path: Path) -> None:
    url = machine_pg_admin_url.rsplit("/", 1)[0] + "/te_test_no_such_database"
    started = time.monotonic()
    result = _run("serve", cwd=tmp_path, database_url=url)
    assert time.monotonic() - started < 20  # not the 30 s of waiting for a database that does not answer
    assert result.returncode == 1
    assert "does not exist" in _one_line(result) and "3D000" in result.stderr


def _fails_with(cause: Exception) -> object:
    def check(url: str, timeout: float) -> None:
        raise StorageUnavailable(f"database check: database unavailable ({cause})") from cause
    return check


@pytest.mark.parametrize("cause", [
    psycopg.errors.InvalidPassword("password authentication failed"),  # a SQLSTATE of its own
    psycopg.OperationalError('connection failed: connection to server at "db", port 5432 failed: FATAL:  '
                             'password authentication failed for user "engine"'),  # only libpq's words
], ids=["sqlstate", "message"])
def test_a_wrong_password_is_not_retried(monkeypatch: pytest.MonkeyPatch, cause: Exception) -> None:
    monkeypatch.setattr(ops_database, "check_database", _fails_with(cause))
    with pytest.raises(DatabaseRefused, match=r"invalid_password, SQLSTATE 28P01"):
        wait_for_database("postgresql://engine:pw@db/tradeengine", 30, pause=0.01)


def test_a_refused_connection_is_still_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def check(url: str, timeout: float) -> None:
        calls.append(url)
        if len(calls) < 3:
            cause = psycopg.OperationalError("connection failed: Connection refused")
            raise StorageUnavailable("database check: database unavailable") from cause

    monkeypatch.setattr(ops_database, "check_database", check)
    wait_for_database("postgresql://engine@db/tradeengine", 30, pause=0.01)
    assert len(calls) == 3


# -- 4. one line where a traceback was ------------------------------------------------------------------


def test_a_closed_stdout_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADE_ENGINE_")}
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` having exited: the first write meets a closed pipe
    try:
        process = subprocess.run([sys.executable, "-m", "tradeengine.ops.cli", "version"], env=env,
                                 cwd=tmp_path, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
                                 check=False)
    finally:
        os.close(writer)
    assert process.returncode == 141
    assert process.stderr == ""


def test_bench_engine_on_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    result = _run("bench", "engine", "--database-url", f"postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres",
                  cwd=tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("trade-engine: bench engine: cannot create the bench database on ")
    assert "Connection refused" in line and ":pw@" not in line


def test_bench_http_on_an_unreachable_url_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _run("bench", "http", "--url", url, "--admin-key", "te_x0123456789abcdef", cwd=tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith(f"trade-engine: bench http: no server answers at {url} (")
    assert "Connection refused" in line


# -- 5. help ---------------------------------------------------------------------------------------------


def test_only_serve_and_the_top_level_help_list_every_setting(tmp_path: Path) -> None:
    for args in (("--help",), ("serve", "--help")):
        assert "TRADE_ENGINE_PUBLIC_RATE_BURST" in _run(*args, cwd=tmp_path).stdout
    for args, named in ((("version",), ()), (("users", "create"), ("TRADE_ENGINE_DATABASE_URL",)),
                        (("actors",), ("TRADE_ENGINE_HTTP_PORT", "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY")),
                        (("events", "tail"), ("TRADE_ENGINE_BROKER_URL",))):
        shown = _run(*args, "--help", cwd=tmp_path)
        assert shown.returncode == 0
        assert "TRADE_ENGINE_PUBLIC_RATE_BURST" not in shown.stdout, args
        assert "see `trade-engine serve --help`" in shown.stdout, args
        assert all(name in shown.stdout for name in named), args


def test_help_texts_say_defaults_and_how_a_tail_stops(tmp_path: Path) -> None:
    create = " ".join(_run("users", "create", "--help", cwd=tmp_path).stdout.split())
    assert "--role {trader,admin} trader:" in create and "[default: trader]" in create
    tail = " ".join(_run("events", "tail", "--help", cwd=tmp_path).stdout.split())
    assert "until Ctrl-C or SIGTERM (either ends it quietly, exit status 0)" in tail
    core = " ".join(_run("bench", "core", "--help", cwd=tmp_path).stdout.split())
    assert "[default: 1000000]" in core and "[default: 5]" in core
    engine = " ".join(_run("bench", "engine", "--help", cwd=tmp_path).stdout.split())
    assert "[default: 20000]" in engine and "[default: process]" in engine
    http = " ".join(_run("bench", "http", "--help", cwd=tmp_path).stdout.split())
    assert "[default: 16]" in http and "[default: 10.0]" in http and "[default: 100]" in http


# -- 6. events tail --symbol ------------------------------------------------------------------------------


@pytest.fixture
def engine_with_pairs() -> Iterator[int]:
    """A stand-in engine answering ``GET /api/v1/pairs`` with BTC-USDT only; its port."""
    class Pairs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            known = self.path == "/api/v1/pairs"
            body = json.dumps({"pairs": [{"symbol": "BTC-USDT"}]}).encode() if known else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pairs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _tail(symbol: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    # a broker nobody listens on: a tail that goes on ends there, with its own one line
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    return _run("events", "tail", "--symbol", symbol, cwd=tmp_path, broker_url=broker, **settings)


def test_tail_refuses_a_symbol_of_the_wrong_shape(tmp_path: Path) -> None:
    result = _tail("btc-usdt", tmp_path)
    assert result.returncode == 2
    assert "'btc-usdt' is not a pair symbol BASE-QUOTE" in result.stderr


def test_tail_refuses_a_pair_the_running_engine_does_not_have(engine_with_pairs: int, tmp_path: Path) -> None:
    result = _tail("NOPE-XX", tmp_path, http_port=str(engine_with_pairs))
    assert result.returncode == 1
    assert _one_line(result) == (f"trade-engine: the engine at http://127.0.0.1:{engine_with_pairs} has no "
                                 "pair NOPE-XX (its pairs: BTC-USDT)")
    known = _tail("BTC-USDT", tmp_path, http_port=str(engine_with_pairs))
    assert "broker" in _one_line(known)  # accepted: it went on to the broker


def test_tail_warns_when_no_engine_answers_to_check_the_symbol(tmp_path: Path) -> None:
    result = _tail("NOPE-XX", tmp_path)
    warning, broker = result.stderr.strip().splitlines()
    assert warning.startswith("trade-engine: warning: NOPE-XX not checked: no engine answers")
    assert "broker" in broker and "Traceback" not in result.stderr

