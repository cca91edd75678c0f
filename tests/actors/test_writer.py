"""PersistenceActor against real PostgreSQL: group commit, replies after commit, barrier, failure.

Every test runs the real actor (a pykka ThreadingActor) on a real pool; the supervisor is a recording
`ChildLink`, except in the test that lets a real `Supervisor` rebuild the writer. Tests of what callers
see run in both modes (``mode``): committing on the writer's thread, and through its writer process
(pipelined: `actors.writer_process`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import ROUND_CEILING, Decimal
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import pykka
import pytest

from tests.storage.test_rows_scenarios import ALICE, BOB, CAROL, Scenario, add_users
from tradeengine.actors import writer as writer_module
from tradeengine.actors.supervised import ChildLink, ChildNotice, NoticeKind
from tradeengine.actors.supervisor import ChildSpec, GroupSpec, Strategy, Supervisor
from tradeengine.actors.writer import Barrier, BatchReport, Commit, PersistenceActor
from tradeengine.actors.writer_process import WriterProcess
from tradeengine.engine import PairSpec, Side
from tradeengine.engine.errors import StorageUnavailable as EngineStorageUnavailable
from tradeengine.storage import PairRepository, StorageError, StorageUnavailable, create_pool
from tradeengine.storage.errors import CommitOutcomeUnknown
from tradeengine.storage.facts import Facts, PairFacts, Transfer
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import write_batch

WAIT = 10.0
APP = "te-writer-under-test"


class Recorder:
    """A supervisor stand-in: a ChildLink whose notices are kept."""

    def __init__(self) -> None:
        self.notices: list[ChildNotice] = []
        self.link = ChildLink("writer", 1, self.notices.append, lambda name, incarnation: True)


@pytest.fixture
def pool(migrated_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    pool = create_pool(migrated_pg_url, min_size=1, max_size=2, application_name=APP)
    with pool.connection() as conn:
        add_users(conn)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def reader(migrated_pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Another connection, autocommit: what it sees is committed."""
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["thread", "process"])
def mode(request: pytest.FixtureRequest) -> str:
    """Where the writer commits: on its thread, or in its writer process (``start_writer(mode=mode)``)."""
    return str(request.param)


def process_factory(url: str, max_batch: int = 2000) -> Callable[[], WriterProcess]:
    return lambda: WriterProcess(url, commit_timeout=5.0, connect_timeout=2.0, max_batch=max_batch)


@pytest.fixture
def start_writer(
    pool: psycopg_pool.ConnectionPool, migrated_pg_url: str,
) -> Iterator[Callable[..., tuple[Any, Recorder]]]:
    refs: list[pykka.ActorRef[Any]] = []

    def start(mode: str = "thread", **options: Any) -> tuple[Any, Recorder]:
        recorder = Recorder()
        if mode == "process":
            options["process"] = process_factory(migrated_pg_url, options.get("max_batch", 2000))
        ref = PersistenceActor.start(recorder.link, options.pop("pool", pool), **options)
        refs.append(ref)
        return ref, recorder

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop(timeout=WAIT)


def count(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def order_visible(conn: psycopg.Connection[Any], order_id: str) -> bool:
    query = "SELECT count(*) FROM orders WHERE id = %s AND created_at = snowflake_timestamp(%s)"
    return bool(count(conn, query, int(order_id), int(order_id)))


def specs(pool: psycopg_pool.ConnectionPool) -> list[PairSpec]:
    return [
        PairSpec(p.symbol, p.base_asset, p.quote_asset, p.tick_size, p.lot_size, p.min_quantity,
                 p.max_quantity, p.min_notional, p.maker_fee, p.taker_fee)
        for p in PairRepository(pool).list()
    ]


def fund(pool: psycopg_pool.ConnectionPool, *transfers: Facts) -> None:
    with pool.connection() as conn:
        write_batch(conn, build_rows(list(transfers)))


def tell_commit(ref: Any, fact: Facts, result: object = None) -> Future[Any]:
    reply: Future[Any] = Future()
    ref.tell(Commit(fact, reply, result))
    return reply


# -- group commit ---------------------------------------------------------------------------------------


def test_concurrent_callers_are_answered_only_after_their_facts_are_committed_and_batches_group_them(
    pool: psycopg_pool.ConnectionPool, migrated_pg_url: str, start_writer: Callable[..., Any],
    mode: str,
) -> None:
    reports: list[BatchReport] = []
    ref, _ = start_writer(mode=mode, on_batch=reports.append)
    pairs = specs(pool)[:8]
    fund(pool, Transfer("DEPOSIT", ALICE, "USDT", 10**16, 1_795_000_000_000_000))

    def trader(index: int) -> int:
        scenario = Scenario(pairs[index], start_us=1_795_000_000_000_000 + index * 10**9)
        spec = pairs[index]
        lots = spec.min_quantity * 100
        price = str((Decimal(20) / lots / spec.tick_size).to_integral_value(ROUND_CEILING) * spec.tick_size)
        quantity = str(lots)
        seen = 0
        with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
            for n in range(40):
                order_id, _ = scenario.place(ALICE, Side.BUY, quantity, price)
                reply = tell_commit(ref, scenario.facts[-1], result=order_id)
                if n % 4 == 3:  # sometimes pipeline: do not wait for this one
                    continue
                assert reply.result(timeout=WAIT) == order_id
                assert order_visible(conn, order_id), "answered before its commit was visible"
                seen += 1
        return seen

    with ThreadPoolExecutor(max_workers=8) as executor:
        assert sum(executor.map(trader, range(8))) == 8 * 30
    barrier: Future[Any] = Future()
    ref.tell(Barrier(barrier))
    barrier.result(timeout=WAIT)
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        assert count(conn, "SELECT count(*) FROM orders") == 8 * 40
        assert count(conn, "SELECT count(*) FROM pairs WHERE last_sequence = 80") == 8
    assert sum(r.commits for r in reports) == 8 * 40 and all(r.ok for r in reports)
    assert max(r.commits for r in reports) > 1, "no two commits were ever grouped"
    assert len(reports) < 8 * 40


def test_a_burst_told_without_waiting_is_written_in_few_large_batches_capped_at_max_batch(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], start_writer: Callable[..., Any],
    mode: str,
) -> None:
    reports: list[BatchReport] = []
    ref, _ = start_writer(mode=mode, on_batch=reports.append, max_batch=100)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000000"))
    replies, order_ids = [], []
    for _ in range(500):
        order_id, _ = s.place(ALICE, Side.BUY, "0.001", "20000")
        order_ids.append(order_id)
        replies.append(tell_commit(ref, s.facts[-1], order_id))
    assert [r.result(timeout=WAIT) for r in replies] == order_ids
    assert count(reader, "SELECT count(*) FROM orders") == 500
    # The writer process groups whole frames (flushes) up to max_batch: it may stop short of it.
    largest = max(r.commits for r in reports)
    assert largest == 100 or (mode == "process" and largest < 100)
    assert len(reports) < 50


def test_replies_resolve_in_the_order_their_commits_arrived(
    pool: psycopg_pool.ConnectionPool, start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, _ = start_writer(mode=mode, max_batch=7)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000000"))
    resolved: list[int] = []
    replies = []
    for n in range(60):
        s.place(ALICE, Side.BUY, "0.001", "20000")
        reply = tell_commit(ref, s.facts[-1], n)
        reply.add_done_callback(lambda done: resolved.append(done.result()))
        replies.append(reply)
    assert [r.result(timeout=WAIT) for r in replies] == list(range(60))
    assert resolved == list(range(60))


def test_the_writer_keeps_its_connection_while_batches_follow_and_gives_it_back_when_idle(
    pool: psycopg_pool.ConnectionPool, start_writer: Callable[..., Any],
) -> None:
    reports: list[BatchReport] = []
    ref, _ = start_writer(on_batch=reports.append, max_batch=5)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000000"))
    before = pool.get_stats()["requests_num"]
    replies = []
    for _ in range(60):
        s.place(ALICE, Side.BUY, "0.001", "20000")
        replies.append(tell_commit(ref, s.facts[-1]))
    for reply in replies:
        reply.result(timeout=WAIT)
    assert len(reports) >= 12
    assert pool.get_stats()["requests_num"] - before == 1  # one checkout for all those batches
    deadline = time.monotonic() + WAIT
    while pool.get_stats()["pool_available"] < pool.get_stats()["pool_size"]:
        assert time.monotonic() < deadline, "the idle writer kept its connection"
        time.sleep(0.01)


def test_after_max_hold_seconds_the_writer_takes_a_fresh_connection_for_its_next_batch(
    pool: psycopg_pool.ConnectionPool, start_writer: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module, "MAX_HOLD", 0.0)
    reports: list[BatchReport] = []
    ref, _ = start_writer(on_batch=reports.append, max_batch=5)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000000"))
    before = pool.get_stats()["requests_num"]
    replies = []
    for _ in range(30):
        s.place(ALICE, Side.BUY, "0.001", "20000")
        replies.append(tell_commit(ref, s.facts[-1]))
    for reply in replies:
        reply.result(timeout=WAIT)
    assert len(reports) >= 6
    assert pool.get_stats()["requests_num"] - before == len(reports)


def test_a_barrier_resolves_once_everything_told_before_it_is_committed(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, _ = start_writer(mode=mode)
    s = Scenario()
    fund(pool, s.deposit(BOB, "BTC", "100"))
    for _ in range(300):
        s.place(BOB, Side.SELL, "0.01", "60000")
        ref.tell(Commit(s.facts[-1]))  # no reply wanted
    barrier: Future[Any] = Future()
    ref.tell(Barrier(barrier))
    assert barrier.result(timeout=WAIT) is None
    assert count(reader, "SELECT count(*) FROM orders") == 300
    idle: Future[Any] = Future()
    ref.tell(Barrier(idle))
    assert idle.result(timeout=WAIT) is None


def test_a_cancelled_reply_or_an_empty_command_does_not_disturb_the_writer(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, recorder = start_writer(mode=mode)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000"))
    cancelled: Future[Any] = Future()
    cancelled.cancel()
    s.place(ALICE, Side.BUY, "0.1", "40000")
    ref.tell(Commit(s.facts[-1], cancelled, None))
    assert tell_commit(ref, PairFacts(s.spec, []), "empty").result(timeout=WAIT) == "empty"
    assert count(reader, "SELECT count(*) FROM orders") == 1
    assert recorder.notices == []


# -- failure --------------------------------------------------------------------------------------------


def lock_balance_row(migrated_pg_url: str, user_id: int, asset: str) -> psycopg.Connection[Any]:
    blocker = psycopg.connect(migrated_pg_url)
    blocker.execute("SELECT 1 FROM balances WHERE user_id = %s AND asset = %s FOR UPDATE", (user_id, asset))
    return blocker


def writer_waiting_pid(reader: psycopg.Connection[Any]) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = reader.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name IN (%s, 'trade-engine-writer') "
            "AND wait_event_type = 'Lock'",
            (APP,),
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)
    raise AssertionError("the writer never blocked on the locked row")


def test_a_commit_violating_a_balance_check_fails_its_batch_and_every_later_commit_and_reports_broken(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], migrated_pg_url: str,
    start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, recorder = start_writer(mode=mode)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "1000"), s.deposit(BOB, "BTC", "1"))
    blocker = lock_balance_row(migrated_pg_url, BOB, "BTC")
    earlier = tell_commit(ref, s.deposit(BOB, "BTC", "1"), "earlier")  # held up by the lock
    writer_waiting_pid(reader)
    s.place(ALICE, Side.BUY, "0.01", "40000")
    good = tell_commit(ref, s.facts[-1], "good")
    bad = tell_commit(ref, s.withdraw(ALICE, "USDT", "1000"), "bad")  # 400 of it is locked by now
    blocker.close()
    assert earlier.result(timeout=WAIT) == "earlier"
    with pytest.raises(StorageUnavailable) as caught:
        bad.result(timeout=WAIT)
    assert isinstance(caught.value, EngineStorageUnavailable)
    # On its thread the writer queues good and bad behind the earlier batch and writes them as one batch:
    # both fail. The writer process builds its next batch of what came meanwhile: good may have come
    # alone, and then it is committed before bad fails.
    good_committed = good.exception(timeout=WAIT) is None
    assert not (good_committed and mode == "thread")
    if not good_committed:
        assert isinstance(good.exception(), EngineStorageUnavailable)
    assert [(n.kind, n.scope) for n in recorder.notices] == [(NoticeKind.BROKEN, "group")]
    assert "balances" in str(recorder.notices[0].error)
    assert count(reader, "SELECT count(*) FROM orders") == good_committed  # nothing partial
    locked = Decimal(400) if good_committed else 0
    assert count(reader, "SELECT available FROM balances WHERE user_id = %s", ALICE) == 1000 - locked
    assert count(reader, "SELECT available FROM balances WHERE user_id = %s", BOB) == Decimal(2)
    with pytest.raises(pykka.ActorDeadError):
        tell_commit(ref, s.facts[-1])


def test_a_connection_lost_mid_commit_fails_the_batch_and_everything_queued_behind_it_and_writes_nothing(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], migrated_pg_url: str,
    start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, recorder = start_writer(mode=mode)
    s = Scenario()
    fund(pool, s.deposit(ALICE, "USDT", "100000"), s.deposit(CAROL, "USDT", "100000"))
    blocker = lock_balance_row(migrated_pg_url, ALICE, "USDT")
    try:
        s.place(ALICE, Side.BUY, "0.1", "40000")
        first = tell_commit(ref, s.facts[-1], "first")  # blocks on alice's balance row
        pid = writer_waiting_pid(reader)
        queued = []
        for _ in range(20):
            s.place(CAROL, Side.BUY, "0.1", "40000")
            queued.append(tell_commit(ref, s.facts[-1], "queued"))
        barrier: Future[Any] = Future()
        ref.tell(Barrier(barrier))
        reader.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(CommitOutcomeUnknown, match="outcome is unknown"):  # 504: it may have committed
            first.result(timeout=WAIT)
        for reply in [*queued, barrier]:  # never sent to the database: 503
            with pytest.raises(StorageUnavailable) as caught:
                reply.result(timeout=WAIT)
            assert not isinstance(caught.value, CommitOutcomeUnknown)
    finally:
        blocker.close()
    assert [(n.kind, n.scope) for n in recorder.notices] == [(NoticeKind.BROKEN, "group")]
    assert count(reader, "SELECT count(*) FROM orders") == 0
    assert count(reader, "SELECT count(*) FROM ledger_entries WHERE kind <> 'DEPOSIT'") == 0
    assert not ref.is_alive()


def test_facts_that_cannot_be_turned_into_rows_break_the_writer_like_a_failed_commit(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, recorder = start_writer(mode=mode)
    s = Scenario()
    s.place(ALICE, Side.BUY, "0.1", "40000")
    accepted = s.facts[-1].events[0]  # type: ignore[union-attr]
    broken = PairFacts(s.spec, [msgspec.structs.replace(accepted, order_id="not-a-number")])
    reply = tell_commit(ref, broken, "never")
    with pytest.raises(StorageUnavailable, match="not-a-number"):
        reply.result(timeout=WAIT)
    # The writer process reports the ValueError it met as an error message (StorageError).
    assert [(n.kind, n.scope, type(n.error)) for n in recorder.notices] == [
        (NoticeKind.BROKEN, "group", ValueError if mode == "thread" else StorageError)]
    assert count(reader, "SELECT count(*) FROM orders") == 0


def test_stopping_the_writer_commits_what_is_pending_and_refuses_what_comes_after(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any], start_writer: Callable[..., Any],
    mode: str,
) -> None:
    ref, recorder = start_writer(mode=mode)
    s = Scenario()
    fund(pool, s.deposit(BOB, "BTC", "100"))
    replies = []
    for _ in range(50):
        s.place(BOB, Side.SELL, "0.01", "60000")
        replies.append(tell_commit(ref, s.facts[-1], "ok"))
    ref.stop(timeout=WAIT)
    assert [r.result(timeout=WAIT) for r in replies] == ["ok"] * 50
    assert count(reader, "SELECT count(*) FROM orders") == 50
    assert [n.kind for n in recorder.notices] == [NoticeKind.EXITED]


def test_the_supervisor_rebuilds_a_broken_writer_which_then_commits_again(
    pool: psycopg_pool.ConnectionPool, reader: psycopg.Connection[Any],
) -> None:
    supervisor = Supervisor(groups=[GroupSpec("database")])
    writer = supervisor.add(ChildSpec.for_actor(
        "writer", PersistenceActor, {"pool": pool}, group="database", strategy=Strategy.ONE_FOR_ALL))
    try:
        s = Scenario()
        fund(pool, s.deposit(ALICE, "USDT", "100"))
        bad: Future[Any] = Future()
        writer.tell(Commit(s.withdraw(ALICE, "USDT", "101"), bad, None))
        with pytest.raises(StorageUnavailable):
            bad.result(timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while (status := supervisor.status("writer")).incarnation < 2 or status.state.value != "running":
            assert time.monotonic() < deadline, supervisor.status("writer")
            time.sleep(0.01)
        good: Future[Any] = Future()
        writer.tell(Commit(s.withdraw(ALICE, "USDT", "100"), good, "done"))
        assert good.result(timeout=WAIT) == "done"
        assert count(reader, "SELECT available FROM balances WHERE user_id = %s", ALICE) == 0
    finally:
        supervisor.stop_all()


def test_a_pool_factory_is_opened_on_start_and_closed_on_stop(
    migrated_pg_url: str, start_writer: Callable[..., Any],
) -> None:
    opened: list[psycopg_pool.ConnectionPool] = []

    def factory() -> psycopg_pool.ConnectionPool:
        opened.append(create_pool(migrated_pg_url, min_size=1, max_size=1))
        return opened[-1]

    ref, _ = start_writer(pool=factory)
    started: Future[Any] = Future()
    ref.tell(Barrier(started))
    started.result(timeout=WAIT)  # answered after on_start
    with opened[0].connection() as conn:
        add_users(conn)
    reply = tell_commit(ref, Transfer("DEPOSIT", ALICE, "USDT", 10**8, 1_795_000_000_000_000), "ok")
    assert reply.result(timeout=WAIT) == "ok"
    ref.stop(timeout=WAIT)
    assert opened[0].closed
