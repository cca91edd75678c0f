"""PostgreSQL pool, repositories, migrations runner, embedded PostgreSQL, and the writer's rows."""

from tradeengine.storage.database import check_database, create_pool, storage_errors
from tradeengine.storage.embedded import EmbeddedPostgres
from tradeengine.storage.errors import (
    EmbeddedPostgresError,
    MigrationChecksumMismatch,
    MigrationError,
    StorageError,
    StorageUnavailable,
    UnknownMigrationApplied,
)
from tradeengine.storage.facts import PairFacts, Transfer
from tradeengine.storage.migrate import apply_migrations
from tradeengine.storage.pairs import NewPair, PairRecord, PairRepository
from tradeengine.storage.partitions import run_partition_maintenance
from tradeengine.storage.rows import RowSet, build_rows
from tradeengine.storage.users import Principal, User, UserExists, UserRepository
from tradeengine.storage.writer import write_batch

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationChecksumMismatch",
    "MigrationError",
    "NewPair",
    "PairFacts",
    "PairRecord",
    "PairRepository",
    "Principal",
    "RowSet",
    "StorageError",
    "StorageUnavailable",
    "Transfer",
    "UnknownMigrationApplied",
    "User",
    "UserExists",
    "UserRepository",
    "apply_migrations",
    "build_rows",
    "check_database",
    "create_pool",
    "run_partition_maintenance",
    "storage_errors",
    "write_batch",
]
