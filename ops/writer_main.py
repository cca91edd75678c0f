"""The persistence writer's own process: ``python -m tradeengine.ops.writer_main``, started by the writer.

With ``TRADE_ENGINE_WRITER_PROCESS=true`` the writer actor (`actors.writer.PersistenceActor`) keeps its
group commit (what joins a batch, replies, barriers, breaking) but hands each batch's facts to this
process, which turns them into rows (`storage.rows.build_rows`) and commits them (`storage.writer.
write_batch`) on a connection of its own: the rows' Python and psycopg's no longer take the engine's
GIL. The protocol is `actors.writer_process` (frames over this process's stdin and stdout).

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

import logging
import os
import sys
from typing import Any

import psycopg

from tradeengine.actors.writer_process import read_frame, reply, write_frame
from tradeengine.ops.child import begin_child
from tradeengine.storage.database import connection_kwargs, storage_errors
from tradeengine.storage.errors import StorageError
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import claim_fence, write_batch

__all__ = ["main"]

log = logging.getLogger("tradeengine.ops.writer_main")


def main() -> int:
    """Commit batches until stdin ends (status 0) or one fails (status 1)."""
    config = begin_child(log, "writer process")
    if config is None:
        return 2
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    commit_timeout = float(config["commit_timeout"])
    try:
        conn, epoch = _connect_and_claim(config)
    except StorageError as exc:
        _tell(stdout, reply(exc))
        return 1
    with conn:
        if not _tell(stdout, ("ready", os.getpid())):
            return 0
        while (facts := read_frame(stdin)) is not None:
            try:
                rows = build_rows(facts)
                if rows.row_count:
                    write_batch(conn, rows, statement_timeout=commit_timeout, fence=epoch)
            except Exception as exc:
                log.error("writer process: the commit of %d fact(s) failed", len(facts), exc_info=exc)
                _tell(stdout, reply(exc))
                return 1
            if not _tell(stdout, ("ok", rows.row_count)):
                return 0
    return 0


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
            connect_timeout=float(config["connect_timeout"]), prepare_threshold=None,
            application_name="trade-engine-writer"))
    try:
        return conn, claim_fence(conn, lock_timeout=float(config["lock_timeout"]))
    except BaseException:
        conn.close()
        raise


if __name__ == "__main__":
    sys.exit(main())
