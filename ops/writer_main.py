"""The persistence writer's own process: ``python -m tradeengine.ops.writer_main``, started by the writer.

With ``TRADE_ENGINE_WRITER_PROCESS=true`` the writer actor (`actors.writer.PersistenceActor`) keeps
everything about its callers (replies, barriers, breaking) but sends the facts of its flushes to this
process, which turns them into rows (`storage.rows.build_rows`), renders them into the batch statement
(`storage.writer.render_batch`) and commits them (`storage.writer.commit_batch`) on a connection of its
own: the rows' Python and psycopg's no longer take the engine's GIL. The protocol is
`actors.writer_process` (frames over this process's stdin and stdout).

Pipelined, in two threads: the builder reads each frame as it comes and adds its facts to the next
batch's rows (`storage.rows.RowsBuilder`) while the current batch commits; the main thread commits one
batch after the other and answers for each the number of frames it held. Adding facts is Python (it
holds this process's GIL) and committing is mostly a wait for PostgreSQL (it does not), so the two
overlap. The builder finishes the rows and renders the statement (~16 µs per fact) when the batch is
due (`_Handover`): at once when the committer waits for it, else just before the running commit should
end (its start plus a running estimate of a commit's duration, minus one of the finishing), so that
the batch holds what came meanwhile and is ready when the committer is. A batch holds at least one frame
and up to ``max_batch`` facts; a frame is never split.

Measured against the builder it replaced, which built the next batch the moment the committer took the
one before, from the frames there at that moment (a frame that came during a commit then waited for
that commit and the next before its own): `bench engine` 6,467 and 6,530 against 5,963 and 5,798
orders/s, p99 17 against 23–29 ms, commits of 26 instead of 21 commands; `bench http` single orders
1,205 and 1,176 against 1,143 and 1,117/s; batches alike (alternating, 2026-11-25). Handing the batch
over only once the committer is free was in between: the commit then waited for the finishing, and
batches over HTTP lost 6 %.

A batch that fails ends the process before the next is written, and nothing after a failed batch is
committed.

Fencing: before it reports ready, this process claims the writer fence (`storage.writer.claim_fence`:
a new epoch in ``writer_fence``, migration 0009), and every batch it commits checks that the epoch is
still its own. The engine rebuilds books and balances from the database only after its writer is
ready, so a writer process left behind by an engine that died (it finishes the batch it was given, then
sees the end of its stdin and exits) can never commit after the new engine has read the database.

The process ends at the end of its stdin (status 0), after a batch that failed (status 1: its connection
may be broken and the engine rebuilds the group anyway), or when it cannot connect or lock (status 1,
after reporting why). SIGINT is ignored (Ctrl-C reaches the whole process group: the engine's graceful
stop closes stdin once the last batch is committed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any

import psycopg

from tradeengine.actors.writer_process import FrameReader, reply, write_frame
from tradeengine.ops.child import begin_child
from tradeengine.storage.database import DEFAULT_PREPARE_THRESHOLD, connection_kwargs, storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.facts_wire import FactsDecoder
from tradeengine.storage.rows import RowsBuilder
from tradeengine.storage.writer import RenderedBatch, claim_fence, commit_batch, render_batch

__all__ = ["main"]

log = logging.getLogger("tradeengine.ops.writer_main")


@dataclasses.dataclass(frozen=True, slots=True)
class _Built:
    """The next batch for the committer: the frames it covers, and its statement (or why it failed)."""

    frames: int
    facts: int
    batch: RenderedBatch | None
    error: Exception | None = None


def main() -> int:
    """Commit batches until stdin ends (status 0) or one fails (status 1)."""
    config = begin_child(log, "writer process")
    if config is None:
        return 2
    stdout = sys.stdout.buffer
    commit_timeout = float(config["commit_timeout"])
    try:
        conn, epoch = _connect_and_claim(config)
    except StorageError as exc:
        _tell(stdout, reply(exc))
        return 1
    with conn:
        if not _tell(stdout, ("ready", os.getpid())):
            return 0
        # The engine sends frames only after "ready": begin_child's buffered readline of the configuration
        # has nothing of them in its buffer, and the builder reads stdin's descriptor itself.
        handover = _Handover()
        threading.Thread(target=_build, name="writer-builder", daemon=True,
                         args=(FrameReader(sys.stdin.buffer.fileno(), decode=FactsDecoder().decode), handover,
                               int(config.get("max_batch", 2000)))).start()
        while (batch := handover.take()) is not None:
            try:
                if batch.error is not None:
                    raise batch.error
                assert batch.batch is not None
                started = time.perf_counter()
                if batch.batch.row_count:
                    commit_batch(conn, batch.batch, statement_timeout=commit_timeout, fence=epoch)
                seconds = time.perf_counter() - started
            except Exception as exc:
                log.error("writer process: the commit of %d fact(s) failed", batch.facts, exc_info=exc)
                _tell(stdout, (*reply(exc), batch.frames))  # which frames an unknown outcome concerns
                return 1
            handover.done(seconds)
            if not _tell(stdout, ("ok", batch.frames, batch.batch.row_count, seconds)):
                return 0
    return 0


_SMOOTHING = 0.2
"""Weight of the latest measurement in the running estimates of a commit's and a build's duration."""


class _Handover:
    """Between the builder and the committer: the one built batch waiting (at most one), since when the
    committer has been committing (None: it waits for a batch), and how long commits take (a running
    estimate). The builder waits for the committer's moves in `select`, together with stdin, on
    `wake_fd`, which becomes readable at each of them (`FrameReader.read` reads it empty)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._waiting = False  # a batch (or the end: None) waits for the committer
        self._batch: _Built | None = None
        self.busy_since: float | None = None
        self.commit_seconds = 0.0
        self.wake_fd, self._wake = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake, False)

    def take(self) -> _Built | None:
        """(The committer) the next batch, once the builder has handed it over; None at the end."""
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            batch, self._batch, self._waiting = self._batch, None, False
            self.busy_since = time.perf_counter()
        self._wake_builder()
        return batch

    def done(self, seconds: float) -> None:
        """(The committer) the batch taken is committed, in `seconds`."""
        with self._ready:
            self.busy_since = None
            self.commit_seconds += _SMOOTHING * (seconds - self.commit_seconds)
            self._ready.notify_all()
        self._wake_builder()

    def put(self, batch: _Built | None) -> None:
        """(The builder) hand over the next batch (None: the end); the one before must have been taken."""
        with self._ready:
            assert not self._waiting, "the builder hands over one batch at a time"
            self._batch, self._waiting = batch, True
            self._ready.notify_all()

    def wait_taken(self) -> None:
        """(The builder) wait until no batch waits for the committer."""
        with self._ready:
            while self._waiting:
                self._ready.wait()

    def due(self, build_seconds: float) -> float | None:
        """(The builder) when to finish the batch being built, given how long that takes: 0.0 at once
        (the committer waits for it), else so that it is ready about when the commit running ends;
        None while another batch still waits for the committer (a wake-up comes when it is taken)."""
        with self._ready:
            if self._waiting:
                return None
            if self.busy_since is None:
                return 0.0
            return self.busy_since + self.commit_seconds - build_seconds

    def _wake_builder(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._wake, b"!")


def _build(frames: FrameReader, handover: _Handover, max_batch: int) -> None:
    """The builder thread: adds the facts of every frame to the next batch's rows as the frame comes,
    and hands the batch over (rows finished, statement rendered) when it is due (`_Handover.due`): at
    once when the committer waits, else just before the commit running should end, so that it holds
    what came meanwhile. A batch holds at least one frame and up to `max_batch` facts (a frame that does
    not fit waits for the next batch; a frame is never split). At the end of stdin, None."""
    carried = None  # a frame read that did not fit in the batch before
    per_fact = 0.0  # seconds to finish and render a batch, per fact (a running estimate)
    ended = False
    while not ended:
        rows, count, full = RowsBuilder(), 0, False
        try:
            while True:
                due, now = None, 0.0
                if full:
                    handover.wait_taken()
                    break
                if count:
                    due = handover.due(per_fact * rows.facts)
                    now = time.perf_counter()
                if carried is not None:
                    frame, carried = carried, None
                else:
                    # When due, only the frames there already; else wait for one, or for the committer.
                    timeout = None if due is None else max(0.0, due - now)
                    frame = frames.read(timeout, wake=handover.wake_fd if count else None)
                    if frame is FrameReader.NOTHING:
                        if due is not None and time.perf_counter() >= due:
                            break
                        continue
                    if frame is None:
                        ended = True
                        break
                    if count and rows.facts + len(frame) > max_batch:
                        carried, full = frame, True
                        continue
                count += 1
                for fact in frame:
                    rows.add(fact)
                full = rows.facts >= max_batch
            if count:
                started = time.perf_counter()
                facts = rows.facts
                batch = _Built(count, facts, render_batch(rows.finish()))
                per_fact += _SMOOTHING * ((time.perf_counter() - started) / max(1, facts) - per_fact)
                handover.wait_taken()  # at the end of stdin, the batch before may still wait
                handover.put(batch)
        except Exception as exc:  # a bug in building: this batch fails, and the child ends with it
            handover.wait_taken()
            handover.put(_Built(count, rows.facts, None, exc))
            return
    handover.wait_taken()
    handover.put(None)


def _tell(stdout: Any, frame: object) -> bool:
    """Write a frame to the engine; False when it is gone (its end of the pipe closed: killed)."""
    try:
        write_frame(stdout, frame)
    except OSError:  # BrokenPipeError: nobody waits for the answer; the batch is committed or not
        log.warning("writer process: the engine is gone; ending")
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())  # no second error at exit's flush
        return False
    return True


def _connect_and_claim(config: dict[str, Any]) -> tuple[psycopg.Connection[Any], int]:
    """A connection, and the writer epoch claimed on it (waiting at most `lock_timeout` s for a batch of
    the previous writer to end)."""
    with storage_errors("the writer process connecting"):
        conn = psycopg.connect(config["conninfo"], **connection_kwargs(
            connect_timeout=float(config["connect_timeout"]),
            prepare_threshold=DEFAULT_PREPARE_THRESHOLD if config.get("prepare", True) else None,
            application_name="trade-engine-writer"))
    try:
        return conn, claim_fence(conn, lock_timeout=float(config["lock_timeout"]))
    except BaseException:
        conn.close()
        raise


if __name__ == "__main__":
    sys.exit(main())
