"""Request bodies of the wallet service (CONTRACT.md "Values"), decoded and checked once, at the edge.

msgspec decodes every body into a Struct that refuses unknown fields; :func:`transfer_command` and
:func:`settle_command` then turn the decimal strings into ``Decimal`` (never float) and check what a
pattern cannot say clearly: at most 8 decimal places written, ``amount`` > 0, a movement's deltas not
both zero. Every failure is a :class:`BadRequest` naming
the field (``amount``, ``movements[1].locked``). Arithmetic on amounts (38 digits) never runs in the
default 28-digit context: negation is ``copy_negate`` here, sums use :data:`EXACT`.

Each :class:`Command` also carries its request in a canonical form: what is stored with the idempotency
key and compared on a replay. Amounts are written without trailing zeros there, so ``"1.50"`` and
``"1.5"`` are the same request.
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from tradeengine.http.models import whole

from .errors import BadRequest, MalformedJson

#: Context for sums of amounts: wide enough that numeric(38, 8) values never round (Inexact traps).
EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.InvalidOperation])
#: Places of every amount: numeric(38, 8) in the database.
SCALE = 8
MAX_MOVEMENTS = 16
KEY_PATTERN = whole(r"[A-Za-z0-9:._-]{1,128}")

IdempotencyKey = Annotated[str, Meta(pattern=KEY_PATTERN)]
UserId = Annotated[str, Meta(min_length=1, max_length=128)]
Asset = Annotated[str, Meta(pattern=r"^[A-Z0-9]{2,12}$")]
# 30 integer digits at most (38 - 8); the places are checked by decode(), for a message that says so.
PositiveText = Annotated[str, Meta(pattern=r"^[0-9]{1,30}(\.[0-9]{1,30})?$")]
SignedText = Annotated[str, Meta(pattern=r"^-?[0-9]{1,30}(\.[0-9]{1,30})?$")]

Transfer = Literal["reserve", "release", "deposit", "withdraw"]
OperationName = Literal["reserve", "release", "deposit", "withdraw", "settle"]


class _Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are a 400."""


class TransferBody(_Body):
    """reserve, release, deposit, withdraw: one amount on one balance."""

    idempotency_key: IdempotencyKey
    user_id: UserId
    asset: Asset
    amount: PositiveText


class MovementBody(_Body):
    """One signed change of one balance, inside a settle."""

    user_id: UserId
    asset: Asset
    available: SignedText
    locked: SignedText


class SettleBody(_Body):
    """settle: 1 to 16 movements applied together."""

    idempotency_key: IdempotencyKey
    movements: Annotated[list[MovementBody], Meta(min_length=1, max_length=MAX_MOVEMENTS)]


class FaultsBody(_Body):
    """PUT /_faults: the whole fault set (fields left out take these defaults)."""

    latency_ms: Annotated[int, Meta(ge=0, le=60_000)] = 0
    fail_status: Annotated[int, Meta(ge=400, le=599)] = 503
    fail_next: Annotated[int, Meta(ge=0)] = 0
    drop_next: Annotated[int, Meta(ge=0)] = 0
    after_apply: bool = False
    routes: list[Literal["reserve", "release", "settle", "deposit", "withdraw", "balances"]] | None = None


@dataclass(frozen=True, slots=True)
class Movement:
    """Deltas of one (user_id, asset) balance."""

    user_id: str
    asset: str
    available: Decimal
    locked: Decimal

    @property
    def key(self) -> tuple[str, str]:
        """The balance it moves: (user_id, asset)."""
        return self.user_id, self.asset


@dataclass(frozen=True, slots=True)
class Command:
    """A checked mutating call: its key, its operation and the movements it asks for."""

    idempotency_key: str
    operation: OperationName
    movements: tuple[Movement, ...]
    request: dict[str, Any]


_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_FIELD_NAMED = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def decode_json(raw: bytes, kind: type[Any]) -> Any:
    """Decode a JSON body into ``kind``; 400 MALFORMED_JSON or VALIDATION_ERROR naming the field."""
    if not raw:
        raise MalformedJson("the request body is empty; a JSON document is required")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = ""
        at = _AT_PATH.search(message)
        if at is not None:
            path, message = at.group("path"), message[: at.start()]
        named = _FIELD_NAMED.search(message)
        if named is not None:
            path = f"{path}.{named.group('name')}" if path else named.group("name")
        raise BadRequest(message, field=path or None) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"the request body is not valid JSON: {exc}") from None


def amount_of(text: str, field: str, *, signed: bool = False) -> Decimal:
    """The Decimal of a checked decimal string; 400 beyond 8 places, or when not > 0 (unsigned)."""
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # the patterns admit finite numerals only
    if exponent < -SCALE:
        raise BadRequest(f"{text!r} has more than {SCALE} decimal places", field=field)
    if not signed and value <= 0:
        raise BadRequest(f"{text!r} must be greater than 0", field=field)
    return Decimal(0) if value == 0 else value  # no negative zero


def render(value: Decimal) -> str:
    """A decimal as the contract writes it: no exponent, no trailing zeros (``"1.5"``, ``"0"``)."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def transfer_command(operation: Transfer, raw: bytes) -> Command:
    """Decode and check a reserve, release, deposit or withdraw body."""
    body: TransferBody = decode_json(raw, TransferBody)
    amount = amount_of(body.amount, "amount")
    available, locked = {
        "reserve": (amount.copy_negate(), amount),
        "release": (amount, amount.copy_negate()),
        "deposit": (amount, Decimal(0)),
        "withdraw": (amount.copy_negate(), Decimal(0)),
    }[operation]
    request = {"user_id": body.user_id, "asset": body.asset, "amount": render(amount)}
    return Command(body.idempotency_key, operation,
                   (Movement(body.user_id, body.asset, available, locked),), request)


def settle_command(raw: bytes) -> Command:
    """Decode and check a settle body."""
    body: SettleBody = decode_json(raw, SettleBody)
    movements = []
    for i, item in enumerate(body.movements):
        available = amount_of(item.available, f"movements[{i}].available", signed=True)
        locked = amount_of(item.locked, f"movements[{i}].locked", signed=True)
        if available == 0 and locked == 0:
            raise BadRequest("a movement must change available or locked", field=f"movements[{i}]")
        movements.append(Movement(item.user_id, item.asset, available, locked))
    request = {"movements": [{"user_id": m.user_id, "asset": m.asset, "available": render(m.available),
                              "locked": render(m.locked)} for m in movements]}
    return Command(body.idempotency_key, "settle", tuple(movements), request)

