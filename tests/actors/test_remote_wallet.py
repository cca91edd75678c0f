"""The remote wallet backend in an in-process ActorSystem against the real wallet service (issue #7).

Real PostgreSQL (the engine's database; the service keeps its own schema in the same database) and a real
`trade-engine wallet-service --faults` subprocess (tests/wallet_service_harness.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg_pool
import pybreaker
import pytest

from tests.actors.system_harness import limit, order_id_of, wait_until
from tests.wallet_service_harness import WalletService, running_wallet_service
from tradeengine.actors.remote_wallet import RemoteWalletSettings
from tradeengine.actors.settler import SettlerSettings
from tradeengine.actors.supervision import Backoff
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import (
    EngineTimeout,
    EngineUnavailable,
    InsufficientBalance,
    Side,
    WalletServiceUnavailable,
)
from tradeengine.storage.wallet_client import WalletClient
from tradeengine.storage.wallet_commands import (
    WalletCommandRow,
    encode_movements,
    insert_command,
    read_backlog,
)

D = Decimal
BUYER, SELLER = 1001, 1002
ATOMS = 10**8


class BreakerStates(pybreaker.CircuitBreakerListener):
    """Records the breaker's state changes."""

    def __init__(self) -> None:
        self.states: list[str] = []

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.states.append(new_state.name)

    @property
    def current(self) -> str:
        return self.states[-1] if self.states else "closed"


@pytest.fixture
def wallet(machine_pg_url: str, pool: psycopg_pool.ConnectionPool) -> Iterator[WalletService]:
    with running_wallet_service(machine_pg_url) as service:
        yield service


def settings(url: str, **options: Any) -> RemoteWalletSettings:
    options.setdefault("timeout", 0.5)
    options.setdefault("retries", 3)
    options.setdefault("breaker_fail_max", 1000)
    options.setdefault("breaker_reset_timeout", 2.0)
    return RemoteWalletSettings(url, settler=SettlerSettings(
        idle_interval=0.2, backoff=Backoff(initial=0.05, factor=2.0, cap=0.3)), **options)


@contextmanager
def remote_system(pool: psycopg_pool.ConnectionPool, wallet: WalletService, *, reconciled: bool = True,
                  **options: Any) -> Iterator[ActorSystem]:
    system = ActorSystem(pool, wallet=settings(wallet.url, **options))
    system.start()
    try:
        if reconciled:
            wait_until(system.wallet_reconciled, 15, "the wallet service reconciled")
        yield system
    finally:
        system.stop()


def fund(system: ActorSystem) -> None:
    system.deposit(BUYER, "USDT", 100_000 * ATOMS)
    system.deposit(SELLER, "BTC", 10 * ATOMS)


def settled(pool: psycopg_pool.ConnectionPool, timeout: float = 20.0) -> None:
    wait_until(lambda: read_backlog(pool).pending == 0, timeout, "every wallet command delivered")


def at_service(wallet: WalletService, user: int | str, asset: str) -> tuple[Decimal, Decimal]:
    return wallet.balance(str(user), asset)


def assert_first_trade_settled(wallet: WalletService) -> None:
    """SELL 1 BTC @ 50000 (maker 0.08 %) rests; BUY 0.4 @ 50100 (taker 0.1 %) fills 0.4 at 50000."""
    assert at_service(wallet, BUYER, "USDT") == (D(80_000), D(0))  # 20040 locked, 20000 paid, 40 back
    assert at_service(wallet, BUYER, "BTC") == (D("0.3996"), D(0))  # 0.4 − 0.0004 taker fee
    assert at_service(wallet, SELLER, "BTC") == (D(9), D("0.6"))
    assert at_service(wallet, SELLER, "USDT") == (D(19_984), D(0))  # 20000 − 16 maker fee
    assert at_service(wallet, "__fees__", "BTC") == (D("0.0004"), D(0))
    assert at_service(wallet, "__fees__", "USDT") == (D(16), D(0))


def trade_once(system: ActorSystem) -> tuple[int, Any]:
    sell = system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
    buy = system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.4", "50100"))
    return order_id_of(sell), buy


# -- trading ----------------------------------------------------------------------------------------------


def test_trading_in_remote_mode_moves_balances_at_the_service_exactly_as_the_money_section_says(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    with remote_system(pool, wallet) as system:
        fund(system)
        sell, _ = trade_once(system)
        settled(pool)
        assert_first_trade_settled(wallet)
        balances = {b.asset: b for b in system.exchange.balances(SELLER)}
        assert (balances["BTC"].available, balances["BTC"].locked) == (9 * ATOMS, 60_000_000)
        system.exchange.cancel(SELLER, str(sell))
        settled(pool)
        assert at_service(wallet, SELLER, "BTC") == (D("9.6"), D(0))
        with pytest.raises(InsufficientBalance):
            system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "10", "50000"))
        assert at_service(wallet, BUYER, "USDT") == (D(80_000), D(0))
        with pytest.raises(InsufficientBalance):
            system.withdraw(BUYER, "USDT", 80_001 * ATOMS)
        assert system.withdraw(BUYER, "USDT", 1_000 * ATOMS).available == 79_000 * ATOMS
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM balances").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (1,)


# -- the breaker ------------------------------------------------------------------------------------------


def test_the_breaker_opens_after_fail_max_failures_then_refuses_at_once_and_a_probe_closes_it(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    states = BreakerStates()
    with remote_system(pool, wallet, retries=0, breaker_fail_max=3, breaker_reset_timeout=2.0,
                       breaker_listeners=(states,)) as system:
        fund(system)
        wallet.set_faults(fail_next=1000, fail_status=503, routes=["reserve"])
        failures = 0
        while states.current != "open":
            with pytest.raises(EngineUnavailable):
                system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "0.1", "50000"))
            failures += 1
            assert failures <= 3
        counters = wallet.fault_counters()
        answered_in = []
        for _ in range(21):
            started = time.perf_counter()
            with pytest.raises(EngineUnavailable):
                system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "0.1", "50000"))
            answered_in.append(time.perf_counter() - started)
        # The median: one call may wait for a CPU on a loaded machine; none waits for the service.
        assert statistics.median(answered_in) < 0.010, answered_in
        assert wallet.fault_counters() == counters, "no call reached the service while open"
        assert system.pair_actor("BTC-USDT").restarts == 0, "a refused reserve fails the order, not the pair"
        wallet.clear_faults()
        time.sleep(2.1)
        wait_until(lambda: _places(system), 5, "an order accepted after the probe")
        assert states.current == "closed"
        settled(pool)
        # The failed reserves were voided: whatever reached the service was given back.
        assert at_service(wallet, SELLER, "BTC") == (D("9.9"), D("0.1"))


def _places(system: ActorSystem) -> bool:
    try:
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "0.1", "50000"))
    except EngineUnavailable:
        return False
    return True


# -- retries: never twice ---------------------------------------------------------------------------------


def test_dropped_connections_and_5xx_on_reserve_and_settle_never_reserve_or_settle_twice(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    with remote_system(pool, wallet) as system:
        fund(system)
        wallet.set_faults(drop_next=1, after_apply=True, routes=["reserve"])
        sell = system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
        assert at_service(wallet, SELLER, "BTC") == (D(9), D(1))
        wallet.set_faults(fail_next=2, fail_status=503, after_apply=True, routes=["reserve"])
        trades = [system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.4", "50100"))]
        settled(pool)
        assert_first_trade_settled(wallet)
        wallet.set_faults(drop_next=2, after_apply=True, routes=["settle", "release"])
        trades.append(system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.1", "50100")))
        settled(pool)
        wallet.set_faults(fail_next=1, fail_status=500, after_apply=True, routes=["settle"])
        trades.append(system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.1", "50000")))
        settled(pool)
        counters = wallet.fault_counters()
        assert counters["dropped"] == 3 and counters["failed"] == 3
        wallet.clear_faults()
        # 0.6 BTC sold at 50000 = 30000 USDT; maker fee 24 USDT; taker fee 0.0006 BTC.
        assert at_service(wallet, SELLER, "USDT") == (D(29_976), D(0))
        assert at_service(wallet, SELLER, "BTC") == (D(9), D("0.4"))
        assert at_service(wallet, BUYER, "USDT") == (D(70_000), D(0))
        assert at_service(wallet, BUYER, "BTC") == (D("0.5994"), D(0))
        assert at_service(wallet, "__fees__", "USDT") == (D(24), D(0))
        for outcome in trades:
            trade = next(e for e in outcome.events if type(e).__name__ == "TradeExecuted")
            operation = wallet.operation(f"settle:BTC-USDT:{trade.sequence}")
            assert operation is not None and operation["status"] == 200
        system.exchange.cancel(SELLER, str(order_id_of(sell)))
        settled(pool)
        assert at_service(wallet, SELLER, "BTC") == (D("9.4"), D(0))


def test_settles_failing_while_trades_commit_wait_in_the_table_and_apply_exactly_once_when_fixed(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    with remote_system(pool, wallet) as system:
        fund(system)
        wallet.set_faults(fail_next=100_000, fail_status=503, routes=["settle", "release"])
        trade_once(system)
        for _ in range(3):  # three more trades of 0.1 at 50000 (each BUY at its limit: no release)
            system.exchange.place(BUYER, limit("BTC-USDT", Side.BUY, "0.1", "50000"))
        wait_until(lambda: read_backlog(pool).pending >= 5, 5, "the settles waiting in wallet_commands")
        assert at_service(wallet, SELLER, "USDT") == (D(0), D(0))
        wallet.clear_faults()
        settled(pool)
        # 0.7 BTC sold at 50000: 35000 USDT; maker fee 0.08 % = 28; taker fee 0.1 % of 0.7 = 0.0007 BTC.
        assert at_service(wallet, SELLER, "USDT") == (D(34_972), D(0))
        assert at_service(wallet, SELLER, "BTC") == (D(9), D("0.3"))
        assert at_service(wallet, BUYER, "BTC") == (D("0.6993"), D(0))
        assert at_service(wallet, BUYER, "USDT") == (D(65_000), D(0))
        assert at_service(wallet, "__fees__", "USDT") == (D(28), D(0))


# -- reconciliation and refusals --------------------------------------------------------------------------


def test_a_reservation_no_open_order_explains_is_released_and_reserves_wait_for_the_reconciliation(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    wallet.deposit(str(SELLER), "BTC", "10")
    client = WalletClient(wallet.url)
    try:
        assert client.reserve("reserve:crashed-engine:1", str(SELLER), "BTC", 2 * ATOMS)
    finally:
        client.close()
    wallet.stop()
    with remote_system(pool, wallet, reconciled=False, retries=0) as system:
        with pytest.raises(EngineUnavailable, match="not reconciled"):
            system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
        wallet.start()
        wait_until(system.wallet_reconciled, 15, "the wallet service reconciled")
        assert at_service(wallet, SELLER, "BTC") == (D(10), D(0))
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
    with remote_system(pool, wallet):  # a restart keeps what open orders reserve
        assert at_service(wallet, SELLER, "BTC") == (D(9), D(1))


def test_a_command_the_service_refuses_is_parked_and_later_commands_go_on(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    with remote_system(pool, wallet) as system:
        insert_command(pool, WalletCommandRow("unlock:bogus:1", "release",
                                              encode_movements([(str(SELLER), "BTC", ATOMS, -ATOMS)])))
        wait_until(lambda: read_backlog(pool).refused == 1, 10, "the bogus release parked")
        fund(system)
        sell = system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
        system.exchange.cancel(SELLER, str(order_id_of(sell)))
        settled(pool)
        assert read_backlog(pool).refused == 1
        assert at_service(wallet, SELLER, "BTC") == (D(10), D(0))
        figures = system.settler_figures()
        assert figures is not None and figures.refused == 1 and figures.delivered >= 1
        assert figures.backlog is not None and (figures.backlog.pending, figures.backlog.refused) == (0, 1)


def test_a_rebuild_of_the_database_group_reconciles_the_service_again(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    with remote_system(pool, wallet) as system:
        fund(system)
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
        assert system.wallet_client is not None  # what a command whose commit failed leaves behind:
        assert system.wallet_client.reserve("reserve:failed-commit:1", str(SELLER), "BTC", 2 * ATOMS)
        assert at_service(wallet, SELLER, "BTC") == (D(7), D(3))
        assert system.supervisor is not None
        system.supervisor.restart_group("database")
        wait_until(system.wallet_reconciled, 15, "the new wallet incarnation reconciled")
        assert at_service(wallet, SELLER, "BTC") == (D(9), D(1))
        figures = system.settler_figures(backlog=False)
        assert figures is not None
        assert (figures.reconciliations, figures.released_by_reconciliation) == (2, 1)
        system.exchange.place(SELLER, limit("BTC-USDT", Side.SELL, "1", "50000"))
        assert at_service(wallet, SELLER, "BTC") == (D(8), D(2))


# -- transfers during an outage ---------------------------------------------------------------------------


def test_a_transfer_the_service_may_have_applied_is_outcome_unknown_one_the_breaker_kept_back_unavailable(
    pool: psycopg_pool.ConnectionPool, wallet: WalletService,
) -> None:
    states = BreakerStates()
    with remote_system(pool, wallet, retries=0, breaker_fail_max=1, breaker_reset_timeout=30.0,
                       breaker_listeners=(states,)) as system:
        wallet.set_faults(fail_next=1, fail_status=503, after_apply=True, routes=["deposit"])
        with pytest.raises(EngineTimeout, match="may or may not have happened"):
            system.deposit(BUYER, "USDT", 5 * ATOMS)
        assert at_service(wallet, BUYER, "USDT") == (D(5), D(0))  # it was applied: a blind retry doubles it
        assert states.current == "open"
        with pytest.raises(WalletServiceUnavailable) as refused:  # nothing was sent: nothing happened
            system.deposit(BUYER, "USDT", 5 * ATOMS)
        assert not isinstance(refused.value, EngineTimeout)
        assert at_service(wallet, BUYER, "USDT") == (D(5), D(0))
