"""Events from a real ``trade-engine serve`` to the machine's RabbitMQ, as another service receives them.

The engine runs on the machine's PostgreSQL and publishes through a cuttable `TcpProxy` in front of
RabbitMQ, to an exchange of the test's own; trading goes over HTTP. What a consumer's queue received
is compared with the committed outbox (`outbox_events`): every event, in per-pair order, duplicates
only as copies with the same event id.

- /ready names the broker, and follows it through an outage while orders keep being accepted;
- `test_how_another_service_consumes_the_events` is the README's consumer ("Events"), run for real;
- kill -9 of the engine mid-run (slow): after a restart every committed event arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import psycopg_pool
import pytest
import requests
from kombu import Connection, Consumer, Exchange, Queue

from tests.actors.test_relay import assert_delivered_in_order, committed_events
from tests.broker_harness import BrokerTap
from tests.e2e.conftest import Engine, Engines, TcpProxy, wait_until
from tradeengine.storage import apply_migrations, create_pool
from tradeengine.storage.outbox import read_backlog

ADMIN_KEY = f"te_{uuid.uuid4().hex}"
PRICES = {"BTC-USDT": ("50000", "5", "0.001"), "ETH-USDT": ("3000", "1", "0.01")}








@pytest.fixture
def pool(machine_pg_url: str) -> Iterator[psycopg_pool.ConnectionPool]:
    apply_migrations(machine_pg_url)
    pool = create_pool(machine_pg_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        pool.close()


def start_engine(engines: Engines, tmp_path: Path, database_url: str, broker_url: str, exchange: str,
                 name: str = "data", **settings: str) -> Engine:
    engine = engines.start(tmp_path / name, database_url=database_url, broker_url=broker_url,
                           broker_exchange=exchange, bootstrap_admin_key=ADMIN_KEY, request_timeout="10",
                           **settings)
    engine.wait_ready(limit=30)
    return engine


class Trader:
    """A user with a key and funds, created through the admin API."""

    def __init__(self, engine: Engine, name: str) -> None:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        created = requests.post(f"{engine.base}/api/v1/admin/users", json={"name": name, "role": "trader"},
                                headers=admin, timeout=10)
        assert created.status_code == 201, created.text
        self.user_id = created.json()["user"]["id"]
        self.headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
        for asset, amount in (("USDT", "10000000"), ("BTC", "100"), ("ETH", "2000")):
            answer = requests.post(f"{engine.base}/api/v1/admin/users/{self.user_id}/deposits",
                                   json={"asset": asset, "amount": amount}, headers=admin, timeout=10)
            assert answer.status_code == 201, answer.text


def random_order(rng: random.Random) -> dict[str, Any]:
    symbol = rng.choice(list(PRICES))
    mid, step, quantity = PRICES[symbol]
    side = rng.choice(("BUY", "SELL"))
    offset = rng.randint(-3, 12) * float(step) * (-1 if side == "BUY" else 1)  # some cross the spread
    return {"symbol": symbol, "side": side, "type": "LIMIT", "quantity": quantity,
            "price": f"{float(mid) + offset:.2f}"}


class HttpLoad:
    """Orders over HTTP from a background thread until stopped (or the engine goes away)."""

    def __init__(self, engine: Engine, traders: list[Trader], seed: int) -> None:
        self.base = engine.base
        self.traders = traders
        self.accepted: list[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(random.Random(seed),), daemon=True)
        self._thread.start()

    def _run(self, rng: random.Random) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            trader = rng.choice(self.traders)
            try:
                answer = session.post(f"{self.base}/api/v1/orders", json=random_order(rng),
                                      headers=trader.headers, timeout=15)
            except requests.RequestException:
                self.failures += 1
                time.sleep(0.05)
                continue
            if answer.status_code == 201:
                self.accepted.append(answer.json()["order"]["id"])
            else:
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def backlog_rows(pool: psycopg_pool.ConnectionPool) -> int:
    return read_backlog(pool).rows


def test_ready_names_the_broker_and_follows_it_through_an_outage_while_orders_are_still_accepted(
    engines: Engines, tmp_path: Path, machine_pg_url: str, pool: psycopg_pool.ConnectionPool,
    broker_url: str, broker_proxy: TcpProxy, tap: BrokerTap, exchange_name: str,
) -> None:
    engine = start_engine(engines, tmp_path, machine_pg_url, broker_proxy.url(broker_url), exchange_name)
    assert engine.get("/ready").json()["checks"]["broker"] == "ok"
    traders = [Trader(engine, "alice"), Trader(engine, "bob")]
    load = HttpLoad(engine, traders, seed=5)
    try:
        wait_until(lambda: len(load.accepted) > 30, 30, "orders accepted")
        broker_proxy.cut()
        outage: dict[str, Any] = {}

        def reports_the_broker_away() -> bool:
            answer = engine.get("/ready", timeout=10)
            outage.update(status=answer.status_code, body=answer.json())
            return str(answer.json()["checks"]["broker"]).startswith("unavailable: ")

        wait_until(reports_the_broker_away, 15, "/ready naming the broker unavailable")
        # advisory: orders are still taken, so the process stays ready for a load balancer
        assert outage["status"] == 200 and outage["body"]["status"] == "ready"
        assert outage["body"]["checks"]["database"] == "ok"
        accepted = len(load.accepted)
        waiting = backlog_rows(pool)
        wait_until(lambda: len(load.accepted) > accepted + 30 and backlog_rows(pool) > waiting + 10, 30,
                   "orders accepted and the backlog growing while the broker is away")
        broker_proxy.restore()
        wait_until(lambda: engine.get("/ready", timeout=10).json()["checks"]["broker"] == "ok", 30,
                   "/ready naming the broker ok again")
    finally:
        load.stop()
    wait_until(lambda: backlog_rows(pool) == 0, 60, "the backlog published")

    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 30)
    assert_delivered_in_order(received, committed)
    created = {m.body["payload"]["order_id"] for m in received if m.body["event_type"] == "order.accepted"}
    assert set(load.accepted) <= created, "every accepted order's events were delivered"
    warnings = [r for r in engine.log_records() if "broker is unavailable" in r.get("message", "")]
    assert len(warnings) == 1, "the outage is logged once"


# The README's consumer ("Events" → "Consuming them"): keep the two in step.
def consume(url: str, exchange: str, queue_name: str, handle: Any, stop: threading.Event) -> None:
    """Another service's consumer: its own durable queue, manual acks, de-duplication on event_id."""
    events = Exchange(exchange, type="topic", durable=True)
    queue = Queue(queue_name, events, routing_key="trade.#", durable=True)  # + "order.BTC-USDT.*", ...
    seen: set[str] = set()  # in a real service: a table with a unique key, written with the effect

    def on_message(body: Any, message: Any) -> None:
        event = json.loads(body) if isinstance(body, str | bytes) else body
        if event["event_id"] not in seen:  # at-least-once: a redelivery has the same event_id
            handle(event)
            seen.add(event["event_id"])
        message.ack()  # only after the effect: a crash before it means a redelivery, not a loss

    with Connection(url) as connection, Consumer(connection, queues=[queue], callbacks=[on_message],
                                                 accept=["json"], prefetch_count=100):
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=1)


@pytest.mark.parametrize("relay_process", ["false", "true"],
                         ids=["relay in the engine", "relay in its own process"])
def test_how_another_service_consumes_the_events(
    engines: Engines, tmp_path: Path, machine_pg_url: str, pool: psycopg_pool.ConnectionPool,
    broker_url: str, exchange_name: str, relay_process: str,
) -> None:
    queue_name = f"{exchange_name}.settlement"
    trades: list[dict[str, Any]] = []
    stop = threading.Event()
    consumer = threading.Thread(target=consume, args=(broker_url, exchange_name, queue_name, trades.append,
                                                      stop), daemon=True)
    consumer.start()
    try:
        with Connection(broker_url) as connection:  # the consumer's queue exists before trading starts
            wait_until(lambda: _queue_exists(connection, queue_name), 10, "the consumer's queue")
        engine = start_engine(engines, tmp_path, machine_pg_url, broker_url, exchange_name,
                              relay_process=relay_process)
        relays = relay_processes(engine)
        assert len(relays) == (1 if relay_process == "true" else 0)
        alice, bob = Trader(engine, "alice"), Trader(engine, "bob")
        for price in ("50000", "50010"):
            sell = {"symbol": "BTC-USDT", "side": "SELL", "type": "LIMIT", "quantity": "0.1", "price": price}
            assert requests.post(f"{engine.base}/api/v1/orders", json=sell, headers=alice.headers,
                                 timeout=10).status_code == 201
        buy = {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "0.2", "price": "50010"}
        assert requests.post(f"{engine.base}/api/v1/orders", json=buy, headers=bob.headers,
                             timeout=10).status_code == 201
        wait_until(lambda: len(trades) == 2, 20, "both trades consumed")
        engine.signal(signal.SIGTERM)
        assert engine.wait_exit() == 0
        assert not [relay for relay in relays if relay.is_running() and relay.status() != "zombie"]
    finally:
        stop.set()
        consumer.join(10)
        with Connection(broker_url) as connection:
            channel = connection.channel()
            Queue(queue_name)(channel).delete()
            Exchange(exchange_name)(channel).delete()
    assert [t["event_type"] for t in trades] == ["trade.executed", "trade.executed"]
    assert [t["payload"]["price"] for t in trades] == ["50000", "50010"]
    assert [t["sequence"] for t in trades] == sorted(t["sequence"] for t in trades)
    assert {t["payload"]["buyer_user_id"] for t in trades} == {bob.user_id}
    with psycopg.connect(machine_pg_url) as conn:
        assert sorted(row[0] for row in conn.execute("SELECT id FROM trades").fetchall()) == sorted(
            t["payload"]["id"] for t in trades)


def relay_processes(engine: Engine) -> list[psutil.Process]:
    """The relay processes (`ops.relay_main`) under the engine's worker."""
    return [process for worker in engine.worker_pids()
            for process in psutil.Process(worker).children()
            if "tradeengine.ops.relay_main" in process.cmdline()]


def _queue_exists(connection: Connection, name: str) -> bool:
    try:
        Queue(name)(connection.channel()).queue_declare(passive=True)
    except connection.channel_errors:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("relay_process", ["false", "true"],
                         ids=["relay in the engine", "relay in its own process"])
def test_after_kill_9_mid_run_and_a_restart_every_committed_event_arrives_in_order(
    engines: Engines, tmp_path: Path, machine_pg_url: str, pool: psycopg_pool.ConnectionPool,
    broker_url: str, tap: BrokerTap, exchange_name: str, relay_process: str,
) -> None:
    first = start_engine(engines, tmp_path, machine_pg_url, broker_url, exchange_name, name="first",
                         relay_process=relay_process)
    traders = [Trader(first, "alice"), Trader(first, "bob"), Trader(first, "carol")]
    load = HttpLoad(first, traders, seed=17)
    try:
        wait_until(lambda: len(load.accepted) > 300, 60, "a busy engine")
        relays = relay_processes(first)
        assert bool(relays) == (relay_process == "true")
        if relays:  # kill -9 of the master and its worker only: the relay process must end by itself
            for pid in (first.pid, *first.worker_pids()):
                os.kill(pid, signal.SIGKILL)
            _, alive = psutil.wait_procs(relays, timeout=30)
            assert not alive, "the relay process outlived the engine it belonged to"
        first.kill_everything()  # kill -9 of the master and its worker (and what is left), mid-run
    finally:
        load.stop()
    accepted = list(load.accepted)
    unpublished = backlog_rows(pool)

    second = start_engine(engines, tmp_path, machine_pg_url, broker_url, exchange_name, name="second",
                          relay_process=relay_process)
    load = HttpLoad(second, traders, seed=18)
    try:
        wait_until(lambda: len(load.accepted) > 100, 60, "trading again after the restart")
    finally:
        load.stop()
    accepted += load.accepted
    wait_until(lambda: backlog_rows(pool) == 0, 60, "the backlog published")

    committed = committed_events(pool)
    received = tap.wait_for({event.event_id for event in committed}, 60)
    assert_delivered_in_order(received, committed)
    created = {m.body["payload"]["order_id"] for m in received if m.body["event_type"] == "order.accepted"}
    assert set(accepted) <= created, "every order acknowledged before or after the kill was delivered"
    print(f"events {len(committed)}, received {len(received)}, unpublished at the kill: {unpublished} rows")
