"""What ``serve`` checks before it touches a database: that it can listen, and that it is the only engine.

**The address.** gunicorn binds only after the database is up and migrated, and then retries a taken
port five times over five seconds in its own log lines. ``serve`` binds a probe socket first (with
``SO_REUSEADDR``, as gunicorn does), so a port in use or an address that does not resolve ends the start
at once, with one line.

**One engine per database.** Two engines on one database would take the writer's fence from each other
(each rebuild claims a new epoch, see migration 0009), and their clients would see 503s: the data would
stay safe, the service would not. ``serve`` holds a transaction-level advisory lock for as long as it
runs, on a connection of its own, in a transaction it keeps open. A transaction (not a session) holds
it, so it also works behind PgBouncer in transaction mode (the open transaction pins its server
connection). The transaction reads nothing and writes nothing after taking the lock, so it holds no
snapshot back from vacuum. When the engine dies its connection closes and PostgreSQL releases the lock:
a ``kill -9`` never leaves a stale lock behind. A second ``serve`` finds the lock taken and stops with
one line naming the holder (its ``application_name``: host and pid). Releasing is not instant: the
server ends a closed session's backend a moment after the client has gone, so a ``serve`` started right
after the previous one stopped keeps asking for up to ``RELEASE_WAIT`` seconds before it gives up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg

from .database import StartupError, redact

_log = logging.getLogger(__name__)

ENGINE_LOCK_KEY = 0x7E_E5_6E_01
"""The advisory lock key of a serving engine (one per database; an arbitrary, fixed 64-bit number)."""

RELEASE_WAIT = 3.0
"""Seconds a taken lock is asked for again before the start is refused: what a session closed a moment
ago takes to end on a busy server."""


def check_bind(host: str, port: int,
               variables: str = "TRADE_ENGINE_HTTP_HOST/TRADE_ENGINE_HTTP_PORT") -> None:
    """Raise StartupError (one line) unless a server could listen on ``host:port`` now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} ({variables}): {exc.strerror or exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port} ({variables}): "
                               f"{exc.strerror or exc}") from exc


class EngineLock:
    """The engine lock of one database, held by ``serve``'s master from start to stop."""

    def __init__(self) -> None:
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    @contextmanager
    def held(self, url: str) -> Iterator[None]:
        """Hold the lock of the database at ``url`` for the block; StartupError if another engine holds
        it."""
        name = f"trade-engine serve {socket.gethostname()} pid {os.getpid()}"[:63]
        try:
            connection = psycopg.connect(url, autocommit=False, application_name=name, connect_timeout=10)
        except psycopg.Error as exc:
            raise StartupError(f"the database at {redact(url)} refused the engine lock's connection: "
                               f"{' '.join(str(exc).split())}") from exc
        try:
            deadline = time.monotonic() + RELEASE_WAIT
            taken = _take(connection)
            while not taken and time.monotonic() < deadline:
                time.sleep(0.1)
                taken = _take(connection)
            if not taken:
                holder = _holder(url)
                raise StartupError(f"another trade-engine is serving the database at {redact(url)}"
                                   f"{f' ({holder})' if holder else ''}; one engine per database")
            info = connection.info  # what libpq reached: a URL may leave host and database to its defaults
            _log.info("holding the engine lock of %s (database %s as %s on %s, port %s)", redact(url),
                      info.dbname, info.user, info.host, info.port)
            self._connection = connection
            yield
        finally:
            self._connection = None
            # Closing ends the session, its transaction and so the lock, without waiting for an answer: a
            # ROLLBACK to a database that hangs would wait for ever, and the engine would never stop.
            connection.close()

    def forget_in_child(self) -> None:
        """In a forked worker: close this process's copy of the lock's socket, at once and silently.

        The master keeps the connection (and the lock); a worker left running after its master was
        killed must not hold the lock until it notices. Only the file descriptor is closed: libpq is not
        told, so nothing is sent on the master's connection. The worker never touches the connection
        object again (it leaves with ``os._exit``)."""
        connection = self._connection
        if connection is not None:
            with suppress(OSError):
                os.close(connection.pgconn.socket)


def _take(connection: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Take the lock in the connection's transaction if it is free now."""
    row = connection.execute("SELECT pg_try_advisory_xact_lock(%s)", (ENGINE_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def _holder(url: str) -> str | None:
    """Who holds the engine lock: the holder's application_name and address, if this role may see it."""
    query = """
        SELECT a.application_name, a.client_addr::text, a.pid
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
            SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
        LIMIT 1"""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
            row = connection.execute(query, (ENGINE_LOCK_KEY,)).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    application, address, pid = row
    return f"{application or 'unnamed client'}, from {address or 'a local socket'}, backend pid {pid}"
