"""The engine benchmark runs end to end on a tiny workload against a real PostgreSQL and reports its
figures as JSON on its last line (speed is never asserted)."""

from __future__ import annotations

import json

import psycopg
import pytest

from tradeengine.ops import cli
from tradeengine.ops.bench import engine


def bench_databases(admin_url: str) -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'te_bench_%'").fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_bench_engine_prints_its_figures_as_json_on_the_last_line_and_drops_its_database(
    machine_pg_admin_url: str, capsys: pytest.CaptureFixture[str], writer: str,
) -> None:
    before = bench_databases(machine_pg_admin_url)
    status = engine.main(["--json", "--orders", "120", "--callers", "4", "--seed", "7",
                          "--database-url", machine_pg_admin_url, "--writer", writer])
    assert status == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last_line)
    assert {"orders_per_sec", "p50_ms", "p99_ms", "rows_per_commit"} <= set(result)
    assert result["orders"] == 120 and result["callers"] == 4
    assert 0 < result["acknowledged"] <= 120
    assert result["rows_per_commit"] > 0 and result["failed_commits"] == 0
    assert set(result["refused"]) <= {"ORDER_NOT_CANCELLABLE"}  # a cancel that lost the race to a fill
    by_thread = result["engine_cpu_us_by_thread"]
    assert set(by_thread) == {"callers", "writer", "pairs", "wallet", "writer process", "other"}
    assert by_thread["callers"] > 0 and by_thread["writer"] > 0 and by_thread["pairs"] > 0
    assert result["writer"] == writer
    assert (by_thread["writer process"] > 0) == (writer == "process")  # its rows and psycopg are there
    assert sum(by_thread.values()) >= result["engine_cpu_us"] - len(by_thread)  # the parts cover the whole
    assert bench_databases(machine_pg_admin_url) <= before


def test_bench_engine_refuses_a_non_positive_order_count() -> None:
    with pytest.raises(SystemExit):
        engine.main(["--orders", "0"])


def test_the_command_line_offers_the_engine_bench() -> None:
    args = cli.build_parser().parse_args(["bench", "engine", "--orders", "10"])
    assert (args.suite, args.bench_args) == ("engine", ["--orders", "10"])
