"""The Exchange: the in-process entry point the HTTP layer and the tests use to trade.

It turns a request in API units (Decimals, symbols, ids as strings) into an engine command in the
pair's integer units, routes it to the pair's actor through a stable handle, and waits for the reply,
which arrives only after the command's facts are committed. It never touches a book itself.

Waiting is bounded: after `timeout` seconds the caller gets `EngineTimeout` (HTTP 504, outcome unknown:
look the order up by client_order_id). An actor that is restarting answers `EngineUnavailable` (503).

Client order ids are unique per user. The check is made here, before the order reaches a pair: the
database holds every committed id, and ids of orders still in flight are held in memory until their
commit resolves, so two concurrent requests with the same id cannot both pass. A request whose id is
held by another one in flight waits for that one's answer (at most half the timeout), then looks again:
it is a duplicate of the stored order, or, the other order having been refused, the id is free for it.
A batch takes its ids in sorted order, so two batches never wait on each other.

An optional `CommandObserver` (metrics and request tracing, composed by `ops`) hears every command sent
to a pair and every placement answered, refusals made here included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from decimal import Decimal
from typing import Any, Protocol, cast

from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    DomainError,
    OrderAccepted,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderNotFound,
    OrderRejected,
    OrderType,
    PairSpec,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradeEngineError,
    ValidationError,
)
from tradeengine.engine.errors import DuplicateClientOrderId, EngineTimeout, EngineUnavailable, UnknownSymbol
from tradeengine.storage.ids import MAX_ORDER_ID

from .ledger import AssetBalance
from .pair import CommandOutcome, Depth, DepthQuery, Execute, Top, TopQuery
from .supervision import ActorUnavailable, ChildState
from .wallet import BalancesQuery


class PairRoute(Protocol):
    """How the Exchange reaches one pair: its spec and a handle that survives restarts."""

    spec: PairSpec

    def tell(self, message: Any, wait: float = 0.0) -> None:
        """Send without waiting for an answer; wait up to `wait` s for a restarting pair."""

    def ask(self, message: Any, timeout: float) -> Any:
        """Send and wait for the answer."""


class OrderDirectory(Protocol):
    """Where committed orders are found (the database)."""

    def locate(self, order_id: int) -> tuple[str, int] | None:
        """Return (symbol, user_id) of an order, or None."""

    def find_client_order(self, user_id: int, client_order_id: str) -> int | None:
        """Return the id of the user's order with this client order id, or None."""

    def remember(self, order_id: int, symbol: str, user_id: int) -> None:
        """Note a placement just committed (a later `locate` may answer from memory)."""


class CommandObserver(Protocol):
    """Told about every command on its way through the actors, for metrics and request tracing.

    Every method is called on the thread named, must be quick and must not raise.
    """

    def command_sent(self, command: Command, reply: Future[Any]) -> None:
        """`command` is about to go to its pair; `reply` resolves once it is committed (caller's thread)."""

    def command_handed(self, reply: Future[Any]) -> None:
        """The pair matched the command of `reply` and handed its facts to the writer (pair's thread)."""

    def order_placed(self, request: OrderRequest, result: CommandOutcome | TradeEngineError) -> None:
        """The Exchange answers one order placement: its committed outcome or the error (caller's thread)."""


@dataclasses.dataclass(frozen=True, slots=True)
class OrderRequest:
    """A new order in API units, already type-checked by the caller."""

    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal | None = None
    quote_quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce | None = None
    post_only: bool = False
    self_trade_prevention: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER
    client_order_id: str | None = None


class Exchange:
    """Place, amend and cancel orders and read books, through the pair actors."""

    def __init__(
        self,
        *,
        routes: Callable[[str], PairRoute | None],
        next_order_id: Callable[[], tuple[int, int]],
        clock_us: Callable[[], int],
        orders: OrderDirectory,
        timeout: float,
        wallet: PairRoute | Any,
        symbols: Callable[[], list[str]],
        observer: CommandObserver | None = None,
    ) -> None:
        self._routes = routes
        self._observer = observer
        self._wallet = wallet
        self._symbols = symbols
        self._next_order_id = next_order_id
        self._clock_us = clock_us
        self._orders = orders
        self._timeout = timeout
        # (user, client order id) → the request holding it while its order is in flight.
        self._in_flight: dict[tuple[int, str], _Flight] = {}
        self._in_flight_lock = threading.Lock()

    # -- orders ---------------------------------------------------------------------------------------

    def place(self, user_id: int, request: OrderRequest) -> CommandOutcome:
        """Place one order; return its committed outcome."""
        (result,) = self.place_batch(user_id, [request])
        if isinstance(result, TradeEngineError):
            raise result
        return result

    async def place_async(self, user_id: int, request: OrderRequest) -> CommandOutcome:
        """:meth:`place` for a caller on an event loop (see :meth:`place_batch_async`)."""
        (result,) = await self.place_batch_async(user_id, [request])
        if isinstance(result, TradeEngineError):
            raise result
        return result

    def place_batch(
        self, user_id: int, requests: Sequence[OrderRequest]
    ) -> list[CommandOutcome | TradeEngineError]:
        """Place several orders: all are sent before any reply is awaited, results in request order."""
        held: list[tuple[int, str]] = []
        try:
            claims = self._hold_client_ids(user_id, requests, held)
            results = _refusals(claims)
            # rounds: an item after an earlier one with its id is decided (and sent) once that one is answered
            while todo := _next_round(requests, claims, results):
                pending = [self._submit(user_id, requests[index]) for index in todo]
                for index, item in zip(todo, pending, strict=True):
                    results[index] = item if isinstance(item, TradeEngineError) else self._settle(item)
        finally:
            self._release_client_ids(held)
        return self._placed(user_id, requests, _answers(results))

    async def place_batch_async(
        self, user_id: int, requests: Sequence[OrderRequest]
    ) -> list[CommandOutcome | TradeEngineError]:
        """:meth:`place_batch` for a caller on an event loop, which it never blocks.

        The replies are awaited on the loop. What may wait is done on a thread of the loop's executor: the
        database lookup of client order ids (only when the batch carries any), and the wait for a pair
        that is restarting (a running pair takes the command at once).
        """
        held: list[tuple[int, str]] = []
        lookup: asyncio.Future[list[_Claim]] | None = None
        try:
            claims: list[_Claim]
            if any(request.client_order_id is not None for request in requests):
                lookup = asyncio.ensure_future(
                    asyncio.to_thread(self._hold_client_ids, user_id, requests, held))
                if not (await asyncio.wait({lookup}, timeout=self._timeout))[0]:
                    # A database that hangs: nothing is sent. The ids it holds go when the lookup ends.
                    raise EngineUnavailable(f"the database did not answer the client_order_id lookup within "
                                            f"{self._timeout:g} s; nothing was placed")
                claims = lookup.result()
            else:
                claims = [None] * len(requests)
            results = _refusals(claims)
            while todo := _next_round(requests, claims, results):  # rounds, as in place_batch
                pending: list[Future[Any] | TradeEngineError] = []
                for index in todo:
                    try:
                        route, command = self._in_flight_command(user_id, requests[index])
                        pending.append(await self._send_async(route, command))
                    except TradeEngineError as exc:
                        pending.append(exc)
                await _answered([item for item in pending if isinstance(item, Future)], self._timeout)
                for index, item in zip(todo, pending, strict=True):
                    results[index] = (item if isinstance(item, TradeEngineError)
                                      else self._settle(item, timeout=0.0))
        finally:
            if lookup is None or lookup.done():
                self._release_client_ids(held)
            else:
                lookup.add_done_callback(lambda _: self._release_client_ids(held))
        return self._placed(user_id, requests, _answers(results))

    def _submit(self, user_id: int, request: OrderRequest) -> Future[Any] | TradeEngineError:
        """Send one placement to its pair: the reply's future, or the error that stopped it here."""
        try:
            return self._send(*self._in_flight_command(user_id, request))
        except TradeEngineError as exc:
            return exc

    def _in_flight_command(self, user_id: int, request: OrderRequest) -> tuple[PairRoute, PlaceOrder]:
        """The placement's pair and command, its client order id noted as carried by the command's order."""
        route, command = self._place_command(user_id, request)
        self._note_in_flight(user_id, request.client_order_id, command.order_id)
        return route, command

    def _placed(self, user_id: int, requests: Sequence[OrderRequest],
                results: list[CommandOutcome | TradeEngineError]) -> list[CommandOutcome | TradeEngineError]:
        """Remember where the placed orders live and tell the observer; return ``results``."""
        for result in results:
            if isinstance(result, CommandOutcome):
                placed = result.events[0]
                if isinstance(placed, OrderAccepted | OrderRejected):
                    self._orders.remember(int(placed.order_id), result.spec.symbol, user_id)
        if self._observer is not None:
            for request, result in zip(requests, results, strict=True):
                self._observer.order_placed(request, result)
        return results

    def cancel(self, user_id: int, order_id: str) -> CommandOutcome:
        """Cancel one of the user's live orders."""
        route, oid = self._owned_order(user_id, order_id)
        command = CancelOrder(order_id=oid, user_id=str(user_id), timestamp=self._clock_us())
        return self._wait_on_order(self._send(route, command), oid, OrderNotCancellable)

    def amend(self, user_id: int, order_id: str, *, quantity: Decimal | None = None,
              price: Decimal | None = None) -> CommandOutcome:
        """Change the quantity and/or price of one of the user's resting orders."""
        if quantity is None and price is None:
            raise ValidationError("give a new quantity, a new price, or both")
        route, oid = self._owned_order(user_id, order_id)
        spec = route.spec
        command = AmendOrder(
            order_id=oid, user_id=str(user_id),
            quantity=None if quantity is None else spec.quantity_to_lots(quantity),
            price=None if price is None else spec.price_to_ticks(price),
            timestamp=self._clock_us(),
        )
        return self._wait_on_order(self._send(route, command), oid, OrderNotAmendable)

    def cancel_all(self, user_id: int, symbol: str | None = None) -> list[CommandOutcome]:
        """Cancel every live order of the user on `symbol`, or on every pair."""
        routes = [self._route(s) for s in ([symbol] if symbol is not None else self._symbols())]
        futures = [self._send(route, CancelAll(user_id=str(user_id), timestamp=self._clock_us()))
                   for route in routes]
        return [self._wait(future) for future in futures]

    def balances(self, user_id: int) -> list[AssetBalance]:
        """The user's balances per asset (available and locked, in atoms)."""
        result: list[AssetBalance] = self._wallet.ask(BalancesQuery(user_id), self._timeout)
        return result

    # -- market data ----------------------------------------------------------------------------------

    def depth(self, symbol: str, levels: int) -> Depth:
        """Aggregated levels of a pair's book, best first."""
        result: Depth = self._route(symbol).ask(DepthQuery(levels), self._timeout)
        return result

    def top(self, symbol: str) -> Top:
        """Best bid/ask with quantities and the last trade price of a pair."""
        result: Top = self._route(symbol).ask(TopQuery(), self._timeout)
        return result

    def spec(self, symbol: str) -> PairSpec:
        """The spec of a trading pair (UNKNOWN_SYMBOL when there is none)."""
        return self._route(symbol).spec

    # -- internals ------------------------------------------------------------------------------------

    def _route(self, symbol: str) -> PairRoute:
        route = self._routes(symbol)
        if route is None:
            raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")
        return route

    def _place_command(self, user_id: int, request: OrderRequest) -> tuple[PairRoute, PlaceOrder]:
        route = self._route(request.symbol)
        spec = route.spec
        order_id, timestamp = self._next_order_id()
        command = PlaceOrder(
            order_id=str(order_id), user_id=str(user_id), side=request.side, order_type=request.type,
            quantity=None if request.quantity is None else spec.quantity_to_lots(request.quantity),
            price=None if request.price is None else spec.price_to_ticks(request.price),
            stop_price=(None if request.stop_price is None
                        else spec.price_to_ticks(request.stop_price, field="stop_price")),
            quote_quantity=(None if request.quote_quantity is None
                            else spec.amount_to_atoms(request.quote_quantity)),
            time_in_force=request.time_in_force, post_only=request.post_only,
            self_trade_prevention=request.self_trade_prevention,
            client_order_id=request.client_order_id, timestamp=timestamp,
        )
        return route, command

    def _owned_order(self, user_id: int, order_id: str) -> tuple[PairRoute, str]:
        """Find the pair of the user's order; another user's order is as unknown as a missing one."""
        try:
            oid = int(order_id)
        except ValueError:
            oid = -1
        location = self._orders.locate(oid) if 0 < oid <= MAX_ORDER_ID else None
        if location is None or location[1] != user_id:
            raise OrderNotFound(f"order {order_id} not found")
        return self._route(location[0]), str(oid)

    def _send(self, route: PairRoute, command: Command) -> Future[Any]:
        """Hand the command to the pair; a restarting pair is waited for, within the request timeout."""
        reply = self._reply(command)
        route.tell(Execute(command, reply), wait=self._timeout)
        return reply

    async def _send_async(self, route: PairRoute, command: Command) -> Future[Any]:
        """:meth:`_send` on an event loop: a running pair takes the command at once; a restarting one is
        waited for on a thread, within the request timeout."""
        reply = self._reply(command)
        message = Execute(command, reply)
        try:
            route.tell(message)
        except ActorUnavailable as exc:
            if exc.state is not ChildState.RESTARTING:
                raise
            await asyncio.to_thread(route.tell, message, self._timeout)
        return reply

    def _reply(self, command: Command) -> Future[Any]:
        """The future the command's reply will resolve, shown to the observer."""
        reply: Future[Any] = Future()
        if self._observer is not None:
            self._observer.command_sent(command, reply)
        return reply

    def _wait(self, future: Future[Any]) -> CommandOutcome:
        result = self._settle(future)
        if isinstance(result, TradeEngineError):
            raise result
        return result

    def _wait_on_order(self, future: Future[Any], order_id: str,
                       when_final: type[OrderNotCancellable] | type[OrderNotAmendable]) -> CommandOutcome:
        """Wait for a command on one committed order of the user (found in the database).

        A pair rebuilds only live orders, and remembers the ids of orders that ended since: an order the
        database holds that the pair does not know ended before the pair's current incarnation started.
        It is final (409), not unknown (404).
        """
        try:
            return self._wait(future)
        except OrderNotFound as exc:
            raise when_final(f"order {order_id} is already final") from exc

    def _settle(self, future: Future[Any], timeout: float | None = None) -> CommandOutcome | TradeEngineError:
        try:
            outcome: CommandOutcome = future.result(timeout=self._timeout if timeout is None else timeout)
        except FutureTimeout:
            return EngineTimeout(f"the engine did not answer within {self._timeout} s; outcome unknown "
                                 "(look the order up by client_order_id)")
        except TradeEngineError as exc:
            return exc
        return outcome

    def _hold_client_ids(self, user_id: int, requests: Sequence[OrderRequest],
                         held: list[tuple[int, str]]) -> list[_Claim]:
        """Hold the batch's client order ids (added to ``held``) while it is in flight; refuse duplicates.

        Per item: None (go), the refusal, or, for an id an earlier item of the batch carries, that item's
        index (its outcome decides: see `_next_round`). Reads the database for each id given. The caller
        releases ``held`` when the batch is answered.
        """
        first: dict[str, int] = {}
        claims: list[_Claim] = [None] * len(requests)
        for index, request in enumerate(requests):
            client_order_id = request.client_order_id
            if client_order_id is not None and client_order_id in first:
                claims[index] = first[client_order_id]
            elif client_order_id is not None:
                first[client_order_id] = index
        deadline = time.monotonic() + self._timeout / 2
        for client_order_id in sorted(first):  # one order for all: two batches never wait on each other
            claims[first[client_order_id]] = self._hold_client_id(user_id, client_order_id, held, deadline)
        return claims

    def _release_client_ids(self, held: list[tuple[int, str]]) -> None:
        with self._in_flight_lock:
            flights = [self._in_flight.pop(key) for key in held]
        for flight in flights:
            flight.released.set()

    def _note_in_flight(self, user_id: int, client_order_id: str | None, order_id: str) -> None:
        if client_order_id is not None:
            with self._in_flight_lock:
                self._in_flight[(user_id, client_order_id)].order_id = order_id

    def _hold_client_id(self, user_id: int, client_order_id: str, held: list[tuple[int, str]],
                        deadline: float) -> TradeEngineError | None:
        """Hold the id for this request, once no other request holds it, and look it up in the database."""
        key = (user_id, client_order_id)
        while True:
            with self._in_flight_lock:
                flight = self._in_flight.get(key)
                if flight is None:
                    self._in_flight[key] = _Flight()
                    held.append(key)
                    break
            if not flight.released.wait(max(deadline - time.monotonic(), 0.0)):
                return _duplicate(client_order_id, flight.order_id, "is carried by an order in flight whose "
                                  "outcome is not known yet: look it up by client_order_id")
        existing = self._orders.find_client_order(user_id, client_order_id)
        if existing is not None:
            return _duplicate(client_order_id, existing)
        return None


@dataclasses.dataclass(eq=False)
class _Flight:
    """A client order id held by a request: the id of the order carrying it once sent; set when released."""

    order_id: str | None = None
    released: threading.Event = dataclasses.field(default_factory=threading.Event)


_Claim = TradeEngineError | int | None
"""A batch item's standing before it is sent: go (None), refused, or waiting on an earlier item (its
index)."""
_Result = CommandOutcome | TradeEngineError | None


def _refusals(claims: list[_Claim]) -> list[_Result]:
    """The results known before anything is sent: the refusals; None for the rest."""
    return [claim if isinstance(claim, TradeEngineError) else None for claim in claims]


def _next_round(requests: Sequence[OrderRequest], claims: list[_Claim], results: list[_Result]) -> list[int]:
    """Return the items to send next: in request order, every undecided item up to the first one that waits
    on an earlier item with the same client order id still unanswered, so that the batch's orders reach
    their pairs in request order. Empty once every item is decided.

    An item waiting on an answered item is decided on the way. The earlier item placed an order (accepted
    or rejected: stored), or was refused because the id was already taken: the later one is a duplicate
    of that order. It was refused otherwise before anything changed (a rule, an unknown pair): the id is
    still free, so the first item waiting on it is sent and the others wait on that one. Its outcome is
    unknown (a timeout, an engine restarting): the later items are refused, as the id may be taken.
    """
    todo: list[int] = []
    for index, claim in enumerate(claims):
        if results[index] is not None:
            continue
        if type(claim) is int:
            earlier = results[claim]
            if earlier is None:  # the earlier item goes in this round: this one waits for its answer
                break
            client_order_id = requests[index].client_order_id
            assert client_order_id is not None
            if isinstance(earlier, CommandOutcome):
                placed = earlier.events[0]
                assert isinstance(placed, OrderAccepted | OrderRejected)
                results[index] = _duplicate(client_order_id, placed.order_id)
            elif isinstance(earlier, DuplicateClientOrderId):  # the id was taken before the batch came
                results[index] = _duplicate(client_order_id, earlier.order_id)
            elif isinstance(earlier, DomainError):
                claims[index] = None
                for later in range(index + 1, len(claims)):
                    if claims[later] == claim:
                        claims[later] = index
            else:
                results[index] = _duplicate(client_order_id, None, "is carried by an earlier order of this "
                                            "batch whose outcome is unknown")
            if results[index] is not None:
                continue
        todo.append(index)
    return todo


def _answers(results: list[_Result]) -> list[CommandOutcome | TradeEngineError]:
    """The results once every item is decided."""
    assert all(result is not None for result in results)
    return cast(list[CommandOutcome | TradeEngineError], results)


async def _answered(replies: list[Future[Any]], timeout: float) -> None:
    """Wait on the running loop until every reply is resolved, or ``timeout`` seconds have passed.

    The loop is woken once, by the last reply (a batch's replies mostly resolve together, on the writer's
    thread): one wake-up per batch instead of one per order. The replies themselves are never cancelled.
    """
    if not replies:
        return
    loop = asyncio.get_running_loop()
    all_answered = loop.create_future()
    remaining = [len(replies)]
    lock = threading.Lock()

    def answered(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile: no one waits any more
            loop.call_soon_threadsafe(_resolve, all_answered)

    for reply in replies:
        reply.add_done_callback(answered)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_answered, timeout)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not cancelled by a timeout meanwhile
        waiter.set_result(None)


def _duplicate(client_order_id: str, existing: int | str | None,
               why: str = "is already used") -> DuplicateClientOrderId:
    error = DuplicateClientOrderId(f"client_order_id {client_order_id} {why}", field="client_order_id")
    error.order_id = None if existing is None else str(existing)
    return error
