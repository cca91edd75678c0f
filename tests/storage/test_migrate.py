"""The migration runner against real PostgreSQL (machine and embedded)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from tradeengine.storage import (
    MigrationChecksumMismatch,
    MigrationError,
    UnknownMigrationApplied,
    apply_migrations,
)
from tradeengine.storage.migrate import MIGRATION_LOCK_KEY, load_migrations, pending_migrations

PACKAGED = [m.name for m in load_migrations()]


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def applied_rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def table_exists(url: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,)


def test_packaged_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert PACKAGED[0] == "0001_core_schema.sql"


def test_applying_twice_applies_everything_once_then_nothing(pg_url: str) -> None:
    assert apply_migrations(pg_url) == PACKAGED
    assert apply_migrations(pg_url) == []
    assert [name for _, name in applied_rows(pg_url)] == PACKAGED


def test_concurrent_runners_apply_each_migration_exactly_once(pg_url: str) -> None:
    runners = 4
    barrier = threading.Barrier(runners)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(apply_migrations(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(results, key=len) == [[]] * (runners - 1) + [PACKAGED]
    assert [name for _, name in applied_rows(pg_url)] == PACKAGED


def test_a_runner_waits_for_the_lock_then_finds_nothing_to_do(pg_url: str) -> None:
    apply_migrations(pg_url)
    result: list[list[str]] = []
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        waiter = threading.Thread(target=lambda: result.append(apply_migrations(pg_url)))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive(), "the runner did not wait for the migration lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    waiter.join(timeout=30)
    assert result == [[]]


def test_an_edited_applied_migration_is_refused_naming_the_file(pg_url: str, tmp_path: Path) -> None:
    source = write_migrations(tmp_path / "m", {"0001_first.sql": "CREATE TABLE first (x int);"})
    assert apply_migrations(pg_url, source=source) == ["0001_first.sql"]
    write_migrations(source, {
        "0001_first.sql": "CREATE TABLE first (x bigint);",
        "0002_second.sql": "CREATE TABLE second (x int);",
    })

    with pytest.raises(MigrationChecksumMismatch) as caught:
        apply_migrations(pg_url, source=source)

    message = str(caught.value)
    assert message.startswith("migration 0001_first.sql was edited after it was applied (checksum ")
    assert message.endswith("; restore it or add a new migration")
    assert not table_exists(pg_url, "second"), "nothing may be applied once a checksum differs"


def test_a_tampered_stored_checksum_of_a_packaged_migration_is_refused(pg_url: str) -> None:
    apply_migrations(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 2")

    with pytest.raises(MigrationChecksumMismatch, match=f"migration {PACKAGED[1]} was edited") as caught:
        apply_migrations(pg_url)
    assert caught.value.applied_checksum == "0" * 64


def test_a_database_with_a_migration_this_code_does_not_know_is_refused(
    pg_url: str, tmp_path: Path
) -> None:
    newer = write_migrations(tmp_path / "newer", {
        "0001_first.sql": "CREATE TABLE first (x int);",
        "0002_future.sql": "CREATE TABLE future (x int);",
    })
    older = write_migrations(tmp_path / "older", {"0001_first.sql": "CREATE TABLE first (x int);"})
    apply_migrations(pg_url, source=newer)

    with pytest.raises(UnknownMigrationApplied, match=r"0002_future\.sql.*schema is newer than the code"):
        apply_migrations(pg_url, source=older)
    with pytest.raises(UnknownMigrationApplied, match=r"0002_future\.sql"):
        pending_migrations(pg_url, source=older)  # the read-only check refuses it alike


def test_pending_migrations_reads_without_changing_anything(pg_url: str, tmp_path: Path) -> None:
    files = write_migrations(tmp_path / "m", {"0001_first.sql": "CREATE TABLE first (x int);",
                                              "0002_second.sql": "CREATE TABLE second (x int);"})
    assert [m.name for m in pending_migrations(pg_url, source=files)] == ["0001_first.sql", "0002_second.sql"]
    with psycopg.connect(pg_url) as conn:  # nothing created by the check
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
    apply_migrations(pg_url, source=files)
    assert pending_migrations(pg_url, source=files) == []


def test_a_failing_migration_is_rolled_back_and_can_be_fixed(pg_url: str, tmp_path: Path) -> None:
    source = write_migrations(tmp_path / "m", {
        "0001_first.sql": "CREATE TABLE first (x int);",
        "0002_broken.sql": "CREATE TABLE half (x int); SELECT 1 / 0;",
    })
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed and was rolled back"):
        apply_migrations(pg_url, source=source)
    assert applied_rows(pg_url) == [(1, "0001_first.sql")]
    assert not table_exists(pg_url, "half")

    write_migrations(source, {"0002_broken.sql": "CREATE TABLE half (x int);"})
    assert apply_migrations(pg_url, source=source) == ["0002_broken.sql"]


def test_migration_sql_may_contain_percent_signs(pg_url: str, tmp_path: Path) -> None:
    source = write_migrations(tmp_path / "m", {
        "0001_percent.sql": "CREATE TABLE t (s text); INSERT INTO t VALUES (format('%s%%', 'a'));",
    })
    apply_migrations(pg_url, source=source)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT s FROM t").fetchone() == ("a%",)


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"1_short.sql": ""}, "is not named NNNN_snake_case_name.sql"),
        ({"0001_Upper.sql": ""}, "is not named NNNN_snake_case_name.sql"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "have the same version 1"),
    ],
)
def test_badly_named_migration_files_are_rejected(tmp_path: Path, files: dict[str, str], error: str) -> None:
    with pytest.raises(MigrationError, match=error):
        load_migrations(write_migrations(tmp_path / "m", files))


def test_files_other_than_sql_are_ignored(tmp_path: Path) -> None:
    source = write_migrations(tmp_path / "m", {"README.md": "", "0001_a.sql": "SELECT 1;"})
    assert [m.name for m in load_migrations(source)] == ["0001_a.sql"]
