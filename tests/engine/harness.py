"""A test harness: an engine on a simple pair, a real-balance ledger as its funds gate, terse builders.

Every command goes through `Harness.run`, which applies the facts to the ledger (money rules asserted) and
calls `check_invariants()` after the step. Prices are whole ticks of 1 USDT and quantities whole lots of
1 BTC, so `buy(10, 100)` reads "buy 10 BTC at 100 USDT".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.engine.ledger import Ledger, RichLedger
from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    EngineEvent,
    MatchingEngine,
    OrderType,
    PairSpec,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeExecuted,
)

SIMPLE_SPEC = PairSpec(
    symbol="BTC-USDT",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal(1),
    lot_size=Decimal(1),
    min_quantity=Decimal(1),
    max_quantity=Decimal(1000),
    min_notional=Decimal(0),
    maker_fee=Decimal("0.001"),
    taker_fee=Decimal("0.002"),
)
ATOMS = 10**8


class Harness:
    """One engine, one ledger, and a counter for order ids."""

    def __init__(
        self, spec: PairSpec = SIMPLE_SPEC, ledger: Ledger | None = None, **engine_args: Any
    ) -> None:
        self.spec = spec
        self.ledger = ledger if ledger is not None else RichLedger(spec)
        self.engine = MatchingEngine(spec, self.ledger, **engine_args)
        self.ids = 0
        self.clock = 1_000_000

    def run(self, command: Command) -> list[EngineEvent]:
        """Execute, apply the facts to the ledger, check invariants."""
        events = self.engine.execute(command)
        self.ledger.apply(events)
        self.engine.check_invariants()
        return events

    def order(self, side: Side, order_type: OrderType, user: str = "alice", **fields: Any) -> PlaceOrder:
        """Build a PlaceOrder with a fresh id (or fields['order_id'])."""
        self.ids += 1
        self.clock += 1
        fields.setdefault("order_id", f"o{self.ids}")
        return PlaceOrder(side=side, order_type=order_type, user_id=user, timestamp=self.clock, **fields)

    def buy(self, quantity: int, price: int, user: str = "alice", **fields: Any) -> list[EngineEvent]:
        """Place a LIMIT BUY."""
        return self.run(self.order(Side.BUY, OrderType.LIMIT, user, quantity=quantity, price=price, **fields))

    def sell(self, quantity: int, price: int, user: str = "bob", **fields: Any) -> list[EngineEvent]:
        """Place a LIMIT SELL."""
        return self.run(
            self.order(Side.SELL, OrderType.LIMIT, user, quantity=quantity, price=price, **fields)
        )

    def market(self, side: Side, user: str = "carol", **fields: Any) -> list[EngineEvent]:
        """Place a MARKET order."""
        return self.run(self.order(side, OrderType.MARKET, user, **fields))

    def stop(self, side: Side, stop_price: int, user: str = "dave", **fields: Any) -> list[EngineEvent]:
        """Place a STOP_LIMIT (if a price is given) or STOP_MARKET order."""
        order_type = OrderType.STOP_LIMIT if "price" in fields else OrderType.STOP_MARKET
        return self.run(self.order(side, order_type, user, stop_price=stop_price, **fields))

    def cancel(self, order_id: str, user: str) -> list[EngineEvent]:
        """Cancel one order."""
        return self.run(CancelOrder(order_id=order_id, user_id=user, timestamp=self.clock))

    def amend(self, order_id: str, user: str, **fields: Any) -> list[EngineEvent]:
        """Amend one order."""
        return self.run(AmendOrder(order_id=order_id, user_id=user, timestamp=self.clock, **fields))

    def cancel_all(self, user: str, include_stops: bool = True) -> list[EngineEvent]:
        """Cancel all of a user's orders."""
        return self.run(CancelAll(user_id=user, include_stops=include_stops, timestamp=self.clock))

    def status(self, order_id: str) -> str:
        """Return an order's latest status as the facts tell it."""
        return self.ledger.statuses[order_id]


def trades(events: list[EngineEvent]) -> list[tuple[int, int, str, str]]:
    """Return (price, quantity, buyer order, seller order) of each trade."""
    return [
        (e.price, e.quantity, e.buyer_order_id, e.seller_order_id)
        for e in events
        if isinstance(e, TradeExecuted)
    ]


def of_type(events: list[EngineEvent], kind: type) -> list[Any]:
    """Return the events of one type."""
    return [e for e in events if isinstance(e, kind)]


__all__ = [
    "ATOMS",
    "SIMPLE_SPEC",
    "Harness",
    "SelfTradePrevention",
    "Side",
    "TimeInForce",
    "of_type",
    "trades",
]
