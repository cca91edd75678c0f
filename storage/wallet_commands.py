"""The durable wallet commands of the remote wallet mode (`wallet_commands`, migration 0008).

With a remote wallet service, the money of a committed command moves at the service AFTER the commit:
the persistence writer records, in the same transaction as the orders and trades, one wallet command
per movement the built-in ledger would have applied, and the settler (`actors.settler`) delivers them.

- `WalletSettledFacts`: the facts of one command whose money moves at the wallet service. The writer
  turns them into the usual rows minus the local ledger (no `ledger_entries`, no `balances`) plus
  wallet commands (`storage.rows`);
- `wallet_commands_of(spec, events)`: per `TradeExecuted` one ``settle`` (the buyer's, the seller's and
  the fee account's deltas, netted per (user, asset): exactly the built-in ledger's settlement), per
  `FundsReleased` one ``release``. `FundsLocked` facts are not commands: the funds gate reserved them
  synchronously. Keys are stable, derived from (symbol, sequence): a re-delivery is the same call;
- `insert_command`: a command written directly (not through the writer): the release of a lock whose
  command never reached the writer, and the ``void`` of a reserve whose outcome is unknown;
- the settler's side: `fetch_pending` (id order), `mark_delivered`, `record_failure`, `mark_refused`,
  `read_backlog`.

Movements are (user_id, asset, available_delta, locked_delta) in atoms, the core's user ids ("1001",
"__fees__"), stored as JSON strings (atoms may pass 2^63). Every function that takes a pool turns
database failures into `StorageUnavailable` / `StorageError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from tradeengine.engine import EngineEvent, FundsReleased, PairSpec, TradeExecuted, balance_deltas

from .database import storage_errors
from .facts import PairFacts

__all__ = [
    "COLUMNS",
    "Movement",
    "PendingCommand",
    "WalletBacklog",
    "WalletCommandRow",
    "WalletSettledFacts",
    "decode_movements",
    "encode_movements",
    "fetch_pending",
    "insert_command",
    "mark_delivered",
    "mark_refused",
    "read_backlog",
    "record_failure",
    "release_key",
    "settle_key",
    "settlement",
    "wallet_commands_of",
]

Movement = tuple[str, str, int, int]
"""(user_id, asset, available_delta, locked_delta) in atoms: one line of a `settle`."""

COLUMNS = ("idempotency_key", "kind", "movements")


@dataclasses.dataclass(frozen=True, slots=True)
class WalletSettledFacts(PairFacts):
    """The facts of one command whose money moves at the remote wallet service (see the module doc)."""


class WalletCommandRow(NamedTuple):
    """A new ``wallet_commands`` row, in `COLUMNS` order (movements as JSON text)."""

    idempotency_key: str
    kind: str
    movements: str


@dataclasses.dataclass(frozen=True, slots=True)
class PendingCommand:
    """A wallet command not yet delivered."""

    id: int
    idempotency_key: str
    kind: str
    movements: list[Movement]
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class WalletBacklog:
    """Undelivered commands, the oldest one's age (seconds; 0 when none), and the refused ones."""

    pending: int
    oldest_age: float
    refused: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[tuple[str, str, str, str]]).decode


def encode_movements(movements: Iterable[Movement]) -> str:
    """Render movements as the JSON text of the ``movements`` column."""
    return _encode([[user, asset, str(available), str(locked)] for user, asset, available, locked
                    in movements]).decode()


def decode_movements(text: str | bytes) -> list[Movement]:
    """Parse the ``movements`` column."""
    return [(user, asset, int(available), int(locked)) for user, asset, available, locked in _decode(text)]


def settle_key(symbol: str, sequence: int) -> str:
    """The idempotency key of the settlement of the trade at (symbol, sequence)."""
    return f"settle:{symbol}:{sequence}"


def release_key(symbol: str, sequence: int) -> str:
    """The idempotency key of the release reported at (symbol, sequence)."""
    return f"release:{symbol}:{sequence}"


def settlement(spec: PairSpec, trade: TradeExecuted) -> list[Movement]:
    """Return a trade's settlement (`engine.balance_deltas`: the Money rules), zero nets left out."""
    return [(user, asset, available, locked)
            for (user, asset), (available, locked) in balance_deltas(spec, [trade]).items()
            if available or locked]


def wallet_commands_of(spec: PairSpec, events: Iterable[EngineEvent]) -> list[WalletCommandRow]:
    """Return the wallet commands of one command's facts (see the module docstring)."""
    commands = []
    symbol = spec.symbol
    for event in events:
        if type(event) is TradeExecuted:
            commands.append(WalletCommandRow(settle_key(symbol, event.sequence), "settle",
                                             encode_movements(settlement(spec, event))))
        elif type(event) is FundsReleased:
            commands.append(WalletCommandRow(
                release_key(symbol, event.sequence), "release",
                encode_movements([(event.user_id, event.asset, event.amount, -event.amount)])))
    return commands


# -- database -------------------------------------------------------------------------------------------

_INSERT = """
INSERT INTO wallet_commands (idempotency_key, kind, movements) VALUES (%s, %s, %s)
ON CONFLICT (idempotency_key) DO NOTHING
"""

_FETCH = """
SELECT id, idempotency_key, kind, movements::text, attempts FROM wallet_commands
WHERE delivered_at IS NULL AND refused_at IS NULL
ORDER BY id
LIMIT %s
"""

_MARK_DELIVERED = """
UPDATE wallet_commands SET delivered_at = clock_timestamp() WHERE id = ANY(%s) AND delivered_at IS NULL
"""

_RECORD_FAILURE = "UPDATE wallet_commands SET attempts = attempts + 1, last_error = %s WHERE id = %s"

_MARK_REFUSED = """
UPDATE wallet_commands SET refused_at = clock_timestamp(), attempts = attempts + 1, last_error = %s
WHERE id = %s
"""

_BACKLOG = """
SELECT count(*) FILTER (WHERE refused_at IS NULL),
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE refused_at IS NULL)),
                0)::float8,
       count(*) FILTER (WHERE refused_at IS NOT NULL)
FROM wallet_commands WHERE delivered_at IS NULL
"""


def insert_command(pool: Any, row: WalletCommandRow, *, timeout: float = 2.0) -> None:
    """Commit one wallet command now (a key already there is left as it is)."""
    with storage_errors("recording a wallet command"), pool.connection(timeout=timeout) as conn:
        conn.execute(_INSERT, row)


def fetch_pending(pool: Any, limit: int, *, timeout: float = 2.0) -> list[PendingCommand]:
    """Return up to `limit` undelivered, unrefused commands in id order."""
    with storage_errors("reading the wallet commands"), pool.connection(timeout=timeout) as conn:
        rows = conn.execute(_FETCH, (limit,)).fetchall()
    return [PendingCommand(int(id_), key, kind, decode_movements(movements), int(attempts))
            for id_, key, kind, movements, attempts in rows]


def mark_delivered(pool: Any, ids: Sequence[int], *, timeout: float = 2.0) -> None:
    """Stamp the commands the service acknowledged."""
    if not ids:
        return
    with storage_errors("stamping wallet commands delivered"), pool.connection(timeout=timeout) as conn:
        conn.execute(_MARK_DELIVERED, (list(ids),))


def record_failure(pool: Any, command_id: int, error: str, *, timeout: float = 2.0) -> None:
    """Count a failed delivery of a command (it stays pending)."""
    with storage_errors("recording a wallet delivery failure"), pool.connection(timeout=timeout) as conn:
        conn.execute(_RECORD_FAILURE, (error[:1000], command_id))


def mark_refused(pool: Any, command_id: int, error: str, *, timeout: float = 2.0) -> None:
    """Park a command the service refused: kept, never retried until an operator re-queues it."""
    with storage_errors("parking a refused wallet command"), pool.connection(timeout=timeout) as conn:
        conn.execute(_MARK_REFUSED, (error[:1000], command_id))


def read_backlog(pool: Any, *, timeout: float = 2.0) -> WalletBacklog:
    """How many commands wait, how old the oldest is, and how many were refused."""
    with storage_errors("reading the wallet backlog"), pool.connection(timeout=timeout) as conn:
        row = conn.execute(_BACKLOG).fetchone()
    assert row is not None
    return WalletBacklog(int(row[0]), float(row[1]), int(row[2]))
