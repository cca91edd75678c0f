"""Order ids: strictly increasing bigints that carry their creation instant (see ``storage.ids``).

    id = (microseconds since 2025-01-01T00:00:00Z << 12) | counter      (counter 0-4095)

`OrderIds.next()` returns the id and the instant it encodes; the caller stamps the engine command with
that instant, so an order's ``created_at`` (the id's instant) and its events' timestamp agree.

Invariants: ids never repeat and only grow, even when the clock stands still or goes backwards: within
one microsecond the counter counts up; when it overflows, or when the clock is behind the last id, the
generator moves its own microsecond forward (so an id's instant may run ahead of the clock by a few µs
under bursts of more than 4096 ids per µs, or by as much as the clock stepped back). `floor`, the
largest id already stored, keeps a restarted engine above every id it handed out before. Thread-safe:
one short lock per id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from tradeengine.storage.ids import COUNTER_BITS, COUNTER_MASK, ID_EPOCH_US, MAX_ORDER_ID, created_at_of

__all__ = ["OrderIds", "wall_clock_us"]


def wall_clock_us() -> int:
    """Return the wall clock in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class OrderIds:
    """Hand out order ids: ``next()`` → (id, timestamp in µs since the Unix epoch)."""

    __slots__ = ("_clock_us", "_counter", "_lock", "_micros")

    def __init__(self, clock_us: Callable[[], int] = wall_clock_us, floor: int = 0) -> None:
        if not 0 <= floor < MAX_ORDER_ID:
            raise ValueError(f"floor must be a non-negative bigint order id, got {floor}")
        self._clock_us = clock_us
        self._lock = threading.Lock()
        # The last id handed out, split: its microsecond (since ID_EPOCH) and its counter.
        self._micros = floor >> COUNTER_BITS
        self._counter = floor & COUNTER_MASK

    def next(self) -> tuple[int, int]:
        """Return a new id, larger than every id before it, and the instant it encodes (µs, Unix)."""
        now = self._clock_us() - ID_EPOCH_US
        with self._lock:
            if now > self._micros:
                self._micros, self._counter = now, 0
            elif self._counter < COUNTER_MASK:
                self._counter += 1
            else:
                self._micros, self._counter = self._micros + 1, 0
            micros, counter = self._micros, self._counter
        order_id = (micros << COUNTER_BITS) | counter
        if order_id > MAX_ORDER_ID:
            raise OverflowError("order ids past 2096 do not fit a bigint")
        return order_id, ID_EPOCH_US + micros

    @staticmethod
    def created_at_of(order_id: int) -> datetime:
        """Return the instant encoded in an order id (the order's ``created_at``)."""
        return created_at_of(order_id)
