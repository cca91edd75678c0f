"""Differential test: the engine and the plain reference matcher agree on seeded random streams.

Per command they must agree on the outcome (error code or none), the trades (price, quantity, buyer,
seller, taker side, both fees, in order) and the funds asked for (user, asset, atoms, in order); every
500 commands and at the end, on the status of every order and on the whole book (price-time order of
resting orders and the set of pending stops). 25 streams × 4 000 commands = 100 000 commands, across all
order types, time-in-force values, post-only, the four STP modes, stops, amends, cancels and cancel-alls,
with a funds gate that refuses about one lock in ten.
"""

from __future__ import annotations

import zlib
from decimal import Decimal

import pytest

from tests.engine.reference import ReferenceMatcher, Trade
from tests.engine.streams import StreamSettings, random_commands
from tradeengine.engine import (
    DomainError,
    EngineEvent,
    MatchingEngine,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderStatus,
    PairSpec,
    StopTriggered,
    TradeExecuted,
)

SPEC = PairSpec(
    symbol="BTC-USDT",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.00001"),
    min_quantity=Decimal("0.00001"),
    max_quantity=Decimal(1),
    min_notional=Decimal("0.00001"),
    maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.0015"),
)
STREAMS = 25
COMMANDS_PER_STREAM = 4_000


class RecordingGate:
    """A stateless, deterministic funds gate that refuses ~10 % of locks and records every question."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int]] = []

    def try_lock(self, user_id: str, asset: str, amount: int) -> bool:
        self.asked.append((user_id, asset, amount))
        return zlib.crc32(f"{user_id}/{asset}/{amount}".encode()) % 10 != 0


def engine_trades(events: list[EngineEvent]) -> list[Trade]:
    return [
        (e.price, e.quantity, e.buyer_order_id, e.seller_order_id, e.taker_side, e.buyer_fee, e.seller_fee)
        for e in events
        if isinstance(e, TradeExecuted)
    ]


def track_statuses(events: list[EngineEvent], statuses: dict[str, OrderStatus]) -> None:
    for e in events:
        if isinstance(e, (OrderAccepted, OrderRejected)):
            statuses[e.order_id] = e.status
        elif isinstance(e, TradeExecuted):
            statuses[e.buyer_order_id] = e.buyer_status
            statuses[e.seller_order_id] = e.seller_status
        elif isinstance(e, OrderCancelled):
            statuses[e.order_id] = OrderStatus.CANCELLED
        elif isinstance(e, OrderExpired):
            statuses[e.order_id] = OrderStatus.EXPIRED
        elif isinstance(e, StopTriggered):
            statuses[e.order_id] = OrderStatus.OPEN
        elif isinstance(e, OrderAmended):
            statuses[e.order_id] = e.status


def engine_book(engine: MatchingEngine) -> list[tuple[object, int, str, int]]:
    rows = []
    for levels in (reversed(engine.book.bids.values()), engine.book.asks.values()):
        for level in levels:
            rows.extend((o.side, o.price, o.order_id, o.quantity - o.filled) for o in level)
    return rows  # type: ignore[return-value]


def settings_for(seed: int) -> StreamSettings:
    return StreamSettings(users=2 + seed % 5, spread=3 + seed % 15, max_quantity=4 + seed % 9)


@pytest.mark.parametrize("seed", range(STREAMS))
def test_engine_and_reference_agree_on_a_random_stream(seed: int) -> None:
    commands = random_commands(SPEC, COMMANDS_PER_STREAM, seed=seed, settings=settings_for(seed))
    engine_gate, reference_gate = RecordingGate(), RecordingGate()
    engine = MatchingEngine(SPEC, engine_gate)
    reference = ReferenceMatcher(SPEC, reference_gate)
    statuses: dict[str, OrderStatus] = {}
    trade_count = 0
    for step, command in enumerate(commands, 1):
        try:
            events = engine.execute(command)
            outcome: tuple[str | None, list[Trade]] = (None, engine_trades(events))
            track_statuses(events, statuses)
        except DomainError as exc:
            outcome = (exc.code, [])
        expected = reference.execute(command)
        assert outcome == expected, f"step {step}: {command}"
        assert engine_gate.asked == reference_gate.asked, f"step {step}: {command}"
        trade_count += len(outcome[1])
        if step % 500 == 0 or step == len(commands):
            engine.check_invariants()
            assert statuses == reference.statuses(), f"statuses differ after step {step}"
            assert engine_book(engine) == reference.book(), f"books differ after step {step}"
            assert set(engine.stops.orders) == {o.order_id for o in reference.stops}
    assert trade_count > 300
