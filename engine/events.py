"""Facts out of the matching core (past tense). Immutable msgspec Structs, tagged for (de)serialisation.

Every event carries the pair's `sequence` (strictly increasing by one per event, continuing from the start
the engine was given) and the `timestamp` of the command that caused it. Units: ticks, lots, atoms.

Order facts carry the order's state *after* the change, enough for the persistence layer to write the
order row (status, filled, remaining, cumulative quote → average price) without reading anything back.

Funds facts (the core holds no balances; the wallet applies them):
- `FundsLocked`: available → locked for (user, asset). Emitted only after the funds gate said yes.
- `FundsReleased`: locked → available.
- `TradeExecuted` is also the settlement of the trade. Its implied balance deltas are:
    buyer:  quote locked −quote_amount;  base available +(base_amount − buyer_fee)
    seller: base locked −base_amount;    quote available +(quote_amount − seller_fee)
    fee account (`FEE_ACCOUNT`): base +buyer_fee, quote +seller_fee
  so every event moves money without creating or destroying any, per asset.
Trade ids: a trade is identified on its pair by the `sequence` of its `TradeExecuted` event; the
cross-pair id is `trade_id(symbol, sequence)` = "SYMBOL:SEQUENCE" (deterministic, no id source needed).
"""

from __future__ import annotations

import msgspec

from .lifecycle import OrderStatus
from .order import OrderType, Reason, SelfTradePrevention, Side, TimeInForce


class Event(msgspec.Struct, frozen=True, gc=False, tag=True):
    """Base of every fact: its per-pair sequence and its command's timestamp."""

    sequence: int
    timestamp: int


class OrderAccepted(Event, frozen=True, gc=False, tag=True):
    """A new order passed validation and got its funds; status is OPEN or PENDING_TRIGGER.

    For a MARKET BUY by quote, `quantity` is None and `quote_quantity` is the budget.
    """

    order_id: str
    user_id: str
    client_order_id: str | None
    side: Side
    order_type: OrderType
    status: OrderStatus
    price: int | None
    stop_price: int | None
    quantity: int | None
    quote_quantity: int | None
    time_in_force: TimeInForce
    post_only: bool
    self_trade_prevention: SelfTradePrevention


class OrderRejected(Event, frozen=True, gc=False, tag=True):
    """A new order was refused by an engine rule (post-only cross): stored as REJECTED, nothing locked."""

    order_id: str
    user_id: str
    client_order_id: str | None
    side: Side
    order_type: OrderType
    status: OrderStatus
    price: int | None
    stop_price: int | None
    quantity: int | None
    quote_quantity: int | None
    time_in_force: TimeInForce
    post_only: bool
    self_trade_prevention: SelfTradePrevention
    reason: Reason


class FundsLocked(Event, frozen=True, gc=False, tag=True):
    """The funds gate locked `amount` atoms of `asset` for the order (available → locked)."""

    order_id: str
    user_id: str
    asset: str
    amount: int


class FundsReleased(Event, frozen=True, gc=False, tag=True):
    """`amount` atoms of `asset` locked for the order are no longer needed (locked → available)."""

    order_id: str
    user_id: str
    asset: str
    amount: int


class TradeExecuted(Event, frozen=True, gc=False, tag=True):
    """A maker and a taker traded `quantity` lots at the maker's `price`; also the trade's settlement.

    The buyer_*/seller_* status, filled and cumulative_quote fields are each order's state after the trade.
    """

    price: int
    quantity: int
    base_amount: int
    quote_amount: int
    taker_side: Side
    buyer_order_id: str
    buyer_user_id: str
    seller_order_id: str
    seller_user_id: str
    buyer_fee: int
    seller_fee: int
    buyer_status: OrderStatus
    buyer_filled: int
    buyer_cumulative_quote: int
    seller_status: OrderStatus
    seller_filled: int
    seller_cumulative_quote: int

    def trade_id(self, symbol: str) -> str:
        """Return the trade's cross-pair id."""
        return trade_id(symbol, self.sequence)


class OrderCancelled(Event, frozen=True, gc=False, tag=True):
    """The owner cancelled the order (or all their orders); status CANCELLED."""

    order_id: str
    user_id: str
    filled_quantity: int
    remaining_quantity: int
    cumulative_quote: int


class OrderExpired(Event, frozen=True, gc=False, tag=True):
    """The order ended EXPIRED for `reason` (IOC/FOK remainder, self-trade prevention, funds refused)."""

    order_id: str
    user_id: str
    filled_quantity: int
    remaining_quantity: int
    cumulative_quote: int
    reason: Reason


class StopTriggered(Event, frozen=True, gc=False, tag=True):
    """The last trade price reached the stop; the order enters as its LIMIT/MARKET form, status OPEN."""

    order_id: str
    user_id: str
    stop_price: int
    last_price: int


class OrderAmended(Event, frozen=True, gc=False, tag=True):
    """The resting order now has this price and total quantity; `requeued` tells if it lost its place."""

    order_id: str
    user_id: str
    price: int
    quantity: int
    remaining_quantity: int
    status: OrderStatus
    requeued: bool
    priority: int


EngineEvent = (
    OrderAccepted
    | OrderRejected
    | FundsLocked
    | FundsReleased
    | TradeExecuted
    | OrderCancelled
    | OrderExpired
    | StopTriggered
    | OrderAmended
)


def trade_id(symbol: str, sequence: int) -> str:
    """Return the cross-pair trade id of the TradeExecuted event with this sequence on this pair."""
    return f"{symbol}:{sequence}"


_encoder = msgspec.msgpack.Encoder()


def encode_events(events: list[EngineEvent]) -> bytes:
    """Encode events to msgpack bytes (stable: same events → same bytes)."""
    return _encoder.encode(events)


def decode_events(payload: bytes) -> list[EngineEvent]:
    """Decode bytes written by encode_events."""
    return msgspec.msgpack.decode(payload, type=list[EngineEvent])
