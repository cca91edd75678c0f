"""The Exchange across pair lifecycles: orders that ended before a rebuild, pairs being added.

Real PostgreSQL (the machine's server), real actors.
"""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest

from tests.actors.system_harness import (
    limit,
    order_id_of,
)
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import Side
from tradeengine.engine.errors import (
    EngineUnavailable,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderNotFound,
    UnknownSymbol,
)
from tradeengine.storage.pairs import NewPair


def test_an_order_filled_before_its_pair_restarted_is_not_cancellable_rather_than_unknown(
    system: ActorSystem,
) -> None:
    exchange = system.exchange
    filled = order_id_of(exchange.place(1002, limit("BTC-USDT", Side.SELL, "0.01", "50000")))
    exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.01", "50000"))
    cancelled = order_id_of(exchange.place(1002, limit("BTC-USDT", Side.SELL, "0.01", "51000")))
    exchange.cancel(1002, str(cancelled))

    system.restart_pair("BTC-USDT")  # the new incarnation rebuilds live orders only

    for order_id in (filled, cancelled):
        with pytest.raises(OrderNotCancellable):
            exchange.cancel(1002, str(order_id))
        with pytest.raises(OrderNotAmendable):
            exchange.amend(1002, str(order_id), quantity=Decimal("0.005"))
    with pytest.raises(OrderNotFound):  # another user's order stays as unknown as a missing one
        exchange.cancel(1001, str(filled))
    with pytest.raises(OrderNotFound):
        exchange.cancel(1002, "12345")


def test_commands_on_a_pair_being_added_are_refused_cleanly_until_it_trades(system: ActorSystem) -> None:
    exchange = system.exchange
    seen: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                exchange.place(1001, limit("AVAX-USDT", Side.BUY, "1", "30"))
                seen["ok"] += 1
            except (UnknownSymbol, EngineUnavailable) as exc:
                seen[type(exc).__name__] += 1
            except BaseException as exc:  # e.g. an AttributeError: a bare 500
                unexpected.append(exc)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        system.add_pair(NewPair(
            symbol="AVAX-USDT", base_asset="AVAX", quote_asset="USDT", tick_size=Decimal("0.01"),
            lot_size=Decimal("0.01"), min_quantity=Decimal("0.01"), max_quantity=Decimal("90000"),
            min_notional=Decimal("5"), maker_fee=Decimal("0.001"), taker_fee=Decimal("0.002"),
        ))
        exchange.place(1001, limit("AVAX-USDT", Side.BUY, "1", "29"))
    finally:
        stop.set()
        thread.join(10)
    assert not unexpected, unexpected
    assert seen["UnknownSymbol"] > 0
