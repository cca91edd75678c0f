"""Benchmark of the whole engine in one process: `trade-engine bench engine [--json] [--orders N] ...`.

Everything a client's order goes through except HTTP: the `Exchange` facade, the pair actors, the wallet's
funds gate and the persistence writer committing every order durably to a real PostgreSQL (a reply is an
acknowledgement only after the commit that holds it).

Database: `--database-url` (a server the bench may create databases on), else `TRADE_ENGINE_DATABASE_URL`,
else an embedded PostgreSQL started in a temporary folder (deleted afterwards). On that server the bench
creates a fresh database (dropped afterwards unless `--keep-database`), migrates it, creates one user per
caller and deposits funds through the engine (not timed).

Workload (seeded, generated in full before timing): `--callers` threads (default 64), each one user,
each placing its share of `--orders` commands over the 10 seeded pairs: ~70 % resting limit orders a few
ticks off the pair's mid, ~15 % limit orders that cross the spread, ~15 % cancels of the caller's own
resting orders (a cancel whose order was filled meanwhile is refused; it still counts as answered). Each
caller waits for each reply before sending the next command, as an HTTP client would.

Reported: acknowledged commands per second (wall clock, first send to last reply), p50 / p99 latency of
acknowledged commands in ms, rows per commit and commands per commit (from the writer's `on_batch`
reports during the timed window), the mean commit time and the share of the wall time the writer spent
committing (with the writer process: its database round trips; it builds the next batch meanwhile), and
refusals; and CPU time per acknowledged command during the timed window, in µs: of the engine process
(every thread) and its writer process, split (`engine_cpu_us_by_thread`: the callers, the writer's
threads (its actor, and the reader of its process's answers), the pair actors, the wallet, the rest of
the process: the main thread, the
supervisor, ...; and the writer process, with `--writer process`, the default) and, when
the server runs on this machine, of the PostgreSQL server (the postmaster and all its children:
backends, WAL writer, checkpointer, ...). With --json the last printed line is one JSON object with
`orders_per_sec`, `p50_ms`, `p99_ms`, `rows_per_commit`, and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from psycopg import sql

from tradeengine.actors.exchange import OrderRequest
from tradeengine.actors.system import ActorSystem
from tradeengine.actors.writer import BatchReport
from tradeengine.engine import (
    ATOMS_PER_UNIT,
    OrderAccepted,
    OrderStatus,
    OrderType,
    PairSpec,
    Side,
    TradeEngineError,
)
from tradeengine.ops.bench import DefaultsHelpFormatter
from tradeengine.ops.gcpolicy import tune_collector
from tradeengine.ops.settings import Settings
from tradeengine.ops.threadcpu import ThreadCpu
from tradeengine.storage import EmbeddedPostgres, apply_migrations, create_pool
from tradeengine.storage.database import one_line
from tradeengine.storage.recovery import load_pair_specs

FIRST_USER = 10_000
MIDS = {
    "BTC-USDT": "50000", "ETH-USDT": "3000", "BNB-USDT": "600", "SOL-USDT": "150", "XRP-USDT": "0.5",
    "ADA-USDT": "0.4", "DOGE-USDT": "0.1", "LINK-USDT": "15", "MATIC-USDT": "0.8", "USDC-USDT": "1",
}
QUOTE_FUNDS = 10**12  # units of USDT per user: never the limit
BASE_NOTIONAL = 10**9  # quote value of each base asset deposited per user
ACTOR_ROLES = ("writer", "pairs", "wallet")  # threads whose CPU is reported apart (`ops.threadcpu` roles)


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a caller's script: place a request, or cancel one of its resting orders."""

    request: OrderRequest | None  # None: cancel


@dataclass(slots=True)
class Tally:
    """What the callers saw: latencies of acknowledged commands, refusals by code; their CPU seconds."""

    latencies: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class Batches:
    """The writer's flush reports while the clock runs."""

    reports: list[BatchReport] = field(default_factory=list)
    timing: bool = False

    def __call__(self, report: BatchReport) -> None:
        if self.timing:
            self.reports.append(report)


def quantity_for(spec: PairSpec, mid: Decimal) -> Decimal:
    """The smallest whole-lot quantity worth about twice the pair's minimum notional at `mid`."""
    lots = (spec.min_notional * 2 / mid / spec.lot_size).to_integral_value(ROUND_CEILING)
    quantity: Decimal = max(lots * spec.lot_size, spec.min_quantity)
    return quantity


def build_scripts(specs: list[PairSpec], callers: int, orders: int, seed: int) -> list[list[Step]]:
    """Each caller's seeded list of commands (see the module docstring for the mix)."""
    rng = random.Random(seed)
    scripts: list[list[Step]] = [[] for _ in range(callers)]
    for n in range(orders):
        spec = rng.choice(specs)
        mid = Decimal(MIDS.get(spec.symbol, "1"))
        side = rng.choice((Side.BUY, Side.SELL))
        roll = rng.random()
        if roll < 0.15 and scripts[n % callers]:
            scripts[n % callers].append(Step(None))
            continue
        ticks = rng.randint(1, 50) if roll >= 0.30 else -rng.randint(1, 5)  # negative: crosses
        offset = ticks * spec.tick_size * max(1, int(mid / spec.tick_size / 10_000))
        price = mid - offset if side is Side.BUY else mid + offset
        request = OrderRequest(spec.symbol, side, OrderType.LIMIT, quantity=quantity_for(spec, mid),
                               price=price)
        scripts[n % callers].append(Step(request))
    return scripts


def run_caller(system: ActorSystem, user: int, script: list[Step], tally: Tally, seed: int) -> None:
    """Send the script's commands one after the other, waiting for each reply; add up its CPU time."""
    started = time.thread_time()
    try:
        _call(system, user, script, tally, seed)
    finally:
        with tally.lock:
            tally.cpu += time.thread_time() - started


def _call(system: ActorSystem, user: int, script: list[Step], tally: Tally, seed: int) -> None:
    exchange = system.exchange
    rng = random.Random(seed)
    resting: list[str] = []
    for step in script:
        started = time.perf_counter()
        try:
            if step.request is None:
                if not resting:
                    continue
                exchange.cancel(user, resting.pop(rng.randrange(len(resting))))
            else:
                accepted = exchange.place(user, step.request).events[0]
                if isinstance(accepted, OrderAccepted) and accepted.status is OrderStatus.OPEN:
                    resting.append(accepted.order_id)
        except TradeEngineError as exc:
            with tally.lock:
                tally.refused[exc.code] = tally.refused.get(exc.code, 0) + 1
            continue
        elapsed = time.perf_counter() - started
        with tally.lock:
            tally.latencies.append(elapsed)


@contextmanager
def bench_server(database_url: str | None) -> Iterator[str]:
    """Yield an admin URL of a PostgreSQL server: the given one, or an embedded one in a temp folder."""
    if database_url:
        yield database_url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="tradeengine-bench-pg-"))
    server = EmbeddedPostgres(data_dir)
    try:
        server.start()
        yield server.url("postgres")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class BenchError(Exception):
    """The benchmark cannot run (its PostgreSQL server cannot be reached); the message is one line."""


@contextmanager
def scratch_database(admin_url: str, keep: bool) -> Iterator[str]:
    """Create a fresh database on the server of `admin_url`, yield its URL, drop it afterwards.

    Raises :class:`BenchError` when the server cannot be reached or refuses to create it."""
    from tradeengine.ops.database import redact

    name = f"te_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise BenchError(f"cannot create the bench database on {redact(admin_url)}: {one_line(exc)}") from exc
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_users(url: str, users: list[int]) -> None:
    """Insert the bench's traders (not timed)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader')",
                        [(user, f"bench{user}") for user in users])


def fund_users(system: ActorSystem, users: list[int], specs: list[PairSpec]) -> None:
    """Deposit plenty of every asset for every user, through the engine (not timed)."""
    amounts = {"USDT": QUOTE_FUNDS * ATOMS_PER_UNIT}
    for spec in specs:
        mid = Decimal(MIDS.get(spec.symbol, "1"))
        amounts[spec.base_asset] = int(BASE_NOTIONAL / mid) * ATOMS_PER_UNIT
    transfers = [(user, asset, amount) for user in users for asset, amount in amounts.items()]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda t: system.deposit(*t), transfers))


class CpuMeter:
    """CPU seconds spent by this process, by its live child processes (the writer's) and by the local
    PostgreSQL server (None when not local)."""

    def __init__(self, url: str) -> None:
        self._server = _local_postmaster(url)
        self._self = psutil.Process()

    def read(self) -> tuple[float, float, float | None]:
        """Return (engine process CPU s, its child processes' CPU s, server CPU s or None) so far."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = 0.0
        for child in self._self.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                children += times.user + times.system
        return usage.ru_utime + usage.ru_stime, children, _server_cpu(self._server)


def _local_postmaster(url: str) -> psutil.Process | None:
    """The postmaster of the server behind `url` when it runs on this machine (its backend's parent)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            host = conn.info.host
        if row is None or not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
            return None
        parent = psutil.Process(int(row[0])).parent()
        return parent if parent is not None and parent.name() in ("postgres", "postmaster") else None
    except (psycopg.Error, psutil.Error):
        return None


def _server_cpu(postmaster: psutil.Process | None) -> float | None:
    """CPU s of the postmaster, its live children and its reaped children (None when unknown)."""
    if postmaster is None:
        return None
    for _ in range(5):  # a backend ending while the tree is listed: look again
        try:
            own = postmaster.cpu_times()
            children = postmaster.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            return None
        total = float(own.user + own.system + own.children_user + own.children_system)
        for child in children:
            with contextlib.suppress(psutil.Error):  # a backend that just ended is counted as reaped
                times = child.cpu_times()
                total += times.user + times.system
        return total
    return None


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank), 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(tally: Tally, batches: Batches, wall: float, args: argparse.Namespace,
              cpu: tuple[float, float | None] = (0.0, None),
              threads: dict[str, float] | None = None) -> dict[str, Any]:
    """The figures of one run; `cpu` is the (engine, server) CPU seconds of the timed window, `threads`
    the actor threads' CPU seconds in it per role (`ACTOR_ROLES`)."""
    ok = [report for report in batches.reports if report.ok and report.rows]
    acked = len(tally.latencies)
    engine_cpu, server_cpu = cpu
    by_thread = {"callers": tally.cpu, **(threads or {})}
    by_thread["other"] = max(engine_cpu - sum(by_thread.values()), 0.0)
    return {
        "orders_per_sec": round(acked / wall) if wall > 0 else 0,
        "p50_ms": round(percentile(tally.latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(tally.latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(tally.latencies) * 1000, 3) if acked else 0.0,
        "rows_per_commit": round(sum(r.rows for r in ok) / len(ok), 1) if ok else 0.0,
        "commands_per_commit": round(sum(r.commits for r in ok) / len(ok), 1) if ok else 0.0,
        "commits": len(ok),
        "commit_ms": round(statistics.fmean(r.seconds for r in ok) * 1000, 3) if ok else 0.0,
        "writer_busy": round(sum(r.seconds for r in batches.reports) / wall, 3) if wall > 0 else 0.0,
        "failed_commits": sum(1 for report in batches.reports if not report.ok),
        "engine_cpu_us": round(engine_cpu / acked * 1e6) if acked else 0,
        "server_cpu_us": round(server_cpu / acked * 1e6) if acked and server_cpu is not None else None,
        "engine_cpu_us_by_thread": {name: round(seconds / acked * 1e6) if acked else 0
                                    for name, seconds in by_thread.items()},
        "acknowledged": acked,
        "refused": dict(sorted(tally.refused.items())),
        "seconds": round(wall, 3),
        "orders": args.orders,
        "callers": args.callers,
        "seed": args.seed,
        "writer": args.writer,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare a database, run the timed workload through a fresh ActorSystem, return the figures."""
    admin = args.database_url or os.environ.get("TRADE_ENGINE_DATABASE_URL")
    with bench_server(admin) as server_url, scratch_database(server_url, args.keep_database) as url:
        apply_migrations(url)
        users = [FIRST_USER + n for n in range(args.callers)]
        create_users(url, users)
        pool = create_pool(url, min_size=2, max_size=args.pool_size)
        batches = Batches()
        system = ActorSystem(pool, request_timeout=30.0, on_batch=batches,
                             writer_process=args.writer == "process")
        try:
            system.start()
            specs = [spec for spec, status in load_pair_specs(pool) if status == "ACTIVE"]
            fund_users(system, users, specs)
            scripts = build_scripts(specs, args.callers, args.orders, args.seed)
            tune_collector(Settings.from_env(os.environ).gc_threshold)  # as serve's worker does
            print(f"{args.callers} callers, {args.orders} commands over {len(specs)} pairs; running ...",
                  flush=True)
            tally = Tally()
            meter = CpuMeter(url)
            batches.timing = True
            cpu_before = meter.read()
            thread_cpu = ThreadCpu()
            threads_before = thread_cpu.read()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.callers) as callers:
                for n, (user, script) in enumerate(zip(users, scripts, strict=True)):
                    callers.submit(run_caller, system, user, script, tally, args.seed + n)
            wall = time.perf_counter() - started
            cpu_after = meter.read()
            threads_after = thread_cpu.read()
            threads = {role: threads_after[role] - threads_before[role] for role in ACTOR_ROLES}
            batches.timing = False
        finally:
            system.stop()
            pool.close()
    server_cpu = None if cpu_before[2] is None or cpu_after[2] is None else cpu_after[2] - cpu_before[2]
    threads["writer process"] = cpu_after[1] - cpu_before[1]
    engine_cpu = cpu_after[0] - cpu_before[0] + threads["writer process"]
    return summarise(tally, batches, wall, args, (engine_cpu, server_cpu), threads)


def main(argv: list[str]) -> int:
    """Run the engine benchmark and print its figures (the last line is JSON with --json)."""
    parser = argparse.ArgumentParser(prog="trade-engine bench engine", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--orders", type=int, default=20_000, help="timed commands in all")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (one user each)")
    parser.add_argument("--seed", type=int, default=20261124, help="workload seed")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to create the bench database on [default: "
                             "TRADE_ENGINE_DATABASE_URL, else an embedded server in a temp folder]")
    parser.add_argument("--pool-size", type=int, default=8, help="database connections at most")
    parser.add_argument("--writer", choices=("process", "thread"), default="process",
                        help="where the writer commits: a process of its own (serve's default, "
                             "TRADE_ENGINE_WRITER_PROCESS=true) or its thread in the engine process")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the bench database")
    args = parser.parse_args(argv)
    if args.orders <= 0 or args.callers <= 0 or args.pool_size < 2:
        parser.error("--orders and --callers must be positive, --pool-size at least 2")
    try:
        result = run(args)
    except BenchError as exc:
        print(f"trade-engine: bench engine: {exc}", file=sys.stderr)
        return 1
    print(f"{result['acknowledged']} acknowledged in {result['seconds']} s: {result['orders_per_sec']:,} "
          f"orders/s; latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
          f"{result['rows_per_commit']} rows and {result['commands_per_commit']} commands per commit "
          f"({result['commits']} commits, {result['commit_ms']} ms each, writer busy "
          f"{result['writer_busy']:.0%}); CPU per command: engine {result['engine_cpu_us']} µs ("
          + ", ".join(f"{name} {us}" for name, us in result["engine_cpu_us_by_thread"].items())
          + f"), server {_or_unknown(result['server_cpu_us'], ' µs')}; refused {result['refused'] or 'none'}")
    if args.json:
        print(json.dumps(result))
    return 0


def _or_unknown(value: object, unit: str) -> str:
    return "unknown" if value is None else f"{value}{unit}"
