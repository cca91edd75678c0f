"""The writer's process (`actors.writer_process`, ``python -m tradeengine.ops.writer_main``) against the
machine's PostgreSQL: batches committed by the child, its failures as the writer sees them, and the
writer fence that keeps an older writer process from committing once a newer one is in charge.

The system tests of the durability contract (crash, outage, recovery, shutdown) run with the writer in
both modes (the ``writer_process`` fixture); the kill -9 campaign runs `serve`, whose default it is.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.actors.system_harness import prepare_database
from tradeengine.actors.writer_process import WriterProcess
from tradeengine.storage import StorageError, StorageUnavailable
from tradeengine.storage.facts import Transfer

ALICE = 1001
T0 = 1_795_000_000_000_000  # µs since the Unix epoch (2026-11-19)


@pytest.fixture
def url(machine_pg_url: str) -> str:
    prepare_database(machine_pg_url)
    return machine_pg_url


@pytest.fixture
def writer(url: str) -> Iterator[WriterProcess]:
    process = started(url)
    try:
        yield process
    finally:
        process.close(timeout=5.0)


def started(url: str, **options: Any) -> WriterProcess:
    process = WriterProcess(url, commit_timeout=options.pop("commit_timeout", 5.0),
                            connect_timeout=options.pop("connect_timeout", 2.0), **options)
    process.start()
    return process


def deposit(amount: int, user: int = ALICE) -> Transfer:
    return Transfer("DEPOSIT", user, "USDT", amount, T0)


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def balance(url: str, user: int = ALICE) -> int:
    return int(scalar(url, f"SELECT coalesce(sum(available), 0) * 10^8 FROM balances WHERE user_id = {user}"))


def test_batches_are_committed_by_the_child_in_order_and_the_rows_counted(
    writer: WriterProcess, url: str,
) -> None:
    assert writer.pid is not None and writer.pid != os.getpid()
    assert writer.write([deposit(5 * 10**8), deposit(2 * 10**8)]) > 0
    assert writer.write([deposit(10**8)]) > 0
    assert balance(url) == 8 * 10**8
    assert scalar(url, "SELECT count(*) FROM ledger_entries WHERE user_id = 1001") == 3
    assert scalar(url, "SELECT count(*) FROM outbox_messages") == 2  # one per batch: its transfers
    assert scalar(url, "SELECT count(*) FROM outbox_events") == 3
    assert writer.write([]) == 0  # nothing to write: no transaction, still running
    assert writer.write([deposit(10**8)]) > 0


def test_a_newer_writer_fences_the_older_one_which_then_commits_nothing(url: str) -> None:
    older = started(url)
    try:
        older.write([deposit(10**8)])
        newer = started(url)  # claims the next epoch
        try:
            with pytest.raises(StorageError, match="newer writer"):
                older.write([deposit(7 * 10**8)])
            assert balance(url) == 10**8  # the fenced batch left nothing
            newer.write([deposit(10**8)])
            assert balance(url) == 2 * 10**8
        finally:
            newer.close(timeout=5.0)
    finally:
        older.close(timeout=5.0)


def test_a_new_writer_waits_for_a_batch_of_the_old_one_that_is_still_running(url: str) -> None:
    # The old writer's batch holds the fence row FOR SHARE until it commits; so does this transaction.
    with psycopg.connect(url) as old_batch:
        old_batch.execute("SELECT epoch FROM writer_fence FOR SHARE")
        ready = threading.Event()
        errors: list[BaseException] = []
        processes: list[WriterProcess] = []

        def start() -> None:
            try:
                processes.append(started(url))
            except BaseException as exc:
                errors.append(exc)
            ready.set()

        thread = threading.Thread(target=start)
        thread.start()
        try:
            assert not ready.wait(1.5), "the new writer claimed the fence while an old batch was running"
            old_batch.commit()  # the old batch ends: now the new writer is in charge
            assert ready.wait(10.0) and not errors
        finally:
            old_batch.rollback()
            thread.join(10.0)
            for process in processes:
                process.close(timeout=5.0)


def test_a_killed_child_fails_the_next_batch_as_unavailable_at_once(writer: WriterProcess) -> None:
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    started_at = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"exited|gone"):
        writer.write([deposit(10**8)])
    assert time.monotonic() - started_at < 5.0
    with pytest.raises(StorageUnavailable, match="not running"):
        writer.write([deposit(10**8)])


def test_a_failed_batch_is_an_error_nothing_is_written_and_the_child_ends(
    writer: WriterProcess, url: str,
) -> None:
    pid = writer.pid
    with pytest.raises(StorageError) as failure:
        writer.write([deposit(10**8), deposit(10**8, user=999_999)])  # no such user: balances' foreign key
    assert not isinstance(failure.value, StorageUnavailable)
    assert balance(url) == 0
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # reaped: it exited after the failure
        os.kill(pid, 0)


def test_the_child_ends_at_the_end_of_its_stdin(writer: WriterProcess) -> None:
    child = writer._child
    assert child is not None
    writer.close(timeout=5.0)
    assert child.returncode == 0


def test_a_database_that_does_not_answer_fails_the_start_as_unavailable() -> None:
    process = WriterProcess("postgresql://postgres@127.0.0.1:9/postgres", commit_timeout=2.0,
                            connect_timeout=2.0)
    with pytest.raises(StorageUnavailable, match="connecting"):
        process.start()
    assert process.pid is None
