"""The outbox relay's own process: ``python -m tradeengine.ops.relay_main``, started by `RelayProcess`.

The engine's relay (`actors.relay.OutboxRelay`) does the same work in a process of its own, so that its
CPU (reading the outbox, building and publishing every event, reading the broker's confirms: a third of
the server's CPU per order on RabbitMQ) no longer competes for the engine's GIL. It holds nothing the
outbox table does not have, so it can run anywhere the database and the broker are.

Protocol with the parent (`actors.relay_process.RelayProcess`), over the child's stdin and stdout:
- stdin: the first line is the configuration, one JSON object (`actors.relay_process.relay_config`);
  every byte after it is a nudge (new rows were committed); end of file means the parent is stopping or
  gone: the child finishes its current pass and exits with status 0. It never outlives its parent. SIGINT
  and SIGTERM are ignored (both reach the whole process group; the engine's stop closes stdin).
- stdout: the relay's figures (`RelayFigures`' fields but the backlog) as one JSON object per line,
  whenever they change (at most every `REPORT_INTERVAL` seconds), and once more before exiting.
- stderr: the log, formatted as the engine's (the parent's environment carries the log settings).
Exit status 1 when the relay actor itself broke (the parent's supervisor starts a new process).

Only one relay publishes at a time: the child holds a session advisory lock (`RELAY_LOCK`) on a
connection of its own while it runs, so a new child waits for an old one that is still finishing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import threading
from typing import Any

import psycopg
import pykka

from tradeengine.actors.polling import Nudge
from tradeengine.actors.relay import OutboxRelay, RelaySettings, RelayStats
from tradeengine.actors.supervised import ChildLink, ChildNotice, NoticeKind
from tradeengine.ops.child import begin_child
from tradeengine.storage import create_pool
from tradeengine.storage.database import storage_errors
from tradeengine.storage.errors import StorageUnavailable

__all__ = ["RELAY_LOCK", "REPORT_INTERVAL", "main"]

RELAY_LOCK = 7_310_002_001
"""The advisory lock key only the running relay process holds."""
REPORT_INTERVAL = 0.2
"""Seconds between two looks at the figures (written to stdout when they changed)."""

log = logging.getLogger("tradeengine.ops.relay_main")


def main() -> int:
    """Run the relay until stdin ends (status 0) or the relay breaks (status 1)."""
    config = begin_child(log, "relay process")
    if config is None:
        return 2
    stdin = sys.stdin.buffer
    settings = RelaySettings.from_dict(config["relay"])
    done = threading.Event()
    broken = threading.Event()

    def on_notice(notice: ChildNotice) -> None:
        if notice.kind is not NoticeKind.EXITED:
            broken.set()
        done.set()

    relay: list[pykka.ActorRef[Any]] = []  # the relay actor, once started (the stdin reader tells it)
    threading.Thread(target=_forward_nudges, args=(stdin, relay, done), name="relay-process-stdin",
                     daemon=True).start()
    lock = _lock_when_available(config["conninfo"], settings, done)
    if lock is None:  # told to stop before the database answered
        return 0
    with lock:
        pool = create_pool(config["conninfo"], min_size=1, max_size=2, name="tradeengine-relay")
        stats = RelayStats()
        ref = OutboxRelay.start(ChildLink("relay", 1, on_notice, lambda name, number: True),
                                pool=pool, settings=settings, stats=stats)
        relay.append(ref)
        log.info("relay process %d publishing to %s", os.getpid(), settings.exchange)
        reported: dict[str, Any] | None = None
        try:
            while True:
                finished = done.wait(REPORT_INTERVAL)
                reported = _report(stats, reported)
                if finished:
                    break
        finally:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(timeout=settings.stop_timeout)
            _report(stats, reported)
            pool.close(timeout=settings.database_timeout)
    return 1 if broken.is_set() else 0


def _lock_when_available(conninfo: str, settings: RelaySettings,
                         done: threading.Event) -> psycopg.Connection[Any] | None:
    """A connection holding `RELAY_LOCK`, trying again with the relay's backoff while the database does
    not answer (as the relay itself does); None when told to stop first."""
    attempt = 0
    while not done.is_set():
        try:
            with storage_errors("the relay process connecting for its lock"):
                conn = psycopg.connect(conninfo, autocommit=True,
                                       connect_timeout=max(2, math.ceil(settings.database_timeout)))
        except StorageUnavailable as exc:
            attempt += 1
            if attempt == 1:
                log.warning("%s; retrying with backoff", exc)
            done.wait(settings.backoff.delay(attempt))
            continue
        conn.execute("SELECT pg_advisory_lock(%s)", (RELAY_LOCK,))  # waits for a relay still finishing
        return conn
    return None


def _forward_nudges(stdin: Any, relay: list[pykka.ActorRef[Any]], done: threading.Event) -> None:
    """Tell the relay (once started) a Nudge for each read from stdin; end of file ends the process."""
    fd = stdin.fileno()
    try:
        while os.read(fd, 4096):
            if relay:
                with contextlib.suppress(pykka.ActorDeadError):
                    relay[0].tell(Nudge())
    except OSError:
        pass
    done.set()


def _report(stats: RelayStats, last: dict[str, Any] | None) -> dict[str, Any]:
    """Write the figures (`RelayFigures`' fields, without the backlog) to stdout when they differ from
    `last`; return them."""
    now = dataclasses.asdict(stats.figures())
    del now["backlog"]
    if now != last:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            sys.stdout.write(json.dumps(now) + "\n")
            sys.stdout.flush()
    return now


if __name__ == "__main__":
    sys.exit(main())
