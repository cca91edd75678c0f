"""DatabaseOrders: where the Exchange finds an order's pair and owner, from memory or from PostgreSQL.

The memory holds immutable facts (a committed order never changes pair or owner), so it can only
spare queries, never change an answer: the unit tests prove which lookups reach the database (through
a pool that counts them), the system test proves the answers on the real actors and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg_pool
import pytest

from tests.actors.system_harness import limit, order_id_of
from tradeengine.actors.system import ActorSystem, DatabaseOrders
from tradeengine.engine import Side
from tradeengine.engine.errors import OrderNotCancellable, OrderNotFound
from tradeengine.storage.orders import OrderLocation


class CountingPool:
    """Stands in for the pool: answers every order lookup with "ETH-USDT, user 7" and counts them."""

    def __init__(self) -> None:
        self.queries: list[int] = []

    @contextmanager
    def connection(self) -> Iterator[Any]:
        yield self

    def execute(self, _query: str, params: tuple[int, int]) -> Any:
        self.queries.append(params[0])
        return self

    def fetchone(self) -> tuple[str, int]:
        return ("ETH-USDT", 7)


def test_a_remembered_order_is_located_without_a_query() -> None:
    pool = CountingPool()
    orders = DatabaseOrders(pool)
    orders.remember(42, "BTC-USDT", 1001)

    assert orders.locate(42) == OrderLocation("BTC-USDT", 1001)
    assert pool.queries == []
    assert orders.locate(43) == OrderLocation("ETH-USDT", 7)  # not remembered: read
    assert orders.locate(43) == OrderLocation("ETH-USDT", 7)  # found once: remembered
    assert pool.queries == [43]


def test_the_oldest_orders_are_forgotten_beyond_the_capacity() -> None:
    pool = CountingPool()
    orders = DatabaseOrders(pool, capacity=2)
    for order_id in (1, 2, 3):
        orders.remember(order_id, "BTC-USDT", 1001)

    assert orders.locate(3) == orders.locate(2) == OrderLocation("BTC-USDT", 1001)
    assert pool.queries == []
    assert orders.locate(1) == OrderLocation("ETH-USDT", 7)  # evicted: read again
    assert pool.queries == [1]


def test_capacity_zero_remembers_nothing_and_a_negative_one_is_refused() -> None:
    pool = CountingPool()
    orders = DatabaseOrders(pool, capacity=0)
    orders.remember(5, "BTC-USDT", 1001)
    orders.locate(5)
    orders.locate(5)
    assert pool.queries == [5, 5]
    with pytest.raises(ValueError, match="capacity"):
        DatabaseOrders(pool, capacity=-1)


def test_answers_from_memory_and_from_the_database_agree(
    system: ActorSystem, pool: psycopg_pool.ConnectionPool
) -> None:
    exchange = system.exchange
    resting = order_id_of(exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.01", "40000")))
    cold = DatabaseOrders(pool)  # nothing remembered: every answer comes from PostgreSQL

    assert cold.locate(resting) == OrderLocation("BTC-USDT", 1001)
    assert cold.locate(resting + 1) is None
    # The Exchange remembered the placement; ownership is still checked against what it remembers.
    with pytest.raises(OrderNotFound):
        exchange.cancel(1002, str(resting))
    exchange.cancel(1001, str(resting))
    with pytest.raises(OrderNotCancellable):
        exchange.cancel(1001, str(resting))
