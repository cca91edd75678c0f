"""Seeded random command streams over one pair, covering every order type and option.

The stream knows nothing of the engine's state: cancels and amends name orders placed earlier in the
stream (which may be live, final or another user's), so rejections are part of what is compared.
Prices wander around a fixed mid in a narrow band so that orders cross, rest, and stops trigger.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tradeengine.engine import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    OrderType,
    PairSpec,
    PlaceOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

STP_CHOICES = [SelfTradePrevention.EXPIRE_TAKER] * 4 + [
    SelfTradePrevention.EXPIRE_MAKER,
    SelfTradePrevention.EXPIRE_BOTH,
    SelfTradePrevention.NONE,
]


@dataclass(frozen=True)
class StreamSettings:
    """Shape of a random stream."""

    users: int = 5
    mid: int = 100
    spread: int = 6
    max_quantity: int = 8
    limit: float = 0.52
    market: float = 0.07
    stop: float = 0.10
    cancel: float = 0.14
    amend: float = 0.165


class _Stream:
    def __init__(self, spec: PairSpec, seed: int, settings: StreamSettings) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.s = settings
        self.users = [f"u{n}" for n in range(settings.users)]
        self.placed: list[tuple[str, str]] = []
        self.count = 0

    def price(self) -> int:
        return self.s.mid + self.rng.randint(-self.s.spread, self.s.spread)

    def limit_price(self, side: Side) -> int:
        """A price mostly on the passive side of the mid, sometimes crossing it."""
        offset = self.rng.randint(-2, self.s.spread)
        return self.s.mid - offset if side is Side.BUY else self.s.mid + offset

    def quantity(self) -> int:
        return self.rng.randint(1, self.s.max_quantity)

    def place(self, ts: int, **fields: object) -> PlaceOrder:
        self.count += 1
        order_id = f"o{self.count}"
        user = self.rng.choice(self.users)
        self.placed.append((order_id, user))
        return PlaceOrder(
            order_id=order_id,
            user_id=user,
            timestamp=ts,
            self_trade_prevention=self.rng.choice(STP_CHOICES),
            **fields,
        )  # type: ignore[arg-type]

    def limit(self, ts: int) -> PlaceOrder:
        rng = self.rng
        tif = rng.choices([TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK], [70, 15, 15])[0]
        post_only = tif is TimeInForce.GTC and rng.random() < 0.12
        side = rng.choice([Side.BUY, Side.SELL])
        return self.place(
            ts,
            side=side,
            order_type=OrderType.LIMIT,
            quantity=self.quantity(),
            price=self.limit_price(side),
            time_in_force=tif,
            post_only=post_only,
        )

    def market(self, ts: int) -> PlaceOrder:
        rng = self.rng
        side = rng.choice([Side.BUY, Side.SELL])
        if side is Side.BUY and rng.random() < 0.4:
            unit = self.spec.quote_atoms_per_tick_lot
            budget = rng.randint(1, 3 * self.s.max_quantity) * self.s.mid * unit + rng.randint(
                0, self.s.mid * unit
            )
            return self.place(ts, side=side, order_type=OrderType.MARKET, quote_quantity=budget)
        return self.place(ts, side=side, order_type=OrderType.MARKET, quantity=self.quantity() * 2)

    def stop(self, ts: int) -> PlaceOrder:
        rng = self.rng
        side = rng.choice([Side.BUY, Side.SELL])
        stop_price = self.price()
        if rng.random() < 0.5:
            tif = rng.choices([TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK], [70, 15, 15])[0]
            limit = stop_price + rng.randint(-2, 2)
            return self.place(
                ts,
                side=side,
                order_type=OrderType.STOP_LIMIT,
                quantity=self.quantity(),
                price=max(1, limit),
                stop_price=stop_price,
                time_in_force=tif,
            )
        return self.place(
            ts, side=side, order_type=OrderType.STOP_MARKET, quantity=self.quantity(), stop_price=stop_price
        )

    def target(self) -> tuple[str, str]:
        window = 12 if self.rng.random() < 0.7 else 300
        order_id, owner = self.rng.choice(self.placed[-window:])
        if self.rng.random() < 0.08:
            owner = self.rng.choice(self.users)
        return order_id, owner

    def amend(self, ts: int) -> AmendOrder:
        order_id, owner = self.target()
        roll = self.rng.random()
        quantity = self.quantity() if roll < 0.7 else None
        price = self.price() if roll > 0.4 else None
        return AmendOrder(order_id=order_id, user_id=owner, quantity=quantity, price=price, timestamp=ts)

    def next(self, ts: int) -> Command:
        s = self.s
        roll = self.rng.random()
        if roll < s.limit or not self.placed:
            return self.limit(ts)
        roll -= s.limit
        if roll < s.market:
            return self.market(ts)
        roll -= s.market
        if roll < s.stop:
            return self.stop(ts)
        roll -= s.stop
        if roll < s.cancel:
            order_id, owner = self.target()
            return CancelOrder(order_id=order_id, user_id=owner, timestamp=ts)
        roll -= s.cancel
        if roll < s.amend:
            return self.amend(ts)
        return CancelAll(
            user_id=self.rng.choice(self.users), include_stops=self.rng.random() < 0.7, timestamp=ts
        )


def random_commands(spec: PairSpec, count: int, *, seed: int, settings: StreamSettings) -> list[Command]:
    """Return `count` seeded random commands for one pair."""
    stream = _Stream(spec, seed, settings)
    return [stream.next(ts) for ts in range(1, count + 1)]
