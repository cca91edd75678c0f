"""What the persistence writer commits: the facts of one command, in the core's integer units.

A pair actor hands the writer a `PairFacts` per command (the events `MatchingEngine.execute` returned,
in sequence order); the wallet hands it a `Transfer` per deposit or withdrawal. The writer turns a group
of them into rows (orders, client order ids, trades, ledger entries, balance deltas, outbox events, the
pair's last sequence and price) and commits them in ONE transaction.

Identity mapping between the core and the database (the core's ids are opaque strings):
- order ids: the core's `order_id` is `str(id)` of a bigint from `actors.ids.OrderIds`
  (microseconds since 2025-01-01 UTC << 12 | counter); an order's `created_at` is the instant encoded
  in its id, so any row can be found in its month partition from the id alone;
- user ids: `str(users.id)`; the core's `FEE_ACCOUNT` is the database's fee account, user id 1;
- trade ids: the core's `trade_id(symbol, sequence)` string ("BTC-USDT:42"), stored as text;
- timestamps: microseconds since the Unix epoch (the command's `timestamp`).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Literal

from tradeengine.engine import FEE_ACCOUNT, EngineEvent, PairSpec

FEE_ACCOUNT_USER_ID = 1
"""The database id of the exchange's fee account (seeded by migration 0004)."""


def database_user_id(user_id: str) -> int:
    """Map a core user id to its ``users.id``."""
    return FEE_ACCOUNT_USER_ID if user_id == FEE_ACCOUNT else int(user_id)


def core_user_id(user_id: int) -> str:
    """Map a ``users.id`` to the core's user id."""
    return FEE_ACCOUNT if user_id == FEE_ACCOUNT_USER_ID else str(user_id)


@dataclasses.dataclass(frozen=True, slots=True)
class PairFacts:
    """The events of one command on one pair, in sequence order, with the spec to render them."""

    spec: PairSpec
    events: list[EngineEvent]


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    """A deposit or withdrawal of `amount` atoms (> 0) of `asset` for a user, at `timestamp` µs.

    `transfer_id` names it for good: its outbox events derive their stable ids from it.
    """

    kind: Literal["DEPOSIT", "WITHDRAWAL"]
    user_id: int
    asset: str
    amount: int
    timestamp: int
    transfer_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)


Facts = PairFacts | Transfer
