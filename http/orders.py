"""The trader's order routes (API.md "Orders"): place, batch, list, read, amend, cancel, cancel-all.

Writes go through the :class:`~tradeengine.actors.exchange.Exchange` and are answered after their
commit; the order in a write's answer is rendered from the same rows the writer stored (``placed``), or
read back from the database after the commit (amend, cancel), so an answer never shows a state the
database does not hold. Reads of history go to :mod:`tradeengine.storage.history`, scoped to the
caller: another user's order answers 404 exactly like an unknown id.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

import falcon
import falcon.asgi
from psycopg_pool import ConnectionPool

from tradeengine.actors.exchange import Exchange, OrderRequest
from tradeengine.actors.pair import CommandOutcome
from tradeengine.engine import (
    OrderAccepted,
    OrderRejected,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeEngineError,
)
from tradeengine.engine.errors import OrderNotFound, ValidationError
from tradeengine.engine.validation import CLIENT_ORDER_ID
from tradeengine.storage import history
from tradeengine.storage.facts import PairFacts
from tradeengine.storage.ids import MAX_ORDER_ID
from tradeengine.storage.rows import OrderRow, build_rows

from . import render
from .api import Operation, Resource, read_body, read_query, respond
from .blocking import blocking
from .errors import echoed, error_detail, not_found
from .models import (
    BatchItem,
    BatchResult,
    CancelAllQuery,
    CancelledOrders,
    NewOrder,
    NewOrderBatch,
    Order,
    OrderChange,
    OrderPage,
    OrderQuery,
    OrderResult,
    OrderStatusName,
)
from .ratelimit import charge

ORDER_STATUSES = frozenset(OrderStatusName.__args__)  # type: ignore[attr-defined]


def user_of(req: falcon.asgi.Request) -> int:
    """The id of the authenticated caller."""
    user_id: int = req.context.principal.user_id
    return user_id


def order_request(order: NewOrder) -> OrderRequest:
    """A decoded API order → the Exchange's request (decimals parsed; the engine checks the rules)."""
    return OrderRequest(
        symbol=order.symbol, side=_SIDES[order.side], type=_ORDER_TYPES[order.type],
        quantity=_decimal(order.quantity), quote_quantity=_decimal(order.quote_quantity),
        price=_decimal(order.price), stop_price=_decimal(order.stop_price),
        time_in_force=None if order.time_in_force is None else _TIMES_IN_FORCE[order.time_in_force],
        post_only=order.post_only, self_trade_prevention=_STPS[order.self_trade_prevention],
        client_order_id=order.client_order_id,
    )


# The engine's enums by their API names (the model's Literals are exactly these values): a dict lookup
# instead of an Enum call per field.
_SIDES = {member.value: member for member in Side}
_ORDER_TYPES = {member.value: member for member in OrderType}
_TIMES_IN_FORCE = {member.value: member for member in TimeInForce}
_STPS = {member.value: member for member in SelfTradePrevention}


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def placed_order_id(outcome: CommandOutcome) -> str:
    """The id of the order a PlaceOrder command created (its first event names it)."""
    first = outcome.events[0]
    if not isinstance(first, OrderAccepted | OrderRejected):
        raise TypeError(f"a place command starts with OrderAccepted or OrderRejected, not {first!r}")
    return first.order_id


class OrdersResource(Resource):
    """``/api/v1/orders``: place one order, list the caller's orders, cancel all of them."""

    operations: ClassVar = {
        "POST": Operation("Place an order", OrderResult, 201, body=NewOrder, errors=(404, 409, 422),
                          engine=True,
                          description="Answered after the order, its trades and its balance movements "
                                      "are committed, with the order's final status."),
        "GET": Operation("List the caller's orders, newest first", OrderPage, query=OrderQuery,
                         errors=(404,)),
        "DELETE": Operation("Cancel every open order of the caller (on one pair with symbol)",
                            CancelledOrders, query=CancelAllQuery, errors=(404,), engine=True),
    }

    def __init__(self, exchange: Exchange, pool: ConnectionPool) -> None:
        self._exchange = exchange
        self._pool = pool

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Place one order."""
        request = order_request(await read_body(req, NewOrder))
        outcome = await self._exchange.place_async(user_of(req), request)
        respond(resp, render.placed(outcome, placed_order_id(outcome)), 201)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the caller's orders."""
        query = read_query(req, OrderQuery)
        page = await blocking(history.list_orders, self._pool, user_of(req), symbol=query.symbol,
                              statuses=_statuses(query.status), side=query.side, limit=query.limit,
                              cursor=query.cursor)
        respond(resp, OrderPage(orders=render.orders(page.items), next_cursor=page.next_cursor))

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Cancel all the caller's open orders."""
        query = read_query(req, CancelAllQuery)
        rows = await blocking(self._cancel_all, user_of(req), query.symbol)
        respond(resp, CancelledOrders(cancelled=render.orders(rows)))

    def _cancel_all(self, user_id: int, symbol: str | None) -> list[OrderRow]:
        outcomes = self._exchange.cancel_all(user_id, symbol)
        ids = [update.id for outcome in outcomes for update in _changed_orders(outcome)]
        return history.get_orders(self._pool, user_id, ids)


class OrderBatchResource(Resource):
    """``/api/v1/orders/batch``: up to 100 orders, each answered on its own, in request order."""

    operations: ClassVar = {
        "POST": Operation("Place up to 100 orders", BatchResult, body=NewOrderBatch, engine=True,
                          description="Every order is sent before any answer is awaited; each result is "
                                      "the order with its trades or the error it got, in request order."),
    }

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Place a batch of orders.

        A body that breaks the schema (not an object, ``orders`` missing or not an array, 0 or more than
        100 orders, another field, or one order of the wrong shape: a wrong type, an unknown or missing
        field) is a 400 naming the field (``orders[1].side``) and places nothing, as API.md's 400 says and
        as the request schema of /openapi.json states. Each well-formed order then gets its own engine
        answer, so a rule violation (422 alone) is that order's ``error`` and the others are placed.
        """
        batch = await read_body(req, NewOrderBatch)
        await charge(req, len(batch.orders) - 1)  # the middleware charged one token; each order costs one
        results: list[BatchItem | None] = [None] * len(batch.orders)
        requests: list[OrderRequest] = []
        positions: list[int] = []
        for index, order in enumerate(batch.orders):
            try:
                requests.append(order_request(order))
                positions.append(index)
            except TradeEngineError as exc:
                results[index] = BatchItem(error=error_detail(exc))
        answers = await self._exchange.place_batch_async(user_of(req), requests) if requests else []
        for index, answer in zip(positions, answers, strict=True):
            if isinstance(answer, TradeEngineError):
                results[index] = BatchItem(error=error_detail(answer))
            else:
                result = render.placed(answer, placed_order_id(answer))
                results[index] = BatchItem(order=result.order, trades=result.trades)
        respond(resp, BatchResult(results=[r for r in results if r is not None]))


class OrderResource(Resource):
    """``/api/v1/orders/{order_id}``: read, amend or cancel one of the caller's orders."""

    operations: ClassVar = {
        "GET": Operation("Read one of the caller's orders", Order),
        "PATCH": Operation("Amend an order: a reduction keeps priority, a new price or a larger "
                           "quantity re-queues", Order, body=OrderChange, errors=(409, 422), engine=True),
        "DELETE": Operation("Cancel an order", Order, errors=(409,), engine=True),
    }

    def __init__(self, exchange: Exchange, pool: ConnectionPool) -> None:
        self._exchange = exchange
        self._pool = pool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, order_id: str) -> None:
        """Read one order."""
        respond(resp, render.order(await blocking(self._stored, user_of(req), order_id)))

    async def on_patch(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, order_id: str) -> None:
        """Amend one order."""
        change = await read_body(req, OrderChange)
        user_id = user_of(req)
        quantity, price = _decimal(change.quantity), _decimal(change.price)
        respond(resp, render.order(await blocking(self._amend, user_id, order_id, quantity, price)))

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, order_id: str) -> None:
        """Cancel one order."""
        user_id = user_of(req)
        respond(resp, render.order(await blocking(self._cancel, user_id, order_id)))

    def _amend(self, user_id: int, order_id: str, quantity: Decimal | None,
               price: Decimal | None) -> OrderRow:
        self._exchange.amend(user_id, _engine_order_id(order_id), quantity=quantity, price=price)
        return self._stored(user_id, order_id)

    def _cancel(self, user_id: int, order_id: str) -> OrderRow:
        self._exchange.cancel(user_id, _engine_order_id(order_id))
        return self._stored(user_id, order_id)

    def _stored(self, user_id: int, order_id: str) -> OrderRow:
        row = history.get_order(self._pool, user_id, _order_id(order_id))
        if row is None:
            raise OrderNotFound(not_found("order", order_id))
        return row


class OrderByClientIdResource(Resource):
    """``/api/v1/orders/by-client-id/{client_order_id}``: find an order by the caller's own id."""

    operations: ClassVar = {"GET": Operation("Read one of the caller's orders by client_order_id", Order)}

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     client_order_id: str) -> None:
        """Read one order by client order id."""
        if not client_order_id:
            raise OrderNotFound(not_found("client_order_id", client_order_id))
        if not CLIENT_ORDER_ID.fullmatch(client_order_id):
            raise OrderNotFound(f"no order with client_order_id {echoed(repr(client_order_id))}")
        row = await blocking(history.get_order_by_client_id, self._pool, user_of(req), client_order_id)
        if row is None:
            raise OrderNotFound(f"no order with client_order_id {client_order_id}")
        respond(resp, render.order(row))


def _order_id(text: str) -> int:
    """An order id from the path; anything that is not one is simply not found."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_ORDER_ID:
        return -1
    return int(text)


def _engine_order_id(text: str) -> str:
    """The path's order id as the Exchange is given it: one that cannot be an id answers 404 here, with
    the id cut to a sane length (the Exchange repeats what it is given in its message whole)."""
    if _order_id(text) < 0:
        raise OrderNotFound(not_found("order", text))
    return text


def _statuses(text: str | None) -> list[str] | None:
    if text is None:
        return None
    statuses = [s.strip() for s in text.split(",")]
    if any(s not in ORDER_STATUSES for s in statuses):  # an empty item too: "OPEN,,FILLED" is malformed
        raise ValidationError(f"status must be a comma-separated list of {', '.join(sorted(ORDER_STATUSES))}",
                              field="status")
    return statuses


def _changed_orders(outcome: CommandOutcome) -> list[Any]:
    return build_rows([PairFacts(outcome.spec, outcome.events)]).order_updates
