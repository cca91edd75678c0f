"""Apply the numbered SQL migrations of ``tradeengine.migrations`` in order.

Invariants:
- a migration file is named ``NNNN_snake_name.sql``; its version is ``NNNN``; versions are unique;
- a run is ONE transaction holding a transaction-level advisory lock (``MIGRATION_LOCK_KEY``), which
  serialises concurrent runners (the second one waits, then finds nothing to do); each file runs in a
  savepoint together with its ``schema_migrations`` row, so a migration is either applied and recorded,
  or not at all, and when one fails the ones before it are still committed;
- before anything is applied, every recorded migration is checked: a recorded file whose sha256 changed
  raises ``MigrationChecksumMismatch``; a recorded migration this code does not ship raises
  ``UnknownMigrationApplied``. Nothing is applied in either case.

Server notices raised by migrations (``RAISE NOTICE``) are logged at INFO level.

Nothing outlives the transaction (no session-level lock or setting), so migrations also run through
PgBouncer in transaction mode. As all pending files commit together, a value added to an enum
(``ALTER TYPE ... ADD VALUE``) cannot be used by a later file of the same run: use it in a later release.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg

from tradeengine.storage.database import connection_kwargs, storage_errors
from tradeengine.storage.errors import MigrationChecksumMismatch, MigrationError, UnknownMigrationApplied

_log = logging.getLogger(__name__)

#: Key of the advisory lock held while migrating ("tradeeng" in ASCII, as a bigint).
MIGRATION_LOCK_KEY = int.from_bytes(b"tradeeng", "big") & 0x7FFF_FFFF_FFFF_FFFF

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")

_CREATE_TABLE = b"""
CREATE TABLE schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, file name, SQL text and sha256 of its bytes."""

    version: int
    name: str
    sql: bytes
    checksum: str


def load_migrations(source: Traversable | None = None) -> list[Migration]:
    """Read the migration files of ``source`` (default: the packaged ``tradeengine.migrations``).

    Files that are not ``.sql`` are ignored; a ``.sql`` file with a malformed name or a duplicate
    version raises ``MigrationError``. Returns the migrations sorted by version.
    """
    folder = source if source is not None else resources.files("tradeengine.migrations")
    migrations: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_snake_case_name.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"migrations {migrations[version].name} and {entry.name} have the same version {version}"
            )
        sql = entry.read_bytes()
        migrations[version] = Migration(version, entry.name, sql, hashlib.sha256(sql).hexdigest())
    return [migrations[v] for v in sorted(migrations)]


def apply_migrations(
    conninfo: str, *, source: Traversable | None = None, lock_timeout: float = 300.0
) -> list[str]:
    """Apply the pending migrations to the database at ``conninfo``; return the names applied, in order.

    Waits at most ``lock_timeout`` seconds for another runner to finish. Raises
    ``MigrationChecksumMismatch`` / ``UnknownMigrationApplied`` (nothing applied) when the recorded
    history disagrees with the files, ``StorageUnavailable`` when the database cannot be reached, and
    ``StorageError`` when a migration fails (that migration is rolled back; earlier ones stay).
    """
    migrations = load_migrations(source)
    with (
        storage_errors("applying migrations"),
        psycopg.connect(conninfo, autocommit=True, **connection_kwargs(prepare_threshold=None)) as conn,
    ):
        conn.add_notice_handler(_log_notice)
        failed: MigrationError | None = None
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute("SELECT set_config('lock_timeout', '0', true)")
            if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
                conn.execute(_CREATE_TABLE)
            pending = _pending(conn, migrations)
            for migration in pending:
                try:
                    _apply_one(conn, migration)
                except MigrationError as exc:  # rolled back to its savepoint: commit the ones before it
                    failed = exc
                    break
    if failed is not None:
        raise failed
    return [m.name for m in pending]


def pending_migrations(conninfo: str, *, source: Traversable | None = None) -> list[Migration]:
    """The migrations not yet applied to the database at ``conninfo`` (all of them on a database that
    has none); changes nothing. Raises as :func:`apply_migrations` does when the recorded history
    disagrees with the files (a database newer than the code: ``UnknownMigrationApplied``)."""
    migrations = load_migrations(source)
    with (
        storage_errors("checking the database schema"),
        psycopg.connect(conninfo, autocommit=True, **connection_kwargs(prepare_threshold=None)) as conn,
    ):
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
            return migrations
        return _pending(conn, migrations)


def _pending(conn: psycopg.Connection[Any], migrations: list[Migration]) -> list[Migration]:
    known = {m.version: m for m in migrations}
    applied = conn.execute(
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    ).fetchall()
    for version, name, checksum in applied:
        migration = known.get(version)
        if migration is None or migration.name != name:
            raise UnknownMigrationApplied(name)
        if migration.checksum != checksum:
            raise MigrationChecksumMismatch(name, applied_checksum=checksum, file_checksum=migration.checksum)
    done = {row[0] for row in applied}
    return [m for m in migrations if m.version not in done]


def _apply_one(conn: psycopg.Connection[Any], migration: Migration) -> None:
    _log.info("applying migration %s", migration.name)
    try:
        with conn.transaction():
            # No parameters: the whole file goes through the simple query protocol, several statements
            # at once, and '%' in the SQL is left alone.
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        raise MigrationError(f"migration {migration.name} failed and was rolled back: {exc}") from exc


def _log_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    _log.info("database notice: %s", diagnostic.message_primary)
