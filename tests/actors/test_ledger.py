"""The built-in wallet's Ledger: the funds gate, facts of a real engine session, transfers, invariants."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tradeengine.actors.ledger import (
    MAX_TRANSFER_ATOMS,
    AssetBalance,
    Ledger,
    LedgerInvariantViolation,
    NegativeBalance,
)
from tradeengine.actors.wallet import LedgerSlot, LockJournal
from tradeengine.engine import (
    FEE_ACCOUNT,
    CancelOrder,
    Command,
    EngineEvent,
    FundsLocked,
    FundsReleased,
    InsufficientBalance,
    MatchingEngine,
    OrderType,
    PairSpec,
    PlaceOrder,
    Side,
    StopTriggered,
    TradeExecuted,
    ValidationError,
)
from tradeengine.engine.lifecycle import OrderStatus

SPEC = PairSpec(
    symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=Decimal(1), lot_size=Decimal(1),
    min_quantity=Decimal(1), max_quantity=Decimal(1000), maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.002"),
)
ALICE, BOB, CAROL = "1001", "1002", "1003"


def atoms(amount: str) -> int:
    """Return a decimal amount in atoms (1e-8)."""
    return int(Decimal(amount) * 10**8)


def rich_ledger() -> Ledger:
    ledger = Ledger()
    ledger.deposit(ALICE, "USDT", atoms("1000"))
    ledger.deposit(BOB, "BTC", atoms("10"))
    return ledger


# -- the funds gate -------------------------------------------------------------------------------------


def test_try_lock_grants_and_moves_available_to_locked() -> None:
    ledger = rich_ledger()
    assert ledger.try_lock(ALICE, "USDT", atoms("250"))
    assert ledger.balance(ALICE, "USDT") == AssetBalance("USDT", atoms("750"), atoms("250"))
    assert ledger.totals("USDT") == atoms("1000")


def test_try_lock_refuses_more_than_available_and_changes_nothing() -> None:
    ledger = rich_ledger()
    before = ledger.snapshot()
    assert not ledger.try_lock(ALICE, "USDT", atoms("1000") + 1)
    assert not ledger.try_lock(ALICE, "BTC", 1)  # never held
    assert not ledger.try_lock("9999", "USDT", 1)  # unknown user
    assert ledger.snapshot() == before


def test_a_lock_of_zero_or_less_is_a_bug_and_raises_a_ledger_invariant_violation() -> None:
    with pytest.raises(LedgerInvariantViolation):
        rich_ledger().try_lock(ALICE, "USDT", 0)


def test_release_gives_a_lock_back_and_refuses_to_release_more_than_is_locked() -> None:
    ledger = rich_ledger()
    ledger.try_lock(ALICE, "USDT", 500)
    ledger.release(ALICE, "USDT", 200)
    assert ledger.balance(ALICE, "USDT") == AssetBalance("USDT", atoms("1000") - 300, 300)
    with pytest.raises(NegativeBalance):
        ledger.release(ALICE, "USDT", 301)
    assert ledger.balance(ALICE, "USDT") == AssetBalance("USDT", atoms("1000") - 300, 300)


def test_a_ledger_refuses_to_start_from_a_negative_or_fractional_balance() -> None:
    with pytest.raises(NegativeBalance):
        Ledger({(ALICE, "USDT"): (-1, 0)})
    with pytest.raises(NegativeBalance):
        Ledger({(ALICE, "USDT"): (0, 0.5)})  # type: ignore[dict-item]
    assert Ledger({(ALICE, "USDT"): (3, 4), (ALICE, "BTC"): (1, 0)}).balances(ALICE) == [
        AssetBalance("BTC", 1, 0), AssetBalance("USDT", 3, 4)]


# -- transfers ------------------------------------------------------------------------------------------


def test_withdraw_of_more_than_available_is_refused_with_insufficient_balance_and_changes_nothing() -> None:
    ledger = rich_ledger()
    ledger.try_lock(ALICE, "USDT", atoms("600"))
    before = ledger.snapshot()
    with pytest.raises(InsufficientBalance):
        ledger.withdraw(ALICE, "USDT", atoms("400") + 1)  # 1000 held, but 600 of it locked
    with pytest.raises(InsufficientBalance):
        ledger.withdraw(CAROL, "USDT", 1)
    assert ledger.snapshot() == before
    assert ledger.withdraw(ALICE, "USDT", atoms("400")) == AssetBalance("USDT", 0, atoms("600"))


@pytest.mark.parametrize(("asset", "amount"), [("usdt", 1), ("U", 1), ("USDT", 0), ("USDT", -5),
                                               ("USDT", 10**38), ("USDT", True)])
def test_a_transfer_of_a_malformed_asset_or_amount_is_a_validation_error(asset: str, amount: int) -> None:
    ledger = rich_ledger()
    with pytest.raises(ValidationError):
        ledger.deposit(ALICE, asset, amount)
    with pytest.raises(ValidationError):
        ledger.withdraw(ALICE, asset, amount)


def test_no_deposit_takes_an_assets_total_past_what_a_balance_can_hold() -> None:
    # Every balance is part of its asset's total, so a bounded total keeps every balance inside
    # NUMERIC(38,8), whatever trades move later: a commit never fails on an overflow.
    ledger = rich_ledger()
    total = ledger.totals("USDT")
    ledger.deposit(CAROL, "USDT", MAX_TRANSFER_ATOMS - total)  # up to the limit exactly
    before = ledger.snapshot()
    with pytest.raises(ValidationError, match="the most a balance can hold") as refused:
        ledger.deposit(ALICE, "USDT", 1)
    assert refused.value.field == "amount" and ledger.snapshot() == before
    ledger.withdraw(CAROL, "USDT", 5)  # a withdrawal makes room again
    ledger.deposit(ALICE, "USDT", 5)
    assert ledger.totals("USDT") == MAX_TRANSFER_ATOMS
    with pytest.raises(ValidationError):  # a ledger loaded with that total knows it too
        Ledger(ledger.snapshot()).deposit(ALICE, "USDT", 1)

    def writer_gone(balance: AssetBalance) -> None:
        raise RuntimeError("writer gone")

    with pytest.raises(RuntimeError):  # a withdrawal undone leaves the total as it was
        ledger.withdraw(CAROL, "USDT", 5, then=writer_gone)
    with pytest.raises(ValidationError):
        ledger.deposit(ALICE, "USDT", 1)


def test_the_then_callback_runs_with_the_new_balance_and_undoes_the_movement_when_it_fails() -> None:
    ledger = rich_ledger()
    seen: list[AssetBalance] = []
    ledger.deposit(CAROL, "USDT", 70, then=seen.append)
    assert seen == [AssetBalance("USDT", 70, 0)]

    def writer_gone(balance: AssetBalance) -> None:
        raise RuntimeError("writer gone")

    before = ledger.snapshot()
    with pytest.raises(RuntimeError):
        ledger.withdraw(CAROL, "USDT", 30, then=writer_gone)
    with pytest.raises(RuntimeError):
        ledger.deposit(CAROL, "USDT", 30, then=writer_gone)
    assert ledger.snapshot() == before


# -- facts of a real engine session ---------------------------------------------------------------------


class Session:
    """A real MatchingEngine with the Ledger as its gate; every command's facts are applied."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.engine = MatchingEngine(SPEC, ledger)
        self.ids = 0
        self.deposited: dict[str, int] = {}
        self.events: list[EngineEvent] = []

    def deposit(self, user: str, asset: str, amount: str) -> None:
        self.ledger.deposit(user, asset, atoms(amount))
        self.deposited[asset] = self.deposited.get(asset, 0) + atoms(amount)

    def withdraw(self, user: str, asset: str, amount: str) -> None:
        self.ledger.withdraw(user, asset, atoms(amount))
        self.deposited[asset] -= atoms(amount)

    def run(self, command: Command) -> list[EngineEvent]:
        events = self.engine.execute(command)
        self.ledger.apply(SPEC, events)
        self.engine.check_invariants()
        self.events.extend(events)
        return events

    def place(self, user: str, side: Side, order_type: OrderType = OrderType.LIMIT, **fields: object) -> str:
        self.ids += 1
        order_id = str(self.ids)
        self.run(PlaceOrder(order_id=order_id, user_id=user, side=side, order_type=order_type,
                            timestamp=self.ids, **fields))  # type: ignore[arg-type]
        return order_id

    def balance(self, user: str, asset: str) -> tuple[str, str]:
        available, locked = self.ledger.balance(user, asset)[1:]
        return (str(Decimal(available) / 10**8), str(Decimal(locked) / 10**8))


def test_a_real_engine_session_leaves_exactly_the_balances_the_money_rules_give() -> None:
    session = Session(Ledger())
    session.deposit(ALICE, "USDT", "10000")
    session.deposit(BOB, "BTC", "10")
    session.deposit(CAROL, "USDT", "5000")

    # bob rests 2 BTC at 100: 2 BTC locked
    session.place(BOB, Side.SELL, quantity=2, price=100)
    assert session.balance(BOB, "BTC") == ("8", "2")
    # alice crosses with 1 BTC at up to 105: locks 105, pays 100 at bob's price, the 5 come back at once;
    # taker fee 0.2% of 1 BTC, maker fee 0.1% of 100 USDT
    session.place(ALICE, Side.BUY, quantity=1, price=105)
    assert session.balance(ALICE, "USDT") == ("9900", "0")
    assert session.balance(ALICE, "BTC") == ("0.998", "0")
    assert session.balance(BOB, "USDT") == ("99.9", "0")
    assert session.balance(BOB, "BTC") == ("8", "1")
    # a resting bid and its cancel: 90 locked, then released
    bid = session.place(ALICE, Side.BUY, quantity=1, price=90)
    assert session.balance(ALICE, "USDT") == ("9810", "90")
    session.run(CancelOrder(order_id=bid, user_id=ALICE, timestamp=99))
    assert session.balance(ALICE, "USDT") == ("9900", "0")
    # carol's market buy of 1 BTC locks exactly what it spends against the book (100) and takes it
    session.place(CAROL, Side.BUY, OrderType.MARKET, quantity=1)
    assert session.balance(CAROL, "USDT") == ("4900", "0")
    assert session.balance(CAROL, "BTC") == ("0.998", "0")
    assert session.balance(BOB, "BTC") == ("8", "0")
    assert session.balance(BOB, "USDT") == ("199.8", "0")
    # a stop: bob's STOP_LIMIT SELL 1 @ 94 (stop 95) locks its BTC while pending
    session.place(BOB, Side.SELL, OrderType.STOP_LIMIT, quantity=1, price=94, stop_price=95)
    assert session.balance(BOB, "BTC") == ("7", "1")
    session.place(ALICE, Side.BUY, quantity=2, price=95)
    assert session.balance(ALICE, "USDT") == ("9710", "190")
    # bob sells 1 at 95: trades at 95 (bob taker), the last price reaches the stop, which triggers and
    # sells into alice's remaining bid at 95 in the same command
    session.place(BOB, Side.SELL, quantity=1, price=95)
    assert sum(isinstance(e, StopTriggered) for e in session.events) == 1
    assert sum(isinstance(e, TradeExecuted) for e in session.events) == 4
    assert session.balance(ALICE, "USDT") == ("9710", "0")
    assert session.balance(ALICE, "BTC") == ("2.996", "0")  # 0.998 + 2 × (1 − 0.001)
    assert session.balance(BOB, "BTC") == ("6", "0")
    assert session.balance(BOB, "USDT") == ("389.42", "0")  # 199.8 + 2 × (95 − 0.19)
    assert session.balance(FEE_ACCOUNT, "BTC") == ("0.006", "0")  # 0.002 + 0.002 + 0.001 + 0.001
    assert session.balance(FEE_ACCOUNT, "USDT") == ("0.58", "0")  # 0.1 + 0.1 + 0.19 + 0.19
    session.withdraw(BOB, "USDT", "100")
    assert session.balance(BOB, "USDT") == ("289.42", "0")

    for asset in ("BTC", "USDT"):
        assert session.ledger.totals(asset) == session.deposited[asset]
    assert session.deposited == {"BTC": atoms("10"), "USDT": atoms("14900")}


def test_a_market_buy_by_quote_and_a_stop_market_buy_lock_what_they_spend_and_release_the_rest() -> None:
    session = Session(Ledger())
    session.deposit(BOB, "BTC", "5")
    session.deposit(CAROL, "USDT", "1000")
    session.place(BOB, Side.SELL, quantity=1, price=100)
    session.place(BOB, Side.SELL, quantity=2, price=110)
    # STOP_MARKET BUY locks nothing while pending
    session.place(CAROL, Side.BUY, OrderType.STOP_MARKET, quantity=1, stop_price=100)
    assert session.balance(CAROL, "USDT") == ("1000", "0")
    # a market buy with a 150 budget buys 1 at 100 (the next lot would cost 110): locks and spends 100;
    # its trade at 100 triggers the stop, which then locks and spends 110 for its lot
    session.place(CAROL, Side.BUY, OrderType.MARKET, quote_quantity=atoms("150"))
    assert sum(isinstance(e, StopTriggered) for e in session.events) == 1
    assert session.balance(CAROL, "USDT") == ("790", "0")
    assert session.balance(CAROL, "BTC") == ("1.996", "0")
    assert session.balance(BOB, "BTC") == ("2", "1")
    assert session.balance(BOB, "USDT") == ("209.79", "0")  # 100 − 0.1 + 110 − 0.11
    assert session.balance(FEE_ACCOUNT, "BTC") == ("0.004", "0")
    assert session.balance(FEE_ACCOUNT, "USDT") == ("0.21", "0")
    for asset in ("BTC", "USDT"):
        assert session.ledger.totals(asset) == session.deposited[asset]


def test_applying_facts_that_would_overdraw_a_lock_raises_negative_balance_and_changes_nothing() -> None:
    session = Session(Ledger())
    session.deposit(BOB, "BTC", "3")
    order = session.place(BOB, Side.SELL, quantity=2, price=100)
    before = session.ledger.snapshot()
    released = FundsReleased(9, 9, order, BOB, "BTC", atoms("2"))
    twice = FundsReleased(10, 9, order, BOB, "BTC", atoms("2"))
    with pytest.raises(NegativeBalance):
        session.ledger.apply(SPEC, [released, twice])  # the first alone would be fine: all or nothing
    assert session.ledger.snapshot() == before


def test_funds_locked_facts_are_not_applied_again() -> None:
    ledger = rich_ledger()
    ledger.apply(SPEC, [FundsLocked(1, 1, "1", ALICE, "USDT", atoms("10"))])
    assert ledger.balance(ALICE, "USDT") == AssetBalance("USDT", atoms("1000"), 0)


# -- a crashed command gives its locks back -------------------------------------------------------------


def test_rolling_back_a_crashed_command_restores_the_exact_balances() -> None:
    ledger = rich_ledger()
    slot = LedgerSlot(ledger)
    journal = LockJournal(slot)
    engine = MatchingEngine(SPEC, journal)
    journal.begin()
    engine.execute(PlaceOrder(order_id="1", user_id=BOB, side=Side.SELL, order_type=OrderType.LIMIT,
                              quantity=3, price=100))
    journal.begin()  # the first command committed; the second one crashes before its facts leave
    before = ledger.snapshot()
    engine.execute(PlaceOrder(order_id="2", user_id=ALICE, side=Side.BUY, order_type=OrderType.LIMIT,
                              quantity=2, price=104))
    assert journal.granted == [(ALICE, "USDT", atoms("208"))]
    assert ledger.snapshot() != before
    journal.rollback()
    assert ledger.snapshot() == before
    assert journal.granted == []


def test_a_rollback_gives_each_lock_back_to_the_ledger_that_granted_it() -> None:
    old, new = rich_ledger(), rich_ledger()
    slot = LedgerSlot(old)
    journal = LockJournal(slot)
    journal.begin()
    assert journal.try_lock(ALICE, "USDT", 100)
    slot.install(new)
    assert journal.try_lock(ALICE, "USDT", 7)
    assert not journal.try_lock(ALICE, "USDT", atoms("5000"))
    journal.rollback()
    assert old.balance(ALICE, "USDT") == new.balance(ALICE, "USDT") == AssetBalance("USDT", atoms("1000"), 0)


def test_an_empty_slot_refuses_to_serve_a_stale_or_missing_ledger() -> None:
    ledger = rich_ledger()
    slot = LedgerSlot()
    with pytest.raises(Exception, match="wallet is not running"):
        slot.current()
    slot.install(ledger)
    assert slot.current() is ledger
    slot.vacate(Ledger())  # a late stop of another incarnation leaves the current one alone
    assert slot.current() is ledger
    slot.vacate(ledger)
    with pytest.raises(Exception, match="wallet is not running"):
        LockJournal(slot).try_lock(ALICE, "USDT", 1)


# -- concurrency ----------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _trade(buyer: str, seller: str, lots: int, price: int, sequence: int) -> TradeExecuted:
    base = lots * SPEC.base_atoms_per_lot
    quote = price * lots * SPEC.quote_atoms_per_tick_lot
    status = OrderStatus.FILLED
    return TradeExecuted(
        sequence, 0, price, lots, base, quote, Side.BUY, "b", buyer, "s", seller,
        SPEC.fee_atoms(base, maker=False), SPEC.fee_atoms(quote, maker=True),
        status, lots, quote, status, lots, quote,
    )


@pytest.mark.usefixtures("fast_switching")
def test_many_threads_locking_settling_and_releasing_never_lose_or_create_an_atom() -> None:
    users = [str(2000 + n) for n in range(6)]
    ledger = Ledger({(user, asset): (atoms("100"), 0) for user in users for asset in ("BTC", "USDT")})
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for step in range(1500):
                buyer, seller = rng.sample(users, 2)
                lots, price = rng.randint(1, 3), rng.randint(1, 20)
                quote = price * lots * SPEC.quote_atoms_per_tick_lot
                base = lots * SPEC.base_atoms_per_lot
                paid = ledger.try_lock(buyer, "USDT", quote)
                sold = ledger.try_lock(seller, "BTC", base)
                events: list[EngineEvent] = []
                if paid and sold:
                    events.append(_trade(buyer, seller, lots, price, step))
                else:
                    if paid:
                        events.append(FundsReleased(step, 0, "b", buyer, "USDT", quote))
                    if sold:
                        events.append(FundsReleased(step, 0, "s", seller, "BTC", base))
                ledger.apply(SPEC, events)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for asset in ("BTC", "USDT"):
        assert ledger.totals(asset) == len(users) * atoms("100")
    snapshot = ledger.snapshot()
    assert all(locked == 0 and available >= 0 for available, locked in snapshot.values())
    assert snapshot[(FEE_ACCOUNT, "BTC")][0] > 0
