"""The writer's process (`actors.writer_process`, ``python -m tradeengine.ops.writer_main``) against the
machine's PostgreSQL: batches committed by the child, its failures as the writer sees them, and the
writer fence that keeps an older writer process from committing once a newer one is in charge.

The system tests of the durability contract (crash, outage, recovery, shutdown) run with the writer in
both modes (the ``writer_process`` fixture); the kill -9 campaign runs `serve`, whose default it is.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import psycopg
import pytest

from tests.actors.system_harness import prepare_database
from tradeengine.actors.writer_process import WriterProcess
from tradeengine.storage import StorageError, StorageUnavailable
from tradeengine.storage.errors import CommitOutcomeUnknown
from tradeengine.storage.facts import Transfer

ALICE = 1001
WAIT = 10.0
T0 = 1_795_000_000_000_000  # µs since the Unix epoch (2026-11-19)


@pytest.fixture
def url(machine_pg_url: str) -> str:
    prepare_database(machine_pg_url)
    return machine_pg_url


class Outcomes:
    """A writer process's `committed` and `failed` callbacks: each frame's token is ``[Future]``, resolved
    with the rows of the batch that held it; the frames of each batch are kept."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.failures: list[StorageError] = []

    def committed(self, tokens: list[list[Any]], rows: int, seconds: float) -> None:
        assert seconds >= 0
        self.batches.append([token[0] for token in tokens])
        for token in tokens:
            token[0].set_result(rows)
            for barrier in token[1:]:
                barrier.set_result(None)

    def failed(self, tokens: list[list[Any]], error: StorageError) -> None:
        self.failures.append(error)
        for token in tokens:
            for future in token:
                future.set_exception(error)


class Writer:
    """A started `WriterProcess` with its `Outcomes`; `write` sends one frame and waits for it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.outcomes = Outcomes()
        self.process = WriterProcess(url, commit_timeout=options.pop("commit_timeout", 5.0),
                                     connect_timeout=options.pop("connect_timeout", 2.0), **options)
        self.process.start(self.outcomes.committed, self.outcomes.failed)

    def send(self, facts: list[Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self.process.send(facts, [future])
        return future

    def write(self, facts: list[Any]) -> int:
        return int(self.send(facts).result(timeout=WAIT))

    def close(self, timeout: float = 5.0) -> None:
        self.process.close(timeout=timeout)


@pytest.fixture
def writer(url: str) -> Iterator[Writer]:
    process = Writer(url)
    try:
        yield process
    finally:
        process.close()


def started(url: str, **options: Any) -> Writer:
    return Writer(url, **options)


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
    writer: Writer, url: str,
) -> None:
    assert writer.process.pid is not None and writer.process.pid != os.getpid()
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
        processes: list[Writer] = []

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


def test_frames_sent_without_waiting_are_committed_in_order_in_batches_of_what_came_meanwhile(
    writer: Writer, url: str,
) -> None:
    writer.write([deposit(10**8)])  # alice's balance row exists
    with psycopg.connect(url) as blocker:
        blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (ALICE,))
        sent = [writer.send([deposit(10**8), deposit(10**8)]) for _ in range(20)]
        time.sleep(0.3)  # the first batch waits for the row; the rest arrive meanwhile
        assert not any(future.done() for future in sent)
    assert all(future.result(timeout=WAIT) > 0 for future in sent)
    assert balance(url) == 41 * 10**8
    batches = writer.outcomes.batches[1:]
    assert [future for batch in batches for future in batch] == sent  # in order, each frame once
    assert len(batches) <= 3, "the frames that came while a batch committed were not grouped"
    assert scalar(url, "SELECT count(*) FROM outbox_messages") == 1 + len(batches)  # one per batch


def test_a_batch_holds_at_most_max_batch_facts_and_a_frame_is_never_split(url: str) -> None:
    writer = started(url, max_batch=5)
    try:
        writer.write([deposit(10**8)])
        with psycopg.connect(url) as blocker:
            blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (ALICE,))
            sent = [writer.send([deposit(10**8)] * size) for size in (2, 2, 2, 3, 3, 1, 4, 1)]
            time.sleep(0.3)
        for future in sent:
            future.result(timeout=WAIT)
    finally:
        writer.close()
    assert balance(url) == 19 * 10**8
    sizes = {id(future): size for future, size in zip(sent, (2, 2, 2, 3, 3, 1, 4, 1), strict=True)}
    facts = [sum(sizes[id(future)] for future in batch) for batch in writer.outcomes.batches[1:]]
    assert sum(facts) == 18 and max(facts) <= 5
    assert max(facts) == 5, "frames were not grouped up to max_batch"


def test_closing_commits_every_frame_sent_and_hands_out_their_outcome_before_it_returns(
    writer: Writer, url: str,
) -> None:
    sent = [writer.send([deposit(10**8)]) for _ in range(30)]
    writer.close()
    assert all(future.done() and future.result() > 0 for future in sent)
    assert balance(url) == 30 * 10**8
    assert writer.outcomes.failures == []


def test_a_barrier_attached_to_the_last_frame_outstanding_resolves_with_it(writer: Writer, url: str) -> None:
    barrier: Future[Any] = Future()
    assert not writer.process.attach(barrier)  # nothing outstanding
    writer.write([deposit(10**8)])
    with psycopg.connect(url) as blocker:
        blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (ALICE,))
        sent = writer.send([deposit(10**8)])
        assert writer.process.attach(barrier)
        time.sleep(0.2)
        assert not barrier.done()
    assert barrier.result(timeout=WAIT) is None and sent.done()


def test_a_killed_child_fails_what_is_outstanding_at_once_and_takes_no_more_frames(
    writer: Writer, url: str,
) -> None:
    writer.write([deposit(10**8)])
    with psycopg.connect(url) as blocker:
        blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (ALICE,))
        outstanding = writer.send([deposit(10**8)])
        assert writer.process.pid is not None
        os.kill(writer.process.pid, signal.SIGKILL)
        started_at = time.monotonic()
        with pytest.raises(CommitOutcomeUnknown, match="exited with status -9"):  # it may have committed
            outstanding.result(timeout=WAIT)
        assert time.monotonic() - started_at < 5.0
    with pytest.raises(StorageUnavailable, match="has ended"):
        writer.send([deposit(10**8)])
    # the killed child's batch commits if it was sent whole before the kill (its backend waited on the
    # lock, COMMIT included); the refused frame never does
    assert balance(url) in (10**8, 2 * 10**8)


def test_a_child_that_exits_while_idle_is_reported_at_once(writer: Writer) -> None:
    assert writer.process.pid is not None
    os.kill(writer.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while not writer.outcomes.failures:
        assert time.monotonic() < deadline, "the end of the child went unnoticed"
        time.sleep(0.01)
    assert "exited" in str(writer.outcomes.failures[0])


def test_a_child_that_stops_answering_is_killed_and_what_was_outstanding_fails_as_unknown(url: str) -> None:
    # A child that says it is ready, then reads nothing and answers nothing.
    silent = ("import os, pickle, struct, sys, time; sys.stdin.readline(); "
              "f = pickle.dumps(('ready', os.getpid())); "
              "sys.stdout.buffer.write(struct.pack('>I', len(f)) + f); sys.stdout.flush(); time.sleep(60)")
    writer = Writer(url, commit_timeout=0.1, command=(sys.executable, "-c", silent))
    try:
        assert writer.process.reply_timeout < 6.0
        outstanding = writer.send([deposit(10**8)])
        with pytest.raises(StorageUnavailable, match="did not answer"):
            outstanding.result(timeout=WAIT)
        pid = writer.process.pid
        assert pid is not None
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)
    finally:
        writer.close()


def test_an_answer_that_does_not_fit_kills_the_child_and_fails_what_is_outstanding(url: str) -> None:
    # A child that answers its first frame for five.
    lying = ("import os, pickle, struct, sys, time\n"
             "def tell(value):\n"
             "    f = pickle.dumps(value); sys.stdout.buffer.write(struct.pack('>I', len(f)) + f)\n"
             "    sys.stdout.flush()\n"
             "sys.stdin.readline(); tell(('ready', os.getpid()))\n"
             "sys.stdin.buffer.read(4); tell(('ok', 5, 1, 0.0)); time.sleep(60)\n")
    writer = Writer(url, command=(sys.executable, "-c", lying))
    try:
        outstanding = writer.send([deposit(10**8)])
        with pytest.raises(StorageUnavailable, match="reader failed"):
            outstanding.result(timeout=WAIT)
        with pytest.raises(StorageUnavailable, match="has ended"):
            writer.send([deposit(10**8)])
    finally:
        writer.close()


def test_a_failed_batch_is_an_error_nothing_of_it_or_after_it_is_written_and_the_child_ends(
    writer: Writer, url: str,
) -> None:
    pid = writer.process.pid
    with psycopg.connect(url) as blocker:
        # The batch waits at alice's foreign key check (FOR KEY SHARE) while a later frame is sent.
        blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (ALICE,))
        failing = writer.send([deposit(10**8), deposit(10**8, user=999_999)])  # no such user: foreign key
        later = writer.send([deposit(10**8)])
    with pytest.raises(StorageError) as failure:
        failing.result(timeout=WAIT)
    assert not isinstance(failure.value, StorageUnavailable)
    with pytest.raises(StorageError):
        later.result(timeout=WAIT)
    assert balance(url) == 0
    assert pid is not None
    deadline = time.monotonic() + WAIT
    while True:  # reaped by the reader: it exited after the failure
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the child did not end after a failed batch"
        time.sleep(0.01)


def test_the_child_ends_at_the_end_of_its_stdin(writer: Writer) -> None:
    child = writer.process._child
    assert child is not None
    writer.close()
    assert child.returncode == 0
    assert writer.outcomes.failures == []
    with pytest.raises(StorageUnavailable, match="closed"):  # nothing is taken that nobody would answer
        writer.send([deposit(10**8)])


def test_a_database_that_does_not_answer_fails_the_start_as_unavailable() -> None:
    with pytest.raises(StorageUnavailable, match="connecting"):
        Writer("postgresql://postgres@127.0.0.1:9/postgres", commit_timeout=2.0)
