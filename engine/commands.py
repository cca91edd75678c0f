"""Commands into one pair's matching core (verbs). Immutable; integer units; time and ids from outside.

Units: price / stop_price in ticks, quantity in lots, quote_quantity in quote atoms (1e-8), timestamp in
microseconds since the Unix epoch (only copied onto events, never interpreted). Build them from API
Decimals with `PairSpec.price_to_ticks` / `quantity_to_lots` / `amount_to_atoms`, which raise the
field's domain error; the core then checks the integer rules (required / forbidden fields, limits).
"""

from __future__ import annotations

import msgspec

from .order import OrderType, SelfTradePrevention, Side, TimeInForce


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Place a new order; `time_in_force=None` means GTC for LIMIT/STOP_LIMIT and IOC for market types."""

    order_id: str
    user_id: str
    side: Side
    order_type: OrderType
    quantity: int | None = None
    price: int | None = None
    stop_price: int | None = None
    quote_quantity: int | None = None
    time_in_force: TimeInForce | None = None
    post_only: bool = False
    self_trade_prevention: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER
    client_order_id: str | None = None
    timestamp: int = 0


class CancelOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Cancel one live order of its owner (a resting order or a pending stop)."""

    order_id: str
    user_id: str
    timestamp: int = 0


class AmendOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Change the total quantity and/or the price of a resting order of its owner."""

    order_id: str
    user_id: str
    quantity: int | None = None
    price: int | None = None
    timestamp: int = 0


class CancelAll(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Cancel every live order of one user on this pair (pending stops too unless include_stops=False)."""

    user_id: str
    include_stops: bool = True
    timestamp: int = 0


Command = PlaceOrder | CancelOrder | AmendOrder | CancelAll
