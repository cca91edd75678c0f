"""WalletActor under the real Supervisor, with the real persistence writer and real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from decimal import Decimal
from typing import Any

import psycopg_pool
import pytest

from tradeengine.actors.ledger import AssetBalance, Ledger
from tradeengine.actors.supervisor import ChildHandle, ChildSpec, GroupSpec, Strategy, Supervisor
from tradeengine.actors.wallet import BalancesQuery, Deposit, LedgerSlot, WalletActor, Withdraw
from tradeengine.actors.writer import PersistenceActor
from tradeengine.engine import EngineUnavailable, InsufficientBalance, ValidationError

ALICE, BOB = 1001, 1002
WAIT = 10.0


def atoms(amount: str) -> int:
    return int(Decimal(amount) * 10**8)


class Wallet:
    """A supervisor with the "database" group's first two members: the writer and the wallet."""

    def __init__(self, pool: psycopg_pool.ConnectionPool) -> None:
        self.pool = pool
        self.slot = LedgerSlot()
        self.supervisor = Supervisor(groups=[GroupSpec("database")])
        self.writer = self.supervisor.add(ChildSpec.for_actor(
            "writer", PersistenceActor, {"pool": pool}, strategy=Strategy.ONE_FOR_ALL, group="database",
        ))
        self.wallet: ChildHandle = self.supervisor.add(ChildSpec.for_actor(
            "wallet", WalletActor, {"pool": pool, "writer": self.writer, "slot": self.slot},
            strategy=Strategy.ONE_FOR_ALL, group="database",
        ))

    def send(
        self, message_type: type[Deposit | Withdraw], user: int, asset: str, amount: str
    ) -> AssetBalance:
        reply: Future[AssetBalance] = Future()
        self.wallet.tell(message_type(user, asset, atoms(amount), reply))
        return reply.result(timeout=WAIT)

    def balances(self, user: int) -> list[AssetBalance]:
        result: list[AssetBalance] = self.wallet.ask(BalancesQuery(user), timeout=WAIT)
        return result

    def stored(self, user: int) -> list[tuple[Any, ...]]:
        with self.pool.connection() as conn:
            return conn.execute("SELECT asset, available, locked FROM balances WHERE user_id = %s "
                                "ORDER BY asset", (user,)).fetchall()

    def ledger_kinds(self) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT kind::text FROM ledger_entries ORDER BY id").fetchall()
        return [row[0] for row in rows]


@pytest.fixture
def wallet(pg_pool: psycopg_pool.ConnectionPool) -> Iterator[Wallet]:
    with pg_pool.connection() as conn:
        for user in (ALICE, BOB):
            conn.execute("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader')", (user, f"u{user}"))
    system = Wallet(pg_pool)
    try:
        yield system
    finally:
        system.supervisor.stop_all()


def test_a_deposit_is_committed_before_its_reply_and_shows_in_the_balances(wallet: Wallet) -> None:
    assert wallet.send(Deposit, ALICE, "USDT", "1000.5") == AssetBalance("USDT", atoms("1000.5"), 0)
    assert wallet.stored(ALICE) == [("USDT", Decimal("1000.5"), Decimal(0))]  # committed when answered
    wallet.send(Deposit, ALICE, "BTC", "0.00000001")
    assert wallet.balances(ALICE) == [AssetBalance("BTC", 1, 0), AssetBalance("USDT", atoms("1000.5"), 0)]
    assert wallet.ledger_kinds() == ["DEPOSIT", "DEPOSIT"]


def test_a_withdrawal_beyond_available_is_refused_and_nothing_is_sent_to_the_writer(wallet: Wallet) -> None:
    wallet.send(Deposit, BOB, "USDT", "50")
    assert wallet.slot.current().try_lock(str(BOB), "USDT", atoms("20"))  # a pair locked 20 meanwhile
    with pytest.raises(InsufficientBalance):
        wallet.send(Withdraw, BOB, "USDT", "30.00000001")
    assert wallet.send(Withdraw, BOB, "USDT", "30") == AssetBalance("USDT", 0, atoms("20"))
    assert wallet.ledger_kinds() == ["DEPOSIT", "WITHDRAWAL"]


def test_a_deposit_to_an_unknown_user_or_a_malformed_asset_is_refused_without_touching_anything(
    wallet: Wallet,
) -> None:
    with pytest.raises(ValidationError, match="unknown user"):
        wallet.send(Deposit, 4242, "USDT", "1")
    with pytest.raises(ValidationError):
        wallet.send(Deposit, ALICE, "usdt", "1")
    assert wallet.ledger_kinds() == []
    assert wallet.send(Deposit, ALICE, "USDT", "1").available == atoms("1")  # the writer is fine


def test_a_restarted_wallet_loads_the_committed_balances_into_a_new_ledger_in_the_slot(
    wallet: Wallet,
) -> None:
    wallet.send(Deposit, ALICE, "USDT", "700")
    wallet.send(Deposit, BOB, "BTC", "3")
    wallet.send(Withdraw, BOB, "BTC", "1")
    first = wallet.slot.current()
    wallet.supervisor.restart_group("database", timeout=WAIT)
    second = wallet.slot.current()
    assert second is not first
    assert isinstance(second, Ledger)
    assert second.snapshot() == {(str(ALICE), "USDT"): (atoms("700"), 0), (str(BOB), "BTC"): (atoms("2"), 0)}
    assert wallet.balances(BOB) == [AssetBalance("BTC", atoms("2"), 0)]


def test_a_stopped_wallet_empties_the_slot_so_no_pair_can_use_its_ledger(wallet: Wallet) -> None:
    wallet.slot.current()
    wallet.supervisor.stop("wallet")
    with pytest.raises(EngineUnavailable):
        wallet.slot.current()
    wallet.supervisor.start("wallet")
    assert wallet.slot.current().balances(str(ALICE)) == []


def test_a_deposit_the_writer_cannot_take_is_undone_in_memory_and_refused(wallet: Wallet) -> None:
    wallet.send(Deposit, ALICE, "USDT", "5")
    wallet.supervisor.stop("writer")
    with pytest.raises(EngineUnavailable):
        wallet.send(Deposit, ALICE, "USDT", "10")
    assert wallet.balances(ALICE) == [AssetBalance("USDT", atoms("5"), 0)]
