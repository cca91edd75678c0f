"""Partition maintenance on a timer: at once, then on the interval; idempotent start/stop; retries."""

from __future__ import annotations

import threading
import time

import pytest

from tradeengine.actors.maintenance import PeriodicMaintenance
from tradeengine.actors.system import ActorSystem


class CountingMaintenance:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.called = threading.Condition()

    def __call__(self) -> None:
        with self.called:
            self.calls += 1
            self.called.notify_all()
        if self.calls <= self.fail_first:
            raise ConnectionError("database unavailable")

    def wait_for(self, calls: int, timeout: float = 5.0) -> None:
        with self.called:
            assert self.called.wait_for(lambda: self.calls >= calls, timeout), f"only {self.calls} call(s)"


def test_start_runs_maintenance_at_once_and_then_on_the_interval() -> None:
    maintenance = CountingMaintenance()
    system = PeriodicMaintenance(maintenance, interval=0.05)
    system.start()
    try:
        assert system.running
        maintenance.wait_for(3)
    finally:
        system.stop()
    assert not system.running


def test_stop_ends_the_timer_thread_and_no_more_maintenance_runs() -> None:
    maintenance = CountingMaintenance()
    system = PeriodicMaintenance(maintenance, interval=3600)
    system.start()
    maintenance.wait_for(1)
    started = time.monotonic()
    system.stop()
    assert time.monotonic() - started < 1.0  # the hourly wait is interrupted, not sat out
    assert not [t for t in threading.enumerate() if t.name == "partition-maintenance"]
    calls = maintenance.calls
    time.sleep(0.1)
    assert maintenance.calls == calls


def test_start_and_stop_are_idempotent() -> None:
    maintenance = CountingMaintenance()
    system = PeriodicMaintenance(maintenance, interval=3600)
    system.start()
    system.start()
    maintenance.wait_for(1)
    assert len([t for t in threading.enumerate() if t.name == "partition-maintenance"]) == 1
    system.stop()
    system.stop()
    system.start()  # a stopped system stays stopped
    assert not system.running
    assert maintenance.calls == 1


def test_a_failed_maintenance_is_logged_and_retried_sooner(caplog: pytest.LogCaptureFixture) -> None:
    maintenance = CountingMaintenance(fail_first=1)
    system = PeriodicMaintenance(maintenance, interval=3600, retry_interval=0.05)
    system.start()
    try:
        maintenance.wait_for(2)
    finally:
        system.stop()
    assert any("partition maintenance failed" in r.getMessage() for r in caplog.records)


def test_stop_without_start_is_harmless() -> None:
    system = PeriodicMaintenance(CountingMaintenance())
    system.stop()
    assert not system.running


def test_the_actor_system_creates_missing_partitions_in_the_real_database(machine_pg_url: str) -> None:
    from tradeengine.storage import apply_migrations, create_pool

    apply_migrations(machine_pg_url)
    pool = create_pool(machine_pg_url, min_size=1, max_size=2)
    try:
        with pool.connection() as conn:
            (name,) = conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'trades'::regclass AND c.relname LIKE 'trades_p%' "
                "ORDER BY c.relname DESC LIMIT 1").fetchone()  # type: ignore[misc]
            conn.execute(f'DROP TABLE "{name}"')
        system = ActorSystem(pool, maintenance_interval=3600)
        system.start()
        try:
            def recreated() -> bool:
                with pool.connection() as conn:
                    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
                return bool(row and row[0])

            deadline = time.monotonic() + 10
            while not recreated():
                assert time.monotonic() < deadline, f"{name} was not recreated"
                time.sleep(0.05)
        finally:
            system.stop()
    finally:
        pool.close()
