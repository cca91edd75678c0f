"""The readiness probes against the real services, up and unreachable; each answers quickly."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from tradeengine.actors.supervision import ChildState, ChildStatus, RestartPolicy
from tradeengine.http.readiness import (
    Readiness,
    actors_check,
    broker_check,
    database_check,
    redis_check,
    short_reason,
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answer(check_name: str, check: object, timeout: float = 3.0) -> tuple[str, float]:
    started = time.monotonic()
    _, results = Readiness({check_name: check}, timeout=timeout).run()  # type: ignore[dict-item]
    return results[check_name], time.monotonic() - started


@pytest.fixture
def pool(machine_pg_admin_url: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(machine_pg_admin_url, min_size=1, max_size=1, open=True, timeout=2) as opened:
        yield opened


def test_database_check_passes_on_a_live_pool(pool: ConnectionPool) -> None:
    assert _answer("database", database_check(pool))[0] == "ok"


def test_database_check_fails_fast_when_the_pool_cannot_connect() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres?connect_timeout=1"
    with ConnectionPool(url, min_size=1, max_size=1, open=False) as dead:
        dead.open(wait=False)
        answer, seconds = _answer("database", database_check(dead, timeout=0.5))
    assert answer.startswith("unavailable: ")
    assert seconds < 2.0


def test_redis_check_passes_when_redis_answers_and_fails_fast_when_it_does_not(redis_url: str) -> None:
    assert _answer("redis", redis_check(redis_url))[0] == "ok"
    answer, seconds = _answer("redis", redis_check(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.5))
    assert answer.startswith("unavailable: ")
    assert seconds < 2.0


def test_broker_check_passes_when_the_broker_answers_and_fails_fast_when_it_does_not(
        broker_url: str) -> None:
    assert _answer("broker", broker_check(broker_url))[0] == "ok"
    answer, seconds = _answer("broker", broker_check(f"amqp://guest:guest@127.0.0.1:{_closed_port()}//",
                                                     timeout=0.5))
    assert answer.startswith("unavailable: ")
    assert seconds < 2.5


def _child(name: str, state: ChildState) -> ChildStatus:
    return ChildStatus(name, state, 1, 0, 0, None, "database", RestartPolicy.PERMANENT)


class _System:
    def __init__(self) -> None:
        self.running = False
        self.children = [_child("writer", ChildState.RUNNING), _child("wallet", ChildState.RUNNING),
                         _child("pair:BTC-USDT", ChildState.RUNNING)]

    def actors(self) -> list[ChildStatus]:
        return self.children


def test_actors_check_follows_the_running_flag() -> None:
    system = _System()
    assert _answer("actors", actors_check(system))[0] == "unavailable: the actor system is not running"
    system.running = True
    assert _answer("actors", actors_check(system))[0] == "ok"


@pytest.mark.parametrize("state", [ChildState.FAILED, ChildState.RESTARTING, ChildState.STOPPED])
def test_the_actors_are_unready_while_the_writer_or_the_wallet_is_not_running(state: ChildState) -> None:
    system = _System()
    system.running = True
    for index, name in enumerate(("writer", "wallet")):
        children = list(system.children)
        children[index] = _child(name, state)
        system.children = children
        assert _answer("actors", actors_check(system))[0] == f"unavailable: the {name} is {state.value}"
        system.children[index] = _child(name, ChildState.RUNNING)


def test_a_failed_pair_leaves_the_process_ready_for_the_other_pairs() -> None:
    system = _System()
    system.running = True
    system.children[2] = _child("pair:BTC-USDT", ChildState.FAILED)
    assert _answer("actors", actors_check(system))[0] == "ok"


def test_short_reason_is_one_line_of_bounded_length() -> None:
    assert short_reason(OSError("first\nsecond")) == "first"
    assert short_reason(TimeoutError()) == "TimeoutError"
    assert len(short_reason(ValueError("x" * 1000))) == 160
