"""The trader's own account (API.md "Trades, balances"): balances, and the trades the caller took part in.

Balances come from the running wallet (what it holds now, in atoms, rendered with 8 decimal places at
most); trades from the committed history (:mod:`tradeengine.storage.history`), scoped to the caller:
another user's trade answers 404 exactly like an unknown id.

A self-trade (the caller on both sides) has two views. The list shows both (the BUY view first);
``GET /api/v1/trades/{trade_id}`` answers one, the TAKER's view: the side of the order that came in
and made the trade.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import falcon
import falcon.asgi
from psycopg_pool import ConnectionPool

from tradeengine.actors.exchange import Exchange
from tradeengine.actors.ledger import AssetBalance
from tradeengine.engine.units import format_atoms
from tradeengine.storage import history
from tradeengine.storage.history import UserTradeRow

from . import render
from .api import Operation, Resource, read_query, respond
from .auth import TRADER
from .blocking import blocking
from .errors import not_found
from .models import Balance, Balances, TradeQuery, UserTrade, UserTradePage
from .orders import user_of


def user_trade(row: UserTradeRow) -> UserTrade:
    """A trade as the caller sees it: the trade, then the caller's order, side, role and fee."""
    trade = render.trade(row.trade)
    return UserTrade(
        id=trade.id, symbol=trade.symbol, price=trade.price, quantity=trade.quantity,
        quote_quantity=trade.quote_quantity, buyer_order_id=trade.buyer_order_id,
        seller_order_id=trade.seller_order_id, taker_side=trade.taker_side, buyer_fee=trade.buyer_fee,
        seller_fee=trade.seller_fee, executed_at=trade.executed_at, sequence=trade.sequence,
        order_id=str(row.order_id), side=row.side, role=row.role,  # type: ignore[arg-type]
        fee=render.text(row.fee), fee_asset=row.fee_asset,
    )


class BalancesResource(Resource):
    """``/api/v1/balances``: the caller's balance of every asset they hold."""

    auth = TRADER
    operations: ClassVar = {
        "GET": Operation("The caller's balances: available, and locked by open orders", Balances,
                         engine=True,
                         description="As the running wallet holds them now; an asset never held is absent."),
    }

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the caller's balances."""
        respond(resp, balances_of(await blocking(self._exchange.balances, user_of(req))))


def balances_of(held: Iterable[AssetBalance]) -> Balances:
    """A user's balances as the API shows them."""
    return Balances(balances=[
        Balance(asset=b.asset, available=format_atoms(b.available), locked=format_atoms(b.locked))
        for b in held])


class UserTradesResource(Resource):
    """``/api/v1/trades``: the caller's trades, newest first."""

    auth = TRADER
    operations: ClassVar = {
        "GET": Operation("List the caller's trades, newest first", UserTradePage, query=TradeQuery,
                         errors=(404,),
                         description="A self-trade appears twice: the BUY view, then the SELL view. "
                                     "An unknown symbol answers 404 UNKNOWN_SYMBOL."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the caller's trades."""
        query = read_query(req, TradeQuery)
        page = await blocking(history.list_user_trades, self._pool, user_of(req), symbol=query.symbol,
                              limit=query.limit, cursor=query.cursor)
        respond(resp, UserTradePage(trades=[user_trade(row) for row in page.items],
                                    next_cursor=page.next_cursor))


class UserTradeResource(Resource):
    """``/api/v1/trades/{trade_id}``: one of the caller's trades."""

    auth = TRADER
    operations: ClassVar = {
        "GET": Operation("Read one of the caller's trades", UserTrade,
                         description="A self-trade is shown from the taker's side."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, trade_id: str) -> None:
        """Read one trade."""
        views = await blocking(history.get_user_trade, self._pool, user_of(req), trade_id)
        if not views:
            raise falcon.HTTPNotFound(title="Not found", code="NOT_FOUND",
                                      description=not_found("trade", trade_id))
        (view,) = [v for v in views if v.role == "TAKER"] if len(views) > 1 else views
        respond(resp, user_trade(view))
