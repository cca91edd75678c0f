"""The order id scheme, decoding side: an order id carries the instant the order was created.

    id = (microseconds since 2025-01-01T00:00:00Z << 12) | counter      (counter 0-4095)

so `created_at = 2025-01-01Z + (id >> 12) µs`, exactly; the database function ``snowflake_timestamp``
(migration 0005) computes the same instant, which lets a lookup by id prune to the order's month
partition. A signed bigint holds such ids until about 2096. Ids are made by ``actors.ids.OrderIds``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ID_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
"""The instant encoded as 0 in an order id."""
ID_EPOCH_US = 1_735_689_600_000_000
"""ID_EPOCH in microseconds since the Unix epoch."""
COUNTER_BITS = 12
COUNTER_MASK = (1 << COUNTER_BITS) - 1
MAX_ORDER_ID = (1 << 63) - 1

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_us_of(order_id: int) -> int:
    """Return the instant encoded in an order id, in microseconds since the Unix epoch."""
    return ID_EPOCH_US + (order_id >> COUNTER_BITS)


def created_at_of(order_id: int) -> datetime:
    """Return the instant encoded in an order id: the order's ``created_at``."""
    return ID_EPOCH + timedelta(microseconds=order_id >> COUNTER_BITS)


def datetime_of_us(timestamp_us: int) -> datetime:
    """Return a UTC datetime for microseconds since the Unix epoch (exact, no float)."""
    return _UNIX_EPOCH + timedelta(0, 0, timestamp_us)  # (days, seconds, microseconds): no keyword parsing
