"""Memory and database agree: a random session through a real engine with the Ledger as its gate, its facts
committed by the real row builder and batch writer, is rebuilt from PostgreSQL to the same books, the same
balances, and locks that match the live orders."""

from __future__ import annotations

import random

import msgspec
import psycopg
import pytest

from tests.engine.streams import StreamSettings, random_commands
from tradeengine.actors.ids import OrderIds
from tradeengine.actors.ledger import Ledger
from tradeengine.actors.wallet import LedgerSlot, LockJournal
from tradeengine.engine import (
    CancelAll,
    Command,
    DomainError,
    MatchingEngine,
    PlaceOrder,
    TradeExecuted,
    UnlimitedFunds,
)
from tradeengine.storage import create_pool
from tradeengine.storage.balances import load_balances
from tradeengine.storage.facts import Facts, PairFacts, Transfer
from tradeengine.storage.recovery import check_database_reserved_funds, load_pair_specs, load_pair_state
from tradeengine.storage.rows import build_rows
from tradeengine.storage.writer import write_batch

USERS = (1001, 1002, 1003, 1004)
START_US = 1_795_000_000_000_000  # 2026-11-18


class Session:
    """Commands with database ids, run through engine + ledger, their facts written in random batches."""

    def __init__(self, url: str, seed: int) -> None:
        self.conn = psycopg.connect(url)
        with self.conn.transaction():
            for user in USERS:
                self.conn.execute("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader')",
                                  (user, f"u{user}"))
        self.pool = create_pool(url, min_size=1, max_size=2)
        self.spec = next(spec for spec, _ in load_pair_specs(self.pool) if spec.symbol == "USDC-USDT")
        self.ledger = Ledger()
        self.journal = LockJournal(LedgerSlot(self.ledger))
        self.engine = MatchingEngine(self.spec, self.journal)
        self.now = START_US
        self.ids = OrderIds(clock_us=lambda: self.now)
        self.order_ids: dict[str, str] = {}
        self.pending: list[Facts] = []
        self.rng = random.Random(seed)
        self.trades = 0

    def close(self) -> None:
        self.pool.close()
        self.conn.close()

    def deposit(self, user: int, asset: str, atoms: int) -> None:
        self.now += 1
        self.ledger.deposit(str(user), asset, atoms)
        self.pending.append(Transfer("DEPOSIT", user, asset, atoms, self.now))

    def run(self, command: Command) -> None:
        self.now += 1000
        command = self._with_database_ids(command)
        self.journal.begin()
        try:
            events = self.engine.execute(command)
        except DomainError:
            self.journal.rollback()
            return
        self.trades += sum(isinstance(e, TradeExecuted) for e in events)
        self.ledger.apply(self.spec, events)
        self.pending.append(PairFacts(self.spec, events))
        if self.rng.random() < 0.3:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            write_batch(self.conn, build_rows(self.pending))
            self.pending = []

    def _with_database_ids(self, command: Command) -> Command:
        user = str(USERS[int(command.user_id[1:])])
        if isinstance(command, CancelAll):
            return msgspec.structs.replace(command, user_id=user, timestamp=self.now)
        if isinstance(command, PlaceOrder):  # created_at is the instant in the id: use the id's timestamp
            order_id, timestamp = self.ids.next()
            self.order_ids[command.order_id] = str(order_id)
            return msgspec.structs.replace(command, user_id=user, order_id=str(order_id), timestamp=timestamp)
        return msgspec.structs.replace(command, user_id=user, order_id=self.order_ids[command.order_id],
                                       timestamp=self.now)


@pytest.mark.parametrize("seed", [7, 2024])
def test_a_session_rebuilt_from_the_database_has_the_same_books_balances_and_matching_locks(
    migrated_pg_url: str, seed: int,
) -> None:
    session = Session(migrated_pg_url, seed)
    try:
        for user in USERS:
            session.deposit(user, "USDT", 500 * 10**8)
            session.deposit(user, "USDC", 500 * 10**8)
        settings = StreamSettings(users=len(USERS), mid=10_000, spread=6, max_quantity=60)
        for command in random_commands(session.spec, 400, seed=seed, settings=settings):
            session.run(command)
        session.flush()
        assert session.trades > 20

        in_memory = {key: value for key, value in session.ledger.snapshot().items() if value != (0, 0)}
        stored = {key: value for key, value in load_balances(session.pool).items() if value != (0, 0)}
        assert stored == in_memory

        state = load_pair_state(session.pool, session.spec)
        rebuilt = MatchingEngine(session.spec, UnlimitedFunds())
        rebuilt.restore(state.snapshots, sequence=state.sequence, last_price=state.last_price)
        engine = session.engine
        assert (state.sequence, state.last_price) == (engine.sequence, engine.last_price)
        assert rebuilt.depth(1000) == engine.depth(1000)
        assert rebuilt.counts() == engine.counts()
        for user in USERS:
            assert rebuilt.open_orders(str(user)) == engine.open_orders(str(user))
        assert check_database_reserved_funds(session.pool) == []
    finally:
        session.close()
