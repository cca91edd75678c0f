"""The HTTP load benchmark: its seeded workload, its HTTP parsing, its figures, its load loop against a
scripted loopback server, and one short end-to-end run against a `trade-engine serve` it starts itself
(speed is never asserted)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from tradeengine.ops import cli
from tradeengine.ops.bench import http as bench

PAIRS = list(bench.LAUNCH_PAIRS.values())


# -- workload -----------------------------------------------------------------------------------------


def test_the_workload_is_seeded_deterministic_and_different_per_connection_seed_and_stream() -> None:
    first = bench.order_script(7, "orders", 3, PAIRS[:4], 500)
    assert first == bench.order_script(7, "orders", 3, PAIRS[:4], 500)
    assert first[:100] == bench.order_script(7, "orders", 3, PAIRS[:4], 100)  # a prefix of the same script
    assert first != bench.order_script(7, "orders", 4, PAIRS[:4], 500)
    assert first != bench.order_script(8, "orders", 3, PAIRS[:4], 500)
    assert first != bench.order_script(7, "batch", 3, PAIRS[:4], 500)


def test_every_order_follows_its_pairs_rules_and_resting_orders_never_cross_the_mid() -> None:
    orders = bench.order_script(20261124, "orders", 0, PAIRS, 20_000)
    rules = bench.LAUNCH_PAIRS
    seen_symbols = set()
    takers = 0
    for order in orders:
        rule = rules[order["symbol"]]
        seen_symbols.add(rule.symbol)
        price, quantity = Decimal(order["price"]), Decimal(order["quantity"])
        assert order["type"] == "LIMIT" and order["side"] in ("BUY", "SELL")
        assert price > 0 and price % rule.tick_size == 0, order
        assert quantity >= rule.min_quantity and quantity % rule.lot_size == 0, order
        assert price * quantity >= rule.min_notional, order
        assert "e" not in order["price"].lower() and "e" not in order["quantity"].lower()
        buy = order["side"] == "BUY"
        if order.get("time_in_force") == "IOC":
            takers += 1
            assert (price > rule.mid) if buy else (price < rule.mid), order  # crosses every resting order
        else:
            assert set(order) == {"symbol", "side", "type", "quantity", "price"}
            assert (price < rule.mid) if buy else (price > rule.mid), order
            assert abs(price - rule.mid) <= bench.price_step(rule) * bench.RESTING_STEPS
    assert seen_symbols == set(rules)
    assert 0.22 < takers / len(orders) < 0.28


def test_takers_take_more_than_resting_orders_add_so_the_book_stays_small() -> None:
    orders = bench.order_script(1, "orders", 0, PAIRS[:1], 10_000)
    resting = sum(Decimal(o["quantity"]) for o in orders if "time_in_force" not in o)
    taking = sum(Decimal(o["quantity"]) for o in orders if "time_in_force" in o)
    assert taking > resting * Decimal("1.1")


def test_quantities_and_steps_of_the_launch_pairs() -> None:
    btc, doge = bench.LAUNCH_PAIRS["BTC-USDT"], bench.LAUNCH_PAIRS["DOGE-USDT"]
    assert bench.base_quantity(btc) == Decimal("0.0004")  # 20 USDT at 50,000: twice the 10 USDT minimum
    assert bench.price_step(btc) == Decimal("5.00")  # 500 ticks of 0.01 = 0.01 % of the mid
    assert bench.base_quantity(doge) == Decimal(100)  # 10 USDT at 0.1 in whole lots of 1
    assert bench.price_step(doge) == Decimal("0.00001")  # one tick at least
    assert bench.decimal_text(Decimal("50000.00")) == "50000"
    assert bench.decimal_text(Decimal("0.00010")) == "0.0001"


def _parse_request(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (h.split(":", 1) for h in header_lines)}
    return line, headers, body


def test_scripts_are_complete_requests_using_the_connections_keys_in_turn() -> None:
    keys = ["te_aaaaaaaaaaaaaaaaaaaa", "te_bbbbbbbbbbbbbbbbbbbb", "te_cccccccccccccccccccc"]
    scripts = bench.scripts_for(5, keys, "127.0.0.1:8080", PAIRS[:2], 11, 7)
    assert set(scripts) == {"health", "orders", "batch"}
    line, headers, body = _parse_request(scripts["health"].requests[0])
    assert line == "GET /health HTTP/1.1" and headers == {"host": "127.0.0.1:8080"} and body == b""

    orders = scripts["orders"]
    assert orders.orders_per_request == 1 and len(orders.requests) == bench.SINGLE_CYCLE
    expected = bench.order_script(11, "orders", 5, PAIRS[:2], 6)
    for n, raw in enumerate(orders.requests[:6]):
        line, headers, body = _parse_request(raw)
        assert line == "POST /api/v1/orders HTTP/1.1"
        assert headers["authorization"] == f"Bearer {keys[n % 3]}"
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert orjson.loads(body) == expected[n]

    batch = scripts["batch"]
    assert batch.orders_per_request == 7 and len(batch.requests) == bench.BATCH_CYCLE
    batched = bench.order_script(11, "batch", 5, PAIRS[:2], 14)
    for n, raw in enumerate(batch.requests[:2]):
        line, headers, body = _parse_request(raw)
        assert line == "POST /api/v1/orders/batch HTTP/1.1"
        assert headers["authorization"] == f"Bearer {keys[n % 3]}"
        assert orjson.loads(body) == {"orders": batched[n * 7:(n + 1) * 7]}
    assert set(bench.scripts_for(0, [], "h", PAIRS[:1], 1, 1, ["health"])) == {"health"}


# -- HTTP answers -------------------------------------------------------------------------------------


def test_parse_answer_reads_a_content_length_response_only_once_complete() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
    for cut in range(len(raw)):
        assert bench.parse_answer(raw[:cut]) is None
    answer = bench.parse_answer(bytearray(raw + b"HTTP/1.1 200 OK\r\n"))
    assert answer == bench.Answer(201, b'{"ok":true}', len(raw), False)


def test_parse_answer_reads_chunked_bodies_and_connection_close() -> None:
    raw = (b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n")
    for cut in range(len(raw)):
        assert bench.parse_answer(raw[:cut]) is None
    assert bench.parse_answer(raw) == bench.Answer(429, b"abcdefg", len(raw), True)


def test_parse_answer_handles_bodiless_statuses_and_http_1_0_and_refuses_nonsense() -> None:
    empty = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"
    assert bench.parse_answer(empty + b"rest") == bench.Answer(204, b"", len(empty), False)
    closing = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert bench.parse_answer(closing) == bench.Answer(200, b"", len(closing), True)
    with pytest.raises(ValueError):
        bench.parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ValueError):
        bench.parse_answer(b"HTTP/1.1 200 OK\r\n\r\n")  # no length: cannot be kept alive


def test_error_codes_of_answers_and_of_batch_items() -> None:
    limited = b'{"error":{"code":"RATE_LIMITED","message":"x"},"request_id":"r"}'
    assert bench.error_code(limited) == "RATE_LIMITED"
    assert bench.error_code(b"<html>bad gateway</html>") == "UNPARSEABLE"
    assert bench.batch_item_errors(b'{"results":[{"order":{"id":"1"},"trades":[]}]}') == {}
    body = orjson.dumps({"results": [
        {"order": {"id": "1", "reject_reason": None}, "trades": []},
        {"error": {"code": "INSUFFICIENT_BALANCE", "message": "m"}},
        {"error": {"code": "INVALID_TICK_SIZE", "message": "m", "field": "price"}},
        {"error": {"code": "INSUFFICIENT_BALANCE", "message": "m"}},
    ]})
    assert bench.batch_item_errors(body) == {"INSUFFICIENT_BALANCE": 2, "INVALID_TICK_SIZE": 1}


# -- figures ------------------------------------------------------------------------------------------


def test_percentiles_are_exact_nearest_rank() -> None:
    values = list(range(1, 1001))
    assert [bench.percentile(values, f) for f in (0.5, 0.9, 0.99, 0.999, 1.0)] == [500, 900, 990, 999, 1000]
    assert bench.percentile([7], 0.99) == 7
    assert bench.percentile([], 0.5) == 0
    assert bench.percentile([1, 2, 3, 4], 0.0) == 1
    # 0.1 ms resolution and better: latencies are kept in ns and rounded to µs only when shown
    figures = bench.latency_figures([5_000_123, 1_000_000, 3_000_000, 2_000_000, 4_000_000])
    assert figures == {"p50_ms": 3.0, "p90_ms": 5.0, "p99_ms": 5.0, "p999_ms": 5.0, "max_ms": 5.0,
                       "mean_ms": 3.0}
    many = [n * 1000 for n in range(100_000, 0, -1)]  # 1 µs .. 100 ms, unsorted
    assert bench.latency_figures(many)["p99_ms"] == 99.0
    assert bench.latency_figures(many)["p999_ms"] == 99.9


def test_split_shares_a_total_fairly() -> None:
    assert bench.split(10, 3) == [4, 3, 3]
    assert bench.split(2, 4) == [1, 1, 0, 0]
    assert sum(bench.split(12345, 7)) == 12345


def _result(answers: int, orders: int, seconds: float, latency_ms: float,
            **extra: object) -> bench.PhaseResult:
    result = bench.PhaseResult(latencies=array("q", [int(latency_ms * 1e6)] * answers), answers=answers,
                               orders=orders, requests=answers, first_ns=10**9,
                               last_ns=10**9 + int(seconds * 1e9), cpu_seconds=0.5, wall_seconds=seconds)
    for name, value in extra.items():
        setattr(result, name, value)
    return result


def test_the_json_object_carries_the_headline_figures_the_phases_and_the_errors() -> None:
    args = argparse.Namespace(clients=16, processes=2, users_per_client=4, pair_rules=PAIRS[:4],
                              batch_size=100, duration=10.0, orders=None, warmup=2.0, seed=1)
    phases = {
        "health": bench.phase_figures("health", _result(40_000, 40_000, 10.0, 2.0)),
        "orders": bench.phase_figures("orders", _result(30_000, 30_000, 10.0, 5.0),
                                      bench.CpuSample(10.0, 19.0, 8.0, 3.0,
                                                      {"http": 4.5, "writer": 2.0, "wallet": 0.0})),
        "batch": bench.phase_figures("batch", _result(2_000, 199_990, 10.0, 80.0, statuses={"429": 3},
                                                      codes={"RATE_LIMITED": 3},
                                                      item_errors={"INSUFFICIENT_BALANCE": 10})),
    }
    result = bench.summarise(phases, args, {"server": "own"})
    line = json.loads(orjson.dumps(result))
    assert line["orders_per_sec"] == 3000 and line["p50_ms"] == 5.0 and line["p99_ms"] == 5.0
    assert line["health_per_sec"] == 4000 and line["orders_vs_health"] == 0.75
    assert line["batch_orders_per_sec"] == 19_999 and line["batch_requests_per_sec"] == 200
    assert line["errors_total"] == 13
    assert line["errors"] == {"batch": {"429": 3, "batch_items": 10}}
    assert line["phases"]["batch"]["error_codes"] == {"RATE_LIMITED": 3}
    assert line["phases"]["health"]["orders_per_sec"] == 0  # /health places no orders
    orders = line["phases"]["orders"]
    assert orders["server_cpu_cores"] == 0.8 and orders["database_cpu_cores"] == 0.3
    assert orders["machine_busy_cores"] == 1.9 and orders["server_cpu_us_per_order"] == 266.7
    assert orders["server_cpu_us_by_thread"] == {"http": 150.0, "writer": 66.7}  # idle roles left out
    # the rest of the machine: 1.9 busy - 0.8 server - 0.3 database - 0.05 generator
    assert orders["generator_cpu_cores"] == 0.05 and orders["other_cpu_cores"] == 0.75
    assert "other_cpu_cores" not in line["phases"]["health"]  # no server CPU known: nothing to subtract
    assert {"clients", "processes", "users", "pairs", "duration", "p90_ms", "p999_ms", "generator_cpu_cores",
            "seed", "server"} <= set(line)
    assert line["users"] == 64 and line["pairs"] == ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"]
    assert bench.summarise({"health": phases["health"]}, args, {})["orders_vs_health"] is None


def test_results_of_several_workers_merge() -> None:
    one = _result(10, 10, 2.0, 1.0, statuses={"500": 1}, codes={"INTERNAL_ERROR": 1}, broken=1)
    other = _result(5, 500, 3.0, 2.0, statuses={"500": 2, "429": 1}, trades=7)
    one.merge(other)
    assert (one.answers, one.orders, one.trades, len(one.latencies)) == (15, 510, 7, 15)
    assert one.statuses == {"500": 3, "429": 1} and one.errors == 5
    assert one.last_ns == 10**9 + 3 * 10**9 and one.cpu_seconds == 1.0 and one.wall_seconds == 3.0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_redrawn_on_a_terminal_and_only_summarised_otherwise() -> None:
    terminal = _Terminal()
    bar = bench.Progress(terminal)
    bar.update("orders", 0.5, 1234, "orders", 2468.4)
    bar.update("orders", 1.5, 5000, "orders", 2500.0)
    bar.finish("orders  2,500 orders/s")
    drawn = terminal.getvalue().split("\r")
    assert drawn[1].startswith("orders  [" + "#" * 15 + "-" * 15 + "]  50%  1,234 orders  2,468/s")
    assert drawn[2].startswith("orders  [" + "#" * 30 + "] 150%  5,000 orders")
    assert terminal.getvalue().endswith("\rorders  2,500 orders/s\n")
    log = io.StringIO()
    quiet = bench.Progress(log)
    quiet.update("orders", 0.5, 1234, "orders", 2468.4)
    quiet.finish("orders  2,500 orders/s")
    assert log.getvalue() == "orders  2,500 orders/s\n"


# -- options ------------------------------------------------------------------------------------------


def test_pairs_and_phases_options() -> None:
    assert [r.symbol for r in bench.parse_pairs("2")] == ["BTC-USDT", "ETH-USDT"]
    assert [r.symbol for r in bench.parse_pairs("doge-usdt, BTC-USDT")] == ["DOGE-USDT", "BTC-USDT"]
    for bad in ("0", "11", "FOO-BAR", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_pairs(bad)
    assert bench.parse_phases("batch,health") == ["health", "batch"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_phases("health,trades")


@pytest.mark.parametrize("argv", [
    ["--url", "http://127.0.0.1:1"],  # no admin key
    ["--orders", "0"],
    ["--duration", "0"],
    ["--batch-size", "101"],
    ["--clients", "0"],
    ["--orders", "10", "--duration", "5"],
])
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2


def test_the_command_line_offers_the_http_bench() -> None:
    args = cli.build_parser().parse_args(["bench", "http", "--clients", "2", "--json"])
    assert (args.suite, args.bench_args) == ("http", ["--clients", "2", "--json"])


# -- the load loop against a scripted loopback server ---------------------------------------------------


Answerer = Callable[[int, bytes], bytes]


class ScriptedServer:
    """A keep-alive HTTP/1.1 server on loopback whose answers a test chooses: `answer(n, request)` for the
    n-th request (0-based, over all connections) returns raw response bytes."""

    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.count = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    at = head.find(b"content-length:")
                    length = int(head[at + 15:].split(b"\r\n")[0]) if at >= 0 else 0
                    end = head_end + 4 + length
                    if len(buffer) >= end:
                        request, buffer = buffer[:end], buffer[end:]
                        with self.lock:
                            n, self.count = self.count, self.count + 1
                        response = self.answer(n, request)
                        conn.sendall(response)
                        if b"connection: close" in response.lower():
                            return
                        continue
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data

    def close(self) -> None:
        self.listener.close()


StartServer = Callable[[Answerer], ScriptedServer]


@pytest.fixture
def scripted() -> Iterator[StartServer]:
    servers: list[ScriptedServer] = []

    def start(answer: Answerer) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _json_answer(status: int, body: object, *, close: bool = False, chunked: bool = False) -> bytes:
    payload = orjson.dumps(body)
    reason = {200: "OK", 201: "Created", 429: "Too Many Requests", 503: "Service Unavailable"}[status]
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if chunked:
        half = len(payload) // 2
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (payload[:half], payload[half:])
        ) + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


def _plan(phase: str, quota: int, clients: int, warmup: float = 0.0) -> bench.PhasePlan:
    start = time.perf_counter_ns() + 50_000_000
    quotas = dict.fromkeys(range(clients), quota)
    return bench.PhasePlan(phase, start, start + int(warmup * 1e9), None, quotas)


def test_the_load_loop_counts_answers_trades_and_errors_by_status_and_code(scripted: StartServer) -> None:
    trade = {"id": "t", "taker_side": "BUY"}

    def answer(n: int, request: bytes) -> bytes:
        assert request.startswith(b"POST /api/v1/orders HTTP/1.1\r\n")
        if n % 10 == 3:
            return _json_answer(429, {"error": {"code": "RATE_LIMITED", "message": "slow down"}})
        if n % 10 == 7:
            return _json_answer(503, {"error": {"code": "UNAVAILABLE", "message": "db"}}, close=True)
        return _json_answer(201, {"order": {"id": str(n)}, "trades": [trade, trade]}, chunked=n % 2 == 0)

    server = scripted(answer)
    scripts = bench.scripts_for(0, ["te_kkkkkkkkkkkkkkkkkkkk"], "x", PAIRS[:1], 1, 1, ["orders"])["orders"]
    clients = [bench.Client(n, ("127.0.0.1", server.port), 5.0) for n in range(3)]
    progress = array("q", [0])
    result = bench.run_phase(clients, dict.fromkeys(range(3), scripts), _plan("orders", 40, 3), progress, 0)
    assert server.count == 120 == result.requests
    assert result.statuses == {"429": 12, "503": 12}
    assert result.codes == {"RATE_LIMITED": 12, "UNAVAILABLE": 12}
    assert result.answers == result.orders == len(result.latencies) == 96 == progress[0]
    assert result.trades == 2 * 96
    assert result.errors == 24 and result.broken == 0
    assert result.reconnects == 12 and server.connections == 3 + 12  # a closed connection is replaced
    assert all(latency > 0 for latency in result.latencies)
    assert result.last_ns > result.first_ns and result.cpu_seconds > 0
    # each connection went on through its own script: 40 requests each, positions carried over
    assert [client.position for client in clients] == [40, 40, 40]


def test_the_load_loop_counts_failed_batch_items_and_only_what_was_sent_after_the_warmup(
    scripted: StartServer,
) -> None:
    def answer(n: int, request: bytes) -> bytes:
        time.sleep(0.01)
        orders = orjson.loads(request.partition(b"\r\n\r\n")[2])["orders"]
        results: list[dict[str, object]] = [{"order": {"id": "x"}, "trades": []} for _ in orders]
        results[0] = {"error": {"code": "INSUFFICIENT_BALANCE", "message": "m"}}
        return _json_answer(200, {"results": results})

    server = scripted(answer)
    scripts = bench.scripts_for(0, ["te_kkkkkkkkkkkkkkkkkkkk"], "x", PAIRS[:2], 1, 5, ["batch"])["batch"]
    clients = [bench.Client(n, ("127.0.0.1", server.port), 5.0) for n in range(2)]
    progress = array("q", [0])
    plan = _plan("batch", 6, 2, warmup=0.2)
    result = bench.run_phase(clients, dict.fromkeys(range(2), scripts), plan, progress, 0)
    assert result.answers == 12 and result.requests == server.count > 12  # warmup answers are not counted
    assert result.orders == 12 * 4 == progress[0]
    assert result.item_errors == {"INSUFFICIENT_BALANCE": server.count}  # warmup answers included
    assert result.errors == server.count
    assert min(result.latencies) >= 10_000_000  # the server's 10 ms are in every latency
    assert result.first_ns == plan.measure_ns


def test_the_load_loop_stops_at_the_end_of_a_timed_phase(scripted: StartServer) -> None:
    server = scripted(lambda n, request: _json_answer(200, {"status": "ok", "version": "x"}))
    scripts = bench.scripts_for(0, [], "x", PAIRS[:1], 1, 1, ["health"])["health"]
    clients = [bench.Client(n, ("127.0.0.1", server.port), 5.0) for n in range(2)]
    start = time.perf_counter_ns() + 20_000_000
    plan = bench.PhasePlan("health", start, start + 100_000_000, start + 400_000_000, None)
    result = bench.run_phase(clients, dict.fromkeys(range(2), scripts), plan, array("q", [0]), 0)
    assert result.answers > 0 and result.errors == 0 and result.trades == 0
    assert plan.measure_ns < result.last_ns < plan.end_ns + 1_000_000_000
    assert result.requests == server.count


def test_a_server_that_goes_away_breaks_connections_but_never_hangs_the_loop() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_then_vanish() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        listener.close()  # first: a reconnect must be refused, not queued in the listener's backlog
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Len")  # half an answer, then the server is gone
        conn.close()

    threading.Thread(target=accept_then_vanish, daemon=True).start()
    scripts = bench.scripts_for(0, [], "x", PAIRS[:1], 1, 1, ["health"])["health"]
    clients = [bench.Client(0, ("127.0.0.1", port), 5.0)]
    started = time.monotonic()
    result = bench.run_phase(clients, {0: scripts}, _plan("health", 5, 1), array("q", [0]), 0)
    assert result.broken == 1 and result.answers == 0 and result.errors == 1
    assert time.monotonic() - started < 5


def test_users_are_created_funded_and_cleaned_up_through_the_admin_api(scripted: StartServer) -> None:
    seen: list[tuple[str, str, dict[str, str] | None]] = []
    lock = threading.Lock()

    def answer(n: int, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        method, path, _ = head.split(b"\r\n")[0].decode().split(" ")
        auth = [line for line in head.decode().split("\r\n") if line.lower().startswith("authorization:")]
        with lock:
            seen.append((method, path, orjson.loads(body) if body else None))
        if path == "/api/v1/admin/users":
            assert auth == ["Authorization: Bearer te_admin"]
            user = orjson.loads(body)["name"].rsplit("-", 1)[1]
            return _json_answer(201, {"user": {"id": f"10{user}", "name": "x"}, "api_key": f"te_user{user}"})
        if path.endswith("/deposits"):
            return _json_answer(201, {"asset": "x", "available": "1", "locked": "0"})
        assert (method, path) == ("DELETE", "/api/v1/orders")
        return _json_answer(200 if auth != ["Authorization: Bearer te_user1"] else 503, {"cancelled": []})

    server = scripted(answer)
    admin = bench.AdminClient("127.0.0.1", server.port)
    pairs = [bench.LAUNCH_PAIRS["BTC-USDT"], bench.LAUNCH_PAIRS["XRP-USDT"]]
    with admin:
        users = bench.create_users(admin, "te_admin", 3, pairs)
        failures = bench.cancel_open_orders(admin, users)
    assert users == [bench.BenchUser(f"10{n}", f"te_user{n}") for n in range(3)]
    deposits = sorted((path, body["asset"], body["amount"]) for method, path, body in seen
                      if body and path.endswith("/deposits"))
    assert deposits == sorted((f"/api/v1/admin/users/10{n}/deposits", asset, amount) for n in range(3)
                              for asset, amount in (("USDT", "1000000000"), ("BTC", "20000"),
                                                    ("XRP", "2000000000")))
    assert {body["role"] for _, path, body in seen if body and path == "/api/v1/admin/users"} == {"trader"}
    assert failures == {"HTTP 503": 1}


def test_a_refused_setup_ends_the_bench_with_the_servers_answer(scripted: StartServer) -> None:
    server = scripted(lambda n, request: _json_answer(
        429, {"error": {"code": "RATE_LIMITED", "message": "slow down"}}))
    with bench.AdminClient("127.0.0.1", server.port) as admin, pytest.raises(
            bench.BenchError, match=r"HTTP 429 \(expected 201\).*RATE_LIMITED"):
        bench.create_users(admin, "te_admin", 1, PAIRS[:1])


# -- end to end -----------------------------------------------------------------------------------------


def test_bench_http_runs_against_its_own_server_and_prints_its_figures_as_json_on_the_last_line(
    tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADE_ENGINE_")}
    env["TRADE_ENGINE_HTTP_THREADS"] = "4"  # handed on to the server the bench starts
    # Four users at the default 500 orders/s each: a fast machine's batches pass that (3,600 orders/s were
    # seen), and the bench then rightly reports 429s. This test is about the bench, not the rate limit.
    env["TRADE_ENGINE_RATE_LIMIT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "tradeengine.ops.cli", "bench", "http", "--json", "--duration", "2",
         "--warmup", "0.5", "--clients", "2", "--users-per-client", "2", "--pairs", "2",
         "--batch-size", "20"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"orders_per_sec", "p50_ms", "p99_ms", "health_per_sec", "batch_orders_per_sec"} <= set(result)
    assert result["errors_total"] == 0 and result["errors"] == {}
    assert result["health_per_sec"] > 0 and result["orders_per_sec"] > 0
    assert result["batch_orders_per_sec"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["clients"] == 2 and result["users"] == 4 and result["server"] == "own"
    assert result["pairs"] == ["BTC-USDT", "ETH-USDT"]
    orders, batch = result["phases"]["orders"], result["phases"]["batch"]
    assert orders["trades"] > 0 and batch["trades"] > 0  # the crossing orders met resting ones
    assert batch["orders"] == batch["answers"] * 20
    assert orders["server_cpu_cores"] is not None and orders["generator_cpu_cores"] > 0
    assert "health " in done.stderr and "orders " in done.stderr and "batch " in done.stderr  # progress
    # the server it started is gone, with its embedded PostgreSQL and its folder
    folder = re.search(r"starting trade-engine serve in (\S+) ", done.stderr)
    assert folder, done.stderr
    assert folder.group(1).startswith(tempfile.gettempdir()) and not Path(folder.group(1)).exists()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any(folder.group(1) in part for part in p.info["cmdline"] or ())]
    assert leftovers == []


def test_the_engine_stages_are_read_from_the_servers_metrics_page() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tradeengine.actors.writer import BatchReport
    from tradeengine.ops.metrics import EngineMetrics, ThreadCpuCollector

    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    registry.register(ThreadCpuCollector())
    page = generate_latest(registry).decode()
    threads, before = bench.server_metrics(page)
    assert threads is not None and "main" in threads  # this test's own thread
    assert before is not None and before["command_ms"] == (0.0, 0.0)  # every command's label, at zero
    for command, seconds in (("place", 0.010), ("place", 0.014), ("cancel", 0.006)):
        metrics.command_duration.labels(command).observe(seconds)
        metrics.match_duration.labels(command).observe(0.001)
        metrics.commit_wait.labels(command).observe(seconds - 0.001)
    metrics.on_batch(BatchReport(commits=2, rows=30, seconds=0.004, ok=True))
    metrics.on_batch(BatchReport(commits=1, rows=10, seconds=0.006, ok=True))
    threads, after = bench.server_metrics(generate_latest(registry).decode())
    sample = bench.CpuMeter.between(bench.CpuReading(0.0, 0.0, None, None, threads, before),
                                    bench.CpuReading(1.0, 1.0, None, None, threads, after))
    stages = sample.figures(answers=3, orders=3)["engine_stages"]
    assert stages == {"command_ms": 10.0, "in_pair_ms": 1.0, "commit_wait_ms": 9.0, "commit_ms": 5.0,
                      "commands_per_commit": 1.5}  # means over every label: all commands together
    line = bench._phase_line("orders", {**_figures_for_line(), "engine_stages": stages}, 3)
    assert ("engine per command 10.0 ms (in its pair 1.0, waiting for the commit 9.0), commits of 1.5 "
            "commands taking 5.0 ms") in line
    assert bench.server_metrics("# nothing of ours\n") == (None, None)


def _figures_for_line() -> dict[str, Any]:
    return {"requests_per_sec": 3, "generator_cpu_cores": 0.1, "generator_cpu_us_per_request": 10.0,
            "errors": {}, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "p999_ms": 1.0, "max_ms": 1.0,
            "trades": 0}
