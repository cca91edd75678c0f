"""Data-folder ownership and the database start of ``serve``: in-use, unreachable, migration failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tradeengine.ops.database import (
    DataDirInUse,
    DataDirLock,
    StartupError,
    open_database,
    redact,
    serving_database,
    wait_for_database,
)
from tradeengine.ops.settings import Settings


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://engine:s3cret@127.0.0.1:{port}/tradeengine"


@contextmanager
def _lock_held_in_another_process(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tradeengine.ops.database import DataDirLock
        assert DataDirLock(Path({str(data_dir)!r})).try_acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            yield holder
        finally:
            holder.kill()


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    first, second = DataDirLock(tmp_path), DataDirLock(tmp_path)
    assert first.try_acquire()
    assert first.try_acquire()  # taking it again is a no-op
    assert not second.try_acquire()
    assert second.holder() == os.getpid()
    first.release()
    assert second.try_acquire()
    second.release()


def test_a_lock_held_by_a_killed_process_is_free_again(tmp_path: Path) -> None:
    with _lock_held_in_another_process(tmp_path) as holder:
        lock = DataDirLock(tmp_path)
        assert not lock.try_acquire()
        assert lock.holder() == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert lock.try_acquire()
        lock.release()


def test_serve_refuses_a_data_folder_another_live_process_owns(tmp_path: Path) -> None:
    with _lock_held_in_another_process(tmp_path) as holder:
        with pytest.raises(DataDirInUse) as caught, serving_database(Settings(data_dir=tmp_path)):
            pass
        assert f"pid {holder.pid}" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_waiting_for_an_unreachable_external_database_gives_up_with_one_line(tmp_path: Path) -> None:
    url = _closed_port_url()
    started = time.monotonic()
    with pytest.raises(StartupError) as caught:
        wait_for_database(url, 0.6, attempt_timeout=0.2, pause=0.2)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "did not answer within 0.6 s" in message
    assert "s3cret" not in message and "engine:***@127.0.0.1" in message
    settings = Settings(database_url=url, data_dir=tmp_path)
    with pytest.raises(StartupError), serving_database(settings, wait=0.1):
        pass


def test_a_migration_error_stops_the_start_with_a_clear_message(machine_pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(machine_pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL UNIQUE,"
                     " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                     "VALUES (9999, '9999_from_the_future.sql', repeat('0', 64))")
    settings = Settings(database_url=machine_pg_url, data_dir=tmp_path)
    with pytest.raises(StartupError) as caught, serving_database(settings, wait=5):
        pass
    assert "migrations on" in str(caught.value) and "9999_from_the_future.sql" in str(caught.value)


def test_external_database_is_migrated_and_yielded_as_is(machine_pg_url: str, tmp_path: Path) -> None:
    with serving_database(Settings(database_url=machine_pg_url, data_dir=tmp_path), wait=5) as url:
        assert url == machine_pg_url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0  # type: ignore[index]
    assert not (tmp_path / "engine.lock").exists()  # an external database needs no data folder


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_open_database_on_an_external_url_migrates_lists_pairs_and_closes_its_pool(
        machine_pg_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=machine_pg_url, data_dir=tmp_path)
    with open_database(settings, require_migrated=False) as database:  # as `migrate` opens it
        assert database.url == machine_pg_url
        assert database.migrate()
        assert "BTC-USDT" in [pair.symbol for pair in database.pairs().list()]
        pool = database.pool
        assert database.pool is pool  # opened once, on first use
    assert pool.closed
