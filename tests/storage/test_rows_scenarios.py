"""Fact scenarios shared by the rows, writer and writer-actor tests, and checks that they are what they say.

`Scenario` runs real commands through a real `MatchingEngine` on the seeded BTC-USDT rules (maker fee
0.0008, taker fee 0.001), with order ids from `OrderIds` on a fake clock (so each order's created_at is
its command's timestamp), and collects one `PairFacts` per command and one `Transfer` per deposit.
Users are database ids 1001-1003 (`ALICE`, `BOB`, `CAROL`); `add_users` creates them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg

from tradeengine.actors.ids import OrderIds
from tradeengine.engine import (
    AmendOrder,
    CancelOrder,
    EngineEvent,
    MatchingEngine,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderType,
    PairSpec,
    PlaceOrder,
    Side,
    StopTriggered,
    TradeExecuted,
    UnlimitedFunds,
)
from tradeengine.storage.facts import Facts, PairFacts, Transfer
from tradeengine.storage.ids import timestamp_us_of

BTC_USDT = PairSpec(
    symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=Decimal("0.01"),
    lot_size=Decimal("0.00001"), min_quantity=Decimal("0.00001"), max_quantity=Decimal(9000),
    min_notional=Decimal(10), maker_fee=Decimal("0.0008"), taker_fee=Decimal("0.001"),
)
ETH_USDT = PairSpec(
    symbol="ETH-USDT", base_asset="ETH", quote_asset="USDT", tick_size=Decimal("0.01"),
    lot_size=Decimal("0.0001"), min_quantity=Decimal("0.0001"), max_quantity=Decimal(90000),
    min_notional=Decimal(10), maker_fee=Decimal("0.0008"), taker_fee=Decimal("0.001"),
)
ALICE, BOB, CAROL = 1001, 1002, 1003
START_US = 1_795_000_000_000_000  # 2026-11-18
ATOMS = 10**8


def add_users(conn: psycopg.Connection[Any], *user_ids: int) -> None:
    """Create trader rows with these ids (the balances and orders reference them)."""
    for user_id in user_ids or (ALICE, BOB, CAROL):
        conn.execute("INSERT INTO users (id, name, role) VALUES (%s, %s, 'trader') ON CONFLICT DO NOTHING",
                     (user_id, f"user{user_id}"))
    conn.commit()


class Scenario:
    """Commands on one pair, recorded as facts."""

    def __init__(self, spec: PairSpec = BTC_USDT, start_us: int = START_US, sequence: int = 0) -> None:
        self.spec = spec
        self.engine = MatchingEngine(spec, UnlimitedFunds(), sequence=sequence)
        self.now = start_us
        self.ids = OrderIds(clock_us=lambda: self.now)
        self.facts: list[Facts] = []

    def tick(self) -> int:
        self.now += 1000
        return self.now

    def deposit(self, user_id: int, asset: str, amount: str) -> Transfer:
        transfer = Transfer("DEPOSIT", user_id, asset, int(Decimal(amount) * ATOMS), self.tick())
        self.facts.append(transfer)
        return transfer

    def withdraw(self, user_id: int, asset: str, amount: str) -> Transfer:
        transfer = Transfer("WITHDRAWAL", user_id, asset, int(Decimal(amount) * ATOMS), self.tick())
        self.facts.append(transfer)
        return transfer

    def run(self, command: Any) -> list[EngineEvent]:
        events = self.engine.execute(command)
        self.facts.append(PairFacts(self.spec, events))
        return events

    def place(self, user_id: int, side: Side, quantity: str | None, price: str | None = None,
              order_type: OrderType = OrderType.LIMIT, **fields: Any) -> tuple[str, list[EngineEvent]]:
        self.tick()
        order_id, timestamp = self.ids.next()
        spec = self.spec
        command = PlaceOrder(
            order_id=str(order_id), user_id=str(user_id), side=side, order_type=order_type,
            quantity=None if quantity is None else spec.quantity_to_lots(Decimal(quantity)),
            price=None if price is None else spec.price_to_ticks(Decimal(price)), timestamp=timestamp,
            **fields,
        )
        return str(order_id), self.run(command)

    def cancel(self, order_id: str, user_id: int) -> list[EngineEvent]:
        return self.run(CancelOrder(order_id=order_id, user_id=str(user_id), timestamp=self.tick()))

    def amend(self, order_id: str, user_id: int, quantity: str | None = None,
              price: str | None = None) -> list[EngineEvent]:
        spec = self.spec
        return self.run(AmendOrder(
            order_id=order_id, user_id=str(user_id),
            quantity=None if quantity is None else spec.quantity_to_lots(Decimal(quantity)),
            price=None if price is None else spec.price_to_ticks(Decimal(price)), timestamp=self.tick(),
        ))


class FullDay:
    """Deposits, a resting sell, a crossing buy with fees, an amend, a cancel and a triggered stop.

    Afterwards: bob's sell (1 BTC @ 50000, amended to 50010) is PARTIALLY_FILLED 0.6; alice's buy 0.4
    @ 50100 is FILLED at 50000; alice's second buy 0.1 @ 50010 is FILLED; carol's resting buy 0.2 @
    49000 is CANCELLED; carol's STOP_LIMIT BUY 0.1 stop 50005 limit 50100 triggered at 50010 and FILLED.
    Three trades: 0.4 @ 50000, 0.1 @ 50010, 0.1 @ 50010. Last price 50010.
    """

    def __init__(self, scenario: Scenario | None = None) -> None:
        s = self.scenario = scenario if scenario is not None else Scenario()
        s.deposit(ALICE, "USDT", "100000")
        s.deposit(BOB, "BTC", "10")
        s.deposit(CAROL, "USDT", "100000")
        s.deposit(CAROL, "BTC", "1")
        self.bob_sell, _ = s.place(BOB, Side.SELL, "1", "50000")
        self.alice_buy, self.cross = s.place(ALICE, Side.BUY, "0.4", "50100")
        self.carol_stop, _ = s.place(CAROL, Side.BUY, "0.1", "50100", OrderType.STOP_LIMIT,
                                     stop_price=s.spec.price_to_ticks(Decimal("50005")))
        self.carol_rest, _ = s.place(CAROL, Side.BUY, "0.2", "49000")
        self.cancel = s.cancel(self.carol_rest, CAROL)
        self.amend = s.amend(self.bob_sell, BOB, price="50010")
        self.alice_buy2, self.trigger = s.place(ALICE, Side.BUY, "0.1", "50010")

    @property
    def facts(self) -> list[Facts]:
        return self.scenario.facts


def test_full_day_has_three_trades_a_cancel_an_amend_and_a_triggered_stop() -> None:
    day = FullDay()
    events = [e for f in day.facts if isinstance(f, PairFacts) for e in f.events]
    trades = [e for e in events if isinstance(e, TradeExecuted)]
    assert [(t.price, t.quantity) for t in trades] == [(5_000_000, 40_000), (5_001_000, 10_000),
                                                      (5_001_000, 10_000)]
    assert any(isinstance(e, OrderCancelled) and e.order_id == day.carol_rest for e in events)
    assert any(isinstance(e, OrderAmended) and e.requeued for e in day.amend)
    assert any(isinstance(e, StopTriggered) and e.order_id == day.carol_stop for e in day.trigger)
    assert all(t.buyer_fee > 0 and t.seller_fee > 0 for t in trades)


def test_scenario_order_ids_encode_their_command_timestamp() -> None:
    day = FullDay()
    for fact in day.facts:
        if isinstance(fact, PairFacts):
            for event in fact.events:
                if isinstance(event, OrderAccepted):
                    assert timestamp_us_of(int(event.order_id)) == event.timestamp
