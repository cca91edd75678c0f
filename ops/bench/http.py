"""HTTP load benchmark: `trade-engine bench http [--json] [--url URL --admin-key KEY] [--clients C] ...`.

The whole engine as a client sees it: HTTP/1.1 keep-alive connections to `trade-engine serve` (gunicorn,
Falcon, the pair actors, the wallet, durable commits to PostgreSQL). One run measures three phases, one
after the other, each with the same `--clients` concurrent connections, each connection closed-loop (it
sends its next request as soon as the previous answer is complete):

1. `health`: `GET /health`, the ceiling of the HTTP stack on this server and machine;
2. `orders`: `POST /api/v1/orders`, one order per request;
3. `batch`: `POST /api/v1/orders/batch`, `--batch-size` orders per request.

Server: with `--url URL --admin-key KEY` the bench runs against a server that is already running (the
admin key creates and funds the bench's users through the admin API; at the end their open orders are
cancelled). Without `--url` it starts a fresh `trade-engine serve` on a free loopback port with an
embedded PostgreSQL in a temporary data folder and a random `TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY`, and stops
it (and deletes the folder) at the end: reproducible, nothing to set up. That server gets this
environment's other `TRADE_ENGINE_*` settings (e.g. `TRADE_ENGINE_HTTP_THREADS=8 trade-engine bench
http`), but never `TRADE_ENGINE_DATABASE_URL`.

Users: `--users-per-client` traders per connection (default 4), each with its own API key, used in turn;
the per-user rate limit (TRADE_ENGINE_RATE_LIMIT, each order of a batch counting) then applies to a
quarter of a connection's rate: 20,000 batched orders/s over 16 connections is ~310 orders/s per user.
Each user gets 1,000,000,000 USDT and that value of every base asset, so no order is refused for funds.

Workload (seeded: request k of connection c is the same in every run with the same `--seed`, `--pairs`
and `--batch-size`; each connection cycles through its own script): orders on `--pairs` launch pairs
(default 4), ~75 % GTC limit orders 1-50 price steps off a fixed mid price (a step is about 0.01 % of
the mid, at least a tick), which rest, and ~25 % IOC limit orders 60 steps through the mid for 8 times the
base quantity, which take what rests on the other side (trades) and expire the rest; takers remove more
than the resting orders add, so the book stays small. Quantities are 1-3 times (takers 8 times) the
smallest lot multiple worth twice the pair's minimum notional at the mid.

Timing: each phase first runs `--warmup` seconds uncounted, then `--duration` seconds, or with `--orders
N` until N orders (N `/health` requests; N orders in batches) have been sent. A request counts when it
was sent after the warmup; a phase's rate is its counted answers over the time from the end of the
warmup to the last counted answer. Latency is per request (send to complete answer, perf_counter_ns),
percentiles exact (nearest rank) over every counted 2xx answer. The load generator is one process per
core (`--processes`), each an epoll loop over its connections with pre-serialised requests; its CPU time
is reported (`generator_cpu_cores`, `generator_cpu_us_per_request`), and so is the whole machine's
(`machine_busy_cores`) and, when the server runs on this machine, the server's (gunicorn's process tree:
`server_cpu_cores`; its embedded PostgreSQL: `database_cpu_cores`) and what other processes took
meanwhile (`other_cpu_cores`: on a shared machine, a run with a large one measured a crowded machine).
The server's own CPU per order (per request for /health) by thread role, `server_cpu_us_by_thread`
("http": the event loop and its executor; "writer", "relay", "pairs", ...), comes from its /metrics
(`trade_engine_thread_cpu_seconds_total`, read at the start and the end of each counted window), and so
do the means of the engine's stages over the window, `engine_stages`: per command, its time from the
Exchange to its answer (`command_ms`), in its pair (`in_pair_ms`) and waiting for the commit
(`commit_wait_ms`); per commit, its commands (`commands_per_commit`) and time (`commit_ms`).

Errors: every non-2xx answer is counted by status and error code (warmup included), and so is every
failed item of a 200 batch answer and every broken connection; a run with any error says so on stderr
and ends with exit status 1. Progress goes to stderr (a bar on a terminal, one line per phase
otherwise). With --json the last line on stdout is one JSON object: `orders_per_sec`, `p50_ms`,
`p99_ms`, `health_per_sec`, `batch_orders_per_sec`, `orders_vs_health`, the figures of each phase under
`phases`, `errors` (by phase and status) and the CPU shares.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import math
import multiprocessing
import os
import random
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_CEILING, Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tradeengine.ops.bench import DefaultsHelpFormatter

PHASES = ("health", "orders", "batch")
ORDERS_PATH = "/api/v1/orders"
BATCH_PATH = "/api/v1/orders/batch"
HEALTH_PATH = "/health"
QUOTE_FUNDS = Decimal(1_000_000_000)  # per user, of the quote asset and (in quote value) of each base
RESTING_SHARE = 0.75
RESTING_STEPS = 50  # resting orders are 1..50 steps off the mid
CROSSING_STEPS = 60  # takers are priced this many steps through the mid
TAKER_LOTS = 8  # a taker's quantity in base quantities
SINGLE_CYCLE = 4096  # orders in each connection's script of single orders
BATCH_CYCLE = 64  # batches in each connection's script of batches
START_MARGIN = 0.3  # seconds between handing out a phase and its start, for every worker to be waiting
SERVER_START_LIMIT = 120.0
SERVER_STOP_LIMIT = 30.0
MAX_BATCH = 100


class BenchError(Exception):
    """The benchmark cannot run (server not reachable, setup refused, a worker failed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PairRule:
    """What the workload needs of a pair: its rules and the mid price the orders are placed around."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    min_notional: Decimal
    mid: Decimal


def _launch(symbol: str, tick: str, lot: str, min_notional: str, mid: str) -> PairRule:
    base, quote = symbol.split("-")
    return PairRule(symbol, base, quote, Decimal(tick), Decimal(lot), Decimal(lot), Decimal(min_notional),
                    Decimal(mid))


#: The ten launch pairs (migrations/0004) and the mid prices the bench trades them around; the rules are
#: replaced by the server's own when it answers `GET /api/v1/pairs`.
LAUNCH_PAIRS = {
    rule.symbol: rule
    for rule in (
        _launch("BTC-USDT", "0.01", "0.00001", "10", "50000"),
        _launch("ETH-USDT", "0.01", "0.0001", "10", "3000"),
        _launch("SOL-USDT", "0.01", "0.001", "5", "150"),
        _launch("XRP-USDT", "0.0001", "0.1", "5", "0.5"),
        _launch("BNB-USDT", "0.01", "0.001", "5", "600"),
        _launch("ADA-USDT", "0.0001", "0.1", "5", "0.4"),
        _launch("DOGE-USDT", "0.00001", "1", "5", "0.1"),
        _launch("LINK-USDT", "0.001", "0.01", "5", "15"),
        _launch("MATIC-USDT", "0.0001", "0.1", "5", "0.8"),
        _launch("USDC-USDT", "0.0001", "1", "5", "1"),
    )
}


# -- workload -----------------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A decimal as the API writes it: plain notation, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text


def price_step(rule: PairRule) -> Decimal:
    """The workload's price step on a pair: about 0.01 % of the mid, a whole number of ticks, at least one."""
    ticks = max(1, int(rule.mid / rule.tick_size / 10_000))
    return rule.tick_size * ticks


def base_quantity(rule: PairRule) -> Decimal:
    """The smallest whole-lot quantity worth at least twice the pair's minimum notional at the mid."""
    lots = (rule.min_notional * 2 / rule.mid / rule.lot_size).to_integral_value(ROUND_CEILING)
    quantity: Decimal = max(lots * rule.lot_size, rule.min_quantity)
    return quantity


def order_script(seed: int, stream: str, client: int, pairs: Sequence[PairRule],
                 count: int) -> list[dict[str, str]]:
    """The first `count` orders of connection `client`'s script `stream` (see the module docstring)."""
    rng = random.Random(f"{seed}/{stream}/{client}")
    shapes = [(rule.symbol, rule.mid, price_step(rule), base_quantity(rule)) for rule in pairs]
    orders: list[dict[str, str]] = []
    for _ in range(count):
        symbol, mid, step, quantity = shapes[rng.randrange(len(shapes))]
        buy = rng.random() < 0.5
        if rng.random() < RESTING_SHARE:
            offset = step * rng.randint(1, RESTING_STEPS)
            orders.append({
                "symbol": symbol, "side": "BUY" if buy else "SELL", "type": "LIMIT",
                "quantity": decimal_text(quantity * rng.randint(1, 3)),
                "price": decimal_text(mid - offset if buy else mid + offset),
            })
        else:
            offset = step * CROSSING_STEPS
            orders.append({
                "symbol": symbol, "side": "BUY" if buy else "SELL", "type": "LIMIT",
                "quantity": decimal_text(quantity * TAKER_LOTS),
                "price": decimal_text(mid + offset if buy else mid - offset),
                "time_in_force": "IOC",
            })
    return orders


def build_request(method: str, path: str, host: str, body: bytes | None = None,
                  api_key: str | None = None) -> bytes:
    """One complete HTTP/1.1 keep-alive request, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if api_key is not None:
        lines.append(f"Authorization: Bearer {api_key}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """A connection's pre-serialised requests for one phase, and how many orders each one carries."""

    requests: list[bytes]
    orders_per_request: int


def scripts_for(client: int, keys: Sequence[str], host: str, pairs: Sequence[PairRule], seed: int,
                batch_size: int, phases: Sequence[str] = PHASES) -> dict[str, Script]:
    """The scripts of one connection for `phases` (health, orders, batch); its users' keys in turn."""
    scripts = {}
    if "health" in phases:
        scripts["health"] = Script([build_request("GET", HEALTH_PATH, host)], 1)
    if "orders" in phases:
        singles = order_script(seed, "orders", client, pairs, SINGLE_CYCLE)
        scripts["orders"] = Script([
            build_request("POST", ORDERS_PATH, host, orjson.dumps(order), keys[n % len(keys)])
            for n, order in enumerate(singles)
        ], 1)
    if "batch" in phases:
        batched = order_script(seed, "batch", client, pairs, BATCH_CYCLE * batch_size)
        scripts["batch"] = Script([
            build_request("POST", BATCH_PATH, host,
                          orjson.dumps({"orders": batched[n * batch_size:(n + 1) * batch_size]}),
                          keys[n % len(keys)])
            for n in range(BATCH_CYCLE)
        ], batch_size)
    return scripts


# -- HTTP answers -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One parsed HTTP response: status, body, where it ends in the buffer, and whether the server closes."""

    status: int
    body: bytes
    end: int
    close: bool


def parse_answer(buffer: bytes | bytearray) -> Answer | None:
    """The first complete response at the start of `buffer`, or None while it is incomplete.

    Understands Content-Length and chunked bodies (and bodiless statuses); a response delimited only by
    the end of the connection is complete when the caller sees the connection end (not handled here).
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).lower()
    if not head.startswith(b"http/1.") or len(head) < 12:
        raise ValueError(f"not an HTTP/1.x response: {bytes(buffer[:40])!r}")
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head or (head.startswith(b"http/1.0")
                                                 and b"\r\nconnection: keep-alive" not in head)
    start = head_end + 4
    if 100 <= status < 200 or status in (204, 304):
        return Answer(status, b"", start, close)
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
        end = start + length
        if len(buffer) < end:
            return None
        return Answer(status, bytes(buffer[start:end]), end, close)
    if b"\r\ntransfer-encoding: chunked" in head:
        return _parse_chunked(buffer, status, start, close)
    raise ValueError("a response without Content-Length or chunked encoding (the bench needs keep-alive)")


def _parse_chunked(buffer: bytes | bytearray, status: int, start: int, close: bool) -> Answer | None:
    chunks: list[bytes] = []
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)  # no trailers: the CRLF right after "0"
            if trailer_end < 0:
                return None
            return Answer(status, b"".join(chunks), trailer_end + 4, close)
        data_end = line_end + 2 + size
        if len(buffer) < data_end + 2:
            return None
        chunks.append(bytes(buffer[line_end + 2:data_end]))
        position = data_end + 2


def error_code(body: bytes) -> str:
    """The `error.code` of an error answer (API.md's one shape), or a description when it has none."""
    try:
        code = orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "UNPARSEABLE"
    return str(code)


def batch_item_errors(body: bytes) -> dict[str, int]:
    """The error codes of a batch answer's failed items, counted (empty when every item was placed)."""
    if b'{"error":' not in body and b'{"error": ' not in body:
        return {}
    codes: dict[str, int] = {}
    try:
        results = orjson.loads(body)["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return {"UNPARSEABLE": 1}
    for item in results:
        if "error" in item:
            code = str(item["error"].get("code", "UNKNOWN"))
            codes[code] = codes.get(code, 0) + 1
    return codes


# -- figures ------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """The nearest-rank `fraction` quantile of sorted `ordered` (0 when empty)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_figures(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50, p90, p99, p99.9, max and mean latency in ms (3 decimals), exact from every sample."""
    ordered = sorted(latencies_ns)

    def ms(value: float) -> float:
        return round(value / 1e6, 3)

    return {
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "p999_ms": ms(percentile(ordered, 0.999)),
        "max_ms": ms(ordered[-1] if ordered else 0),
        "mean_ms": ms(statistics.fmean(ordered) if ordered else 0),
    }


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value


@dataclasses.dataclass(slots=True)
class PhaseResult:
    """What one worker saw in one phase (merged over workers by :meth:`merge`)."""

    latencies: array[int] = dataclasses.field(default_factory=lambda: array("q"))
    answers: int = 0  # counted 2xx answers
    orders: int = 0  # orders placed by the counted 2xx answers (failed batch items excluded)
    requests: int = 0  # every answer, warmup and errors included
    trades: int = 0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)  # non-2xx answers by status
    codes: dict[str, int] = dataclasses.field(default_factory=dict)  # their error codes
    item_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # failed batch items by code
    broken: int = 0  # connections that ended or failed with a request in flight
    reconnects: int = 0
    first_ns: int = 0  # start of the counted window (end of warmup)
    last_ns: int = 0  # last counted answer
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: PhaseResult) -> None:
        """Add another worker's result to this one."""
        self.latencies.extend(other.latencies)
        self.answers += other.answers
        self.orders += other.orders
        self.requests += other.requests
        self.trades += other.trades
        _merge(self.statuses, other.statuses)
        _merge(self.codes, other.codes)
        _merge(self.item_errors, other.item_errors)
        self.broken += other.broken
        self.reconnects += other.reconnects
        self.first_ns = min(self.first_ns, other.first_ns) if self.first_ns else other.first_ns
        self.last_ns = max(self.last_ns, other.last_ns)
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)

    @property
    def errors(self) -> int:
        """Non-2xx answers, failed batch items and broken connections."""
        return sum(self.statuses.values()) + sum(self.item_errors.values()) + self.broken


def phase_figures(phase: str, result: PhaseResult, cpu: CpuSample | None = None) -> dict[str, Any]:
    """The figures of one phase, merged over the workers."""
    window = (result.last_ns - result.first_ns) / 1e9 if result.last_ns > result.first_ns else 0.0
    figures: dict[str, Any] = {
        "requests_per_sec": round(result.answers / window) if window else 0,
        "orders_per_sec": round(result.orders / window) if window and phase != "health" else 0,
        **latency_figures(result.latencies),
        "answers": result.answers,
        "orders": result.orders if phase != "health" else 0,
        "trades": result.trades,
        "seconds": round(window, 3),
        "errors": result.errors,
        "errors_by_status": dict(sorted(result.statuses.items())),
        "error_codes": dict(sorted(result.codes.items())),
        "batch_item_errors": dict(sorted(result.item_errors.items())),
        "broken_connections": result.broken,
        "reconnects": result.reconnects,
        "generator_cpu_cores": round(result.cpu_seconds / result.wall_seconds, 3)
        if result.wall_seconds else 0.0,
        "generator_cpu_us_per_request": round(result.cpu_seconds / result.requests * 1e6, 1)
        if result.requests else 0.0,
    }
    if cpu is not None:
        figures.update(cpu.figures(result.answers, figures["orders"]))
        if figures["server_cpu_cores"] is not None:  # what the rest of the machine took meanwhile
            ours = (figures["server_cpu_cores"] + (figures["database_cpu_cores"] or 0.0)
                    + figures["generator_cpu_cores"])
            figures["other_cpu_cores"] = round(max(0.0, figures["machine_busy_cores"] - ours), 3)
    return figures


def summarise(phases: dict[str, dict[str, Any]], args: argparse.Namespace, setup: dict[str, Any]
              ) -> dict[str, Any]:
    """The JSON object of a run: the headline figures, then every phase's."""
    health = phases.get("health", {})
    orders = phases.get("orders", {})
    batch = phases.get("batch", {})
    health_rate = health.get("requests_per_sec", 0)
    errors = {phase: figures["errors_by_status"] | (
        {"batch_items": sum(figures["batch_item_errors"].values())} if figures["batch_item_errors"] else {}
    ) | ({"broken_connections": figures["broken_connections"]} if figures["broken_connections"] else {})
        for phase, figures in phases.items() if figures["errors"]}
    return {
        "orders_per_sec": orders.get("orders_per_sec", 0),
        "p50_ms": orders.get("p50_ms", 0.0),
        "p90_ms": orders.get("p90_ms", 0.0),
        "p99_ms": orders.get("p99_ms", 0.0),
        "p999_ms": orders.get("p999_ms", 0.0),
        "health_per_sec": health_rate,
        "health_p99_ms": health.get("p99_ms", 0.0),
        "orders_vs_health": round(orders["orders_per_sec"] / health_rate, 3)
        if health_rate and orders else None,
        "batch_orders_per_sec": batch.get("orders_per_sec", 0),
        "batch_requests_per_sec": batch.get("requests_per_sec", 0),
        "batch_p50_ms": batch.get("p50_ms", 0.0),
        "batch_p99_ms": batch.get("p99_ms", 0.0),
        "errors_total": sum(figures["errors"] for figures in phases.values()),
        "errors": errors,
        "generator_cpu_cores": max((f["generator_cpu_cores"] for f in phases.values()), default=0),
        "phases": phases,
        "clients": args.clients,
        "processes": args.processes,
        "users": args.clients * args.users_per_client,
        "pairs": [rule.symbol for rule in args.pair_rules],
        "batch_size": args.batch_size,
        "duration": args.duration,
        "orders": args.orders,
        "warmup": args.warmup,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        **setup,
    }


# -- CPU ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CpuReading:
    """CPU seconds so far: the machine's busy time, the server's processes when known, and, when its
    /metrics answered, the server's threads by role (``trade_engine_thread_cpu_seconds_total``) and its
    engine's stage histograms (`ENGINE_STAGES`: sum and count, over every label)."""

    at: float
    machine_busy: float
    server: float | None
    database: float | None
    threads: dict[str, float] | None = None
    stages: dict[str, tuple[float, float]] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU used between two readings (and the engine's stage histograms filled meanwhile)."""

    seconds: float
    machine_busy: float
    server: float | None
    database: float | None
    threads: dict[str, float] | None = None
    stages: dict[str, tuple[float, float]] | None = None

    def figures(self, answers: int, orders: int) -> dict[str, Any]:
        """CPU shares in cores, the server's µs per answer and per order, and per order (per answer for
        /health) the µs of each role of the server's threads that used any."""
        def cores(value: float | None) -> float | None:
            return None if value is None or self.seconds <= 0 else round(value / self.seconds, 3)

        per = orders or answers
        by_thread = None
        if self.threads is not None and per:
            by_thread = {role: round(seconds / per * 1e6, 1) for role, seconds in self.threads.items()
                         if seconds / per >= 0.5e-6}
        return {
            "server_cpu_us_by_thread": by_thread,
            "engine_stages": self._stage_means(),
            "machine_busy_cores": cores(self.machine_busy),
            "server_cpu_cores": cores(self.server),
            "database_cpu_cores": cores(self.database),
            "server_cpu_us_per_request": round(self.server / answers * 1e6, 1)
            if self.server is not None and answers else None,
            "server_cpu_us_per_order": round(self.server / orders * 1e6, 1)
            if self.server is not None and orders else None,
        }


    def _stage_means(self) -> dict[str, float] | None:
        """The mean of each engine stage histogram over the window (ms for times), the idle ones left out."""
        if self.stages is None:
            return None
        means = {name: round(total / count * (1000.0 if name.endswith("_ms") else 1.0), 3)
                 for name, (total, count) in self.stages.items() if count > 0}
        return means or None


class CpuMeter:
    """Reads the machine's CPU time and that of the server's process tree (gunicorn and its children,
    split into PostgreSQL processes and the rest) when the server runs on this machine."""

    def __init__(self, root: psutil.Process | None, database_dir: Path | None = None,
                 metrics: tuple[str, int] | None = None) -> None:
        self._root = root
        self._database_dir = str(database_dir.resolve()) if database_dir else None
        self._metrics = metrics  # (host, port) of the server whose /metrics gives its threads' CPU

    def read(self) -> CpuReading:
        """The CPU seconds used so far."""
        times = psutil.cpu_times()
        idle = sum(getattr(times, name, 0.0) for name in ("idle", "iowait", "guest", "guest_nice"))
        busy = sum(times) - idle  # guest time is already counted in user time
        server, database = self._server_times()
        return CpuReading(time.perf_counter(), busy, server, database, *self._server_metrics())

    def _server_metrics(self) -> tuple[dict[str, float] | None, dict[str, tuple[float, float]] | None]:
        """The server's thread CPU and stage histograms from its /metrics (None when that does not answer)."""
        if self._metrics is None:
            return None, None
        connection = http.client.HTTPConnection(*self._metrics, timeout=5.0)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            text = response.read().decode()
        except (OSError, http.client.HTTPException):
            return None, None
        finally:
            connection.close()
        if response.status != 200:
            return None, None
        return server_metrics(text)

    def _server_times(self) -> tuple[float | None, float | None]:
        if self._root is None:
            return None, None
        processes = _tree(self._root)
        if not processes:
            return None, None
        if self._database_dir is not None:  # the embedded postmaster may have been detached (pg_ctl)
            for process in psutil.process_iter(["name", "cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if process.info["name"] in DATABASE_NAMES and any(
                            self._database_dir in part for part in process.info["cmdline"] or ()):
                        processes.update(_tree(process))
        server = database = 0.0
        for process in processes.values():
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                if process.name() in DATABASE_NAMES:
                    database += cpu.user + cpu.system
                else:
                    server += cpu.user + cpu.system
        return server, (database if self._database_dir is not None or database else None)

    @staticmethod
    def between(before: CpuReading, after: CpuReading) -> CpuSample:
        """The CPU used between two readings."""
        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else max(0.0, b - a)

        threads = stages = None
        if before.threads is not None and after.threads is not None:
            threads = {role: max(0.0, seconds - before.threads.get(role, 0.0))
                       for role, seconds in after.threads.items()}
        if before.stages is not None and after.stages is not None:
            stages = {name: (total - before.stages.get(name, (0.0, 0.0))[0],
                             count - before.stages.get(name, (0.0, 0.0))[1])
                      for name, (total, count) in after.stages.items()}
        return CpuSample(after.at - before.at, after.machine_busy - before.machine_busy,
                         delta(before.server, after.server), delta(before.database, after.database), threads,
                         stages)


DATABASE_NAMES = ("postgres", "postmaster")
THREAD_CPU_METRIC = "trade_engine_thread_cpu_seconds"
ENGINE_STAGES = {  # figure name (mean per observation; "_ms": of seconds, in ms) -> the server's histogram
    "command_ms": "trade_engine_command_duration_seconds",  # Exchange sending a command -> its answer
    "in_pair_ms": "trade_engine_match_duration_seconds",  # ... -> its pair handing the facts to the writer
    "commit_wait_ms": "trade_engine_commit_wait_seconds",  # handed to the writer -> the commit answering
    "commit_ms": "trade_engine_commit_duration_seconds",  # one batch: write and commit
    "commands_per_commit": "trade_engine_commit_batch_commands",
}


def server_metrics(text: str) -> tuple[dict[str, float] | None, dict[str, tuple[float, float]] | None]:
    """From a /metrics page: CPU seconds by thread role, and (sum, count) of each `ENGINE_STAGES`
    histogram over all its labels (None for what the page does not hold)."""
    threads: dict[str, float] = {}
    stages: dict[str, tuple[float, float]] = {}
    figure_of = {metric: figure for figure, metric in ENGINE_STAGES.items()}
    for family in text_string_to_metric_families(text):
        if family.name == THREAD_CPU_METRIC:
            threads.update({sample.labels["role"]: sample.value for sample in family.samples
                            if sample.name.endswith("_total")})
        elif (figure := figure_of.get(family.name)) is not None:
            total = sum(sample.value for sample in family.samples if sample.name.endswith("_sum"))
            count = sum(sample.value for sample in family.samples if sample.name.endswith("_count"))
            stages[figure] = (total, count)
    return threads or None, stages or None


def _tree(root: psutil.Process) -> dict[int, psutil.Process]:
    """A process and its descendants by pid (empty when it is gone)."""
    try:
        return {process.pid: process for process in (root, *root.children(recursive=True))}
    except psutil.Error:
        return {}


def listening_process(host: str, port: int) -> psutil.Process | None:
    """The topmost local process listening on `port` (gunicorn's master), None when not found here."""
    if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname()):
        return None
    try:
        pids = {conn.pid for conn in psutil.net_connections("tcp")
                if conn.pid and conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port}
        processes = [psutil.Process(pid) for pid in pids]
        roots = [p for p in processes if p.ppid() not in pids]
    except (psutil.Error, OSError):
        return None
    return roots[0] if len(roots) == 1 else None


# -- the load generator (one worker process per core) ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker process needs to build its connections' scripts."""

    host: str
    port: int
    host_header: str
    clients: list[tuple[int, list[str]]]  # (connection number, its users' API keys)
    pairs: list[PairRule]
    seed: int
    batch_size: int
    timeout: float
    phases: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class PhasePlan:
    """One phase as every worker runs it (times on the shared monotonic perf_counter_ns clock)."""

    phase: str
    start_ns: int
    measure_ns: int  # end of the warmup
    end_ns: int | None  # duration mode: stop sending at this time
    quota: dict[int, int] | None  # count mode: counted requests per connection


class Client:
    """One keep-alive connection, its script and the request in flight."""

    __slots__ = ("address", "buffer", "counted", "counting", "in_flight", "number", "position", "retried",
                 "sent_ns", "sock", "timeout")

    def __init__(self, number: int, address: tuple[str, int], timeout: float) -> None:
        self.number = number
        self.address = address
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.position = 0
        self.sent_ns = 0
        self.in_flight: bytes | None = None
        self.counted = 0
        self.counting = False
        self.retried = False

    def connect(self) -> socket.socket:
        """Open a fresh connection (closing the previous one)."""
        self.close()
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: with a timeout every send and recv costs one more poll() call
        self.sock = sock
        self.buffer.clear()
        return sock

    def close(self) -> None:
        """Close the connection if open."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def run_phase(clients: list[Client], scripts: dict[int, Script], plan: PhasePlan, progress: Any,
              slot: int) -> PhaseResult:
    """Run one phase on this worker's connections (closed loop, one request in flight each)."""
    result = PhaseResult()
    latencies = result.latencies
    poller = select.epoll()
    by_fd: dict[int, Client] = {}

    def open_connection(client: Client) -> None:
        sock = client.connect()
        by_fd[sock.fileno()] = client
        poller.register(sock.fileno(), select.EPOLLIN)

    def drop_connection(client: Client) -> None:
        if client.sock is not None:
            fd = client.sock.fileno()
            with contextlib.suppress(OSError, ValueError):
                poller.unregister(fd)
            by_fd.pop(fd, None)
        client.close()

    for client in clients:
        client.counted = 0
        client.in_flight = None
        open_connection(client)
    measure_ns, end_ns, quota = plan.measure_ns, plan.end_ns, plan.quota
    result.first_ns = measure_ns
    while (wait := plan.start_ns - time.perf_counter_ns()) > 0:
        time.sleep(wait / 1e9)
    cpu_started, wall_started = time.process_time(), time.perf_counter()

    def send_next(client: Client, now: int) -> None:
        """Send the client's next request, unless its part of the phase is over."""
        if (end_ns is not None and now >= end_ns) or (
                quota is not None and now >= measure_ns and client.counted >= quota[client.number]):
            client.in_flight = None
            return
        script = scripts[client.number]
        request = script.requests[client.position % len(script.requests)]
        client.position += 1
        client.in_flight = request
        client.retried = False
        client.sent_ns = sent = time.perf_counter_ns()
        client.counting = sent >= measure_ns
        if client.counting:
            client.counted += 1
        assert client.sock is not None
        client.sock.sendall(request)

    def resend(client: Client) -> None:
        """The server closed an idle keep-alive connection as the request left: send it again once."""
        result.reconnects += 1
        drop_connection(client)
        open_connection(client)
        assert client.sock is not None and client.in_flight is not None
        client.retried = True
        client.sock.sendall(client.in_flight)

    def broken(client: Client, now: int) -> None:
        """The connection failed with a request in flight: count it, carry on over a new connection."""
        result.broken += 1
        drop_connection(client)
        try:
            open_connection(client)
            send_next(client, now)
        except OSError:
            client.in_flight = None  # the server is gone: this connection stops
            drop_connection(client)

    now = time.perf_counter_ns()
    for client in clients:
        try:
            send_next(client, now)
        except OSError:
            broken(client, now)
    last_check = now
    orders_per_request = {number: script.orders_per_request for number, script in scripts.items()}
    batch = plan.phase == "batch"
    done_units = 0
    while any(client.in_flight is not None for client in clients):
        events = poller.poll(0.25)
        now = time.perf_counter_ns()
        for fd, _ in events:
            found = by_fd.get(fd)
            if found is None or found.sock is None or found.in_flight is None:
                continue
            client, sock = found, found.sock
            try:
                data = sock.recv(262144)
            except OSError:
                data = b""
            if not data:
                if not client.buffer and not client.retried:
                    try:
                        resend(client)
                        continue
                    except OSError:
                        pass
                broken(client, now)
                continue
            buffer = client.buffer
            buffer += data
            try:
                answer = parse_answer(buffer)
            except ValueError:
                broken(client, now)
                continue
            if answer is None:
                continue
            del buffer[:answer.end]
            result.requests += 1
            status = answer.status
            if 200 <= status < 300:
                placed = orders_per_request[client.number]
                if batch:
                    failed = batch_item_errors(answer.body)
                    if failed:
                        _merge(result.item_errors, failed)
                        placed -= sum(failed.values())
                if client.counting:
                    latencies.append(now - client.sent_ns)
                    result.answers += 1
                    result.last_ns = now
                    result.orders += placed
                    result.trades += answer.body.count(b'"taker_side"')
                    done_units += placed
                    progress[slot] = done_units
            else:
                key = str(status)
                result.statuses[key] = result.statuses.get(key, 0) + 1
                code = error_code(answer.body)
                result.codes[code] = result.codes.get(code, 0) + 1
            try:
                if answer.close:
                    drop_connection(client)
                    result.reconnects += 1
                    open_connection(client)
                send_next(client, now)
            except OSError:
                broken(client, now)
        if now - last_check > 1_000_000_000:
            last_check = now
            limit = int(clients[0].timeout * 1e9)
            for client in clients:
                if client.in_flight is not None and now - client.sent_ns > limit:
                    key = "timeout"
                    result.statuses[key] = result.statuses.get(key, 0) + 1
                    broken(client, now)
    result.cpu_seconds = time.process_time() - cpu_started
    result.wall_seconds = time.perf_counter() - wall_started
    for client in clients:
        drop_connection(client)
    poller.close()
    return result


def worker_main(pipe: Connection, config: WorkerConfig, progress: Any, slot: int) -> None:
    """A load-generator process: build the scripts, then run each phase the parent hands out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        scripts: dict[str, dict[int, Script]] = {phase: {} for phase in PHASES}
        clients = []
        for number, keys in config.clients:
            for phase, script in scripts_for(number, keys, config.host_header, config.pairs, config.seed,
                                             config.batch_size, config.phases).items():
                scripts[phase][number] = script
            clients.append(Client(number, (config.host, config.port), config.timeout))
        pipe.send(("ready", None))
        while True:
            message, plan = pipe.recv()
            if message == "stop":
                return
            progress[slot] = 0
            pipe.send(("result", run_phase(clients, scripts[plan.phase], plan, progress, slot)))
    except BaseException:
        with contextlib.suppress(OSError):
            pipe.send(("failed", traceback.format_exc()))


class Workers:
    """The load-generator processes, started with `spawn` (nothing inherited but their arguments)."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        context = multiprocessing.get_context("spawn")
        self.progress = context.Array("q", len(configs), lock=False)
        self.pipes: list[Connection] = []
        self.processes = []
        for slot, config in enumerate(configs):
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, config, self.progress, slot),
                                      name=f"bench-http-{slot}", daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every worker has built its scripts."""
        for pipe in self.pipes:
            self._receive(pipe, "ready", timeout)

    def start(self, plan: PhasePlan) -> None:
        """Hand a phase to every worker."""
        for pipe in self.pipes:
            pipe.send(("phase", plan))

    def done(self) -> bool:
        """True when every worker has an answer waiting."""
        return all(pipe.poll() for pipe in self.pipes)

    def results(self, timeout: float) -> PhaseResult:
        """Collect and merge the workers' results of the phase."""
        merged = PhaseResult()
        for pipe in self.pipes:
            result = self._receive(pipe, "result", timeout)
            assert isinstance(result, PhaseResult)
            merged.merge(result)
        return merged

    def completed(self) -> int:
        """Counted units (orders, or /health answers) so far in the current phase."""
        return int(sum(self.progress))

    def _receive(self, pipe: Connection, expected: str, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise BenchError(f"a load-generator process did not answer within {timeout:g} s")
        try:
            kind, payload = pipe.recv()
        except EOFError:
            raise BenchError("a load-generator process died") from None
        if kind == "failed":
            raise BenchError(f"a load-generator process failed:\n{payload}")
        if kind != expected:
            raise BenchError(f"a load-generator process answered {kind!r}, not {expected!r}")
        return payload

    def stop(self) -> None:
        """Tell the workers to end; terminate those that do not."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("stop", None))
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()


def split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole shares differing by at most one (the first ones larger)."""
    share, extra = divmod(total, parts)
    return [share + (1 if n < extra else 0) for n in range(parts)]


# -- progress -----------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (redrawn on a terminal; one line per phase otherwise)."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    def update(self, label: str, fraction: float, done: int, unit: str, rate: float) -> None:
        """Redraw the bar (only on a terminal)."""
        if not self.live:
            return
        filled = int(self.WIDTH * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{label:<7} [{bar}] {fraction:4.0%}  {done:,} {unit}  {rate:,.0f}/s   ")
        self.stream.flush()

    def finish(self, line: str) -> None:
        """End the bar with the phase's summary line."""
        self.stream.write(("\r" + " " * (self.WIDTH + 60) + "\r" if self.live else "") + line + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        """A line of its own."""
        self.stream.write(line + "\n")
        self.stream.flush()


# -- the server and its users -----------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AdminClient:
    """Plain JSON requests over per-thread keep-alive connections (setup and clean-up, not timed)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection opened so far."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, key: str | None = None
                ) -> tuple[int, Any]:
        """Send one request (reconnecting once if the kept-alive connection was closed)."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        payload = None if body is None else orjson.dumps(body)
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                     timeout=self.timeout)
                with self._lock:
                    self._opened.append(conn)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            try:
                return response.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return response.status, raw.decode("utf-8", "replace")
        raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True, slots=True)
class BenchUser:
    """A trader the bench created, and its API key."""

    id: str
    api_key: str


def _expect(status: int, body: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise BenchError(f"{what}: HTTP {status} (expected {wanted}): {body}")
    return body


def create_users(admin: AdminClient, admin_key: str, count: int, pairs: Sequence[PairRule],
                 threads: int = 8) -> list[BenchUser]:
    """Create `count` traders and deposit plenty of every asset of `pairs` for each (not timed)."""
    tag = secrets.token_hex(3)

    def create(n: int) -> BenchUser:
        status, body = admin.request("POST", "/api/v1/admin/users",
                                     {"name": f"bench-{tag}-{n}", "role": "trader"}, admin_key)
        body = _expect(status, body, 201, "creating a bench user (POST /api/v1/admin/users)")
        user = BenchUser(str(body["user"]["id"]), str(body["api_key"]))
        for asset, amount in funds(pairs).items():
            status, answer = admin.request("POST", f"/api/v1/admin/users/{user.id}/deposits",
                                           {"asset": asset, "amount": decimal_text(amount)}, admin_key)
            _expect(status, answer, 201, f"depositing {asset} (POST /api/v1/admin/users/{{id}}/deposits)")
        return user

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(create, range(count)))


def funds(pairs: Sequence[PairRule]) -> dict[str, Decimal]:
    """What each bench user receives: QUOTE_FUNDS of every quote asset, and its value of every base."""
    amounts: dict[str, Decimal] = {}
    for rule in pairs:
        amounts[rule.quote_asset] = QUOTE_FUNDS
        amounts[rule.base_asset] = (QUOTE_FUNDS / rule.mid).quantize(Decimal(1))
    return amounts


def server_pairs(admin: AdminClient, wanted: Sequence[PairRule]) -> list[PairRule]:
    """`wanted` with the server's own rules when it answers `GET /api/v1/pairs` (refusing a pair it does
    not trade); the built-in launch rules when that route is not there."""
    status, body = admin.request("GET", "/api/v1/pairs")
    if status != 200 or not isinstance(body, dict):
        return list(wanted)
    known = {pair["symbol"]: pair for pair in body.get("pairs", [])}
    rules = []
    for rule in wanted:
        pair = known.get(rule.symbol)
        if pair is None or pair.get("status", "ACTIVE") != "ACTIVE":
            raise BenchError(f"the server does not trade {rule.symbol}")
        rules.append(dataclasses.replace(
            rule, tick_size=Decimal(pair["tick_size"]), lot_size=Decimal(pair["lot_size"]),
            min_quantity=Decimal(pair["min_quantity"]), min_notional=Decimal(pair["min_notional"])))
    return rules


def cancel_open_orders(admin: AdminClient, users: Sequence[BenchUser]) -> dict[str, int]:
    """Cancel what the bench users left on the books; return the failures (users by status or error)."""
    def cancel(user: BenchUser) -> str | None:
        try:
            status, _ = admin.request("DELETE", ORDERS_PATH, key=user.api_key)
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        return None if status == 200 else f"HTTP {status}"

    failures: dict[str, int] = {}
    with ThreadPoolExecutor(4) as pool:
        for failure in pool.map(cancel, users):
            if failure is not None:
                failures[failure] = failures.get(failure, 0) + 1
    return failures


class OwnServer:
    """A `trade-engine serve` the bench starts on a free port with an embedded PostgreSQL in a temporary
    folder, and stops (deleting the folder) at the end."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tradeengine-bench-http-"))
        self.port = free_port()
        self.admin_key = "te_" + secrets.token_hex(24)
        self.log_path = self.folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if k != "TRADE_ENGINE_DATABASE_URL"}
        env.update({
            "TRADE_ENGINE_DATA_DIR": str(self.folder / "data"),
            "TRADE_ENGINE_HTTP_HOST": "127.0.0.1",
            "TRADE_ENGINE_HTTP_PORT": str(self.port),
            "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY": self.admin_key,
        })
        env.setdefault("TRADE_ENGINE_LOG_FORMAT", "json")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tradeengine.ops.cli", "serve"], env=env, cwd=self.folder,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def database_dir(self) -> Path:
        """The embedded PostgreSQL's folder."""
        return self.folder / "data"

    def wait_ready(self, admin: AdminClient, limit: float = SERVER_START_LIMIT) -> float:
        """Wait for /health and /ready to answer 200; return the seconds it took."""
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"trade-engine serve exited with status {self.process.returncode}:\n"
                                 f"{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if admin.request("GET", "/health")[0] == 200 and admin.request("GET", "/ready")[0] == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > limit:
                raise BenchError(f"trade-engine serve not ready within {limit:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if it does not end; delete the folder."""
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(SERVER_STOP_LIMIT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            target = str(self.database_dir.resolve())
            leftovers = []
            for process in psutil.process_iter(["name", "cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if process.info["name"] == "postgres" and any(target in part for part in
                                                                  process.info["cmdline"] or ()):
                        process.kill()
                        leftovers.append(process)
            psutil.wait_procs(leftovers, timeout=10)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def target_server(args: argparse.Namespace, progress: Progress) -> Iterator[tuple[str, int, str, CpuMeter,
                                                                                 OwnServer | None]]:
    """Yield (host, port, admin key, CPU meter, own server or None) for the run."""
    if args.url:
        parts = urlsplit(args.url)
        if parts.scheme != "http" or not parts.hostname:
            raise BenchError(f"--url {args.url}: only http://HOST[:PORT] is supported")
        host, port = parts.hostname, parts.port or 80
        with AdminClient(host, port, timeout=min(args.timeout, 10.0)) as probe:
            try:
                probe.request("GET", "/health")
            except (OSError, http.client.HTTPException) as exc:
                raise BenchError(f"no server answers at {args.url} ({exc}); is `trade-engine serve` "
                                 "running there?") from exc
        yield host, port, args.admin_key, CpuMeter(listening_process(host, port), metrics=(host, port)), None
        return
    server = OwnServer()
    progress.note(f"starting trade-engine serve in {server.folder} (embedded PostgreSQL) ...")
    try:
        with AdminClient("127.0.0.1", server.port, timeout=5.0) as probe:
            seconds = server.wait_ready(probe)
        progress.note(f"server ready on 127.0.0.1:{server.port} in {seconds:.1f} s")
        root = psutil.Process(server.process.pid)
        meter = CpuMeter(root, server.database_dir, metrics=("127.0.0.1", server.port))
        yield "127.0.0.1", server.port, server.admin_key, meter, server
    finally:
        server.stop()


# -- the run ------------------------------------------------------------------------------------------


def phase_plan(phase: str, args: argparse.Namespace, orders_per_request: int) -> PhasePlan:
    """The timing of a phase starting a moment from now."""
    start = time.perf_counter_ns() + int(START_MARGIN * 1e9)
    measure = start + int(args.warmup * 1e9)
    if args.orders is None:
        return PhasePlan(phase, start, measure, measure + int(args.duration * 1e9), None)
    requests = math.ceil(args.orders / orders_per_request)
    return PhasePlan(phase, start, measure, None, dict(enumerate(split(requests, args.clients))))


def run_one_phase(phase: str, workers: Workers, args: argparse.Namespace, meter: CpuMeter,
                  progress: Progress) -> dict[str, Any]:
    """Run a phase on every worker, show its progress, return its figures."""
    per_request = args.batch_size if phase == "batch" else 1
    plan = phase_plan(phase, args, per_request)
    workers.start(plan)
    unit = "requests" if phase == "health" else "orders"
    target = None if args.orders is None else math.ceil(args.orders / per_request) * per_request
    while (now := time.perf_counter_ns()) < plan.measure_ns and not workers.done():
        progress.update(phase, 0.0, 0, f"{unit} (warming up)", 0)
        time.sleep(min(0.1, max(plan.measure_ns - now, 0) / 1e9))
    before = meter.read()
    after: CpuReading | None = None
    while not workers.done():
        now = time.perf_counter_ns()
        done = workers.completed()
        if target is not None:
            fraction, finished = done / target, done >= target
        else:
            assert plan.end_ns is not None
            fraction, finished = (now - plan.measure_ns) / (plan.end_ns - plan.measure_ns), now >= plan.end_ns
        if finished and after is None:
            after = meter.read()  # the CPU figures cover the counted window, not the drain after it
        progress.update(phase, fraction, done, unit, done / max((now - plan.measure_ns) / 1e9, 1e-9))
        time.sleep(0.2)
    if after is None:
        after = meter.read()
    result = workers.results(timeout=args.timeout + 30)
    figures = phase_figures(phase, result, CpuMeter.between(before, after))
    rate = figures["requests_per_sec"] if phase == "health" else figures["orders_per_sec"]
    progress.finish(_phase_line(phase, figures, rate))
    return figures


def _phase_line(phase: str, figures: dict[str, Any], rate: int) -> str:
    unit = "/health answers" if phase == "health" else "orders"
    extra = f" ({figures['requests_per_sec']:,} batches/s)" if phase == "batch" else ""
    server = figures.get("server_cpu_cores")
    cpu = (f"; CPU: generator {figures['generator_cpu_cores']} cores "
           f"({figures['generator_cpu_us_per_request']} µs/request)"
           + (f", server {server} cores" if server is not None else "")
           + (" (µs per " + ("request" if phase == "health" else "order") + ": "
              + ", ".join(f"{role} {us:g}" for role, us in figures["server_cpu_us_by_thread"].items()) + ")"
              if figures.get("server_cpu_us_by_thread") else "")
           + (f", database {figures['database_cpu_cores']} cores"
              if figures.get("database_cpu_cores") is not None else "")
           + (f", machine {figures['machine_busy_cores']} cores busy"
              if figures.get("machine_busy_cores") is not None else "")
           + (f" (other processes {figures['other_cpu_cores']})" if "other_cpu_cores" in figures else ""))
    errors = f"; ERRORS {figures['errors']}" if figures["errors"] else ""
    return (f"{phase:<7} {rate:,} {unit}/s{extra}; latency p50 {figures['p50_ms']} ms, p90 "
            f"{figures['p90_ms']} ms, p99 {figures['p99_ms']} ms, p99.9 {figures['p999_ms']} ms, max "
            f"{figures['max_ms']} ms; {figures['trades']:,} trades{cpu}{_stages_text(figures)}{errors}")


def _stages_text(figures: dict[str, Any]) -> str:
    """The engine's stages in the server (means over the phase), when its /metrics gave them."""
    stages = figures.get("engine_stages") or {}
    if "command_ms" not in stages or "commit_ms" not in stages:
        return ""
    return (f"; engine per command {stages['command_ms']} ms (in its pair {stages.get('in_pair_ms', '-')}, "
            f"waiting for the commit {stages.get('commit_wait_ms', '-')}), commits of "
            f"{stages.get('commands_per_commit', '-')} commands taking {stages['commit_ms']} ms")


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Start or reach the server, create the users, run the phases; return the run's figures."""
    setup: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        host, port, admin_key, meter, own = stack.enter_context(target_server(args, progress))
        admin = stack.enter_context(AdminClient(host, port))
        users: list[BenchUser] = []
        if args.phases != ["health"]:  # /health needs no users
            args.pair_rules = server_pairs(admin, args.pair_rules)
            users_count = args.clients * args.users_per_client
            progress.note(f"creating and funding {users_count} users over {len(args.pair_rules)} pairs ...")
            started = time.perf_counter()
            users = create_users(admin, admin_key, users_count, args.pair_rules)
            setup["setup_seconds"] = round(time.perf_counter() - started, 3)
        admin.close()  # no idle setup connections on the server while the clock runs
        setup["server"] = "own" if own is not None else args.url
        host_header = f"{host}:{port}"
        shares = split(args.clients, args.processes)
        keys = [user.api_key for user in users]
        per = args.users_per_client
        configs, first = [], 0
        for share in shares:
            clients = [(n, keys[n * per:(n + 1) * per]) for n in range(first, first + share)]
            first += share
            configs.append(WorkerConfig(host, port, host_header, clients, list(args.pair_rules), args.seed,
                                        args.batch_size, args.timeout, list(args.phases)))
        workers = Workers(configs)
        phases: dict[str, dict[str, Any]] = {}
        try:
            workers.wait_ready()
            length = f"{args.duration:g} s" if args.orders is None else f"{args.orders} orders"
            progress.note(f"{args.clients} connections in {args.processes} processes; "
                          f"{args.warmup:g} s warmup + {length} per phase")
            for phase in args.phases:
                phases[phase] = run_one_phase(phase, workers, args, meter, progress)
        finally:
            workers.stop()
        if own is None and users:
            failures = cancel_open_orders(admin, users)
            if failures:
                progress.note(f"warning: cancelling the bench users' open orders (DELETE {ORDERS_PATH}) "
                              f"failed: {failures} (users by outcome)")
    return summarise(phases, args, setup)


def parse_pairs(text: str) -> list[PairRule]:
    """`--pairs`: a count of launch pairs (in the table's order) or comma-separated symbols."""
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= len(LAUNCH_PAIRS):
            raise argparse.ArgumentTypeError(f"a count from 1 to {len(LAUNCH_PAIRS)}")
        return list(LAUNCH_PAIRS.values())[:count]
    symbols = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [symbol for symbol in symbols if symbol not in LAUNCH_PAIRS]
    if unknown or not symbols:
        raise argparse.ArgumentTypeError(f"unknown pair(s) {', '.join(unknown) or text!r}; "
                                         f"known: {', '.join(LAUNCH_PAIRS)}")
    return [LAUNCH_PAIRS[symbol] for symbol in dict.fromkeys(symbols)]


def parse_phases(text: str) -> list[str]:
    """`--phases`: a comma-separated subset of health, orders, batch (run in that order)."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(PHASES)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(PHASES)}")
    return [phase for phase in PHASES if phase in wanted]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def build_parser() -> argparse.ArgumentParser:
    """The options of `trade-engine bench http`."""
    parser = argparse.ArgumentParser(
        prog="trade-engine bench http", description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--url", default=None,
                        help="a running server, http://HOST:PORT (needs --admin-key); default: start a fresh "
                             "`trade-engine serve` with an embedded PostgreSQL in a temporary folder")
    parser.add_argument("--admin-key", default=None,
                        help="an admin's API key for --url (creates and funds the bench users)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--processes", type=int, default=None,
                        help="load-generator processes [default: one per CPU, at most --clients]")
    parser.add_argument("--users-per-client", type=int, default=4,
                        help="traders per connection, each with its own key, used in turn")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, default=10.0, help="seconds per phase after the warmup")
    length.add_argument("--orders", type=int, default=None,
                        help="instead of --duration: orders per phase (/health requests in the health phase)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="uncounted seconds at the start of each phase")
    parser.add_argument("--pairs", type=parse_pairs, default=parse_pairs("4"), dest="pair_rules",
                        metavar="N|SYMBOLS",
                        help="how many launch pairs, or comma-separated symbols [default: 4]")
    parser.add_argument("--batch-size", type=int, default=MAX_BATCH, help="orders per batch request (1-100)")
    parser.add_argument("--phases", type=parse_phases, default=list(PHASES),
                        help="comma-separated phases to run: health,orders,batch [default: all]")
    parser.add_argument("--seed", type=int, default=20261124, help="workload seed")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one answer")
    return parser


def main(argv: list[str]) -> int:
    """Run the HTTP benchmark; print its figures (the last line is JSON with --json); 1 when errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients < 1 or args.users_per_client < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--clients and --users-per-client must be positive, --warmup not negative")
    if (args.orders is not None and args.orders < 1) or (args.orders is None and args.duration <= 0):
        parser.error("--orders and --duration must be positive")
    if not 1 <= args.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be from 1 to {MAX_BATCH}")
    if args.url and not args.admin_key:
        parser.error("--url needs --admin-key")
    if args.orders is not None:
        args.duration = None
    args.processes = max(1, min(args.clients, args.processes or os.cpu_count() or 1))
    progress = Progress()
    try:
        result = run(args, progress)
    except BenchError as exc:
        print(f"trade-engine: bench http: {exc}", file=sys.stderr)
        return 1
    print(_summary(result))
    if result["errors_total"]:
        codes = {phase: figures["error_codes"] | figures["batch_item_errors"]
                 for phase, figures in result["phases"].items() if figures["errors"]}
        warning = (f"!!! {result['errors_total']} ERRORS in this run: {result['errors']} (codes: {codes}); "
                   "these figures do not measure a clean run")
        print(warning)
        print(warning, file=sys.stderr)
    if args.json:
        print(orjson.dumps(result).decode())
    return 1 if result["errors_total"] else 0


def _summary(result: dict[str, Any]) -> str:
    phases = result["phases"]
    parts = []
    if "orders" in phases:
        parts.append(f"{result['orders_per_sec']:,} orders/s "
                     f"(p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms)")
    if "health" in phases:
        ratio = result["orders_vs_health"]
        parts.append(f"/health {result['health_per_sec']:,}/s"
                     + (f" (orders/health {ratio})" if ratio is not None else ""))
    if "batch" in phases:
        parts.append(f"batches {result['batch_orders_per_sec']:,} orders/s")
    return (f"{result['clients']} clients: {', '.join(parts)}; the load generator used at most "
            f"{result['generator_cpu_cores']} of {result['cpus']} cores")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
