"""Integer-form validation of new orders and amends against a pair's rules.

Runs before anything changes: a command that fails here raises a `DomainError` naming the field at fault
and leaves the engine untouched (no sequence number consumed, no funds asked for). Decimal-form checks
(tick and lot grid) happen earlier, when the edge converts Decimals with `PairSpec`.
"""

from __future__ import annotations

import re

from .commands import AmendOrder, PlaceOrder
from .errors import (
    NotionalTooSmall,
    PriceNotAllowed,
    PriceRequired,
    QuantityTooLarge,
    QuantityTooSmall,
    StopPriceRequired,
    ValidationError,
)
from .order import BUY, GTC, IOC, LIMIT, MARKET, STOP_LIMIT, STOP_MARKET, TimeInForce
from .pair import PairSpec
from .units import format_decimal

CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""A client order id, whole (``fullmatch``), as API.md and the database's CHECK have it."""


def validate_place(spec: PairSpec, command: PlaceOrder) -> TimeInForce:
    """Check a PlaceOrder against the pair's rules and return its effective time in force."""
    order_type = command.order_type
    is_limit = order_type is LIMIT or order_type is STOP_LIMIT
    if not command.order_id or not command.user_id:
        raise ValidationError("order_id and user_id are required")
    client_order_id = command.client_order_id
    if client_order_id is not None and CLIENT_ORDER_ID.fullmatch(client_order_id) is None:
        raise ValidationError("client_order_id must be 1 to 64 characters of A-Z, a-z, 0-9 and . _ : -",
                              field="client_order_id")
    _check_prices(command, is_limit)
    if command.quote_quantity is not None:
        _check_quote_quantity(spec, command)
    else:
        check_quantity(spec, command.quantity)
        if is_limit:
            check_notional(spec, command.price, command.quantity)  # type: ignore[arg-type]
        elif order_type is STOP_MARKET:  # it enters as a MARKET order at about its stop price
            check_notional(spec, command.stop_price, command.quantity, "stop_price")  # type: ignore[arg-type]
    tif = command.time_in_force
    if is_limit:
        tif = GTC if tif is None else tif
    elif tif is None or tif is IOC:
        tif = IOC
    else:
        raise ValidationError("MARKET and STOP_MARKET orders are always IOC", field="time_in_force")
    if command.post_only and (order_type is not LIMIT or tif is not GTC):
        raise ValidationError("post_only is only for GTC LIMIT orders", field="post_only")
    return tif


def _check_prices(command: PlaceOrder, is_limit: bool) -> None:
    price = command.price
    if is_limit:
        if price is None:
            raise PriceRequired(f"{command.order_type} orders need a price", field="price")
        if type(price) is not int or price <= 0:
            raise ValidationError("price must be a positive number of ticks", field="price")
    elif price is not None:
        raise PriceNotAllowed(f"{command.order_type} orders take no price", field="price")
    stop = command.stop_price
    if command.order_type is STOP_LIMIT or command.order_type is STOP_MARKET:
        if stop is None:
            raise StopPriceRequired("stop orders need a stop_price", field="stop_price")
        if type(stop) is not int or stop <= 0:
            raise ValidationError("stop_price must be a positive number of ticks", field="stop_price")
    elif stop is not None:
        raise ValidationError("stop_price is only for stop orders", field="stop_price")


def _check_quote_quantity(spec: PairSpec, command: PlaceOrder) -> None:
    quote = command.quote_quantity
    if command.order_type is not MARKET or command.side is not BUY:
        raise ValidationError("quote_quantity is only for MARKET BUY orders", field="quote_quantity")
    if command.quantity is not None:
        raise ValidationError("give quantity or quote_quantity, not both", field="quote_quantity")
    if type(quote) is not int or quote <= 0:
        raise ValidationError("quote_quantity must be a positive number of atoms", field="quote_quantity")
    if quote < spec.min_notional_atoms:
        raise NotionalTooSmall(
            f"quote_quantity is below the minimum notional {format_decimal(spec.min_notional)}",
            field="quote_quantity")


def check_quantity(
    spec: PairSpec, quantity: int | None, field: str = "quantity", said: str = "quantity"
) -> None:
    """Check a total quantity in lots against presence, type and the pair's min/max; a refusal names
    `field` and says `said` of the quantity ("quantity is below the minimum 0.01")."""
    if quantity is None:
        raise ValidationError(f"{said} is required", field=field)
    if type(quantity) is not int or quantity <= 0:
        raise ValidationError(f"{said} must be a positive number of lots", field=field)
    if quantity < spec.min_quantity_lots:
        raise QuantityTooSmall(f"{said} is below the minimum {format_decimal(spec.min_quantity)}",
                               field=field)
    if quantity > spec.max_quantity_lots:
        raise QuantityTooLarge(f"{said} is above the maximum {format_decimal(spec.max_quantity)}",
                               field=field)


def check_notional(spec: PairSpec, price: int, quantity: int, what: str = "price") -> None:
    """Check price × quantity against the pair's minimum notional (`what` names the price in the message)."""
    if price * quantity * spec.quote_atoms_per_tick_lot < spec.min_notional_atoms:
        raise NotionalTooSmall(
            f"{what} × quantity is below the minimum notional {format_decimal(spec.min_notional)}")


def amend_requeues(command: AmendOrder, price_now: int | None, quantity_now: int) -> bool:
    """Whether the amend takes the order out of its place in the queue: a new price or a larger quantity
    does (the order then matches like a new one, at the back); only a reduction keeps it."""
    return (command.price is not None and command.price != price_now) or (
        command.quantity is not None and command.quantity > quantity_now)


def validate_amend(
    spec: PairSpec, command: AmendOrder, price_now: int | None, quantity_now: int, filled: int
) -> tuple[int, int]:
    """Check an amend of a resting order at price_now × quantity_now; return the new (price, quantity)."""
    if command.quantity is None and command.price is None:
        raise ValidationError("an amend needs a quantity or a price")
    price = price_now if command.price is None else command.price
    quantity = quantity_now if command.quantity is None else command.quantity
    if type(price) is not int or price <= 0:
        raise ValidationError("price must be a positive number of ticks", field="price")
    if quantity == filled and filled:  # down to what it has filled: the order completes (no size rules)
        return price, quantity
    check_quantity(spec, quantity)
    if quantity < filled:
        raise QuantityTooSmall("quantity cannot go below the filled quantity", field="quantity")
    check_notional(spec, price, quantity)
    return price, quantity
