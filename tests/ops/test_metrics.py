"""/metrics of a real worker (``build_worker``: real actors, real PostgreSQL) after scripted trading.

Figures are exact: every order, rejection, trade and commit of a session is known in advance, and the
counters must move by exactly that much. Answers resolve on the writer's reply thread a moment after the
HTTP answer may have left, so a check waits (briefly) until the last of the session's figures is in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from decimal import Decimal
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import pybreaker
import pykka
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.ops.metrics_harness import ORDERS, PAIR, Engine, Samples, delta, parse, running_engine, value
from tests.wallet_service_harness import running_wallet_service
from tradeengine.actors.supervision import ChildState, ChildStatus, RestartPolicy
from tradeengine.engine import CancelAll, MatchingEngine
from tradeengine.http.app import create_app
from tradeengine.http.middleware import REQUEST_ID_HEADER, RequestIdLogFilter, current_request_id
from tradeengine.ops.cli import engine_version
from tradeengine.ops.metrics import ActorCollector, EngineMetrics, OutboxCollector, ScrapeErrors
from tradeengine.ops.threadcpu import ROLES
from tradeengine.storage.outbox import OutboxBacklog
from tradeengine.storage.outbox import read_backlog as read_outbox_backlog
from tradeengine.storage.wallet_commands import read_backlog as read_wallet_backlog


@pytest.fixture
def engine(machine_pg_url: str) -> Iterator[Engine]:
    with running_engine(machine_pg_url) as running:
        yield running


def test_a_scripted_session_moves_orders_trades_commits_and_http_counters_by_exactly_what_it_did(
        engine: Engine) -> None:
    alice = engine.trader(BTC="1", USDT="100000")
    bob = engine.trader(BTC="1", USDT="100000")
    carol = engine.trader(BTC="1")  # holds no USDT: her buy is refused by the funds gate
    before = engine.scrape()

    resting = engine.place(alice, 201, side="SELL", quantity="0.5", price="50000")  # accepted, rests
    assert len(engine.place(bob, 201, side="BUY", quantity="0.2", price="50100")["trades"]) == 1
    assert len(engine.place(bob, 201, side="BUY", quantity="0.1", price="50000")["trades"]) == 1
    post_only = engine.place(bob, 201, side="BUY", quantity="0.1", price="50000", post_only=True)
    assert post_only["order"]["reject_reason"] == "POST_ONLY_WOULD_TAKE"  # committed as REJECTED
    assert engine.place(carol, 422, side="BUY", quantity="0.1", price="40000")["error"]["code"] \
        == "INSUFFICIENT_BALANCE"  # refused by the pair
    assert engine.place(bob, 422, side="BUY", quantity="0.1", price="40000.005")["error"]["code"] \
        == "INVALID_TICK_SIZE"  # refused by the Exchange: never reaches the pair
    unknown = engine.place(bob, 404, symbol="NOPE-USDT", side="BUY", quantity="0.1", price="1")
    assert unknown["error"]["code"] == "UNKNOWN_SYMBOL"
    batch = engine.client.simulate_post(f"{ORDERS}/batch", headers=alice.headers, json={"orders": [
        {"symbol": PAIR, "side": "SELL", "type": "LIMIT", "quantity": "0.1", "price": "60000"},
        {"symbol": "NOPE-USDT", "side": "SELL", "type": "LIMIT", "quantity": "0.1", "price": "1"},
    ]})
    assert batch.status_code == 200, batch.text
    placed, refused = batch.json["results"]
    assert refused["error"]["code"] == "UNKNOWN_SYMBOL"
    cancelled = engine.client.simulate_delete(f"{ORDERS}/{placed['order']['id']}", headers=alice.headers)
    assert cancelled.status_code == 200, cancelled.text

    # Commands that reached the pair: 6 placements (5 handed to the writer, 1 refused by the engine's
    # funds gate) and 1 cancel. Committed: 5 placements (one of them stored as REJECTED) and the cancel,
    # each in its own batch since every request waited for the one before.
    after = engine.settled(lambda s: delta(s, before, "trade_engine_command_duration_seconds_count",
                                           command="cancel") >= 1)

    def moved(name: str, **labels: str) -> float:
        return delta(after, before, name, **labels)

    assert moved("trade_engine_orders_accepted_total", pair=PAIR) == 4
    assert moved("trade_engine_orders_rejected_total", reason="POST_ONLY_WOULD_TAKE") == 1
    assert moved("trade_engine_orders_rejected_total", reason="INSUFFICIENT_BALANCE") == 1
    assert moved("trade_engine_orders_rejected_total", reason="INVALID_TICK_SIZE") == 1
    assert moved("trade_engine_orders_rejected_total", reason="UNKNOWN_SYMBOL") == 2
    assert moved("trade_engine_trades_total", pair=PAIR) == 2

    assert moved("trade_engine_command_duration_seconds_count", command="place") == 6
    assert moved("trade_engine_command_duration_seconds_count", command="cancel") == 1
    assert moved("trade_engine_match_duration_seconds_count", command="place") == 6
    assert moved("trade_engine_commit_wait_seconds_count", command="place") == 5
    assert moved("trade_engine_commit_wait_seconds_count", command="cancel") == 1
    assert moved("trade_engine_command_errors_total", command="place", reason="INSUFFICIENT_BALANCE") == 1
    assert moved("trade_engine_match_duration_seconds_sum", command="place") > 0
    assert moved("trade_engine_commit_wait_seconds_sum", command="place") > 0

    assert moved("trade_engine_commit_batch_commands_count") == 6
    assert moved("trade_engine_commit_batch_commands_sum") == 6
    assert moved("trade_engine_commit_duration_seconds_count") == 6
    assert moved("trade_engine_commit_duration_seconds_sum") > 0
    assert moved("trade_engine_commit_batch_rows_sum") >= 6 * 2  # every command writes several rows
    assert moved("trade_engine_commit_failures_total") == 0

    orders_route = {"route": ORDERS, "method": "POST"}
    assert moved("trade_engine_http_requests_total", **orders_route, status="201") == 4
    assert moved("trade_engine_http_requests_total", **orders_route, status="422") == 2
    assert moved("trade_engine_http_requests_total", **orders_route, status="404") == 1
    assert moved("trade_engine_http_request_duration_seconds_count", **orders_route) == 7
    assert moved("trade_engine_http_requests_total", route=f"{ORDERS}/batch", method="POST",
                 status="200") == 1
    assert moved("trade_engine_http_requests_total", route=f"{ORDERS}/{{order_id}}", method="DELETE",
                 status="200") == 1

    # At scrape time: the book holds what is left of alice's first order (0.2 at 50000), nothing else.
    actor = f"pair:{PAIR}"
    assert value(after, "trade_engine_actor_state", actor=actor, state="running") == 1
    assert value(after, "trade_engine_actor_state", actor=actor, state="failed") == 0
    assert value(after, "trade_engine_actor_state", actor="writer", state="running") == 1
    assert value(after, "trade_engine_actor_mailbox_messages", actor=actor) == 0
    assert value(after, "trade_engine_actor_incarnation", actor=actor) == 1
    assert value(after, "trade_engine_pair_trading", pair=PAIR) == 1
    assert value(after, "trade_engine_book_orders", pair=PAIR, side="sell") == 1
    assert value(after, "trade_engine_book_orders", pair=PAIR, side="buy") == 0
    assert value(after, "trade_engine_book_levels", pair=PAIR, side="sell") == 1
    assert value(after, "trade_engine_book_levels", pair=PAIR, side="buy") == 0
    assert value(after, "trade_engine_stop_orders", pair=PAIR) == 0
    assert value(after, "trade_engine_pair_sequence", pair=PAIR) > 0
    assert resting["order"]["status"] == "OPEN"


def test_the_health_figures_are_exported_from_the_first_scrape(engine: Engine) -> None:
    samples = engine.scrape()
    assert value(samples, "trade_engine_circuit_breaker_state", breaker="wallet") == 0
    for source in ("pairs", "outbox", "pool"):
        assert value(samples, "trade_engine_scrape_errors_total", source=source) == 0
        assert ("trade_engine_scrape_errors_total", frozenset({("source", source)})) in samples
    assert value(samples, "trade_engine_build_info", version=engine_version()) == 1
    for actor in ("writer", "wallet", f"pair:{PAIR}"):
        assert ("trade_engine_actor_restarts_total", frozenset({("actor", actor)})) in samples
    assert ("trade_engine_group_restarts_total", frozenset({("group", "database")})) in samples
    # the pool: the limit is the setting; the writer and the scrape's own outbox read used connections
    assert value(samples, "trade_engine_db_pool_max_connections") == 4
    assert value(samples, "trade_engine_db_pool_connections") >= 1
    assert value(samples, "trade_engine_db_pool_requests_total") >= 1
    assert value(samples, "trade_engine_db_pool_waiting_requests") == 0
    # CPU by thread role: every role is exported; the actors that started have run
    for role in ROLES:
        assert ("trade_engine_thread_cpu_seconds_total", frozenset({("role", role)})) in samples
    for role in ("writer", "pairs", "wallet", "main"):
        assert value(samples, "trade_engine_thread_cpu_seconds_total", role=role) > 0


def test_the_outbox_backlog_counts_committed_unpublished_rows_and_the_age_of_the_oldest(
        engine: Engine) -> None:
    empty = read_outbox_backlog(engine.parts.pool)
    assert empty == OutboxBacklog(0, 0, 0.0)
    supervisor = engine.parts.system.supervisor
    assert supervisor is not None
    supervisor.stop("relay")  # so the deposit's row stays unpublished
    engine.trader(USDT="10")  # a deposit commits one outbox row
    time.sleep(0.2)
    backlog = read_outbox_backlog(engine.parts.pool, statement_timeout=1.0)
    assert (backlog.rows, backlog.events) == (1, 1)
    assert 0.2 <= backlog.oldest_age < 5
    with engine.parts.pool.connection() as conn:
        conn.execute("UPDATE outbox_messages SET published_at = now()")
    assert read_outbox_backlog(engine.parts.pool) == OutboxBacklog(0, 0, 0.0)


def test_the_outbox_is_read_at_most_once_per_ttl_and_a_failed_read_leaves_its_gauges_out() -> None:
    now = [100.0]
    reads: list[float] = []
    failing = [False]

    def read(pool: Any, **timeouts: float) -> OutboxBacklog:
        reads.append(now[0])
        if failing[0]:
            raise TimeoutError("canceling statement due to statement timeout")
        return OutboxBacklog(7, 28, 3.5)

    registry = CollectorRegistry()
    errors = ScrapeErrors()
    registry.register(OutboxCollector(object(), ttl=5.0, errors=errors, clock=lambda: now[0], read=read))
    registry.register(errors)

    def scrape() -> Samples:
        return parse(generate_latest(registry).decode())

    first = scrape()
    assert value(first, "trade_engine_outbox_unpublished_rows") == 7
    assert value(first, "trade_engine_outbox_publish_lag_seconds") == 3.5
    now[0] += 4.5
    scrape()
    assert reads == [100.0]  # served from the cache
    now[0] += 1.0
    failing[0] = True
    failed = scrape()
    assert reads == [100.0, 105.5]
    assert ("trade_engine_outbox_unpublished_rows", frozenset()) not in failed
    assert value(failed, "trade_engine_scrape_errors_total", source="outbox") == 1
    now[0] += 5.0
    failing[0] = False
    assert value(scrape(), "trade_engine_outbox_unpublished_rows") == 7


def test_an_outbox_read_that_hangs_holds_no_scrape_and_no_second_read_starts_while_it_lasts() -> None:
    release = threading.Event()
    reads: list[int] = []

    def read(pool: Any, **timeouts: float) -> OutboxBacklog:
        reads.append(1)
        release.wait(10)  # a black-holed connection: neither an answer nor the statement timeout
        return OutboxBacklog(2, 8, 1.0)

    registry = CollectorRegistry()
    errors = ScrapeErrors()
    registry.register(OutboxCollector(object(), ttl=5.0, statement_timeout=0.2, connect_timeout=0.1,
                                      errors=errors, read=read))
    registry.register(errors)
    for attempt in (1, 2):
        started = time.monotonic()
        samples = parse(generate_latest(registry).decode())
        assert time.monotonic() - started < 1.5  # 0.1 + 0.2 + 0.5 s
        assert ("trade_engine_outbox_unpublished_rows", frozenset()) not in samples
        assert value(samples, "trade_engine_scrape_errors_total", source="outbox") == attempt
    assert reads == [1]  # the second scrape waited for the read under way
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        samples = parse(generate_latest(registry).decode())
        if ("trade_engine_outbox_unpublished_rows", frozenset()) in samples:
            break
        time.sleep(0.05)
    assert value(samples, "trade_engine_outbox_unpublished_rows") == 2


class _SilentPair:
    """A pair handle whose actor never answers (stuck behind a long command)."""

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        return pykka.ThreadingFuture()


class _StuckSystem:
    supervisor: Any

    def __init__(self) -> None:
        self.supervisor = self

    def actors(self) -> list[ChildStatus]:
        return [ChildStatus("pair:SLOW-USDT", ChildState.RUNNING, 1, 0, 3, None, "database",
                            RestartPolicy.PERMANENT)]

    def handle(self, name: str) -> _SilentPair:
        return _SilentPair()


def test_a_pair_that_does_not_answer_is_left_out_of_the_scrape_which_still_answers_within_the_deadline(
        ) -> None:
    registry = CollectorRegistry()
    errors = ScrapeErrors()
    registry.register(ActorCollector(_StuckSystem(), timeout=0.2, errors=errors))  # type: ignore[arg-type]
    registry.register(errors)

    started = time.monotonic()
    samples = parse(generate_latest(registry).decode())
    assert time.monotonic() - started < 1.0
    assert value(samples, "trade_engine_actor_mailbox_messages", actor="pair:SLOW-USDT") == 3
    assert value(samples, "trade_engine_actor_state", actor="pair:SLOW-USDT", state="running") == 1
    assert not [key for key in samples if key[0] == "trade_engine_book_orders"]
    assert value(samples, "trade_engine_scrape_errors_total", source="pairs") == 1


def test_a_crash_and_an_operator_restart_are_counted_from_supervisor_events(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bob = engine.trader(USDT="1000")
    before = engine.scrape()
    original = MatchingEngine.execute
    fired = threading.Event()

    def execute(self: MatchingEngine, command: Any) -> Any:
        if self.spec.symbol == PAIR and not fired.is_set():
            fired.set()
            raise RuntimeError("injected fault")
        return original(self, command)

    monkeypatch.setattr(MatchingEngine, "execute", execute)
    caplog.set_level(logging.DEBUG, logger="tradeengine.commands")
    failed = engine.client.simulate_post(ORDERS, headers={**bob.headers, REQUEST_ID_HEADER: "crash-1"}, json={
        "symbol": PAIR, "side": "BUY", "type": "LIMIT", "quantity": "0.001", "price": "40000"})
    assert failed.status_code == 503 and failed.json["error"]["code"] == "UNAVAILABLE"
    actor = f"pair:{PAIR}"
    after = engine.settled(lambda s: delta(s, before, "trade_engine_actor_restarts_total", actor=actor) >= 1)
    assert delta(after, before, "trade_engine_actor_crashes_total", actor=actor) == 1
    assert delta(after, before, "trade_engine_actor_restarts_total", actor=actor) == 1
    assert delta(after, before, "trade_engine_orders_rejected_total", reason="UNAVAILABLE") == 1
    assert delta(after, before, "trade_engine_command_errors_total", command="place",
                 reason="UNAVAILABLE") == 1
    assert value(after, "trade_engine_actor_incarnation", actor=actor) == 2
    # This request's trail (the relay may log its publishing of the trader's deposit meanwhile).
    (answer,) = [r for r in caplog.records
                 if r.name == "tradeengine.commands" and getattr(r, "request_id", None) == "crash-1"]
    assert answer.reason == "UNAVAILABLE"  # type: ignore[attr-defined]

    engine.parts.system.restart_pair(PAIR)
    again = engine.scrape()
    assert delta(again, before, "trade_engine_actor_restarts_total", actor=actor) == 2
    assert delta(again, before, "trade_engine_actor_crashes_total", actor=actor) == 1
    assert value(again, "trade_engine_actor_incarnation", actor=actor) == 3


def test_the_request_id_follows_an_order_from_http_through_the_pair_to_its_commit_in_the_logs(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    alice = engine.trader(BTC="1")
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="tradeengine.commands")
    headers = {**alice.headers, REQUEST_ID_HEADER: "trace-me-42"}
    response = engine.client.simulate_post(ORDERS, headers=headers, json={
        "symbol": PAIR, "side": "SELL", "type": "LIMIT", "quantity": "0.1", "price": "50000"})
    assert response.status_code == 201, response.text
    order_id = response.json["order"]["id"]

    def traced() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me-42"]

    deadline = time.monotonic() + 5
    while len([r for r in traced() if r.name == "tradeengine.commands"]) < 2:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)
    handed, committed = [r for r in traced() if r.name == "tradeengine.commands"]
    assert "matched" in handed.getMessage() and handed.order_id == order_id  # type: ignore[attr-defined]
    assert "committed" in committed.getMessage()
    assert committed.order_id == order_id and committed.pair == PAIR  # type: ignore[attr-defined]
    # logged by the pair's thread and the writer's reply thread, not by the request's
    assert threading.get_ident() not in (handed.thread, committed.thread)
    # the committed sequences are the pair's: its outbox events carry them
    assert committed.first_sequence <= committed.last_sequence  # type: ignore[attr-defined]
    assert committed.last_sequence == value(engine.scrape(), "trade_engine_pair_sequence",  # type: ignore[attr-defined]
                                            pair=PAIR)
    access = [r for r in traced() if r.name == "tradeengine.http.access"]
    assert len(access) == 1 and access[0].route == ORDERS  # type: ignore[attr-defined]

    def published() -> list[logging.LogRecord]:  # the relay's line for the events of those sequences
        return [r for r in caplog.records if r.name == "tradeengine.commands"
                and r.getMessage().startswith("published") and r.pair == PAIR  # type: ignore[attr-defined]
                and r.first_sequence <= committed.last_sequence <= r.last_sequence]  # type: ignore[attr-defined]

    while not published():
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)
    assert current_request_id() is None  # the request's id does not outlive it


def test_a_log_record_made_while_a_request_is_answered_carries_its_request_id() -> None:
    logger = logging.getLogger("tests.ops.request_scope")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(RequestIdLogFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    class Chatty:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            logger.info("working on it")
            resp.media = {"request_id_inside": current_request_id()}

    try:
        app = create_app(version="t", readiness_checks={}, registry=CollectorRegistry(),
                         routes=[("/chatty", Chatty())])
        client = falcon.testing.TestClient(app)
        answer = client.simulate_get("/chatty", headers={REQUEST_ID_HEADER: "abc-123"})
        logger.info("after the request")
    finally:
        logger.removeHandler(handler)
    assert answer.json == {"request_id_inside": "abc-123"}
    inside, outside = seen
    assert inside.request_id == "abc-123"  # type: ignore[attr-defined]
    assert not hasattr(outside, "request_id")


def test_a_pybreaker_listener_keeps_the_breaker_gauge_current() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60,
                                       listeners=[metrics.breaker_listener("wallet")])

    def gauge() -> float:
        return registry.get_sample_value("trade_engine_circuit_breaker_state", {"breaker": "wallet"}) or 0.0

    assert gauge() == 0

    def fail() -> None:
        raise ConnectionError("wallet service down")

    with pytest.raises((ConnectionError, pybreaker.CircuitBreakerError)):
        breaker.call(fail)
    assert breaker.current_state == pybreaker.STATE_OPEN
    assert gauge() == 1
    breaker.half_open()
    assert gauge() == 2
    breaker.close()
    assert gauge() == 0


def test_an_observer_hook_that_sees_a_cancelled_reply_neither_raises_nor_counts_a_commit() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    reply: Future[Any] = Future()
    metrics.command_sent(CancelAll(user_id="1", timestamp=1), reply)
    assert reply.cancel()
    assert registry.get_sample_value("trade_engine_command_duration_seconds_count",
                                     {"command": "cancel_all"}) == 1
    assert registry.get_sample_value("trade_engine_command_errors_total",
                                     {"command": "cancel_all", "reason": "INTERNAL_ERROR"}) == 1
    assert registry.get_sample_value("trade_engine_commit_wait_seconds_count", {"command": "cancel_all"}) == 0


def test_with_a_remote_wallet_the_undelivered_settlements_and_their_age_are_exported(
        machine_pg_url: str) -> None:
    with running_wallet_service(machine_pg_url) as wallet, \
            running_engine(machine_pg_url, wallet_url=wallet.url, wallet_retries=0) as engine:
        system = engine.parts.system
        deadline = time.monotonic() + 10
        while not system.wallet_reconciled():
            assert time.monotonic() < deadline, "the wallet never reconciled"
            time.sleep(0.05)
        seller, buyer = engine.trader(BTC="1"), engine.trader(USDT="100000")
        wallet.set_faults(fail_next=1000, routes=["settle"])  # trades commit, settlements wait
        engine.place(seller, 201, side="SELL", quantity="0.1", price="50000")
        engine.place(buyer, 201, side="BUY", quantity="0.1", price="50000")
        time.sleep(0.3)
        samples = engine.scrape()
        assert value(samples, "trade_engine_wallet_commands_pending") == 1  # the trade's settle
        assert value(samples, "trade_engine_wallet_settlement_lag_seconds") >= 0.3
        assert value(samples, "trade_engine_wallet_commands_refused") == 0
        assert value(samples, "trade_engine_scrape_errors_total", source="wallet") == 0
        wallet.clear_faults()
        while read_wallet_backlog(engine.parts.pool).pending:
            assert time.monotonic() < deadline + 20, "the settlement was never delivered"
            time.sleep(0.05)
        assert wallet.balance(str(buyer.id), "BTC") == (Decimal("0.0999"), Decimal(0))


def test_without_a_remote_wallet_no_wallet_gauges_are_exported(engine: Engine) -> None:
    names = {name for name, _ in engine.scrape()}
    assert "trade_engine_outbox_publish_lag_seconds" in names  # the scrape-time collectors did run
    assert not any(name.startswith("trade_engine_wallet_") for name in names)
