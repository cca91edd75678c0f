"""Errors raised by the storage layer.

Third-party exceptions (psycopg, psycopg_pool, subprocess) never leave ``tradeengine.storage``: they are
translated at the boundary and chained (``raise StorageUnavailable(...) from exc``).

    TradeEngineError > InfrastructureError      (tradeengine.engine.errors)
    └── StorageError                      root of every storage failure
        ├── StorageUnavailable            the database cannot be reached or did not answer in time
        │   │                             (retryable; also an engine.errors.StorageUnavailable)
        │   └── CommitOutcomeUnknown      the connection was lost while a commit was under way: it may
        │                                 have committed (also an engine.errors.EngineTimeout: HTTP 504)
        ├── MigrationError                the schema cannot be brought to the version this code expects
        │   ├── MigrationChecksumMismatch an applied migration file was edited afterwards
        │   └── UnknownMigrationApplied   the database holds a migration this code does not know
        └── EmbeddedPostgresError         the embedded server could not be initialised, started or stopped
            └── EmbeddedServerNotAnswering  a server left running on the folder does not answer
"""

from __future__ import annotations

from tradeengine.engine.errors import EngineTimeout, InfrastructureError
from tradeengine.engine.errors import StorageUnavailable as UnavailableInfrastructure


class StorageError(InfrastructureError):
    """Root of every error raised by the storage layer."""

    code = "STORAGE_ERROR"


class StorageUnavailable(StorageError, UnavailableInfrastructure):
    """The database cannot be reached or did not answer in time; the operation may be retried.

    Also an ``engine.errors.StorageUnavailable``, so layers above catch one class for "database down".
    """

    code = "UNAVAILABLE"


class CommitOutcomeUnknown(StorageUnavailable, EngineTimeout):
    """The connection to the database (or the writer process) was lost while a commit was under way, so
    it may or may not have committed. Callers must not take it for a refusal: the client is told the
    outcome is unknown (504 ENGINE_TIMEOUT) and looks the order up; the engine rebuilds from the database.
    """

    code = "ENGINE_TIMEOUT"


class WriterFenced(StorageError):
    """A writer process's batch found a newer writer in charge (``writer_fence``): nothing was written."""


class MigrationError(StorageError):
    """The schema cannot be brought to the version this code expects."""


class MigrationChecksumMismatch(MigrationError):
    """An already-applied migration file was edited afterwards."""

    def __init__(self, name: str, applied_checksum: str, file_checksum: str) -> None:
        super().__init__(
            f"migration {name} was edited after it was applied "
            f"(checksum {file_checksum} != {applied_checksum}); restore it or add a new migration"
        )
        self.name = name
        self.applied_checksum = applied_checksum
        self.file_checksum = file_checksum


class UnknownMigrationApplied(MigrationError):
    """The database holds a migration this code does not know: its schema is newer than the code."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the database has migration {name} applied, which this version of trade-engine does not know: "
            "the schema is newer than the code; run a newer trade-engine or restore a matching database"
        )
        self.name = name


class EmbeddedPostgresError(StorageError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class EmbeddedServerNotAnswering(EmbeddedPostgresError):
    """A server already running on the data folder (left by an engine that died) does not answer.

    It was not started by this process, which leaves it as it is: stopping a server that does not
    answer (suspended, or overloaded) would wait minutes for nothing.
    """
