"""The Exchange on an event loop (`place_async`, `place_batch_async`), as the HTTP app calls it.

First against scripted routes (the layer below, in memory): what runs on the loop and what on a thread,
timeouts, duplicates; then against the real actors on the machine's PostgreSQL, with the loop answering
other work while orders wait for their commit and while a pair restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import Future
from decimal import Decimal
from typing import Any

import pytest

from tests.actors.system_harness import limit, order_id_of
from tradeengine.actors.exchange import Exchange
from tradeengine.actors.pair import CommandOutcome, Execute
from tradeengine.actors.supervision import ActorUnavailable, ChildState
from tradeengine.actors.system import ActorSystem
from tradeengine.engine import OrderAccepted, PairSpec, PlaceOrder, Side, TimeInForce
from tradeengine.engine.errors import (
    DuplicateClientOrderId,
    EngineTimeout,
    EngineUnavailable,
    InvalidTickSize,
)
from tradeengine.engine.lifecycle import OrderStatus

SPEC = PairSpec(
    symbol="BTC-USDT", base_asset="BTC", quote_asset="USDT", tick_size=Decimal("0.01"),
    lot_size=Decimal("0.0001"), min_quantity=Decimal("0.0001"), max_quantity=Decimal(1000),
    maker_fee=Decimal("0.001"), taker_fee=Decimal("0.002"),
)


class Route:
    """A pair's route that records each send and answers it (or not) as scripted."""

    spec = SPEC

    def __init__(self, *, restarting_for: float = 0.0, answer: bool = True) -> None:
        self.sends: list[tuple[str, float]] = []  # (thread name, wait) per successful send
        self._ready_at = time.monotonic() + restarting_for
        self._answer = answer

    def tell(self, message: Any, wait: float = 0.0) -> None:
        assert isinstance(message, Execute)
        if time.monotonic() < self._ready_at:
            if wait <= 0:
                raise ActorUnavailable("restarting", child="pair:BTC-USDT", state=ChildState.RESTARTING)
            time.sleep(self._ready_at - time.monotonic())
        self.sends.append((threading.current_thread().name, wait))
        if self._answer:
            command = message.command
            assert isinstance(command, PlaceOrder)
            event = OrderAccepted(
                sequence=1, timestamp=command.timestamp, order_id=command.order_id, user_id=command.user_id,
                client_order_id=command.client_order_id, side=command.side, order_type=command.order_type,
                status=OrderStatus.OPEN, price=command.price, stop_price=None, quantity=command.quantity,
                quote_quantity=None, time_in_force=TimeInForce.GTC, post_only=False,
                self_trade_prevention=command.self_trade_prevention)
            reply = message.reply
            threading.Timer(0.01, reply.set_result, (CommandOutcome(SPEC, [event], None),)).start()


class Directory:
    def __init__(self, client_ids: dict[tuple[int, str], int] | None = None) -> None:
        self.client_ids = client_ids or {}
        self.lookups: list[str] = []
        self.remembered: list[int] = []

    def locate(self, order_id: int) -> tuple[str, int] | None:
        return None

    def find_client_order(self, user_id: int, client_order_id: str) -> int | None:
        self.lookups.append(threading.current_thread().name)
        return self.client_ids.get((user_id, client_order_id))

    def remember(self, order_id: int, symbol: str, user_id: int) -> None:
        self.remembered.append(order_id)


def exchange(route: Route, directory: Directory | None = None, timeout: float = 2.0) -> Exchange:
    ids = iter(range(1, 10_000))
    return Exchange(routes=lambda symbol: route if symbol == "BTC-USDT" else None,
                    next_order_id=lambda: (next(ids), 1), clock_us=lambda: 1, orders=directory or Directory(),
                    timeout=timeout, wallet=None, symbols=lambda: ["BTC-USDT"])


def order(client_order_id: str | None = None) -> Any:
    return limit("BTC-USDT", Side.BUY, "0.01", "50000", time_in_force=TimeInForce.GTC,
                 client_order_id=client_order_id)


def test_a_batch_is_sent_on_the_loop_and_answered_in_request_order() -> None:
    route, directory = Route(), Directory()

    async def main() -> tuple[list[Any], str]:
        results = await exchange(route, directory).place_batch_async(7, [order(), order(), order()])
        return results, threading.current_thread().name

    results, loop_thread = asyncio.run(main())
    assert [order_id_of(r) for r in results] == [1, 2, 3]
    assert route.sends == [(loop_thread, 0.0)] * 3  # no thread, no wait
    assert directory.lookups == []  # no client order id: no database lookup
    assert directory.remembered == [1, 2, 3]


def test_client_order_ids_are_looked_up_on_a_thread_and_duplicates_refused() -> None:
    route, directory = Route(), Directory({(7, "taken"): 99})

    async def main() -> list[Any]:
        return await exchange(route, directory).place_batch_async(
            7, [order("fresh"), order("taken"), order("fresh")])

    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    placed, taken, again = asyncio.run(main())
    assert order_id_of(placed) == 1
    assert isinstance(taken, DuplicateClientOrderId) and taken.order_id == "99"
    assert isinstance(again, DuplicateClientOrderId) and again.order_id == "1"  # placed earlier in the batch
    assert directory.lookups and loop_thread not in directory.lookups
    assert len(route.sends) == 1


def test_a_client_order_id_lookup_the_database_does_not_answer_places_nothing_and_answers_in_time() -> None:
    """A database that hangs: the batch is refused (503) within the timeout; its ids are held until the
    lookup ends, then free again."""
    route, answer = Route(), threading.Event()

    class Hanging(Directory):
        def find_client_order(self, user_id: int, client_order_id: str) -> int | None:
            answer.wait(10.0)
            return None

    engine = exchange(route, Hanging(), timeout=0.3)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="nothing was placed"):
            await engine.place_batch_async(7, [order("c-1")])
        took = time.monotonic() - started
        refused = await engine.place_batch_async(7, [order("c-1")])  # the first lookup still runs
        assert isinstance(refused[0], DuplicateClientOrderId)
        answer.set()
        await asyncio.sleep(0.2)  # the lookup ends; its id is let go
        assert order_id_of((await engine.place_batch_async(7, [order("c-1")]))[0]) > 0
        return took

    assert asyncio.run(main()) < 1.0
    assert len(route.sends) == 1


def off_tick(client_order_id: str) -> Any:
    return limit("BTC-USDT", Side.BUY, "0.01", "50000.001", client_order_id=client_order_id)


@pytest.mark.parametrize("on_loop", [True, False])
def test_an_id_whose_earlier_item_was_refused_is_free_for_the_next_item_of_the_batch(on_loop: bool) -> None:
    # nothing is stored for a refused item, so its client order id may be placed by a later one; each
    # later item waits for the outcome of the one before it with the same id
    route = Route()
    batch = [off_tick("z"), off_tick("z"), order("z"), order("z"), order("y")]
    engine = exchange(route)
    results = asyncio.run(engine.place_batch_async(7, batch)) if on_loop else engine.place_batch(7, batch)
    first, second, placed, duplicate, other = results
    assert isinstance(first, InvalidTickSize) and isinstance(second, InvalidTickSize)
    assert isinstance(placed, CommandOutcome) and isinstance(other, CommandOutcome)
    assert isinstance(duplicate, DuplicateClientOrderId) and duplicate.order_id == str(order_id_of(placed))
    assert len(route.sends) == 2


@pytest.mark.parametrize("on_loop", [True, False])
def test_an_id_taken_before_the_batch_is_refused_for_every_item_carrying_it(on_loop: bool) -> None:
    route, directory = Route(), Directory({(7, "taken"): 99})
    engine = exchange(route, directory)
    batch = [order("taken"), order("taken"), order("taken")]
    results = asyncio.run(engine.place_batch_async(7, batch)) if on_loop else engine.place_batch(7, batch)
    assert all(isinstance(r, DuplicateClientOrderId) and r.order_id == "99" for r in results), results
    assert route.sends == []


def test_an_id_whose_earlier_item_has_an_unknown_outcome_is_refused_for_the_later_one() -> None:
    route = Route(answer=False)
    results = exchange(route, timeout=0.2).place_batch(7, [order("z"), order("z")])
    assert isinstance(results[0], EngineTimeout)
    assert isinstance(results[1], DuplicateClientOrderId) and results[1].order_id is None
    assert "outcome is unknown" in str(results[1])
    assert len(route.sends) == 1


def test_two_batches_carrying_the_same_ids_in_opposite_orders_never_wait_on_each_other() -> None:
    """Each batch takes its ids in sorted order: the second waits for the first's answer, not a timeout."""
    route = Route()
    engine = exchange(route, Directory(), timeout=4.0)

    async def main() -> tuple[list[list[Any]], float]:
        started = time.monotonic()
        batches = await asyncio.gather(engine.place_batch_async(7, [order("a"), order("b")]),
                                       engine.place_batch_async(7, [order("b"), order("a")]))
        return batches, time.monotonic() - started

    (first, second), took = asyncio.run(main())
    assert took < 1.5  # not the 2 s of half the timeout
    assert all(isinstance(result, CommandOutcome | DuplicateClientOrderId) for result in first + second)


def test_a_restarting_pair_is_waited_for_on_a_thread_while_the_loop_runs() -> None:
    route = Route(restarting_for=0.6)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> CommandOutcome:
        task = asyncio.create_task(ticker())
        try:
            return await exchange(route).place_async(7, order())
        finally:
            task.cancel()

    outcome = asyncio.run(main())
    assert order_id_of(outcome) == 1
    ((thread, wait),) = route.sends
    assert thread != threading.current_thread().name and wait == 2.0
    assert len(ticks) > 10  # the loop went on meanwhile
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.45  # never blocked for the 0.6 s


def test_a_pair_that_is_down_answers_unavailable_at_once() -> None:
    class Down(Route):
        def tell(self, message: Any, wait: float = 0.0) -> None:
            raise ActorUnavailable("failed", child="pair:BTC-USDT", state=ChildState.FAILED)

    started = time.monotonic()
    (result,) = asyncio.run(exchange(Down()).place_batch_async(7, [order()]))
    assert isinstance(result, EngineUnavailable)
    assert time.monotonic() - started < 0.5


def test_no_answer_within_the_timeout_is_engine_timeout_and_the_reply_is_left_alone() -> None:
    route = Route(answer=False)
    replies: list[Future[Any]] = []
    original = route.tell

    def tell(message: Any, wait: float = 0.0) -> None:
        replies.append(message.reply)
        original(message, wait)

    route.tell = tell  # type: ignore[method-assign]
    started = time.monotonic()
    (result,) = asyncio.run(exchange(route, timeout=0.2).place_batch_async(7, [order()]))
    assert isinstance(result, EngineTimeout)
    assert 0.2 <= time.monotonic() - started < 1.0
    (reply,) = replies
    assert not reply.cancelled()  # a late answer can still be set by the pair
    reply.set_result(None)


# -- against the real actors -----------------------------------------------------------------------------

def test_orders_placed_on_a_loop_commit_and_match_like_the_blocking_path(system: ActorSystem) -> None:
    exchange = system.exchange

    async def main() -> list[Any]:
        return await asyncio.gather(
            exchange.place_async(1002, limit("BTC-USDT", Side.SELL, "0.01", "50000")),
            exchange.place_async(1001, limit("BTC-USDT", Side.BUY, "0.01", "50000")),
        )

    sold, bought = asyncio.run(main())
    fills = [e for outcome in (sold, bought) for e in outcome.events if type(e).__name__ == "TradeExecuted"]
    assert len(fills) == 1
    assert exchange.place(1001, limit("BTC-USDT", Side.BUY, "0.01", "40000")).events  # the blocking path too


def test_an_order_sent_during_a_pair_restart_waits_for_it_on_a_thread(system: ActorSystem) -> None:
    exchange = system.exchange
    restart = threading.Thread(target=system.restart_pair, args=("BTC-USDT",))

    async def main() -> CommandOutcome:
        restart.start()
        await asyncio.sleep(0.01)
        return await exchange.place_async(1001, limit("BTC-USDT", Side.BUY, "0.01", "40000"))

    outcome = asyncio.run(main())
    restart.join(timeout=30)
    assert order_id_of(outcome) > 0



@pytest.mark.parametrize("concurrent", [2, 10])
def test_concurrent_orders_with_one_client_order_id_place_one_and_the_others_name_it(
        system: ActorSystem, concurrent: int) -> None:
    """The others wait for the one in flight, then find it stored: each 409 names the real order."""
    exchange = system.exchange

    async def main() -> list[Any]:
        return await asyncio.gather(*(
            exchange.place_batch_async(1001, [limit("BTC-USDT", Side.BUY, "0.01", "40000",
                                                    client_order_id="same")])
            for _ in range(concurrent)))

    results = [result for (result,) in asyncio.run(main())]
    placed = [result for result in results if isinstance(result, CommandOutcome)]
    assert len(placed) == 1, results
    duplicates = [result for result in results if isinstance(result, DuplicateClientOrderId)]
    assert len(duplicates) == concurrent - 1
    assert {duplicate.order_id for duplicate in duplicates} == {str(order_id_of(placed[0]))}


def test_concurrent_refused_orders_with_one_client_order_id_are_all_refused_and_leave_it_free(
        system: ActorSystem) -> None:
    """An order refused before anything changed stores nothing: the ones waiting on it are not duplicates."""
    exchange = system.exchange
    too_big = limit("BTC-USDT", Side.BUY, "900", "50000", client_order_id="again")  # 45 M USDT: too much

    async def main() -> list[Any]:
        return await asyncio.gather(*(exchange.place_batch_async(1001, [too_big]) for _ in range(10)))

    results = [result for (result,) in asyncio.run(main())]
    assert all(type(result).__name__ == "InsufficientBalance" for result in results), results
    fits = limit("BTC-USDT", Side.BUY, "0.01", "40000", client_order_id="again")
    assert order_id_of(exchange.place(1001, fits)) > 0


@pytest.mark.parametrize("on_loop", [True, False])
def test_a_batch_reaches_its_pair_in_request_order_also_past_an_item_waiting_on_an_earlier_ones_id(
        system: ActorSystem, on_loop: bool) -> None:
    """The item after a refused one with its id goes before the items that follow it: it takes the ask."""
    exchange = system.exchange
    exchange.place(1002, limit("BTC-USDT", Side.SELL, "0.01", "50000"))
    batch = [off_tick("rx"), limit("BTC-USDT", Side.BUY, "0.01", "50000", client_order_id="rx"),
             limit("BTC-USDT", Side.BUY, "0.01", "50000")]
    results = (asyncio.run(exchange.place_batch_async(1001, batch)) if on_loop
               else exchange.place_batch(1001, batch))
    refused, taker, behind = results
    assert isinstance(refused, InvalidTickSize)
    assert isinstance(taker, CommandOutcome) and isinstance(behind, CommandOutcome)
    assert [type(event).__name__ for event in taker.events].count("TradeExecuted") == 1
    assert [type(event).__name__ for event in behind.events] == ["OrderAccepted", "FundsLocked"]
