"""One pair's matching core: price-time priority, stops, self-trade prevention, funds and fee facts.

`MatchingEngine.execute(command)` returns the list of events the command caused, or raises a
`DomainError` having changed nothing (no event, no sequence number, no lock). It never calls out except to
the injected `FundsGate`, it never reads the clock, and its events depend only on the commands, the gate's
answers and the start state: the same inputs give byte-identical events.

Rules decided here (documented for the API layer):
- A stop whose condition already holds when placed (BUY: last ≥ stop, SELL: last ≤ stop) triggers at once,
  in the same command: OrderAccepted(PENDING_TRIGGER) then StopTriggered. With no last price yet it waits.
- A stop triggers when a trade prints at or through its stop price (BUY: a trade ≥ stop, SELL: a trade ≤
  stop), also a trade in the middle of a sweep that the last price then moves past. After every taker that
  traded, the oldest (lowest sequence) stop reached by a trade of the command is processed, its trades may
  reach more, and the check repeats until no pending stop is reached.
- An amend that changes the price so that the order crosses makes it a taker again (it matches like a new
  GTC order at the back of the queue); for a post-only order such an amend is refused (POST_ONLY_WOULD_TAKE).
- Self-trade prevention is the taker's mode. EXPIRE_TAKER expires the taker's remainder at the first own
  resting order; EXPIRE_MAKER expires own resting orders and keeps matching; EXPIRE_BOTH expires the own
  resting order and the taker's remainder; NONE lets them trade. This holds also for a MARKET BUY whose
  walk finds nothing to buy because its own order is first in line.
- Funds: LIMIT/STOP_LIMIT BUY lock price × quantity of quote, SELL orders lock their quantity of base, a
  MARKET BUY locks exactly what the book walk (with STP as above) says it will spend, a STOP_MARKET BUY
  locks nothing until triggered (refused then → EXPIRED, reason INSUFFICIENT_BALANCE). A FOK that cannot
  fill completely expires before asking for funds. A MARKET BUY by quote budget buys the whole lots the
  walk found; its internal quantity is that lot count, held to the pair's min and max quantity, and what
  it spends to the minimum notional. A post-only order that would take is REJECTED before its funds are
  asked for (the gate can only lock, and a rejected order must not move funds).
- Fees: maker rate for the resting order, taker rate for the incoming one, on what each receives (buyer in
  base, seller in quote), rounded up to one atom, credited to `FEE_ACCOUNT` (see events.TradeExecuted).
- Trade ids are the TradeExecuted event's sequence (see events.trade_id).
- Cancelling a final order answers ORDER_NOT_CANCELLABLE while its id is remembered (see pair_state).
- A MARKET order by quantity is held to the minimum notional at the best opposite price (quantity × best
  ask for a BUY, × best bid for a SELL; with that side empty it expires unfilled anyway), a STOP_MARKET
  at its stop price.
- An amend down to exactly the filled quantity completes the order: it ends FILLED and releases its lock.
- An amend to the order's current price and quantity changes nothing: no event, no sequence number.

The hot paths (a well-formed GTC/IOC LIMIT or MARKET-by-quantity order, the trade loop) are written flat on
purpose: every call and attribute lookup there is paid on each command. Some choices there are for the
mypyc build (see setup.py) and are commented where they are made: Final aliases of Python classes, the
`Timestamp` type, reading a command's fields with one `astuple` call. Complexity per command: O(log L)
for a new price level, O(1) per resting order touched, O(orders walked) for FOK and MARKET BUY locks, O(N)
for cancel_all (a scan of the pair's live orders).
"""

from __future__ import annotations

from typing import Any, Final, cast

from msgspec import structs

from .book import Level
from .commands import AmendOrder, CancelAll, CancelOrder, Command, PlaceOrder
from .errors import (
    DuplicateOrderId,
    IllegalStatusTransition,
    InsufficientBalance,
    NotionalTooSmall,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderNotFound,
    PostOnlyWouldTake,
    ValidationError,
)
from .events import EngineEvent, OrderAmended, OrderRejected, StopTriggered
from .events import FundsLocked as _FundsLocked
from .events import FundsReleased as _FundsReleased
from .events import OrderAccepted as _OrderAccepted
from .events import OrderCancelled as _OrderCancelled
from .events import OrderExpired as _OrderExpired
from .events import TradeExecuted as _TradeExecuted
from .lifecycle import (
    CANCELLED,
    EXPIRED,
    FILLED,
    NEW,
    OPEN,
    PARTIALLY_FILLED,
    PENDING_TRIGGER,
    REJECTED,
    TRANSITIONS,
    check_transition,
)
from .liquidity import walk_liquidity
from .order import (
    BUY,
    EXPIRE_BOTH,
    EXPIRE_TAKER,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    STOP_LIMIT,
    STOP_MARKET,
    STP_NONE,
    Order,
    OrderType,
    Reason,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from .pair_state import PairState, by_sequence
from .units import format_atoms, format_decimal
from .validation import CLIENT_ORDER_ID, amend_requeues, check_quantity, validate_amend, validate_place

Timestamp = Any
"""A command's timestamp inside the engine: never interpreted, only copied onto the command's events. Typed
Any so that a mypyc build hands the command's own int object on to every event: typed `int`, it would be
unboxed on the way in and boxed again (a new int object) for each event, 2.5 % of a compiled command's
instructions. Interpreted, the type makes no difference."""

# The Python classes and function the hot paths use, bound to Final names. Compiled with mypyc a Final name
# is a C static, while any other module-level name is read from the module's dict at each use (one dict
# lookup per event: 7 % of a compiled command's instructions, measured); interpreted, both cost the same.
_PLACE_ORDER: Final = PlaceOrder
_CANCEL_ORDER: Final = CancelOrder
_NOT_CANCELLABLE: Final = OrderNotCancellable
astuple: Final = structs.astuple
OrderAccepted: Final = _OrderAccepted
FundsLocked: Final = _FundsLocked
FundsReleased: Final = _FundsReleased
TradeExecuted: Final = _TradeExecuted
OrderCancelled: Final = _OrderCancelled
OrderExpired: Final = _OrderExpired

_FILLABLE: Final = frozenset(
    status for status, targets in TRANSITIONS.items() if PARTIALLY_FILLED in targets and FILLED in targets
)
"""The statuses a trade may move on from (to PARTIALLY_FILLED or FILLED), read off the lifecycle table:
one set lookup per side of a trade instead of a table lookup and a set lookup."""
_FOK_UNFILLED: Final = Reason.FILL_OR_KILL_UNFILLED
_IOC: Final = Reason.IMMEDIATE_OR_CANCEL
_STP: Final = Reason.SELF_TRADE_PREVENTION
_NO_FUNDS: Final = Reason.INSUFFICIENT_BALANCE

_PlaceFields = tuple[
    str, str, Side, OrderType, object, object, object, object, TimeInForce | None, bool, SelfTradePrevention,
    str | None, Timestamp,
]
"""PlaceOrder's fields in their declared order: order_id, user_id, side, order_type, quantity, price,
stop_price, quote_quantity, time_in_force, post_only, self_trade_prevention, client_order_id, timestamp.
The four numbers are `object` so that a compiled build checks their types where the pure one does (in the
hot-path test, else in validate_place) instead of raising TypeError on reading a float or a str."""
_ValidFields = tuple[
    str, str, Side, OrderType, int | None, int | None, int | None, int | None, TimeInForce | None, bool,
    SelfTradePrevention, str | None, Timestamp,
]
"""PlaceOrder's fields once validated (the hot-path test or validate_place): the numbers are ints or None."""


class MatchingEngine(PairState):
    """The order book, stop book, sequence and last price of one pair, changed only by commands.

    Build it with `MatchingEngine(spec, funds, sequence=0, last_price=None, finished_capacity=10_000)`.
    """

    __slots__ = ()

    # -- commands ----------------------------------------------------------------------------------

    def execute(self, command: Command) -> list[EngineEvent]:
        """Apply any command and return its events."""
        if type(command) is _PLACE_ORDER:
            return self.place(command)
        if type(command) is _CANCEL_ORDER:
            return self.cancel(command)
        if type(command) is AmendOrder:
            return self.amend(command)
        if type(command) is CancelAll:
            return self.cancel_all(command)
        raise ValidationError(f"unknown command {type(command).__name__}")

    def place(self, command: PlaceOrder) -> list[EngineEvent]:
        """Accept (or reject) a new order, lock its funds, match it, rest or expire it, run stops."""
        # One C call copies the 13 fields out: from compiled code each `command.field` is a generic
        # attribute lookup. The order is PlaceOrder's field order (pinned by a test).
        fields: _PlaceFields = astuple(command)
        (order_id, user_id, side, order_type, quantity, price, stop_price, quote_quantity, tif, post_only,
         stp, client_order_id, ts) = fields
        book = self.book
        if (  # hot paths: a well-formed GTC/IOC LIMIT order or MARKET order by quantity with an unused id
            type(quantity) is int  # (anything else gets the full validation)
            and self.min_lots <= quantity <= self.max_lots
            and stop_price is None
            and quote_quantity is None
            and order_id
            and user_id
            and order_id not in book.orders
            and order_id not in self.stops.orders
            and order_id not in self._finished
            and order_id not in self._finished_older
            and (client_order_id is None or CLIENT_ORDER_ID.fullmatch(client_order_id) is not None)
        ):
            if (
                order_type is LIMIT
                and (tif is None or tif is GTC or (tif is IOC and not post_only))
                and type(price) is int
                and price > 0
                and price * quantity * self.notional_unit >= self.min_notional
            ):
                return self._place_limit(
                    command, order_id, user_id, side, price, quantity, GTC if tif is None else tif, post_only,
                    stp, client_order_id, ts,
                )
            if order_type is MARKET and price is None and (tif is None or tif is IOC) and not post_only:
                return self._place_other(cast(_ValidFields, fields), IOC)
        tif = validate_place(self.spec, command)
        if self._id_used(order_id):
            raise DuplicateOrderId(f"order id {order_id} is already used on this pair", field="order_id")
        if order_type is LIMIT and tif is not FOK:
            assert type(price) is int and type(quantity) is int
            return self._place_limit(
                command, order_id, user_id, side, price, quantity, tif, post_only, stp, client_order_id, ts
            )
        return self._place_other(cast(_ValidFields, fields), tif)

    def _place_other(self, fields: _ValidFields, tif: TimeInForce) -> list[EngineEvent]:
        """Place a validated FOK LIMIT, MARKET or stop order, given its command's fields."""
        (order_id, user_id, side, order_type, quantity, price, stop_price, quote_quantity, _, post_only, stp,
         client_order_id, ts) = fields
        is_buy = side is BUY
        events: list[EngineEvent] = []
        last_price = self.last_price
        if order_type is MARKET and quantity is not None and self.min_notional:
            self._check_market_notional(is_buy, quantity)
        lots, lock, expiry = self._plan_entry(
            order_type, side, user_id, stp, quantity, price, quote_quantity, tif
        )
        asset = self.quote_asset if is_buy else self.base_asset
        if lock and not self.funds.try_lock(user_id, asset, lock):
            raise InsufficientBalance(f"not enough {asset} available: the order needs {format_atoms(lock)}")
        is_stop = order_type is STOP_LIMIT or order_type is STOP_MARKET
        status = PENDING_TRIGGER if is_stop else OPEN
        self.sequence += 1
        order = Order(
            order_id, user_id, side, order_type, price, stop_price, lots, quote_quantity, tif, post_only, stp,
            client_order_id, status, self.sequence,
        )
        events.append(OrderAccepted(
            self.sequence, ts, order_id, user_id, client_order_id, side, order_type, status, price,
            stop_price, quantity, quote_quantity, tif, post_only, stp,
        ))
        if lock:
            self._lock(order, lock, events, ts)
        if is_stop:
            self.stops.add(order)
        elif expiry is _IOC:  # a MARKET BUY with nothing to buy: its own order may be first in line
            self._expire(order, _STP if self._self_trade_at_top(order, events, ts) else _IOC, events, ts)
        elif expiry is not None:
            self._expire(order, expiry, events, ts)
        else:
            self._take(order, events, ts)
        if self.stops.orders and (is_stop or order.filled):
            self._run_stops(events, ts, last_price)
        return events

    def _place_limit(  # the command's fields come in as arguments, already read by place()
        self, command: PlaceOrder, order_id: str, user_id: str, side: Side, price: int, quantity: int,
        tif: TimeInForce, post_only: bool, stp: SelfTradePrevention, client_order_id: str | None,
        ts: Timestamp,
    ) -> list[EngineEvent]:
        """Place a validated GTC or IOC LIMIT order (the hot path: no book walk needed before locking)."""
        book = self.book
        if side is BUY:
            crossing = book.best_ask is not None and price >= book.best_ask
            asset = self.quote_asset
            lock = price * quantity * self.notional_unit
        else:
            crossing = book.best_bid is not None and price <= book.best_bid
            asset = self.base_asset
            lock = quantity * self.base_unit
        if crossing and post_only:
            return self._reject(command, tif, [])
        if not self.funds.try_lock(user_id, asset, lock):
            raise InsufficientBalance(f"not enough {asset} available: the order needs {format_atoms(lock)}")
        sequence = self.sequence + 1
        self.sequence = sequence + 1
        order = Order(
            order_id, user_id, side, LIMIT, price, None, quantity, None, tif, post_only, stp, client_order_id,
            OPEN, sequence,
        )
        order.locked = lock
        events: list[EngineEvent] = [
            OrderAccepted(  # order.price, not price: compiled, it is the int object the order already holds
                sequence, ts, order_id, user_id, client_order_id, side, LIMIT, OPEN, order.price, None,
                quantity, None, tif, post_only, stp,
            ),
            FundsLocked(sequence + 1, ts, order_id, user_id, asset, lock),
        ]
        if crossing:
            last_price = self.last_price
            self._take(order, events, ts)
            if self.stops.orders and order.filled:
                self._run_stops(events, ts, last_price)
        elif tif is GTC:
            book.add(order)
        else:
            self._expire(order, _IOC, events, ts)
        return events

    def _plan_entry(
        self, order_type: OrderType, side: Side, user_id: str, stp: SelfTradePrevention, quantity: int | None,
        price: int | None, quote_quantity: int | None, tif: TimeInForce,
    ) -> tuple[int, int, Reason | None]:
        """Return (quantity in lots, atoms to lock, expiry reason if it must expire untouched)."""
        spec = self.spec
        is_buy = side is BUY
        if order_type is MARKET and is_buy:
            lots, spend = walk_liquidity(
                self.book, spec.quote_atoms_per_tick_lot, BUY, user_id, stp, None, quantity, quote_quantity,
            )
            if quantity is not None:
                return quantity, spend, (_IOC if lots == 0 else None)
            if lots:
                self._check_budget_buys(lots, spend)
            return lots, spend, (_IOC if lots == 0 else None)
        assert quantity is not None
        if tif is FOK and order_type is LIMIT:
            lots, _ = walk_liquidity(
                self.book, spec.quote_atoms_per_tick_lot, side, user_id, stp, price, quantity
            )
            if lots < quantity:
                return quantity, 0, _FOK_UNFILLED
        if not is_buy:
            return quantity, quantity * spec.base_atoms_per_lot, None
        if price is None:  # STOP_MARKET BUY: nothing until triggered
            return quantity, 0, None
        return quantity, price * quantity * spec.quote_atoms_per_tick_lot, None

    def _check_market_notional(self, is_buy: bool, quantity: int) -> None:
        """Refuse a MARKET order by quantity worth less than the minimum notional at the best price."""
        best = self.book.best_ask if is_buy else self.book.best_bid
        if best is not None and best * quantity * self.notional_unit < self.min_notional:
            spec = self.spec
            raise NotionalTooSmall(
                f"quantity {spec.format_quantity(quantity)} at the best "
                f"{'ask' if is_buy else 'bid'} {spec.format_price(best)} is worth less "
                f"than the minimum notional {format_decimal(spec.min_notional)}", field="quantity")

    def _check_budget_buys(self, lots: int, spend: int) -> None:
        """Hold what a quote budget buys at the book's prices to the pair's quantity and notional rules."""
        spec = self.spec
        buys = f"quote_quantity buys {spec.format_quantity(lots)} at the book's prices"
        check_quantity(spec, lots, "quote_quantity", f"{buys}, which")
        if spend < self.min_notional:
            raise NotionalTooSmall(
                f"{buys} for {format_atoms(spend)}, less than the minimum notional "
                f"{format_decimal(spec.min_notional)}", field="quote_quantity")

    def _self_trade_at_top(self, taker: Order, events: list[EngineEvent], ts: Timestamp) -> bool:
        """Apply the taker's self-trade prevention to its own orders first in line; True if it stopped.

        For a MARKET BUY whose walk found nothing to buy: the match is never run, so what it would do to
        the own orders it meets first is done here (EXPIRE_MAKER and EXPIRE_BOTH expire them).
        """
        stp = taker.stp
        if stp is STP_NONE:
            return False
        book = self.book
        is_buy = taker.side is BUY
        while True:
            best = book.best_ask if is_buy else book.best_bid
            if best is None:
                return False
            maker = (book.ask_levels if is_buy else book.bid_levels)[best].head
            if maker is None or maker.user_id != taker.user_id:
                return False
            if stp is EXPIRE_TAKER:
                return True
            book.remove(maker)
            self._expire(maker, _STP, events, ts)
            if stp is EXPIRE_BOTH:
                return True

    def _crosses(self, is_buy: bool, price: int | None) -> bool:
        if price is None:
            return False
        if is_buy:
            return self.book.best_ask is not None and price >= self.book.best_ask
        return self.book.best_bid is not None and price <= self.book.best_bid

    def _reject(self, command: PlaceOrder, tif: TimeInForce, events: list[EngineEvent]) -> list[EngineEvent]:
        check_transition(NEW, REJECTED)
        self.sequence += 1
        events.append(OrderRejected(
            self.sequence, command.timestamp, command.order_id, command.user_id, command.client_order_id,
            command.side, command.order_type, REJECTED, command.price, command.stop_price, command.quantity,
            command.quote_quantity, tif, command.post_only,
            command.self_trade_prevention, Reason.POST_ONLY_WOULD_TAKE,
        ))
        self._remember_finished(command.order_id, command.user_id)
        return events

    def cancel(self, command: CancelOrder) -> list[EngineEvent]:
        """Cancel one live order of its owner and release its funds."""
        order = self._live_order(command.order_id, command.user_id, _NOT_CANCELLABLE)
        events: list[EngineEvent] = []
        self._cancel(order, events, command.timestamp)
        return events

    def cancel_all(self, command: CancelAll) -> list[EngineEvent]:
        """Cancel every live order of one user on this pair, oldest first."""
        user_id = command.user_id
        doomed = [o for o in self.book.orders.values() if o.user_id == user_id]
        if command.include_stops:
            doomed.extend(o for o in self.stops.orders.values() if o.user_id == user_id)
        doomed.sort(key=by_sequence)
        events: list[EngineEvent] = []
        for order in doomed:
            self._cancel(order, events, command.timestamp)
        return events

    def _cancel(self, order: Order, events: list[EngineEvent], ts: Timestamp) -> None:
        if order.status is PENDING_TRIGGER:
            self.stops.remove(order)
        else:
            self.book.remove(order)
        order.status = check_transition(order.status, CANCELLED)
        self.sequence += 1
        events.append(OrderCancelled(
            self.sequence, ts, order.order_id, order.user_id, order.filled, order.quantity - order.filled,
            order.cumulative_quote,
        ))
        if order.locked:
            self._release(order, order.locked, events, ts)
        self._remember_finished(order.order_id, order.user_id)

    def amend(self, command: AmendOrder) -> list[EngineEvent]:
        """Change a resting order's quantity and/or price; re-queue it unless only reduced."""
        order = self._live_order(command.order_id, command.user_id, OrderNotAmendable)
        if order.status is PENDING_TRIGGER:
            raise OrderNotAmendable("a pending stop cannot be amended; cancel and place it again")
        price, quantity = validate_amend(self.spec, command, order.price, order.quantity, order.filled)
        if quantity == order.filled:
            return self._amend_to_filled(order, command.timestamp)
        if price == order.price and quantity == order.quantity:
            return []  # nothing changes: no event, no sequence, the order keeps its place
        is_buy = order.side is BUY
        if price != order.price and self._crosses(is_buy, price) and order.post_only:
            raise PostOnlyWouldTake("the amended price would take liquidity", field="price")
        remaining = quantity - order.filled
        spec = self.spec
        if is_buy:
            new_lock = price * remaining * spec.quote_atoms_per_tick_lot
        else:
            new_lock = remaining * spec.base_atoms_per_lot
        delta = new_lock - order.locked
        asset = self.quote_asset if is_buy else self.base_asset
        if delta > 0 and not self.funds.try_lock(order.user_id, asset, delta):
            raise InsufficientBalance(
                f"not enough {asset} available: the amendment needs {format_atoms(delta)} more")
        requeue = amend_requeues(command, order.price, order.quantity)
        ts = command.timestamp
        if requeue:
            self.book.remove(order)
        else:
            assert order.level is not None
            order.level.total -= order.quantity - quantity
        order.price = price
        order.quantity = quantity
        self.sequence += 1
        if requeue:
            order.priority = self.sequence
        events: list[EngineEvent] = [OrderAmended(
            self.sequence, ts, order.order_id, order.user_id, price, quantity, remaining, order.status,
            requeue, order.priority,
        )]
        if delta > 0:
            self._lock(order, delta, events, ts)
        elif delta < 0:
            self._release(order, -delta, events, ts)
        if requeue:
            last_price, filled = self.last_price, order.filled
            self._take(order, events, ts)
            if self.stops.orders and order.filled != filled:
                self._run_stops(events, ts, last_price)
        return events

    def _amend_to_filled(self, order: Order, ts: Timestamp) -> list[EngineEvent]:
        """Complete a partly filled order whose quantity is amended down to what it has filled."""
        assert order.level is not None and order.price is not None
        order.level.total -= order.quantity - order.filled
        order.quantity = order.filled
        self.book.remove(order)
        order.status = check_transition(order.status, FILLED)
        self.sequence += 1
        events: list[EngineEvent] = [OrderAmended(
            self.sequence, ts, order.order_id, order.user_id, order.price, order.quantity, 0, FILLED, False,
            order.priority,
        )]
        self._release_all(order, events, ts)
        self._remember_finished(order.order_id, order.user_id)
        return events

    def _live_order(self, order_id: str, user_id: str, when_final: type[OrderNotCancellable]
                    | type[OrderNotAmendable]) -> Order:
        order = self.book.orders.get(order_id) or self.stops.orders.get(order_id)
        if order is not None and order.user_id == user_id:
            return order
        if order is None and self._finished_owner(order_id) == user_id:
            raise when_final(f"order {order_id} is already final")
        raise OrderNotFound(f"no live order {order_id}", field=None)

    # -- matching ----------------------------------------------------------------------------------

    def _take(self, order: Order, events: list[EngineEvent], ts: Timestamp) -> None:
        """Match an incoming order, then rest its remainder (GTC limit) or expire it."""
        if order.time_in_force is FOK:
            lots, _ = walk_liquidity(
                self.book, self.spec.quote_atoms_per_tick_lot, order.side, order.user_id, order.stp,
                order.price, order.quantity - order.filled,
            )
            if lots < order.quantity - order.filled:
                self._expire(order, _FOK_UNFILLED, events, ts)
                return
        improvement, stopped_by_stp = self._match(order, events, ts)
        if order.filled == order.quantity:
            if order.locked:
                self._release(order, order.locked, events, ts)
            self._remember_finished(order.order_id, order.user_id)
            return
        is_limit = order.order_type is LIMIT or order.order_type is STOP_LIMIT
        if is_limit and order.time_in_force is GTC and not stopped_by_stp:
            self.book.add(order)
            if improvement:
                self._release(order, improvement, events, ts)
            return
        self._expire(order, _STP if stopped_by_stp else _IOC, events, ts)

    def _match(self, taker: Order, events: list[EngineEvent], ts: Timestamp) -> tuple[int, bool]:
        """Trade the taker against the opposite side; return (quote atoms to release, stopped by STP)."""
        book = self.book
        is_buy = taker.side is BUY
        levels = book.ask_levels if is_buy else book.bid_levels
        limit = taker.price
        per_tick_lot = self.notional_unit
        taker_user = taker.user_id
        stp = taker.stp
        remaining = taker.quantity - taker.filled
        improvement = 0
        while remaining:
            best = book.best_ask if is_buy else book.best_bid
            if best is None or (limit is not None and (best > limit if is_buy else best < limit)):
                break
            level = levels[best]
            maker = level.head
            while maker is not None and remaining:
                if maker.user_id == taker_user and stp is not STP_NONE:
                    if stp is EXPIRE_TAKER:
                        return improvement, True
                    following = maker.next
                    book.remove(maker)
                    self._expire(maker, _STP, events, ts)
                    if stp is EXPIRE_BOTH:
                        return improvement, True
                    maker = following
                    continue
                lots = self._trade(taker, maker, level, remaining, events, ts)
                remaining -= lots
                if is_buy and limit is not None:
                    improvement += (limit - best) * lots * per_tick_lot
                self.last_price = best
                if maker.status is FILLED:
                    following = maker.next
                    book.remove(maker)
                    self._finished[maker.order_id] = maker.user_id  # checked for forgetting once, below
                    maker = following
        if len(self._finished) > self._finished_limit:
            self._forget_oldest_finished()
        return improvement, False

    def _trade(
        self, taker: Order, maker: Order, level: Level, remaining: int, events: list[EngineEvent],
        ts: Timestamp,
    ) -> int:
        """Fill taker and maker at the maker's price, consume their locks, emit the trade; return the lots."""
        price = level.price
        maker_left = maker.quantity - maker.filled
        lots = remaining if remaining < maker_left else maker_left
        base_amount = lots * self.base_unit
        quote_amount = price * lots * self.notional_unit
        taker.filled += lots
        taker.cumulative_quote += quote_amount
        maker.filled += lots
        maker.cumulative_quote += quote_amount
        level.total -= lots
        status = FILLED if lots == remaining else PARTIALLY_FILLED
        if taker.status not in _FILLABLE:
            raise IllegalStatusTransition(f"{taker.status} → {status}")
        taker.status = status
        maker_status = FILLED if lots == maker_left else PARTIALLY_FILLED
        if maker.status not in _FILLABLE:
            raise IllegalStatusTransition(f"{maker.status} → {maker_status}")
        maker.status = maker_status
        buyer, seller = (taker, maker) if taker.side is BUY else (maker, taker)
        if buyer is taker:
            buyer_fee = -((-base_amount * self.taker_fee_num) // self.taker_fee_den)
            seller_fee = -((-quote_amount * self.maker_fee_num) // self.maker_fee_den)
        else:
            buyer_fee = -((-base_amount * self.maker_fee_num) // self.maker_fee_den)
            seller_fee = -((-quote_amount * self.taker_fee_num) // self.taker_fee_den)
        buyer.locked -= quote_amount
        seller.locked -= base_amount
        self.sequence += 1
        events.append(TradeExecuted(
            self.sequence, ts, price, lots, base_amount, quote_amount, taker.side,
            buyer.order_id, buyer.user_id, seller.order_id, seller.user_id,
            buyer_fee, seller_fee,
            buyer.status, buyer.filled, buyer.cumulative_quote,
            seller.status, seller.filled, seller.cumulative_quote,
        ))
        return lots

    def _run_stops(self, events: list[EngineEvent], ts: Timestamp, last_price: int | None) -> None:
        """Trigger and process pending stops, oldest first, until no trade of the command reaches one.

        `last_price` is the last price before the command; the command's trades are read off `events`.
        """
        stops = self.stops
        low = high = last_price
        seen = 0
        while stops.orders:
            for event in events[seen:]:
                if type(event) is TradeExecuted:
                    price = event.price
                    if low is None or price < low:
                        low = price
                    if high is None or price > high:
                        high = price
            seen = len(events)
            order = stops.next_triggered(low, high)
            if order is None:
                return
            stops.remove(order)
            order.status = check_transition(order.status, OPEN)
            self.sequence += 1
            order.priority = self.sequence
            assert order.stop_price is not None and low is not None and high is not None
            events.append(StopTriggered(  # the price that reached it: the extreme on the stop's side
                self.sequence, ts, order.order_id, order.user_id, order.stop_price,
                high if order.side is BUY else low,
            ))
            if order.order_type is STOP_MARKET and order.side is BUY and not self._lock_triggered_buy(
                order, events, ts
            ):
                continue
            self._take(order, events, ts)

    def _lock_triggered_buy(self, order: Order, events: list[EngineEvent], ts: Timestamp) -> bool:
        """Lock what a triggered STOP_MARKET BUY will spend; expire it if the gate refuses."""
        _, spend = walk_liquidity(
            self.book, self.spec.quote_atoms_per_tick_lot, BUY, order.user_id, order.stp, None,
            order.quantity,
        )
        if spend == 0:
            return True
        if not self.funds.try_lock(order.user_id, self.quote_asset, spend):
            self._expire(order, _NO_FUNDS, events, ts)
            return False
        self._lock(order, spend, events, ts)
        return True

    # -- facts -------------------------------------------------------------------------------------

    def _expire(self, order: Order, reason: Reason, events: list[EngineEvent], ts: Timestamp) -> None:
        status = order.status
        if EXPIRED not in TRANSITIONS[status]:
            raise IllegalStatusTransition(f"{status} → {EXPIRED}")
        order.status = EXPIRED
        self.sequence += 1
        events.append(OrderExpired(
            self.sequence, ts, order.order_id, order.user_id, order.filled, order.quantity - order.filled,
            order.cumulative_quote, reason,
        ))
        self._release_all(order, events, ts)
        self._remember_finished(order.order_id, order.user_id)

    def _lock(self, order: Order, amount: int, events: list[EngineEvent], ts: Timestamp) -> None:
        order.locked += amount
        self.sequence += 1
        events.append(FundsLocked(
            self.sequence, ts, order.order_id, order.user_id,
            self.quote_asset if order.side is BUY else self.base_asset, amount,
        ))

    def _release(self, order: Order, amount: int, events: list[EngineEvent], ts: Timestamp) -> None:
        if amount:
            order.locked -= amount
            self.sequence += 1
            events.append(FundsReleased(
                self.sequence, ts, order.order_id, order.user_id,
                self.quote_asset if order.side is BUY else self.base_asset, amount,
            ))

    def _release_all(self, order: Order, events: list[EngineEvent], ts: Timestamp) -> None:
        self._release(order, order.locked, events, ts)

__all__ = ["MatchingEngine"]
