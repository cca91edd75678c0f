"""Stored and freshly committed rows → the API's response objects.

Orders and trades are rendered from the rows the writer stores (:mod:`tradeengine.storage.rows`):
a command's outcome is folded into rows exactly as the writer folds it (``build_order_rows``: the fold of
``build_rows`` without the ledger, balances and outbox events an answer does not need), and history reads
return the same row types, so a new order and the same order read back later render identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from tradeengine.actors.pair import CommandOutcome
from tradeengine.engine.units import atoms_of, average_price, format_decimal
from tradeengine.storage.facts import PairFacts
from tradeengine.storage.rows import OrderRow, TradeRow, build_order_rows, rfc3339

from .models import Order, OrderResult, Trade


def text(value: Decimal) -> str:
    """An API decimal string."""
    return format_decimal(value)


def optional_text(value: Decimal | None) -> str | None:
    """An API decimal string, or None."""
    return None if value is None else format_decimal(value)


def timestamp(moment: datetime) -> str:
    """An API timestamp: RFC 3339 UTC with microseconds."""
    return rfc3339(moment)


def order(row: OrderRow) -> Order:
    """An order row as the API shows it."""
    remaining = None if row.quantity is None else row.quantity - row.filled_quantity
    average = None
    if row.filled_quantity:
        average = average_price(atoms_of(row.filled_quote), atoms_of(row.filled_quantity))
    return Order(
        id=str(row.id), client_order_id=row.client_order_id, symbol=row.symbol, side=row.side,  # type: ignore[arg-type]
        type=row.type, status=row.status,  # type: ignore[arg-type]
        price=optional_text(row.price), stop_price=optional_text(row.stop_price),
        quantity=optional_text(row.quantity), quote_quantity=optional_text(row.quote_quantity),
        filled_quantity=text(row.filled_quantity), remaining_quantity=optional_text(remaining),
        average_price=optional_text(average), time_in_force=row.time_in_force,  # type: ignore[arg-type]
        post_only=row.post_only, self_trade_prevention=row.self_trade_prevention,  # type: ignore[arg-type]
        reject_reason=row.reject_reason, created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at), sequence=row.updated_sequence,
    )


def trade(row: TradeRow) -> Trade:
    """A trade row as the API shows it."""
    return Trade(
        id=row.id, symbol=row.symbol, price=text(row.price), quantity=text(row.quantity),
        quote_quantity=text(row.quote_quantity), buyer_order_id=str(row.buyer_order_id),
        seller_order_id=str(row.seller_order_id), taker_side=row.taker_side,  # type: ignore[arg-type]
        buyer_fee=text(row.buyer_fee), seller_fee=text(row.seller_fee),
        executed_at=timestamp(row.executed_at), sequence=row.sequence,
    )


def placed(outcome: CommandOutcome, order_id: str) -> OrderResult:
    """The committed outcome of placing ``order_id``: its final state and the trades it made.

    Trades of other orders in the same command (stops the order's trades triggered) are not the
    caller's and are left out.
    """
    rows = build_order_rows(PairFacts(outcome.spec, outcome.events))
    oid = int(order_id)
    (row,) = (r for r in rows.orders if r.id == oid)
    trades = [trade(t) for t in rows.trades if oid in (t.buyer_order_id, t.seller_order_id)]
    return OrderResult(order=order(row), trades=trades)


def orders(rows: Iterable[OrderRow]) -> list[Order]:
    """Several order rows as the API shows them."""
    return [order(row) for row in rows]
