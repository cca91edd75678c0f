"""Deposits and withdrawals through the ActorSystem: committed before they return, bounded in time.

Real PostgreSQL (the machine's server), real actors; the slow wallet is a test-side fault (a
monkeypatched `Ledger.deposit` that sleeps).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg_pool
import pytest

from tests.actors.system_harness import (
    ATOMS,
    assert_money_conserved,
    database_balances,
    running_system,
)
from tradeengine.actors.ledger import Ledger
from tradeengine.engine.errors import EngineTimeout, InsufficientBalance, ValidationError


def test_deposits_and_withdrawals_are_committed_when_they_return_and_refusals_change_nothing(
    pool: psycopg_pool.ConnectionPool,
) -> None:
    with running_system(pool) as system:
        assert system.deposit(1001, "USDT", 500 * ATOMS).available == 500 * ATOMS
        assert system.withdraw(1001, "USDT", 120 * ATOMS).available == 380 * ATOMS
        with pytest.raises(InsufficientBalance):
            system.withdraw(1001, "USDT", 1_000 * ATOMS)
        with pytest.raises(ValidationError):
            system.deposit(999_999, "USDT", ATOMS)  # no such user
        with pytest.raises(ValidationError):
            system.deposit(1001, "USDT", 0)
        with pool.connection() as conn:
            assert database_balances(conn, 1001) == {"USDT": (380 * ATOMS, 0)}
        assert_money_conserved(pool)


def test_a_wallet_that_does_not_answer_in_time_gives_an_engine_timeout_not_a_bare_error(
    pool: psycopg_pool.ConnectionPool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Ledger.deposit

    def slow_deposit(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return original(self, *args, **kwargs)

    with running_system(pool, request_timeout=0.5) as system:
        monkeypatch.setattr(Ledger, "deposit", slow_deposit)
        started = time.monotonic()
        with pytest.raises(EngineTimeout):
            system.deposit(1001, "USDT", ATOMS)
        assert time.monotonic() - started < 1.4  # bounded by the request timeout, not the wallet
