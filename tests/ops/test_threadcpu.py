"""ops/threadcpu.py: each thread's CPU clock, summed by role, never going down when threads end."""

from __future__ import annotations

import threading
import time

import pytest

from tradeengine.ops.threadcpu import ROLES, ThreadCpu, thread_role


@pytest.mark.parametrize(("name", "role"), [
    ("PersistenceActor-0", "writer"), ("writer-process-reader-4242", "writer"), ("PairActor-11", "pairs"),
    ("WalletActor-1", "wallet"),
    ("OutboxRelay-12", "relay"), ("outbox-relay-timer-3", "relay"), ("RelayProcess-12", "relay"),
    ("relay-process-reader-2", "relay"), ("WalletSettler-4", "settler"),
    ("wallet-settler-timer-1", "settler"), ("market-data-mirror", "mirror"), ("http-loop", "http"),
    ("http-blocking_5", "http"),
    ("MainThread", "main"), ("partition-maintenance", "other"), ("Thread-7 (worker)", "other"),
])
def test_a_thread_has_the_role_its_name_says(name: str, role: str) -> None:
    assert thread_role(name) == role
    assert role in ROLES


def burn(seconds: float) -> None:
    """Use about `seconds` of CPU on this thread."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_threads_cpu_counts_for_its_role_and_stays_counted_after_it_ends() -> None:
    meter = ThreadCpu()
    before = meter.read()
    assert list(before) == list(ROLES)
    started, finish = threading.Event(), threading.Event()

    def pair_actor() -> None:
        burn(0.2)
        started.set()
        finish.wait(10)

    thread = threading.Thread(target=pair_actor, name="PairActor-99")
    thread.start()
    assert started.wait(10)
    during = meter.read()
    assert during["pairs"] - before["pairs"] >= 0.15
    assert during["writer"] - before["writer"] < 0.05  # no writer ran meanwhile in this process
    finish.set()
    thread.join(10)
    after = meter.read()
    assert after["pairs"] >= during["pairs"]  # the ended thread keeps what it had at the last read
    assert all(after[role] >= before[role] for role in ROLES)


def test_threads_of_the_same_role_one_after_another_add_up() -> None:
    meter = ThreadCpu()
    before = meter.read()["wallet"]
    for n in range(3):  # one after another: a new thread may get the ident of the one that ended
        burnt, finish = threading.Event(), threading.Event()

        def wallet_actor(burnt: threading.Event = burnt, finish: threading.Event = finish) -> None:
            burn(0.05)
            burnt.set()
            finish.wait(10)

        thread = threading.Thread(target=wallet_actor, name=f"WalletActor-{n}")
        thread.start()
        assert burnt.wait(10)
        meter.read()  # seen while it runs
        finish.set()
        thread.join(10)
    assert meter.read()["wallet"] - before >= 3 * 0.05 * 0.9
