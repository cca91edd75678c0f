"""Order vocabulary (side, type, time in force, self-trade prevention, reasons) and the live order.

`Order` is the core's mutable, slotted record of one live order; it never leaves the core. Callers see
`OrderSnapshot` (immutable) from the read API, and give snapshots back to rebuild a book on recovery.

Units: price and stop_price in ticks, quantity and filled in lots, cumulative_quote and locked in quote
(BUY) or base (SELL) atoms. `sequence` is the event sequence at which the order was accepted; `priority`
is the sequence at which it last joined the back of its price level; within a level, orders are in
priority order. From the events: priority = OrderAccepted.sequence, then StopTriggered.sequence when a stop
triggers, then OrderAmended.priority after an amend (unchanged unless `requeued`). Persist it to rebuild.

Memory: an Order is one object with 21 slots (about 210 bytes with its header); a resting order also costs
one entry in the book's id index; its links to its neighbours in the level's list and to the level itself
live in its own slots (no per-level dict).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Final

import msgspec

from .lifecycle import OrderStatus

if TYPE_CHECKING:
    from .book import Level


class Side(StrEnum):
    """BUY takes base for quote, SELL gives base for quote."""

    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    """How the order enters the book."""

    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP_LIMIT = "STOP_LIMIT"
    STOP_MARKET = "STOP_MARKET"


class TimeInForce(StrEnum):
    """How long the unfilled part of an order may live."""

    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class SelfTradePrevention(StrEnum):
    """What happens when the incoming order would trade with a resting order of the same user."""

    EXPIRE_TAKER = "EXPIRE_TAKER"
    EXPIRE_MAKER = "EXPIRE_MAKER"
    EXPIRE_BOTH = "EXPIRE_BOTH"
    NONE = "NONE"


class Reason(StrEnum):
    """Why an order ended REJECTED or EXPIRED (the API's reject_reason)."""

    POST_ONLY_WOULD_TAKE = "POST_ONLY_WOULD_TAKE"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    SELF_TRADE_PREVENTION = "SELF_TRADE_PREVENTION"
    FILL_OR_KILL_UNFILLED = "FILL_OR_KILL_UNFILLED"
    IMMEDIATE_OR_CANCEL = "IMMEDIATE_OR_CANCEL"


BUY: Final = Side.BUY
SELL: Final = Side.SELL
LIMIT: Final = OrderType.LIMIT
MARKET: Final = OrderType.MARKET
STOP_LIMIT: Final = OrderType.STOP_LIMIT
STOP_MARKET: Final = OrderType.STOP_MARKET
GTC: Final = TimeInForce.GTC
IOC: Final = TimeInForce.IOC
FOK: Final = TimeInForce.FOK
EXPIRE_TAKER: Final = SelfTradePrevention.EXPIRE_TAKER
EXPIRE_MAKER: Final = SelfTradePrevention.EXPIRE_MAKER
EXPIRE_BOTH: Final = SelfTradePrevention.EXPIRE_BOTH
STP_NONE: Final = SelfTradePrevention.NONE


class Order:
    """A live order inside the core (mutable; never handed out)."""

    __slots__ = (
        "client_order_id",
        "cumulative_quote",
        "filled",
        "level",
        "locked",
        "next",
        "order_id",
        "order_type",
        "post_only",
        "prev",
        "price",
        "priority",
        "quantity",
        "quote_quantity",
        "sequence",
        "side",
        "status",
        "stop_price",
        "stp",
        "time_in_force",
        "user_id",
    )

    def __init__(
        self,
        order_id: str,
        user_id: str,
        side: Side,
        order_type: OrderType,
        price: int | None,
        stop_price: int | None,
        quantity: int,
        quote_quantity: int | None,
        time_in_force: TimeInForce,
        post_only: bool,
        stp: SelfTradePrevention,
        client_order_id: str | None,
        status: OrderStatus,
        sequence: int,
    ) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.side = side
        self.order_type = order_type
        self.price = price
        self.stop_price = stop_price
        self.quantity = quantity
        self.quote_quantity = quote_quantity
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.stp = stp
        self.client_order_id = client_order_id
        self.status = status
        self.sequence = sequence
        self.priority = sequence
        self.filled = 0
        self.cumulative_quote = 0
        self.locked = 0
        self.prev: Order | None = None
        self.next: Order | None = None
        self.level: Level | None = None

    def __repr__(self) -> str:
        return (
            f"Order({self.order_id!r}, {self.user_id!r}, {self.side}, {self.order_type}, price={self.price},"
            f" qty={self.quantity}, filled={self.filled}, status={self.status}, locked={self.locked})"
        )

    @property
    def remaining(self) -> int:
        """Lots still to fill."""
        return self.quantity - self.filled

    def snapshot(self) -> OrderSnapshot:
        """Return an immutable copy of this order's state."""
        return OrderSnapshot(
            order_id=self.order_id,
            user_id=self.user_id,
            client_order_id=self.client_order_id,
            side=self.side,
            order_type=self.order_type,
            status=self.status,
            price=self.price,
            stop_price=self.stop_price,
            quantity=self.quantity,
            filled_quantity=self.filled,
            cumulative_quote=self.cumulative_quote,
            locked=self.locked,
            time_in_force=self.time_in_force,
            post_only=self.post_only,
            self_trade_prevention=self.stp,
            sequence=self.sequence,
            priority=self.priority,
        )


class OrderSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Immutable state of a live order: what the read API returns and what recovery takes back.

    On recovery `locked` is ignored and recomputed from the order's state (it is fully determined by it).
    """

    order_id: str
    user_id: str
    side: Side
    order_type: OrderType
    status: OrderStatus
    price: int | None
    stop_price: int | None
    quantity: int
    filled_quantity: int = 0
    cumulative_quote: int = 0
    locked: int = 0
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    self_trade_prevention: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER
    client_order_id: str | None = None
    sequence: int = 0
    priority: int = 0

    @property
    def remaining_quantity(self) -> int:
        """Lots still to fill."""
        return self.quantity - self.filled_quantity
