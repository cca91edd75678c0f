"""The persistence writer's own process: ``python -m tradeengine.ops.writer_main``, started by the writer.

With ``TRADE_ENGINE_WRITER_PROCESS=true`` the writer actor (`actors.writer.PersistenceActor`) keeps
everything about its callers (replies, barriers, breaking) but sends the facts of its flushes to this
process, which turns them into rows (`storage.rows.build_rows`), renders them into the batch statement
(`storage.writer.render_batch`) and commits them (`storage.writer.commit_batch`) on a connection of its
own: the rows' Python and psycopg's no longer take the engine's GIL. The protocol is
`actors.writer_process` (frames over this process's stdin and stdout).

Pipelined, in two threads: the builder reads the frames and makes the next batch of every frame that
came while the current batch commits (at least one frame, up to ``max_batch`` facts), rows rendered and
ready; the main thread commits one batch after the other and answers for each the number of frames it
held. Building is Python (it holds this process's GIL) and committing is mostly a wait for PostgreSQL
(it does not), so the two overlap: a batch's commit is no longer followed by its successor's build.
The builder starts a batch only when the committer has taken the one before it (a semaphore), so one
batch at most waits built while another commits, and it holds what came up to the moment it was begun:
a builder running further ahead would make each frame wait for two commits before its own. A batch that
fails ends the process before the next is written, and nothing after a failed batch is committed.

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

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

import psycopg

from tradeengine.actors.writer_process import FrameReader, reply, write_frame
from tradeengine.ops.child import begin_child
from tradeengine.storage.database import DEFAULT_PREPARE_THRESHOLD, connection_kwargs, storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.rows import build_rows
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
        built: queue.Queue[_Built | None] = queue.Queue(maxsize=1)
        turn = threading.Semaphore(1)  # the builder may begin the next batch
        threading.Thread(target=_build, name="writer-builder", daemon=True,
                         args=(FrameReader(sys.stdin.buffer.fileno()), built, turn,
                               int(config.get("max_batch", 2000)))).start()
        while (batch := built.get()) is not None:
            turn.release()
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
                _tell(stdout, reply(exc))
                return 1
            if not _tell(stdout, ("ok", batch.frames, batch.batch.row_count, seconds)):
                return 0
    return 0


def _build(frames: FrameReader, built: queue.Queue[_Built | None], turn: threading.Semaphore,
           max_batch: int) -> None:
    """The builder thread: once it has the `turn`, the next batch is every frame that came, in order, up
    to `max_batch` facts (at least one frame), as rows rendered into its statement; at the end of
    stdin, None."""
    carried = None  # a frame read that did not fit in the batch before
    while turn.acquire() and (first := carried if carried is not None else frames.read()) is not None:
        facts, count, carried = list(first), 1, None
        while len(facts) < max_batch:
            more = frames.read(0.0)
            if more is None or more is FrameReader.NOTHING:
                break
            if len(facts) + len(more) > max_batch:
                carried = more
                break
            facts += more
            count += 1
        try:
            built.put(_Built(count, len(facts), render_batch(build_rows(facts))))
        except Exception as exc:  # a bug in building: this batch fails, and the child ends with it
            built.put(_Built(count, len(facts), None, exc))
            return
    built.put(None)


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
