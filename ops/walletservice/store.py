"""The wallet service's PostgreSQL storage: balances, and operations by idempotency key.

Invariants (each mutating call is ONE transaction):
- the idempotency key is claimed first (``INSERT ... ON CONFLICT DO NOTHING``): a second call with the
  same key waits there until the first commits, then finds the key taken and replays the stored answer,
  so concurrent calls with one key apply once; if the first rolls back, the second applies;
- the balances a call moves are locked with ``SELECT ... FOR UPDATE`` in (user_id, asset) order, so two
  calls over overlapping balances never deadlock; a balance without a row is zero and gets one on its
  first credit;
- a movement is applied only if every balance it touches stays >= 0 (the table's CHECKs hold the same
  rule); otherwise nothing moves and the refusal (409) is stored with the key like a success;
- the answer (status and body) is stored in the same transaction as the movement.

Amounts are ``numeric(38, 8)``; values move as ``Decimal`` and are summed in :data:`models.EXACT`.
psycopg errors are translated here: a database that does not answer is :class:`Unavailable` (503); any
other database failure (a deadlock, say) surfaces as ``StorageError`` (500), so the client retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from importlib import resources
from typing import Any

import psycopg
import psycopg_pool
from psycopg.types.json import Json, Jsonb

from tradeengine.storage.database import connection_kwargs, storage_errors
from tradeengine.storage.errors import StorageUnavailable

from .errors import BadRequest, KeyReused, Unavailable
from .models import EXACT, Command, render

_log = logging.getLogger(__name__)

#: Key of the advisory lock held while the schema is created ("walletsv" in ASCII, as a bigint).
SCHEMA_LOCK_KEY = int.from_bytes(b"walletsv", "big") & 0x7FFF_FFFF_FFFF_FFFF

#: The 409 code of each operation when a balance would go negative (a deposit never does).
REFUSAL_CODES = {
    "reserve": "INSUFFICIENT_FUNDS",
    "withdraw": "INSUFFICIENT_FUNDS",
    "release": "INSUFFICIENT_LOCKED",
    "settle": "NEGATIVE_BALANCE",
    "deposit": "NEGATIVE_BALANCE",
}

Key = tuple[str, str]
_ZERO = (Decimal(0), Decimal(0))


@dataclass(frozen=True, slots=True)
class Answer:
    """What a mutating call answers: status, body, and whether it is a replay of a stored answer."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def ensure_schema(url: str) -> None:
    """Create the schema and tables if missing (idempotent; concurrent starts wait for each other)."""
    script = resources.files(__package__).joinpath("schema.sql").read_text()
    with translated("creating the wallet service schema"), \
            psycopg.connect(url, **connection_kwargs(prepare_threshold=None)) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        conn.execute(script.encode())


@contextmanager
def translated(action: str) -> Iterator[None]:
    """psycopg errors inside the block: 503 when the database does not answer, else StorageError."""
    try:
        with storage_errors(action):
            yield
    except StorageUnavailable as exc:
        raise Unavailable("the wallet database is unavailable; retry with the same idempotency key") \
            from exc


def balance_body(user_id: str, asset: str, available: Decimal, locked: Decimal) -> dict[str, str]:
    """The contract's ``balance`` object."""
    return {"user_id": user_id, "asset": asset, "available": render(available), "locked": render(locked)}


class WalletStore:
    """Balances and operations in the ``wallet_service`` schema, through a connection pool."""

    def __init__(self, pool: psycopg_pool.ConnectionPool) -> None:
        self._pool = pool

    def apply(self, command: Command) -> Answer:
        """Apply ``command`` once per idempotency key; a replay returns the stored answer."""
        request = {"idempotency_key": command.idempotency_key, **command.request}
        with translated(f"{command.operation} {command.idempotency_key}"), \
                self._pool.connection() as conn, conn.transaction():
            claimed = conn.execute(
                "INSERT INTO wallet_service.operations"
                " (idempotency_key, operation, request, status, response) VALUES (%s, %s, %s, 0, '{}')"
                " ON CONFLICT (idempotency_key) DO NOTHING"
                " RETURNING idempotency_key",
                (command.idempotency_key, command.operation, Jsonb(request))).fetchone()
            if claimed is None:
                return self._replay(conn, command, request)
            try:
                answer = self._move(conn, command)
            except psycopg.errors.NumericValueOutOfRange:
                raise BadRequest("a balance would exceed numeric(38, 8)", field=None) from None
            conn.execute("UPDATE wallet_service.operations SET status = %s, response = %s"
                         " WHERE idempotency_key = %s",
                         (answer.status, Json(answer.body), command.idempotency_key))
            return answer

    @staticmethod
    def _replay(conn: psycopg.Connection[Any], command: Command, request: dict[str, Any]) -> Answer:
        row = conn.execute("SELECT operation, request, status, response FROM wallet_service.operations"
                           " WHERE idempotency_key = %s", (command.idempotency_key,)).fetchone()
        assert row is not None  # a key is never deleted
        operation, stored, status, body = row
        if operation != command.operation or stored != request:
            raise KeyReused(f"idempotency key {command.idempotency_key!r} was used before for a different "
                            f"request (a {operation}); see GET /v1/operations/{command.idempotency_key}",
                            field="idempotency_key")
        return Answer(status, body, replayed=True)

    def _move(self, conn: psycopg.Connection[Any], command: Command) -> Answer:
        deltas: dict[Key, tuple[Decimal, Decimal]] = {}
        for m in command.movements:
            available, locked = deltas.get(m.key, (Decimal(0), Decimal(0)))
            deltas[m.key] = (EXACT.add(available, m.available), EXACT.add(locked, m.locked))
        keys = sorted(deltas)
        current = self._lock(conn, keys)
        after: dict[Key, tuple[Decimal, Decimal]] = {}
        for key in keys:
            (available, locked), (d_available, d_locked) = current.get(key, _ZERO), deltas[key]
            after[key] = (EXACT.add(available, d_available), EXACT.add(locked, d_locked))
        short = [key for key in keys if after[key][0] < 0 or after[key][1] < 0]
        if short:
            return self._refusal(command, short[0], current.get(short[0], _ZERO))
        balances = [self._write(conn, key, after[key], exists=key in current) for key in keys]
        if command.operation == "settle":
            body: dict[str, Any] = {"idempotency_key": command.idempotency_key, "balances": balances}
        else:
            body = {"idempotency_key": command.idempotency_key, "balance": balances[0]}
        return Answer(200, body)

    @staticmethod
    def _lock(conn: psycopg.Connection[Any], keys: list[Key]) -> dict[Key, tuple[Decimal, Decimal]]:
        rows = conn.execute(
            "SELECT user_id, asset, available, locked FROM wallet_service.balances"
            " WHERE (user_id, asset) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            " ORDER BY user_id, asset FOR UPDATE",
            ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
        return {(user_id, asset): (available, locked) for user_id, asset, available, locked in rows}

    @staticmethod
    def _write(conn: psycopg.Connection[Any], key: Key, values: tuple[Decimal, Decimal], *,
               exists: bool) -> dict[str, str]:
        if exists:
            row = conn.execute(
                "UPDATE wallet_service.balances SET available = %s, locked = %s, updated_at = now()"
                " WHERE user_id = %s AND asset = %s RETURNING available, locked", (*values, *key)).fetchone()
        else:
            # No row when locked: zero. Another call may create it meanwhile (it then waits for us, or
            # we for it); the conflict branch adds our credit to what it wrote. Credits only: a debit of
            # a zero balance was refused above.
            row = conn.execute(
                "INSERT INTO wallet_service.balances AS b (user_id, asset, available, locked)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (user_id, asset) DO UPDATE"
                " SET available = b.available + EXCLUDED.available, locked = b.locked + EXCLUDED.locked,"
                " updated_at = now() RETURNING available, locked", (*key, *values)).fetchone()
        assert row is not None
        return balance_body(*key, row[0], row[1])

    @staticmethod
    def _refusal(command: Command, key: Key, had: tuple[Decimal, Decimal]) -> Answer:
        user_id, asset = key
        message = (f"{command.operation} refused: it would make the {asset} balance of {user_id} negative "
                   f"(it holds available {render(had[0])}, locked {render(had[1])})")
        return Answer(409, {"error": {"code": REFUSAL_CODES[command.operation], "message": message}})

    # -- reads ----------------------------------------------------------------------------------------

    def balances_of(self, user_id: str) -> list[dict[str, str]]:
        """The user's non-zero balances, by asset."""
        with translated("reading balances"), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT user_id, asset, available, locked FROM wallet_service.balances"
                " WHERE user_id = %s AND (available <> 0 OR locked <> 0) ORDER BY asset",
                (user_id,)).fetchall()
        return [balance_body(*row) for row in rows]

    def all_balances(self) -> list[dict[str, str]]:
        """Every non-zero balance, by (user_id, asset)."""
        with translated("reading balances"), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT user_id, asset, available, locked FROM wallet_service.balances"
                " WHERE available <> 0 OR locked <> 0 ORDER BY user_id, asset").fetchall()
        return [balance_body(*row) for row in rows]

    def operation(self, key: str) -> dict[str, Any] | None:
        """The stored operation of ``key``, or None."""
        with translated("reading an operation"), self._pool.connection() as conn:
            row = conn.execute(
                "SELECT idempotency_key, operation, status, request, response, applied_at"
                " FROM wallet_service.operations WHERE idempotency_key = %s", (key,)).fetchone()
        if row is None:
            return None
        idempotency_key, operation, status, request, response, applied_at = row
        return {"idempotency_key": idempotency_key, "operation": operation, "status": status,
                "request": request, "response": response,
                "applied_at": applied_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    def ping(self) -> None:
        """Raise :class:`Unavailable` unless the database answers."""
        with translated("checking the database"), self._pool.connection(timeout=2.0) as conn:
            conn.execute("SELECT 1").fetchone()
