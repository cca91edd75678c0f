"""The outbox relay in a process of its own (`RelaySettings(process=True)`): `actors.relay_process` and
`ops.relay_main`, on the real actor system, real PostgreSQL and the machine's RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import psycopg_pool
import pytest

from tests.actors.system_harness import fund, running_system, wait_until
from tests.actors.test_relay import (
    assert_delivered_in_order,
    committed_events,
    relay_settings,
    trade_session,
    wait_published,
)
from tests.broker_harness import BrokerTap
from tests.e2e.conftest import TcpProxy
from tradeengine.actors.relay import RelayFigures, RelaySettings, RelayStats
from tradeengine.actors.relay_process import RELAY_COMMAND, relay_config
from tradeengine.actors.supervision import Backoff, ChildState
from tradeengine.actors.system import ActorSystem


def relay_pid(system: ActorSystem) -> int:
    """The pid of the relay's current child process."""
    children = [child for child in psutil.Process().children()
                if child.cmdline()[1:] == list(RELAY_COMMAND[1:])]
    assert len(children) == 1, children
    return children[0].pid


def test_committed_events_reach_the_queue_in_order_through_the_relay_process_and_its_figures_come_back(
    pool: psycopg_pool.ConnectionPool, broker_url: str, tap: BrokerTap, exchange_name: str,
) -> None:
    settings = relay_settings(broker_url, exchange_name, process=True)
    with running_system(pool, relay=settings) as system:
        pid = relay_pid(system)
        assert pid != os.getpid()
        fund(system)
        assert trade_session(system, 120, seed=3) > 80
        wait_published(pool, 30)
        committed = committed_events(pool)
        wait_until(lambda: system.relay_stats.figures().published_events == len(committed), 10,
                   "the child's figures in the engine's stats")
        figures = system.relay_figures()
    received = tap.wait_for({event.event_id for event in committed}, 10)
    assert len(received) == len(committed)
    assert_delivered_in_order(received, committed)
    assert figures is not None and figures.broker_available and figures.outages == 0
    assert figures.last_published_at is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_relay_process_is_replaced_by_the_supervisor_and_publishing_goes_on(
    pool: psycopg_pool.ConnectionPool, broker_url: str, tap: BrokerTap, exchange_name: str,
) -> None:
    settings = relay_settings(broker_url, exchange_name, process=True)
    with running_system(pool, relay=settings) as system:
        fund(system)
        trade_session(system, 30, seed=5)
        wait_published(pool, 30)
        before = system.relay_stats.figures().published_events
        first = relay_pid(system)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: system.supervisor.status("relay").incarnation == 2
                   and system.supervisor.status("relay").state is ChildState.RUNNING, 20, "a new relay")
        second = relay_pid(system)
        assert second != first
        trade_session(system, 30, seed=6)
        wait_published(pool, 30)
        committed = committed_events(pool)
        # What the killed child published after its last report is not counted; the new one's is.
        wait_until(lambda: system.relay_stats.figures().published_events > before, 10,
                   "the new child's figures added to the first one's")
    received = tap.wait_for({event.event_id for event in committed}, 10)
    assert_delivered_in_order(received, committed)  # duplicates (a killed pass) are exact copies


def start_child(conninfo: str, broker_url: str, exchange_name: str) -> subprocess.Popen[bytes]:
    """`ops.relay_main` started as `RelayProcess` starts it (its configuration line, then a nudge)."""
    config = relay_config(conninfo, relay_settings(broker_url, exchange_name))
    child = subprocess.Popen(RELAY_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write(json.dumps(config).encode() + b"\nn")
    child.stdin.flush()
    return child


def end_child(child: subprocess.Popen[bytes]) -> int:
    """Close its stdin, as a stopping (or dead) engine does; its exit status."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    status = child.wait(timeout=20)
    child.stdout.close()
    return status


def test_the_relay_process_ends_when_its_stdin_closes_as_when_the_engine_dies(
    pool: psycopg_pool.ConnectionPool, broker_url: str, exchange_name: str,
) -> None:
    child = start_child(pool.conninfo, broker_url, exchange_name)
    assert child.stdout is not None
    figures = json.loads(child.stdout.readline())  # it runs: its first report
    assert figures["published_events"] == 0 and figures["broker_available"] and figures["database_available"]
    assert end_child(child) == 0


def test_a_relay_process_started_while_the_database_is_away_waits_for_it_instead_of_giving_up(
    pool: psycopg_pool.ConnectionPool, broker_url: str, exchange_name: str,
) -> None:
    proxy = TcpProxy.before(pool.conninfo, 5432)
    proxy.cut()
    try:
        child = start_child(proxy.url(pool.conninfo), broker_url, exchange_name)
        time.sleep(1.5)
        assert child.poll() is None, "the relay process gave up"
        proxy.restore()
        assert child.stdout is not None
        figures = json.loads(child.stdout.readline())  # the database answered: it runs
        assert figures["database_available"]
        assert end_child(child) == 0
    finally:
        proxy.cut()


def test_stats_absorb_each_processes_counts_once_and_mirror_its_outages() -> None:
    stats = RelayStats(clock=lambda: 100.0)
    stats.absorb(1, RelayFigures(5, 2, 50.0, True, True, 0))
    stats.absorb(1, RelayFigures(9, 3, 60.0, False, True, 1))
    stats.absorb(2, RelayFigures(4, 1, 70.0, True, True, 0))
    figures = stats.figures()
    assert (figures.published_events, figures.published_rows, figures.last_published_at) == (13, 4, 70.0)
    assert figures.broker_available and figures.outages == 1


def test_the_settings_reach_a_relay_process_whole() -> None:
    settings = RelaySettings("amqp://mq//", "ex", batch_rows=7, nudge_interval=0.02, process=True,
                             backoff=Backoff(initial=0.3, factor=3.0, cap=4.0))
    assert RelaySettings.from_dict(json.loads(json.dumps(relay_config("dsn", settings)))["relay"]) == settings


def test_a_relay_process_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ValueError, match="memory://"):
        RelaySettings("memory://", process=True)


def test_nothing_is_left_running_after_the_system_stops(
    pool: psycopg_pool.ConnectionPool, broker_url: str, exchange_name: str,
) -> None:
    with running_system(pool, relay=relay_settings(broker_url, exchange_name, process=True)) as system:
        pid = relay_pid(system)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the relay process outlived the system"
        time.sleep(0.05)
