"""Which PostgreSQL a command uses, and who starts and stops it.

With ``TRADE_ENGINE_DATABASE_URL`` set, that server is used and nothing is started or stopped.

Without it, the engine runs an embedded PostgreSQL in ``DATA_DIR/postgres``, and the data folder has
ONE owner at a time: the process holding an exclusive ``flock`` on ``DATA_DIR/engine.lock`` (its pid is
written in the file). The owner starts the server (or takes over one left running by an owner that
crashed) and stops it when it is done. flock is released by the kernel when the owner dies, even by
``kill -9``, so a stale lock never blocks a restart.

- ``serve`` must own the data folder: :func:`serving_database` raises :class:`DataDirInUse` (one clear
  line) when another live process holds the lock, then starts the server and applies the migrations
  in the calling process (the gunicorn master), and stops the server when serving ends.
- one-shot commands (``migrate``, ``pairs list``, ``users create``) use :func:`open_database`: when a
  live process owns the folder they reuse its running server and leave it running; otherwise they take
  the folder, start (or take over) the server, and stop it at the end. Only ``migrate`` (and ``serve``)
  apply migrations: the others refuse a database whose schema is missing or behind
  (:class:`NotMigrated`), and on an embedded folder holding no cluster yet they start nothing at all.
- a data folder that cannot be created or locked (a path under /proc, a regular file) is one line
  (:class:`DataDirUnusable`) naming TRADE_ENGINE_DATA_DIR and the OS error.
- :func:`wait_for_database` retries a database that does not answer, but not one that answers with an
  error no retry can fix (no such database or role, a wrong password).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tradeengine.storage.database import (
    DEFAULT_PREPARE_THRESHOLD,
    check_database,
    create_pool,
    one_line,
)
from tradeengine.storage.embedded import EmbeddedPostgres
from tradeengine.storage.errors import EmbeddedServerNotAnswering, StorageError, StorageUnavailable
from tradeengine.storage.migrate import apply_migrations, load_migrations, pending_migrations
from tradeengine.storage.pairs import PairRepository
from tradeengine.storage.users import UserRepository

from .settings import Settings

_log = logging.getLogger(__name__)

LOCK_FILE = "engine.lock"
#: How long ``serve`` waits for an external database that does not answer at start.
DATABASE_WAIT_SECONDS = 30.0


class StartupError(Exception):
    """The engine cannot start; the message is one line saying why and what to do."""


class DataDirInUse(StartupError):
    """Another live process owns the data folder."""


class DataDirUnusable(StartupError):
    """The data folder cannot be created, or its lock file cannot be opened (an OS error)."""


class NotMigrated(StartupError):
    """The database's schema is missing or behind this code's migrations (a command that does not migrate)."""


class DatabaseRefused(StartupError):
    """The database answered with an error no retry can fix (no such database or role, a wrong password)."""


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<data_dir>/engine.lock`` holding the owner's pid.

    The descriptor is not inherited by programs this process runs (close-on-exec); a forked child
    that must not keep the folder locked after this process dies calls :meth:`forget_in_child`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it and write our pid into the file; never waits."""
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirUnusable(
                f"TRADE_ENGINE_DATA_DIR {self.path.parent} cannot be used as the data folder: "
                f"{exc}; set it to a folder this user may create and write") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> int | None:
        """The pid written by the current (or last) owner, if the file holds one."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Give the lock up (the file stays, emptied)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor so only the parent keeps the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def in_use_error(self) -> DataDirInUse:
        """The error for a folder another process owns, naming it and its pid."""
        pid = self.holder()
        owner = f"pid {pid}" if pid else "another process"
        return DataDirInUse(
            f"data folder {self.path.parent} is in use by another trade-engine ({owner}); stop it "
            f"first or set TRADE_ENGINE_DATA_DIR to another folder"
        )


class Database:
    """A database a command works on: its URL, migrations, a lazily opened pool and repositories."""

    def __init__(self, url: str, *, pool_size: int = 4, prepare: bool = True) -> None:
        self.url = url
        self._pool_size = pool_size
        self._prepare = prepare
        self._pool: Any = None

    def migrate(self) -> list[str]:
        """Apply the pending migrations; return the names applied."""
        return apply_migrations(self.url)

    @property
    def pool(self) -> Any:
        """A ``psycopg_pool.ConnectionPool`` on the database, opened on first use."""
        if self._pool is None:
            threshold = DEFAULT_PREPARE_THRESHOLD if self._prepare else None
            self._pool = create_pool(self.url, min_size=1, max_size=self._pool_size,
                                     prepare_threshold=threshold)
        return self._pool

    def pairs(self) -> PairRepository:
        """The trading pairs repository."""
        return PairRepository(self.pool)

    def users(self) -> UserRepository:
        """The users and API keys repository."""
        return UserRepository(self.pool)

    def close(self) -> None:
        """Close the pool, if one was opened."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


@contextmanager
def open_database(settings: Settings, *, require_migrated: bool = True) -> Iterator[Database]:
    """The database for a one-shot command; an embedded server is started only if nobody runs it.

    With `require_migrated` (every command but ``migrate``), a database whose schema is missing or
    behind raises :class:`NotMigrated` instead of being used, and an embedded folder holding no
    cluster yet raises it before anything is initialised or started.
    """
    with _command_url(settings, create=not require_migrated) as url:
        if require_migrated:
            require_migrations(url)
        database = Database(url, pool_size=min(settings.database_pool_size, 4),
                            prepare=settings.database_prepare)
        try:
            yield database
        finally:
            database.close()


def require_migrations(url: str, shown: str | None = None) -> None:
    """Raise :class:`NotMigrated` unless every migration this code ships is applied on `url` (changes
    nothing; a history that disagrees with the files raises as ``migrate`` would). `shown` names the
    database in the message [default: the URL, its password hidden]."""
    pending = pending_migrations(url)
    if not pending:
        return
    shipped = len(load_migrations())
    why = ("no migrations applied" if len(pending) == shipped
           else f"{len(pending)} of {shipped} migrations pending, the first {pending[0].name}")
    raise NotMigrated(f"the database at {shown or redact(url)} is not migrated ({why}); "
                      "run `trade-engine migrate` (or wait: a `serve` starting on it applies them)")


@contextmanager
def _command_url(settings: Settings, *, create: bool = True) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.database_url
        return
    lock = DataDirLock(settings.data_dir)
    server = EmbeddedPostgres(settings.data_dir)
    if not lock.try_acquire():
        _log.info("data folder %s is owned by pid %s; using its PostgreSQL server", settings.data_dir,
                  lock.holder())
        yield server.start()  # reuses the owner's running server; the owner stops it, not us
        return
    try:
        if not create and not (server.pgdata / "PG_VERSION").is_file():
            # a fresh folder: initialising a cluster only to refuse it would leave one behind
            raise NotMigrated(f"the database at {server.pgdata} is not migrated (no embedded PostgreSQL "
                              "there yet); run `trade-engine migrate`")
        with _started(server) as url:
            yield url
    finally:
        lock.release()


@contextmanager
def _started(server: EmbeddedPostgres,
             shield: Callable[[], AbstractContextManager[object]] = nullcontext) -> Iterator[str]:
    """Start `server`, yield its URL and stop it at the end (start and stop inside ``shield()``), or stop
    it when the start fails. A server left running that does not answer (`EmbeddedServerNotAnswering`)
    is left as it is: stopping it would wait minutes for nothing."""
    try:
        with shield():
            url = server.start()
    except EmbeddedServerNotAnswering:
        raise
    except BaseException:
        with shield():
            server.stop()
        raise
    try:
        yield url
    finally:
        with shield():
            server.stop()


@contextmanager
def serving_database(settings: Settings, *, lock: DataDirLock | None = None,
                     wait: float = DATABASE_WAIT_SECONDS,
                     shield: Callable[[], AbstractContextManager[object]] = nullcontext) -> Iterator[str]:
    """For ``serve``: own the data folder, start the server, migrate; yield the URL; stop at the end.

    Starting and stopping the embedded server run inside ``shield()``: ``serve`` holds stop signals
    back there, so a server is never left half started or half stopped.

    Raises :class:`StartupError` (one line) when the folder is in use, the server cannot start, the
    external database does not answer within ``wait`` seconds, or a migration fails.
    """
    lock = lock if lock is not None else DataDirLock(settings.data_dir)
    with prepared_database(settings.database_url, lock=lock, prepare=_migrate, wait=wait,
                           shield=shield) as url:
        yield url


@contextmanager
def prepared_database(url: str | None, *, lock: DataDirLock, prepare: Callable[[str], None],
                      database: str | None = None, wait: float = DATABASE_WAIT_SECONDS,
                      shield: Callable[[], AbstractContextManager[object]] = nullcontext,
                      what: str = "PostgreSQL") -> Iterator[str]:
    """The database a server process runs on, `prepare`d (migrated, or a schema created); yield its URL.

    With `url`, wait for it to answer (at most `wait` s). Without, own the folder of `lock` (or raise
    :class:`DataDirInUse`), start an embedded server there (database `database`, default the
    server's own) and stop it at the end; start and stop run inside ``shield()``. `what` names the
    embedded server in the log.
    """
    if url is not None:
        wait_for_database(url, wait)
        prepare(url)
        yield url
        return
    if not lock.try_acquire():
        raise lock.in_use_error()
    try:
        server = (EmbeddedPostgres(lock.path.parent) if database is None
                  else EmbeddedPostgres(lock.path.parent, database=database))
        with ExitStack() as stack:
            try:
                embedded_url = stack.enter_context(_started(server, shield))
            except EmbeddedServerNotAnswering as exc:
                raise StartupError(f"the embedded PostgreSQL cannot be used: {exc}") from exc
            except StorageError as exc:
                raise StartupError(f"the embedded PostgreSQL in {server.pgdata} did not start: "
                                   f"{one_line(exc)}") from exc
            _log.info("embedded %s ready in %s", what, server.pgdata)
            prepare(embedded_url)
            yield embedded_url
    finally:
        lock.release()


#: SQLSTATEs of a connection no retry can fix: no such database, no such role (or no pg_hba.conf entry),
#: a wrong password.
FATAL_SQLSTATES = {"3D000": "invalid_catalog_name", "28000": "invalid_authorization_specification",
                   "28P01": "invalid_password"}
# psycopg (3.3) gives no SQLSTATE for an error met while connecting: only libpq's message says which it
# was. These are PostgreSQL's own (English) words for the three, and libpq's for a missing password.
_FATAL_MESSAGES = (
    (re.compile(r'FATAL:\s+database ".*" does not exist'), "3D000"),
    (re.compile(r'FATAL:\s+role ".*" does not exist'), "28000"),
    (re.compile(r"FATAL:\s+no pg_hba\.conf entry for"), "28000"),
    (re.compile(r"FATAL:\s+password authentication failed for user"), "28P01"),
    (re.compile(r"fe_sendauth: no password supplied"), "28P01"),
)


def fatal_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of `exc` (or of the psycopg error it was raised from) when it is one of
    :data:`FATAL_SQLSTATES`: the database answered, and will answer the same way to every retry."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error):
            if seen.sqlstate in FATAL_SQLSTATES:
                return seen.sqlstate
            for pattern, sqlstate in _FATAL_MESSAGES:
                if pattern.search(str(seen)):
                    return sqlstate
            return None
        seen = seen.__cause__
    return None


def wait_for_database(url: str, wait: float, *, attempt_timeout: float = 2.0, pause: float = 1.0) -> None:
    """Return once the database answers; retry for ``wait`` seconds, then raise StartupError.

    An answer no retry can change (:func:`fatal_sqlstate`: no such database or role, a wrong password)
    raises :class:`DatabaseRefused` at once.
    """
    deadline = time.monotonic() + wait
    attempts = 0
    while True:
        attempts += 1
        try:
            check_database(url, timeout=attempt_timeout)
            return
        except StorageUnavailable as exc:
            sqlstate = fatal_sqlstate(exc)
            if sqlstate is not None:
                raise DatabaseRefused(
                    f"the database at {redact(url)} refused the connection ({FATAL_SQLSTATES[sqlstate]}, "
                    f"SQLSTATE {sqlstate}; not retried): {one_line(exc)}"
                ) from exc
            if time.monotonic() + pause >= deadline:
                raise StartupError(
                    f"the database at {redact(url)} did not answer within {wait:g} s "
                    f"({attempts} attempts): {one_line(exc)}"
                ) from exc
            if attempts == 1:
                _log.warning("the database at %s does not answer yet (%s); retrying for up to %g s",
                             redact(url), one_line(exc), wait)
        time.sleep(pause)


def _migrate(url: str) -> None:
    try:
        applied = apply_migrations(url)
    except StorageError as exc:
        raise StartupError(f"migrations on {redact(url)} failed: {one_line(exc)}") from exc
    if applied:
        _log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
    else:
        _log.info("database schema is up to date")
