"""Every route of the API (API.md), with the parts each resource needs.

``api_endpoints`` is what ``ops.server`` hands to ``create_app``; the same list is documented in
``/openapi.json``. The order of the list is the order of the OpenAPI document.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from tradeengine.actors.system import ActorSystem
from tradeengine.storage.marketdata import MarketDataReader

from .account import BalancesResource, UserTradeResource, UserTradesResource
from .admin import (
    ActorsResource,
    AdminPairResource,
    AdminPairsResource,
    DepositsResource,
    KeyResource,
    KeysResource,
    PairRestartResource,
    UserBalancesResource,
    UsersResource,
    WithdrawalsResource,
)
from .api import Endpoint
from .market import (
    CandlesResource,
    MarketTradesResource,
    OrderBookResource,
    PairResource,
    PairsResource,
    TickerResource,
)
from .orders import OrderBatchResource, OrderByClientIdResource, OrderResource, OrdersResource


def api_endpoints(*, system: ActorSystem, pool: ConnectionPool,
                  market_data: MarketDataReader | None = None) -> list[Endpoint]:
    """The API's endpoints, built on the running engine's actor system and the database pool (and the
    Redis market-data mirror's reader, when Redis is configured)."""
    exchange = system.exchange
    return [
        Endpoint.of("/api/v1/orders", OrdersResource(exchange, pool), "orders"),
        Endpoint.of("/api/v1/orders/batch", OrderBatchResource(exchange), "orders"),
        Endpoint.of("/api/v1/orders/by-client-id/{client_order_id}", OrderByClientIdResource(pool), "orders"),
        Endpoint.of("/api/v1/orders/{order_id}", OrderResource(exchange, pool), "orders"),
        Endpoint.of("/api/v1/trades", UserTradesResource(pool), "account"),
        Endpoint.of("/api/v1/trades/{trade_id}", UserTradeResource(pool), "account"),
        Endpoint.of("/api/v1/balances", BalancesResource(exchange), "account"),
        Endpoint.of("/api/v1/pairs", PairsResource(pool), "market data"),
        Endpoint.of("/api/v1/pairs/{symbol}", PairResource(pool), "market data"),
        Endpoint.of("/api/v1/orderbook/{symbol}", OrderBookResource(exchange, market_data), "market data"),
        Endpoint.of("/api/v1/markets/{symbol}/ticker", TickerResource(exchange, pool, market_data),
                    "market data"),
        Endpoint.of("/api/v1/markets/{symbol}/trades", MarketTradesResource(pool, market_data),
                    "market data"),
        Endpoint.of("/api/v1/markets/{symbol}/candles", CandlesResource(pool), "market data"),
        Endpoint.of("/api/v1/admin/users", UsersResource(pool), "admin"),
        Endpoint.of("/api/v1/admin/users/{user_id}/keys", KeysResource(pool), "admin"),
        Endpoint.of("/api/v1/admin/users/{user_id}/keys/{key_id}", KeyResource(pool), "admin"),
        Endpoint.of("/api/v1/admin/users/{user_id}/balances", UserBalancesResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/users/{user_id}/deposits", DepositsResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/users/{user_id}/withdrawals", WithdrawalsResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/pairs", AdminPairsResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/pairs/{symbol}", AdminPairResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/pairs/{symbol}/restart", PairRestartResource(system, pool), "admin"),
        Endpoint.of("/api/v1/admin/actors", ActorsResource(system), "admin"),
    ]
