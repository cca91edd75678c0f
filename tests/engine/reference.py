"""A deliberately simple, obviously correct reference matcher for differential testing.

No sorted containers, no linked lists, no caches: the book is one Python list of resting orders and one of
pending stops, and every question ("what is the best maker?", "which stop triggers?") is a linear scan
with `min`. Time priority is a counter stamped whenever an order joins the back of the queue. Fees are
computed with `fractions.Fraction` from the Decimal rates, independently of the engine's integer
fractions. Field validation (`validate_place`, `validate_amend`) is shared with the engine: it is not
what this reference checks; matching, stops, STP, funds requests and statuses are.

It implements the documented rules of tradeengine.engine.matching (see that module's docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    DomainError,
    FundsGate,
    InsufficientBalance,
    NotionalTooSmall,
    OrderNotAmendable,
    OrderNotCancellable,
    OrderNotFound,
    OrderStatus,
    OrderType,
    PairSpec,
    PlaceOrder,
    PostOnlyWouldTake,
    QuantityTooLarge,
    QuantityTooSmall,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from tradeengine.engine.validation import validate_amend, validate_place

FINAL = {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
Trade = tuple[int, int, str, str, Side, int, int]
"""(price, quantity, buyer order id, seller order id, taker side, buyer fee, seller fee)"""


@dataclass(eq=False)
class RefOrder:
    """One order, as plain as it gets."""

    order_id: str
    user_id: str
    side: Side
    order_type: OrderType
    price: int | None
    stop_price: int | None
    quantity: int
    tif: TimeInForce
    post_only: bool
    stp: SelfTradePrevention
    status: OrderStatus
    placed: int
    stamp: int = 0
    filled: int = 0

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled


class ReferenceMatcher:
    """Same commands in, same trades, statuses and book out — slowly and plainly."""

    def __init__(self, spec: PairSpec, gate: FundsGate) -> None:
        self.spec = spec
        self.gate = gate
        self.resting: list[RefOrder] = []
        self.stops: list[RefOrder] = []
        self.orders: dict[str, RefOrder] = {}
        self.last_price: int | None = None
        self.last_before: int | None = None  # the last price when the current command came
        self.clock = 0
        self.trades: list[Trade] = []
        self.maker_rate = Fraction(spec.maker_fee)
        self.taker_rate = Fraction(spec.taker_fee)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def execute(self, command: Command) -> tuple[str | None, list[Trade]]:
        """Apply a command; return (error code or None, trades in order)."""
        self.trades = []
        self.last_before = self.last_price
        try:
            if isinstance(command, PlaceOrder):
                self.place(command)
            elif isinstance(command, CancelOrder):
                self.cancel(command)
            elif isinstance(command, AmendOrder):
                self.amend(command)
            else:
                assert isinstance(command, CancelAll)
                self.cancel_all(command)
        except DomainError as exc:
            assert not self.trades
            return exc.code, []
        return None, self.trades

    # -- queries ---------------------------------------------------------------------------------

    def makers_for(self, side: Side, limit: int | None) -> list[RefOrder]:
        """Resting orders an incoming order of `side` with `limit` may trade with, best first."""
        if side is Side.BUY:
            found = [o for o in self.resting if o.side is Side.SELL and (limit is None or o.price <= limit)]  # type: ignore[operator]
            return sorted(found, key=lambda o: (o.price, o.stamp))
        found = [o for o in self.resting if o.side is Side.BUY and (limit is None or o.price >= limit)]  # type: ignore[operator]
        return sorted(found, key=lambda o: (-o.price, o.stamp))  # type: ignore[operator]

    def walk(
        self,
        side: Side,
        user: str,
        stp: SelfTradePrevention,
        limit: int | None,
        quantity: int | None,
        budget: int | None = None,
    ) -> tuple[int, int]:
        """(lots, quote atoms) an incoming order could take now, honouring STP like the match does."""
        lots = spent = 0
        unit = self.spec.quote_atoms_per_tick_lot
        for maker in self.makers_for(side, limit):
            if maker.user_id == user and stp is not SelfTradePrevention.NONE:
                if stp is SelfTradePrevention.EXPIRE_MAKER:
                    continue
                break
            cost = maker.price * unit  # type: ignore[operator]
            if quantity is not None:
                take = min(maker.remaining, quantity - lots)
            else:
                assert budget is not None
                take = min(maker.remaining, (budget - spent) // cost)
            lots += take
            spent += take * cost
            if quantity is not None and lots == quantity:
                break
            if quantity is None and take < maker.remaining:
                break
        return lots, spent

    def crosses(self, side: Side, price: int) -> bool:
        return bool(self.makers_for(side, price))

    # -- commands --------------------------------------------------------------------------------

    def place(self, command: PlaceOrder) -> None:
        tif = validate_place(self.spec, command)
        spec = self.spec
        if command.post_only and self.crosses(command.side, command.price):  # type: ignore[arg-type]
            self.orders[command.order_id] = self.new_order(command, tif, 0, OrderStatus.REJECTED)
            return
        is_stop = command.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
        quantity = command.quantity
        expire_now = False
        lock = 0
        if command.order_type is OrderType.MARKET and quantity is not None:
            makers = self.makers_for(command.side, None)
            worth = makers[0].price * quantity * spec.quote_atoms_per_tick_lot if makers else None  # type: ignore[operator]
            if worth is not None and worth < spec.min_notional_atoms:
                raise NotionalTooSmall("worth less than the minimum notional at the best price")
        if command.order_type is OrderType.MARKET and command.side is Side.BUY:
            lots, lock = self.walk(
                Side.BUY,
                command.user_id,
                command.self_trade_prevention,
                None,
                command.quantity,
                command.quote_quantity,
            )
            if quantity is None and lots:
                if lots < spec.min_quantity_lots:
                    raise QuantityTooSmall("the budget buys too little")
                if lots > spec.max_quantity_lots:
                    raise QuantityTooLarge("the budget buys too much")
                if lock < spec.min_notional_atoms:
                    raise NotionalTooSmall("the budget spends too little")
            quantity = lots if quantity is None else quantity
            expire_now = lots == 0
        elif (
            command.order_type is OrderType.LIMIT
            and tif is TimeInForce.FOK
            and self.walk(
                command.side, command.user_id, command.self_trade_prevention, command.price, quantity
            )[0]
            < quantity
        ):  # type: ignore[operator]
            expire_now = True
        elif command.side is Side.SELL:
            lock = quantity * spec.base_atoms_per_lot  # type: ignore[operator]
        elif command.price is not None:
            lock = command.price * quantity * spec.quote_atoms_per_tick_lot  # type: ignore[operator]
        asset = spec.quote_asset if command.side is Side.BUY else spec.base_asset
        if lock and not self.gate.try_lock(command.user_id, asset, lock):
            raise InsufficientBalance("no funds")
        assert quantity is not None
        order = self.new_order(
            command, tif, quantity, OrderStatus.PENDING_TRIGGER if is_stop else OrderStatus.OPEN
        )
        self.orders[order.order_id] = order
        if is_stop:
            self.stops.append(order)
        elif expire_now:
            order.status = OrderStatus.EXPIRED
            if order.order_type is OrderType.MARKET:
                self.self_trade_at_top(order)
        else:
            self.take(order)
        self.run_stops()

    def new_order(
        self, command: PlaceOrder, tif: TimeInForce, quantity: int, status: OrderStatus
    ) -> RefOrder:
        return RefOrder(
            command.order_id,
            command.user_id,
            command.side,
            command.order_type,
            command.price,
            command.stop_price,
            quantity,
            tif,
            command.post_only,
            command.self_trade_prevention,
            status,
            placed=self.tick(),
        )

    def take(self, order: RefOrder) -> None:
        if (
            order.tif is TimeInForce.FOK
            and self.walk(order.side, order.user_id, order.stp, order.price, order.remaining)[0]
            < order.remaining
        ):
            order.status = OrderStatus.EXPIRED
            return
        stopped = self.match(order)
        if order.remaining == 0:
            return
        is_limit = order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        if is_limit and order.tif is TimeInForce.GTC and not stopped:
            order.stamp = self.tick()
            self.resting.append(order)
        else:
            order.status = OrderStatus.EXPIRED

    def match(self, taker: RefOrder) -> bool:
        """Trade until done; return True if self-trade prevention stopped the taker."""
        while taker.remaining:
            makers = self.makers_for(taker.side, taker.price)
            if not makers:
                return False
            maker = makers[0]
            if maker.user_id == taker.user_id and taker.stp is not SelfTradePrevention.NONE:
                if taker.stp is SelfTradePrevention.EXPIRE_TAKER:
                    return True
                self.resting.remove(maker)
                maker.status = OrderStatus.EXPIRED
                if taker.stp is SelfTradePrevention.EXPIRE_BOTH:
                    return True
                continue
            self.trade(taker, maker)
        return False

    def self_trade_at_top(self, taker: RefOrder) -> None:
        """A MARKET BUY with nothing to buy still applies its STP to the own orders first in line."""
        if taker.stp is SelfTradePrevention.NONE or taker.stp is SelfTradePrevention.EXPIRE_TAKER:
            return
        for maker in self.makers_for(taker.side, None):
            if maker.user_id != taker.user_id:
                return
            self.resting.remove(maker)
            maker.status = OrderStatus.EXPIRED
            if taker.stp is SelfTradePrevention.EXPIRE_BOTH:
                return

    def trade(self, taker: RefOrder, maker: RefOrder) -> None:
        lots = min(taker.remaining, maker.remaining)
        price = maker.price
        assert price is not None
        base = lots * self.spec.base_atoms_per_lot
        quote = price * lots * self.spec.quote_atoms_per_tick_lot
        buyer, seller = (taker, maker) if taker.side is Side.BUY else (maker, taker)
        buyer_rate = self.taker_rate if buyer is taker else self.maker_rate
        seller_rate = self.taker_rate if seller is taker else self.maker_rate
        self.trades.append(
            (
                price,
                lots,
                buyer.order_id,
                seller.order_id,
                taker.side,
                math.ceil(base * buyer_rate),
                math.ceil(quote * seller_rate),
            )
        )
        for order in (taker, maker):
            order.filled += lots
            order.status = OrderStatus.FILLED if order.remaining == 0 else OrderStatus.PARTIALLY_FILLED
        if maker.remaining == 0:
            self.resting.remove(maker)
        self.last_price = price

    def run_stops(self) -> None:
        """Trigger stops that the last price before the command or any trade of the command reached."""
        while self.last_price is not None:
            prices = [trade[0] for trade in self.trades]
            if self.last_before is not None:
                prices.append(self.last_before)
            triggered = [
                s
                for s in self.stops
                if (s.side is Side.BUY and max(prices) >= s.stop_price)  # type: ignore[operator]
                or (s.side is Side.SELL and min(prices) <= s.stop_price)  # type: ignore[operator]
            ]
            if not triggered:
                return
            stop = min(triggered, key=lambda s: s.placed)
            self.stops.remove(stop)
            stop.status = OrderStatus.OPEN
            if stop.order_type is OrderType.STOP_MARKET and stop.side is Side.BUY:
                _, spend = self.walk(Side.BUY, stop.user_id, stop.stp, None, stop.quantity)
                if spend and not self.gate.try_lock(stop.user_id, self.spec.quote_asset, spend):
                    stop.status = OrderStatus.EXPIRED
                    continue
            self.take(stop)

    def find_own(self, order_id: str, user_id: str, when_final: type[DomainError]) -> RefOrder:
        order = self.orders.get(order_id)
        if order is None or order.user_id != user_id:
            raise OrderNotFound("unknown")
        if order.status in FINAL:
            raise when_final("final")
        return order

    def cancel(self, command: CancelOrder) -> None:
        order = self.find_own(command.order_id, command.user_id, OrderNotCancellable)
        self.drop(order)

    def drop(self, order: RefOrder) -> None:
        if order.status is OrderStatus.PENDING_TRIGGER:
            self.stops.remove(order)
        else:
            self.resting.remove(order)
        order.status = OrderStatus.CANCELLED

    def cancel_all(self, command: CancelAll) -> None:
        for order in [o for o in self.resting if o.user_id == command.user_id]:
            self.drop(order)
        if command.include_stops:
            for order in [o for o in self.stops if o.user_id == command.user_id]:
                self.drop(order)

    def amend(self, command: AmendOrder) -> None:
        order = self.find_own(command.order_id, command.user_id, OrderNotAmendable)
        if order.status is OrderStatus.PENDING_TRIGGER:
            raise OrderNotAmendable("pending stop")
        price, quantity = validate_amend(self.spec, command, order.price, order.quantity, order.filled)
        if quantity == order.filled:
            self.resting.remove(order)
            order.quantity = quantity
            order.status = OrderStatus.FILLED
            return
        if price != order.price and order.post_only and self.crosses(order.side, price):
            raise PostOnlyWouldTake("would take")
        remaining = quantity - order.filled
        spec = self.spec
        if order.side is Side.BUY:
            old = order.price * order.remaining * spec.quote_atoms_per_tick_lot  # type: ignore[operator]
            new = price * remaining * spec.quote_atoms_per_tick_lot
            asset = spec.quote_asset
        else:
            old, new, asset = (
                order.remaining * spec.base_atoms_per_lot,
                remaining * spec.base_atoms_per_lot,
                spec.base_asset,
            )
        if new > old and not self.gate.try_lock(order.user_id, asset, new - old):
            raise InsufficientBalance("no funds")
        requeue = price != order.price or quantity > order.quantity
        order.price, order.quantity = price, quantity
        if requeue:
            self.resting.remove(order)
            self.take(order)
            self.run_stops()

    # -- views -----------------------------------------------------------------------------------

    def book(self) -> list[tuple[Side, int, str, int]]:
        """Resting orders as (side, price, id, remaining): bids best first, then asks best first."""
        bids = self.makers_for(Side.SELL, None)
        asks = self.makers_for(Side.BUY, None)
        return [(o.side, o.price, o.order_id, o.remaining) for o in bids + asks]  # type: ignore[misc]

    def statuses(self) -> dict[str, OrderStatus]:
        """Status of every order ever accepted or rejected."""
        return {order_id: order.status for order_id, order in self.orders.items()}
