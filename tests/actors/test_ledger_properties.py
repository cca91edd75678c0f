"""Property: random command streams through a real MatchingEngine with the Ledger as its funds gate.

After every command (and every deposit or withdrawal between them):
- per asset, the total of all balances equals deposits minus withdrawals;
- per user and asset, the locked balance equals what the user's live orders reserve (`required_lock`),
  i.e. `check_reserved_funds` finds nothing;
- a command the engine refuses (a DomainError) leaves every balance as it was once its locks are rolled
  back, as a pair actor does.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.streams import StreamSettings, random_commands
from tradeengine.actors.ledger import Ledger
from tradeengine.actors.wallet import LedgerSlot, LockJournal
from tradeengine.engine import DomainError, InsufficientBalance, MatchingEngine, PairSpec
from tradeengine.storage.recovery import check_reserved_funds

SPEC = PairSpec(
    symbol="ETH-USDT", base_asset="ETH", quote_asset="USDT", tick_size=Decimal("0.5"),
    lot_size=Decimal("0.01"), min_quantity=Decimal("0.01"), max_quantity=Decimal(100),
    maker_fee=Decimal("0.0007"), taker_fee=Decimal("0.0013"),
)
USERS = [f"u{n}" for n in range(4)]
ASSETS = ("ETH", "USDT")

transfers = st.lists(
    st.tuples(st.integers(0, 200), st.sampled_from(USERS), st.sampled_from(ASSETS),
              st.integers(1, 3 * 10**9), st.booleans()),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 200),
    funding=st.lists(st.integers(0, 10**11) | st.integers(10**9, 10**10), min_size=len(USERS) * 2,
                     max_size=len(USERS) * 2),
    moves=transfers,
)
def test_balances_are_conserved_and_locks_match_live_orders_after_every_command(
    seed: int, count: int, funding: list[int], moves: list[tuple[int, str, str, int, bool]],
) -> None:
    ledger = Ledger()
    deposited = dict.fromkeys(ASSETS, 0)
    for index, amount in enumerate(funding):
        if amount:
            asset = ASSETS[index % 2]
            ledger.deposit(USERS[index // 2], asset, amount)
            deposited[asset] += amount
    journal = LockJournal(LedgerSlot(ledger))
    engine = MatchingEngine(SPEC, journal)
    commands = random_commands(SPEC, count, seed=seed, settings=StreamSettings(users=len(USERS), mid=200))
    by_step: dict[int, list[tuple[str, str, int, bool]]] = {}
    for step, user, asset, amount, is_deposit in moves:
        by_step.setdefault(step, []).append((user, asset, amount, is_deposit))

    for step, command in enumerate(commands):
        for user, asset, amount, is_deposit in by_step.get(step, []):
            try:
                if is_deposit:
                    ledger.deposit(user, asset, amount)
                    deposited[asset] += amount
                else:
                    ledger.withdraw(user, asset, amount)
                    deposited[asset] -= amount
            except InsufficientBalance:
                pass
        before = ledger.snapshot()
        journal.begin()
        try:
            events = engine.execute(command)
        except DomainError:
            journal.rollback()
            assert ledger.snapshot() == before
            continue
        ledger.apply(SPEC, events)
        engine.check_invariants()
        for asset in ASSETS:
            assert ledger.totals(asset) == deposited[asset]
        live = [o.snapshot() for o in (*engine.book.orders.values(), *engine.stops.orders.values())]
        assert check_reserved_funds(ledger, [(SPEC, live)]) == []
        assert all(available >= 0 and locked >= 0 for available, locked in ledger.snapshot().values())
