"""Decimal ↔ integer conversions at the edge of the core, and decimal formatting for the API.

Units inside the core:
- a price is an integer number of *ticks* of the pair's tick_size;
- a quantity is an integer number of *lots* of the pair's lot_size;
- an asset amount (lock, settlement, fee, release) is an integer number of *atoms*, 1 atom = 1e-8.

Decimals are only touched here and in `PairSpec` construction; nothing in the matching path converts.
Conversions are exact or they raise: a value that is not a whole number of units is refused, never
rounded.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

from .errors import DomainError, ValidationError

ATOM_PLACES = 8
"""Balances have 8 decimal places."""
ATOMS_PER_UNIT = 10**ATOM_PLACES
ATOM = Decimal(1).scaleb(-ATOM_PLACES)

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""A context that never rounds (for scaling, normalising and whole-unit division; never for a division
with a fractional result, which it would carry to MAX_PREC digits)."""


def whole_units(
    value: Decimal, unit: Decimal, *, field: str, error: type[DomainError], what: str
) -> int:
    """Return value / unit as a positive int, or raise `error` naming `field` if it is not whole."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(f"{field} must be a finite decimal", field=field)
    if value <= 0:
        raise ValidationError(f"{field} must be positive, got {format_decimal(value)}", field=field)
    try:  # exact at any size (the default context's 28 digits refuse a larger quotient)
        quotient, remainder = _EXACT.divmod(value, unit)
    except InvalidOperation as exc:  # beyond even the exact context
        raise ValidationError(f"{field} {value} is out of range", field=field) from exc
    if remainder != 0:
        raise error(
            f"{field} {format_decimal(value)} is not a multiple of {what} {format_decimal(unit)}",
            field=field,
        )
    return int(quotient)


def to_atoms(value: Decimal, *, field: str) -> int:
    """Return a positive amount as whole atoms (1e-8), or raise VALIDATION_ERROR naming `field`."""
    return whole_units(value, ATOM, field=field, error=ValidationError, what="the balance precision")


def from_atoms(atoms: int) -> Decimal:
    """Return an atom count as a Decimal asset amount (exact at any size)."""
    return Decimal(atoms).scaleb(-ATOM_PLACES, _EXACT)


def atoms_of(amount: Decimal) -> int:
    """Return an amount of at most 8 decimal places (a stored one) as whole atoms, exactly at any size."""
    return int(amount.scaleb(ATOM_PLACES, _EXACT))


def average_price(quote_atoms: int, base_atoms: int) -> Decimal:
    """Return quote ÷ base (an average price) rounded half-even to 8 decimal places, exactly at any size
    (the default context's 28 digits round large quotients, and cannot quantize them at all)."""
    atoms, rest = divmod(quote_atoms * ATOMS_PER_UNIT, base_atoms)
    if 2 * rest > base_atoms or (2 * rest == base_atoms and atoms & 1):
        atoms += 1
    return from_atoms(atoms)


def format_decimal(value: Decimal) -> str:
    """Render a Decimal as a plain string without exponent and without trailing fractional zeros.

    `normalize` strips the trailing zeros (in a context wide enough never to round or clamp) and the
    ``f`` format writes the digits without exponent: the API's, the events' and the writer's one rendering.
    """
    if not value.is_finite():
        raise ValidationError(f"cannot format non-finite decimal {value}")
    return f"{value.normalize(_EXACT):f}" if value else "0"


def format_atoms(atoms: int) -> str:
    """Render an atom count as a decimal string (`150000000` → `"1.5"`).

    ``format_decimal(from_atoms(atoms))``, written straight from the integer's digits (the writer renders
    a few per command)."""
    digits = str(abs(atoms))
    whole = digits[:-ATOM_PLACES] or "0"
    fraction = digits[-ATOM_PLACES:].rjust(ATOM_PLACES, "0").rstrip("0")
    text = f"{whole}.{fraction}" if fraction else whole
    return "-" + text if atoms < 0 else text

