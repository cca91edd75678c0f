"""PersistenceActor: the writer. Group-commits every fact to PostgreSQL, then answers the waiting callers.

Messages:
- `Commit(facts, reply, result)`: commit `facts` (one command's `PairFacts`, or a `Transfer`); once the
  transaction that holds them has committed, `reply.set_result(result)`. Senders `tell` it and never
  wait for the writer, so a pair keeps matching while earlier commands are written (pipelining).
- `Barrier(reply)`: `reply` resolves (None) once every Commit received before it has committed; a
  restarted pair asks this before it rebuilds from the database.

Group commit: a Commit joins the pending list and, unless a flush is already scheduled, the actor tells
itself a `Flush`. That Flush queues behind the Commits already in the inbox, so one flush commits
everything that arrived meanwhile, in ONE transaction (`storage.writer.write_batch`), capped at
`max_batch` facts (the rest goes to the next flush, scheduled at once). Replies resolve in arrival order,
only after the commit that holds them; a reply is never resolved twice, and a cancelled one is skipped.

Connection: the writer takes a connection from the pool for a flush and keeps it while more flushes
follow back to back: a flush that leaves nothing pending tells the writer `GiveBack`, which queues
behind the Commits already in the inbox and returns the connection only if none came. It also goes back
after any failure, and after `MAX_HOLD` seconds of use (the pool then checks it, or replaces it when
it is past its lifetime). Under load the writer therefore neither waits for the pool nor pays, per batch,
the pool's check of a borrowed connection: a round trip, which took ~4-6 ms under `bench engine` load
(the thread waits for the GIL and a CPU to come back after each one).

Process: with a `WriterProcess` factory (``TRADE_ENGINE_WRITER_PROCESS``, serve's default) the writer
holds no connection: it sends the facts of each flush to its child process, which builds the rows and
commits them (`actors.writer_process`, `ops.writer_main`); the child starts in on_start and ends with
the writer. The writer does not wait for a commit before it sends the next flush: the child builds the
next batch while the current one commits (pipelining), and the child's reader thread resolves the
replies of a committed batch (or fails them) without a hop through this inbox. A Barrier with nothing
pending rides with the last frame still outstanding. Replies, barriers and breaking mean the same in
both modes.

Failure: a commit that fails (any error while building or writing the batch) leaves memory (books,
wallet) ahead of the database. The writer then fails the replies of that batch with `StorageUnavailable`
(nothing of the batch is in the database: it is one transaction), or with `CommitOutcomeUnknown` (504)
when the connection or the writer process was lost before the COMMIT's answer (it may have committed;
the rebuild from the database decides), those of everything still pending and of every later Commit
with `StorageUnavailable` (never sent), refuses Barriers the same way, and reports itself broken with
scope "group", so the supervisor rebuilds the "database" group from the database once it answers.
`on_stop` commits what is pending (a normal stop: shutdown or a group restart) and fails whatever it
cannot, so no caller is ever left waiting.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

import psycopg
import pykka
from psycopg_pool import ConnectionPool

from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import CommitOutcomeUnknown, StorageUnavailable
from tradeengine.storage.facts import Facts
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import claim_fence, write_batch

from .supervised import ChildLink, SupervisedActor
from .writer_process import Token, WriterProcess

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Barrier", "BatchReport", "Commit", "PersistenceActor"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """Commit `facts`; then `reply.set_result(result)` (or set StorageUnavailable if that fails)."""

    facts: Facts
    reply: Future[Any] | None = None
    result: object = None


@dataclasses.dataclass(frozen=True, slots=True)
class Barrier:
    """Resolve `reply` once every Commit received before this has committed."""

    reply: Future[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Flush:
    """Write the pending Commits (the writer tells itself; nobody else needs to)."""


@dataclasses.dataclass(frozen=True, slots=True)
class GiveBack:
    """Return the held connection to the pool unless more Commits came (the writer tells itself)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _ProcessEnded:
    """The writer process failed a batch or is gone (its reader thread tells the writer): `items` were
    not committed (or their outcome is unknown)."""

    error: Exception
    items: list[Commit | Barrier]


@dataclasses.dataclass(frozen=True, slots=True)
class BatchReport:
    """What one flush did, for metrics: Commits (facts) in it, rows written, seconds, success."""

    commits: int
    rows: int
    seconds: float
    ok: bool


PoolSource = ConnectionPool | Callable[[], ConnectionPool]

MAX_HOLD = 60.0
"""Seconds of back-to-back flushes after which the writer gives its connection back to the pool."""


class PersistenceActor(SupervisedActor):
    """The persistence writer: group commit of every fact (see the module docstring)."""

    def __init__(
        self,
        link: ChildLink,
        pool: PoolSource,
        *,
        max_batch: int = 2000,
        commit_timeout: float = 10.0,
        connection_timeout: float = 2.0,
        on_batch: Callable[[BatchReport], None] | None = None,
        process: Callable[[], WriterProcess] | None = None,
    ) -> None:
        """`pool` is an open pool (borrowed) or a factory called in on_start (owned: closed on the way out).

        `commit_timeout` bounds each statement of a batch, `connection_timeout` the wait for a pool
        connection (a database that is gone fails the batch that soon); `on_batch` gets a `BatchReport`
        after every commit, from the writer's thread or its process's reader thread (keep it quick; with
        a process, `seconds` is the batch's database round trip, not its build). With `process` (a
        factory of `WriterProcess`), batches are built and committed in that child process instead of on
        a connection of `pool` (see `actors.writer_process`).
        """
        super().__init__(link)
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._pool_source = pool
        self._pool: ConnectionPool | None = None
        self._conn: psycopg.Connection[Any] | None = None  # held while flushes follow one another
        self._owns_pool = False
        self._max_batch = max_batch
        self._commit_timeout = commit_timeout
        self._connection_timeout = connection_timeout
        self._on_batch = on_batch
        self._pending: collections.deque[Commit | Barrier] = collections.deque()
        self._flush_scheduled = False
        self._broken: StorageUnavailable | None = None
        self._held_since = 0.0
        self._process_factory = process
        self._process: WriterProcess | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        """Open the pool when given a factory and claim the writer fence, or start the writer process,
        which claims it (a database that does not answer fails the start)."""
        if self._process_factory is not None:
            self._process = self._process_factory()
            self._process.start(self._committed_by_process, self._failed_by_process)  # it claims the fence
            return
        if isinstance(self._pool_source, ConnectionPool):
            self._pool = self._pool_source
        else:
            self._pool = self._pool_source()
            self._owns_pool = True
        # In charge from now on: a writer process of an engine that died (kill -9) commits nothing more.
        try:
            claim_fence(self._connection(), lock_timeout=self._commit_timeout)
            self._give_back_connection()
        except BaseException:
            self._release()
            raise

    def on_stop(self) -> None:
        """Commit what is pending, fail what cannot be, release the pool, report the exit."""
        try:
            self._stopping(StorageUnavailable(f"writer {self.link} stopped"))
        finally:
            super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A bug in the writer: fail every waiting caller, release the pool, report the crash."""
        try:
            error = StorageUnavailable(f"writer {self.link} crashed: {exception_value!r}")
            self._broken = error
            self._fail_all(list(self._pending), error)
            self._pending.clear()
            self.refuse_inbox()
            self._release()
        finally:
            super().on_failure(exception_type, exception_value, traceback)

    # -- messages -----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if isinstance(message, Commit):
            self._enqueue(message, message.reply)
        elif isinstance(message, Flush):
            self._flush_scheduled = False
            self._flush()
        elif isinstance(message, GiveBack):
            if not self._pending:
                self._give_back_connection()
        elif isinstance(message, Barrier):
            if self._pending or self._broken is not None:
                self._enqueue(message, message.reply)
            elif self._process is None or not self._process.attach(message):
                _resolve(message.reply, None)
        elif isinstance(message, _ProcessEnded):
            if self._broken is None:
                self._break(message.error, message.items)
            elif isinstance(message.error, CommitOutcomeUnknown):
                self._fail_all(message.items, _failure("the commit failed", message.error))
            else:
                self._fail_all(message.items, self._broken)
        else:
            return super().on_receive(message)
        return None

    def _enqueue(self, item: Commit | Barrier, reply: Future[Any] | None) -> None:
        if self._broken is not None:
            _fail(reply, self._broken)
            return
        self._pending.append(item)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.actor_ref.tell(Flush())

    # -- group commit -------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Commit the next batch of pending Commits; on failure, break (see the module docstring).
        With a writer process: send every pending Commit to it."""
        if self._process is not None:
            failure = self._send_pending(self._process)
            if failure is not None:
                self._break(*failure)
            return
        batch = self._take_batch()
        if not batch:
            return
        error = self._commit(batch)
        if error is not None:
            self._break(error, batch)
        else:
            if time.monotonic() - self._held_since > MAX_HOLD:
                self._give_back_connection()
            if self._pending:
                self._schedule_flush()
            elif self._conn is not None:
                self.actor_ref.tell(GiveBack())

    def _commit(self, batch: list[Commit | Barrier]) -> Exception | None:
        """Write the batch, then resolve its replies; return the error instead if the write failed."""
        commits = [item for item in batch if isinstance(item, Commit)]
        started = time.perf_counter()
        try:
            rows = self._write(commits)
        except Exception as exc:
            self._report(len(commits), 0, time.perf_counter() - started, ok=False)
            return exc
        self._report(len(commits), rows, time.perf_counter() - started, ok=True)
        _resolve_all(batch)
        return None

    def _send_pending(self, process: WriterProcess) -> tuple[Exception, list[Commit | Barrier]] | None:
        """Send every pending Commit to the writer process, in frames of at most `max_batch` facts;
        return the error and the batch it was not sent with if the process has ended."""
        while self._pending:
            batch = self._take_batch()
            facts = [item.facts for item in batch if isinstance(item, Commit)]
            if not facts:  # Barriers only: they ride with the last frame outstanding
                for item in batch:
                    if not process.attach(item):
                        _resolve(item.reply, None)
                continue
            try:
                process.send(facts, batch)  # its token: attach may add Barriers to it
            except StorageUnavailable as exc:
                return exc, batch
        return None

    def _committed_by_process(self, tokens: list[Token], rows: int, seconds: float) -> None:
        """The writer process committed the frames of `tokens` (called from its reader thread)."""
        items = [item for token in tokens for item in token]
        self._report(sum(isinstance(item, Commit) for item in items), rows, seconds, ok=True)
        _resolve_all(items)

    def _failed_by_process(self, tokens: list[Token], error: Exception) -> None:
        """The writer process failed the frames of `tokens` or is gone (called from its reader thread):
        the writer breaks and fails their callers, as after a failed commit on its thread (or, when it
        is stopping or broken already, their callers fail here)."""
        items = [item for token in tokens for item in token]
        if items:
            self._report(sum(isinstance(item, Commit) for item in items), 0, 0.0, ok=False)
        try:
            self.actor_ref.tell(_ProcessEnded(error, items))
        except pykka.ActorDeadError:
            self._fail_all(items, _failure(f"the commit of {len(items)} message(s) failed", error))

    def _take_batch(self) -> list[Commit | Barrier]:
        """Take pending items in order until the batch holds `max_batch` facts."""
        batch: list[Commit | Barrier] = []
        facts = 0
        pending = self._pending
        while pending and facts < self._max_batch:
            item = pending.popleft()
            batch.append(item)
            if isinstance(item, Commit):
                facts += 1
        # A Barrier right behind a full batch needs nothing more than that batch.
        while pending and isinstance(pending[0], Barrier):
            batch.append(pending.popleft())
        return batch

    def _write(self, commits: list[Commit]) -> int:
        """Write the facts of `commits` in one transaction; return the number of rows written."""
        rows = build_rows([commit.facts for commit in commits])
        if rows.row_count == 0:
            return 0
        try:
            write_batch(self._connection(), rows, statement_timeout=self._commit_timeout)
        except BaseException:
            self._give_back_connection()  # the pool checks it, and drops it if it is broken
            raise
        return rows.row_count

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection the writer holds, taken from the pool if it holds none."""
        if self._conn is None:
            assert self._pool is not None, "on_start sets the pool"
            # Waiting for a connection is bounded apart from the commit: with the database gone, the
            # callers must hear UNAVAILABLE well within their request timeout, not "outcome unknown".
            with storage_errors("committing a batch of facts"):
                self._conn = self._pool.getconn(timeout=min(self._connection_timeout, self._commit_timeout))
            self._held_since = time.monotonic()
        return self._conn

    def _give_back_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            self._pool.putconn(conn)

    def _break(self, exc: Exception, batch: list[Commit | Barrier]) -> None:
        """Fail the batch, everything pending and everything later; ask for the group's rebuild."""
        what = f"the commit of {len(batch)} message(s) failed" if batch else "the writer process has ended"
        error = StorageUnavailable(f"{what}: {exc}")
        error.__cause__ = exc
        self._broken = error
        log.error("writer %s: commit failed; refusing further commits until the group is rebuilt",
                  self.link, exc_info=exc)
        self._fail_all(batch, _failure(what, exc))  # outcome unknown, if the commit may have happened
        self._fail_all(list(self._pending), error)
        self._pending.clear()
        self.report_broken(exc, scope="group")
        # After report_broken (new tells now raise ActorDeadError at the sender): refuse what is queued.
        self.refuse_inbox()
        self._release()

    def _stopping(self, error: StorageUnavailable) -> None:
        """Commit what is pending (unless broken); fail what cannot be; refuse what is queued."""
        if self._process is not None and self._broken is None:
            # The process commits what it was sent before it exits (_release waits for that).
            unsent = self._send_pending(self._process)
            if unsent is not None:
                self._broken = StorageUnavailable(f"the writer process has ended: {unsent[0]}")
                self._fail_all(unsent[1], self._broken)
        while self._pending and self._broken is None:
            batch = self._take_batch()
            failure = self._commit(batch)
            if failure is not None:
                log.error("writer %s: the last commit before stopping failed", self.link, exc_info=failure)
                self._broken = StorageUnavailable(f"the commit of {len(batch)} message(s) failed: {failure}")
                self._fail_all(batch, _failure(f"the commit of {len(batch)} message(s) failed", failure))
        self._broken = self._broken or error
        self._fail_all(list(self._pending), self._broken)
        self._pending.clear()
        self.refuse_inbox()
        self._release()

    def refuse_queued(self, message: Any) -> bool:
        """Fail a queued Commit or Barrier, and the items of a _ProcessEnded (the writer is ending); drop a
        Flush or GiveBack; keep the rest."""
        error = self._broken or StorageUnavailable(f"writer {self.link} stopped")
        if isinstance(message, Commit | Barrier):
            _fail(message.reply, error)
            return True
        if isinstance(message, _ProcessEnded):
            self._fail_all(message.items, error)
            return True
        return isinstance(message, Flush | GiveBack)

    def _fail_all(self, items: list[Commit | Barrier], error: StorageUnavailable) -> None:
        for item in items:
            _fail(item.reply, error)

    def _report(self, commits: int, rows: int, seconds: float, *, ok: bool) -> None:
        if self._on_batch is None:
            return
        report = BatchReport(commits, rows, seconds, ok)
        try:
            self._on_batch(report)
        except Exception:
            log.exception("writer %s: the on_batch hook failed", self.link)

    def _release(self) -> None:
        """Give the connection back, then release the pool (close it if owned); end the writer process."""
        process, self._process = self._process, None
        if process is not None:
            process.close(timeout=self._commit_timeout)
        self._give_back_connection()
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            pool.close(timeout=self._commit_timeout)


def _resolve_all(items: list[Commit | Barrier]) -> None:
    for item in items:
        _resolve(item.reply, item.result if isinstance(item, Commit) else None)


def _resolve(reply: Future[Any] | None, result: object) -> None:
    if reply is None:
        return
    with contextlib.suppress(InvalidStateError):  # cancelled by its caller, or already failed
        reply.set_result(result)


def _fail(reply: Future[Any] | None, error: StorageUnavailable) -> None:
    if reply is None:
        return
    # One exception object per caller: callers re-raise it in their own threads (tracebacks differ).
    own = type(error)(error.message)
    own.__cause__ = error.__cause__
    with contextlib.suppress(InvalidStateError):
        reply.set_exception(own)


def _failure(what: str, exc: BaseException) -> StorageUnavailable:
    """What the callers of a failed batch get: `CommitOutcomeUnknown` when the commit may have happened
    (the connection or the writer process was lost under it), else `StorageUnavailable`."""
    kind = CommitOutcomeUnknown if isinstance(exc, CommitOutcomeUnknown) else StorageUnavailable
    error = kind(f"{what}: {exc}")
    error.__cause__ = exc
    return error
