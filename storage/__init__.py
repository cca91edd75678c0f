"""PostgreSQL pool, repositories, migrations runner, embedded PostgreSQL, Redis and broker adapters."""

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
from tradeengine.storage.migrate import apply_migrations
from tradeengine.storage.pairs import PairRecord, PairRepository
from tradeengine.storage.partitions import run_partition_maintenance

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationChecksumMismatch",
    "MigrationError",
    "PairRecord",
    "PairRepository",
    "StorageError",
    "StorageUnavailable",
    "UnknownMigrationApplied",
    "apply_migrations",
    "check_database",
    "create_pool",
    "run_partition_maintenance",
    "storage_errors",
]
