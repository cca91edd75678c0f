"""EmbeddedPostgres: a real server from the pgserver wheel, started, stopped, crashed and reused."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from tradeengine.storage import EmbeddedPostgres
from tradeengine.storage.embedded import cluster_processes

FAST = {"fsync": "off", "synchronous_commit": "off"}


def processes_mentioning(pgdata: Path) -> list[psutil.Process]:
    """Every live process whose working directory or command line refers to ``pgdata``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.cwd() == str(pgdata) or str(pgdata) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def server(pg_data_dir: Path) -> Iterator[EmbeddedPostgres]:
    embedded = EmbeddedPostgres(pg_data_dir, server_settings=FAST)
    try:
        yield embedded
    finally:
        embedded.stop()  # whatever the test did, leave no server behind


def test_start_connect_stop_leaves_no_postgres_process(server: EmbeddedPostgres) -> None:
    url = server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tradeengine",)
    assert cluster_processes(server.pgdata)

    server.stop()

    assert processes_mentioning(server.pgdata) == []
    assert cluster_processes(server.pgdata) == []
    assert not (server.pgdata / "postmaster.pid").exists()


def test_the_server_listens_on_a_unix_socket_only(server: EmbeddedPostgres) -> None:
    url = server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert conn.info.host.startswith("/")


def test_a_suspended_server_is_killed_at_once_by_stop_and_starts_again_with_its_data(
        pg_data_dir: Path) -> None:
    server = EmbeddedPostgres(pg_data_dir)  # durable commits: a killed server keeps what it committed
    try:
        _suspended_server_is_killed_and_keeps_its_data(server)
    finally:
        server.stop()


def _suspended_server_is_killed_and_keeps_its_data(server: EmbeddedPostgres) -> None:
    url = server.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    pid = postmaster_pid(server.pgdata)
    os.kill(pid, signal.SIGSTOP)  # a hung server: it acts on no request
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel marks it stopped a moment after the signal

    started = time.monotonic()
    server.stop()

    assert time.monotonic() - started < 10.0  # not the minute of a fast shutdown's timeout
    assert cluster_processes(server.pgdata) == []
    with psycopg.connect(server.start()) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_stop_twice_or_before_start_is_harmless(server: EmbeddedPostgres) -> None:
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert processes_mentioning(server.pgdata) == []


def test_a_restart_keeps_the_data(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.start()) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    server.stop()

    again = EmbeddedPostgres(server.data_dir, server_settings=FAST)
    with psycopg.connect(again.start()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)
    again.stop()


def test_a_server_left_running_by_a_killed_process_is_reused(
    server: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tradeengine.storage import EmbeddedPostgres
        print(EmbeddedPostgres(Path({str(server.data_dir)!r})).start(), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        first_url = owner.stdout.readline().strip()
        assert first_url.startswith("postgresql://")
        pid = postmaster_pid(server.pgdata)
    finally:
        owner.kill()  # SIGKILL: the handle is gone, nobody stops the server
        owner.wait()
        owner.stdout.close()  # type: ignore[union-attr]
    assert psutil.pid_exists(pid)

    with caplog.at_level(logging.INFO, logger="tradeengine.storage.embedded"):
        url = server.start()
    assert url == first_url
    assert postmaster_pid(server.pgdata) == pid
    assert "reusing the PostgreSQL server already running" in caplog.text
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    server.stop()
    assert processes_mentioning(server.pgdata) == []


def test_a_killed_postmaster_leaves_a_stale_pid_file_that_does_not_block_a_start(
    server: EmbeddedPostgres,
) -> None:
    server.start()
    pid = postmaster_pid(server.pgdata)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (server.pgdata / "postmaster.pid").exists()

    with psycopg.connect(server.start()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert postmaster_pid(server.pgdata) != pid
    server.stop()
    assert processes_mentioning(server.pgdata) == []


def test_a_stale_pid_file_of_a_dead_process_is_cleared(server: EmbeddedPostgres) -> None:
    server.start()
    server.stop()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [str(dead.pid), str(server.pgdata), "0", "5432", "/tmp", "", "0 0", "ready"]
    (server.pgdata / "postmaster.pid").write_text("\n".join(stale) + "\n")

    with psycopg.connect(server.start()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_long_data_dir_gets_a_short_socket_dir(pg_data_dir: Path) -> None:
    server = EmbeddedPostgres(pg_data_dir / ("d" * 90), server_settings=FAST)
    try:
        url = server.start()
        assert "host=/tmp/tradeengine-pg-" in url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_the_context_manager_starts_and_stops(pg_data_dir: Path) -> None:
    with (
        EmbeddedPostgres(pg_data_dir, database="other", server_settings=FAST) as server,
        psycopg.connect(server.url()) as conn,
    ):
        assert conn.execute("SELECT current_database()").fetchone() == ("other",)
    assert cluster_processes(server.pgdata) == []
