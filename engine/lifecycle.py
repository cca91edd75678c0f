"""Order status lifecycle: the ONE table of legal status transitions.

```
NEW ──► OPEN ──► PARTIALLY_FILLED ──► FILLED
 │       │  ╲          │  ╲
 │       │   ╲         │   ╰──► CANCELLED | EXPIRED
 │       │    ╰──► FILLED | CANCELLED | EXPIRED
 ├──► PENDING_TRIGGER ──► OPEN (triggered) | CANCELLED
 └──► REJECTED
```
NEW is internal: an order is NEW only while a command is building it and never appears in an event.
FILLED, CANCELLED, EXPIRED and REJECTED are final. PARTIALLY_FILLED → PARTIALLY_FILLED is legal (another
fill). Anything else raises `IllegalStatusTransition`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from .errors import IllegalStatusTransition


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    NEW = "NEW"
    PENDING_TRIGGER = "PENDING_TRIGGER"
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"


NEW: Final = OrderStatus.NEW
PENDING_TRIGGER: Final = OrderStatus.PENDING_TRIGGER
OPEN: Final = OrderStatus.OPEN
PARTIALLY_FILLED: Final = OrderStatus.PARTIALLY_FILLED
FILLED: Final = OrderStatus.FILLED
CANCELLED: Final = OrderStatus.CANCELLED
EXPIRED: Final = OrderStatus.EXPIRED
REJECTED: Final = OrderStatus.REJECTED

TRANSITIONS: Final[dict[OrderStatus, frozenset[OrderStatus]]] = {
    NEW: frozenset({OPEN, PENDING_TRIGGER, REJECTED}),
    PENDING_TRIGGER: frozenset({OPEN, CANCELLED}),
    OPEN: frozenset({PARTIALLY_FILLED, FILLED, CANCELLED, EXPIRED}),
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELLED, EXPIRED}),
    FILLED: frozenset(),
    CANCELLED: frozenset(),
    EXPIRED: frozenset(),
    REJECTED: frozenset(),
}
"""The lifecycle table: status → the statuses it may move to."""

FINAL_STATUSES: Final = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
LIVE_STATUSES: Final = frozenset({PENDING_TRIGGER, OPEN, PARTIALLY_FILLED})


def check_transition(current: OrderStatus, target: OrderStatus) -> OrderStatus:
    """Return target if the table allows current → target, else raise IllegalStatusTransition."""
    if target not in TRANSITIONS[current]:
        raise IllegalStatusTransition(f"illegal order status transition {current} → {target}")
    return target


def is_final(status: OrderStatus) -> bool:
    """Tell whether an order in this status can never change again."""
    return status in FINAL_STATUSES
