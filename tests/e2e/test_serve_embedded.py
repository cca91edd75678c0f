"""``trade-engine serve`` with the embedded PostgreSQL, as a real process: start, answer, stop, restart."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import psycopg

from tradeengine.ops.bench.http import CpuMeter
from tradeengine.ops.threadcpu import ROLES

from .conftest import (
    Engine,
    Engines,
    engine_env,
    gone,
    postgres_processes,
    run_cli,
    wait_until,
)


def orphan_a_server(engines: Engines, data_dir: Path) -> Engine:
    """Start an engine on `data_dir`, kill -9 its master and wait for its worker to go: its embedded
    PostgreSQL is left running, as after a crash. Returns the dead engine (its port is free again)."""
    engine = engines.start(data_dir)
    engine.wait_ready()
    (worker,) = engine.worker_pids()
    engine.signal(signal.SIGKILL)
    engine.wait_exit(10)
    wait_until(lambda: gone(worker), 15, "the orphaned worker exiting by itself")
    return engine


def postmaster_of(data_dir: Path) -> psutil.Process:
    """The postmaster of the cluster in `data_dir` (the one of its processes whose parent is not one)."""
    processes = postgres_processes(data_dir)
    (postmaster,) = [p for p in processes if p.ppid() not in {q.pid for q in processes}]
    return postmaster


def _embedded_url(data_dir: Path) -> str:
    return f"postgresql://postgres@/tradeengine?host={data_dir / 'run'}"


def test_serve_starts_the_embedded_database_answers_within_15_s_and_sigterm_leaves_no_postgres(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = engines.start(data_dir)
    engine.wait_ready()
    assert engine.get("/ready").json() == {"status": "ready", "checks": {"database": "ok", "actors": "ok"}}
    assert engine.get("/health").json()["status"] == "ok"
    assert "trade_engine_http_requests_total" in engine.get("/metrics").text
    assert engine.get("/api/v1/pairs").status_code == 200
    # The worker's CPU by thread role, as `bench http` reads it from /metrics: the event loop's thread and
    # its executor's are the worker's, named for their role.
    threads = CpuMeter(None, metrics=("127.0.0.1", engine.port)).read().threads
    assert threads is not None and set(threads) == set(ROLES)
    assert threads["http"] > 0 and threads["pairs"] > 0 and threads["writer"] > 0
    (worker,) = engine.worker_pids()
    assert postgres_processes(data_dir)

    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() == 0
    assert gone(worker)
    assert postgres_processes(data_dir) == []
    records = engine.log_records()
    assert len(records) == len(engine.stderr().splitlines())  # every line is a JSON record, gunicorn's too
    assert any(r["logger"] == "gunicorn.error" for r in records)
    assert any(r["logger"] == "uvicorn.error" and r["message"].startswith("Started server process")
               for r in records)  # uvicorn's records are JSON lines too
    messages = [r["message"] for r in records]
    assert not [m for m in messages if "failed" in m], messages
    assert any(m.startswith("applied ") and "migration(s)" in m for m in messages)
    assert "actor system stopped" in messages
    access = [r for r in records if r["logger"] == "tradeengine.http.access"]
    assert [(r["route"], r["status"]) for r in access] == [("/api/v1/pairs", 200)]  # probes: at DEBUG
    assert all(r["ts"].endswith("Z") for r in records)


def test_a_second_start_reuses_the_data_and_ctrl_c_stops_everything(engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = engines.start(data_dir)
    first.wait_ready()
    with psycopg.connect(_embedded_url(data_dir), autocommit=True) as conn:
        conn.execute("CREATE TABLE e2e_marker (note text)")
        conn.execute("INSERT INTO e2e_marker VALUES ('survives a restart')")
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert postgres_processes(data_dir) == []

    second = engines.start(data_dir, port=first.port)
    second.wait_ready()
    with psycopg.connect(_embedded_url(data_dir)) as conn:
        assert conn.execute("SELECT note FROM e2e_marker").fetchall() == [("survives a restart",)]
        assert conn.execute("SELECT count(*) FROM pairs").fetchone()[0] > 0  # type: ignore[index]
    assert "database schema is up to date" in [r["message"] for r in second.log_records()]

    second.ctrl_c()
    assert second.wait_exit() == 0
    assert postgres_processes(data_dir) == []
    assert "actor system stopped" in [r["message"] for r in second.log_records()]


def test_a_second_serve_on_a_data_folder_in_use_exits_with_one_clear_line(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = engines.start(data_dir)
    first.wait_ready()
    second = engines.start(data_dir)
    assert second.wait_exit(30) == 1
    lines = [line for line in second.stderr().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "in use by another trade-engine" in lines[0] and f"pid {first.pid}" in lines[0]
    assert first.get("/ready").status_code == 200  # the owner is untouched


def test_commands_reuse_the_server_of_a_running_engine_and_leave_it_running(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = engines.start(data_dir)
    engine.wait_ready()
    env = engine_env(data_dir, engine.port)
    listed = run_cli("pairs", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "BTC-USDT" in listed.stdout
    migrated = run_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == "applied 0 migration(s)"
    assert engine.get("/ready").status_code == 200
    assert postgres_processes(data_dir)


def test_after_kill_9_of_the_master_the_worker_exits_and_the_next_start_takes_the_database_over(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = orphan_a_server(engines, data_dir)
    assert postgres_processes(data_dir), "the killed engine's PostgreSQL keeps running until taken over"

    second = engines.start(data_dir, port=first.port)
    second.wait_ready()
    assert any("reusing the PostgreSQL server already running" in r["message"]
               for r in second.log_records())
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    assert postgres_processes(data_dir) == []


def test_a_server_left_running_that_does_not_answer_is_named_and_left_alone_within_seconds(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = orphan_a_server(engines, data_dir)
    postmaster = postmaster_of(data_dir)
    postmaster.suspend()  # a server that hangs: SIGSTOP
    try:
        second = engines.start(data_dir, port=first.port)
        assert second.wait_exit(60) == 1  # the connect timeout (10 s), not minutes of pg_ctl stop
        plain = [line for line in second.stderr().splitlines() if line.startswith("trade-engine:")]
        assert len(plain) == 1, second.stderr()
        assert f"(pid {postmaster.pid}) does not answer" in plain[0]
        assert f"suspended (kill -CONT {postmaster.pid} resumes it)" in plain[0]
        assert "stopping the PostgreSQL server" not in second.stderr()  # not ours to stop
        assert postmaster.status() == psutil.STATUS_STOPPED
    finally:
        postmaster.resume()

    third = engines.start(data_dir, port=first.port)  # resumed, it is taken over as any other
    third.wait_ready()
    third.signal(signal.SIGTERM)
    assert third.wait_exit() == 0
    assert postgres_processes(data_dir) == []


def test_a_command_takes_over_the_server_of_a_crashed_engine_and_stops_it(
        engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = orphan_a_server(engines, data_dir)
    listed = run_cli("pairs", "list", env=engine_env(data_dir, first.port), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "BTC-USDT" in listed.stdout
    assert postgres_processes(data_dir) == []


def test_sigterm_while_starting_still_leaves_no_postgres(engines: Engines, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = engines.start(data_dir)
    wait_until(lambda: bool(postgres_processes(data_dir)), 15, "the embedded PostgreSQL starting", 0.01)
    engine.signal(signal.SIGTERM)
    assert engine.wait_exit() in (0, 128 + signal.SIGTERM)
    assert postgres_processes(data_dir) == []


def test_when_the_embedded_postgres_stops_under_the_engine_the_engine_stops_with_status_1(
        engines: Engines, tmp_path: Path) -> None:
    engine = engines.start(tmp_path / "data")
    engine.wait_ready()
    postmaster = postmaster_of(tmp_path / "data")
    postmaster.send_signal(signal.SIGINT)  # what `pg_ctl stop -m fast` does

    assert engine.wait_exit(60) == 1
    plain = [line for line in engine.stderr().splitlines() if line.startswith("trade-engine:")]
    assert len(plain) == 1 and "embedded PostgreSQL" in plain[0] and "stopped" in plain[0], engine.stderr()
    assert "exit status 0" not in engine.stderr()  # no line contradicts the status serve ends with
    assert postgres_processes(tmp_path / "data") == []
