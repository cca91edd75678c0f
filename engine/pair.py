"""A trading pair's specification: sizes, limits and fees as Decimals, and their exact integer forms.

Invariants enforced at construction (else `InvalidPairSpec`):
- symbol is `BASE-QUOTE` and matches base_asset / quote_asset;
- tick_size, lot_size > 0; lot_size and tick_size × lot_size are whole numbers of atoms (1e-8), so every
  base amount (lots × lot_size) and every notional (ticks × lots × tick_size × lot_size) is exact in atoms;
- min_quantity and max_quantity are whole lots with 0 < min ≤ max; min_notional ≥ 0 is whole atoms;
- 0 ≤ maker_fee, taker_fee < 1, kept as exact integer fractions (numerator, denominator).

Conversions between Decimals and ticks/lots/atoms live here; they raise the domain error of the field at
fault (`INVALID_TICK_SIZE` field=price, `INVALID_LOT_SIZE` field=quantity, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .errors import InvalidLotSize, InvalidPairSpec, InvalidTickSize, ValidationError
from .units import ATOMS_PER_UNIT, average_price, format_decimal, to_atoms, whole_units


def _exact_atoms(value: Decimal, what: str, field: str | None) -> int:
    scaled = value * ATOMS_PER_UNIT
    if scaled != scaled.to_integral_value():
        raise InvalidPairSpec(f"{what} {format_decimal(value)} is not a whole number of 1e-8 atoms",
                              field=field)
    return int(scaled)


def _fee_fraction(rate: Decimal, what: str) -> tuple[int, int]:
    if not rate.is_finite() or rate < 0 or rate >= 1:
        raise InvalidPairSpec(f"{what} must be in [0, 1), got {rate}", field=what)
    return rate.as_integer_ratio()


@dataclass(frozen=True, slots=True)
class PairSpec:
    """Immutable description of one trading pair; build once, share everywhere."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    max_quantity: Decimal
    min_notional: Decimal = Decimal(0)
    maker_fee: Decimal = Decimal(0)
    taker_fee: Decimal = Decimal(0)

    base_atoms_per_lot: int = field(init=False, repr=False)
    quote_atoms_per_tick_lot: int = field(init=False, repr=False)
    min_quantity_lots: int = field(init=False, repr=False)
    max_quantity_lots: int = field(init=False, repr=False)
    min_notional_atoms: int = field(init=False, repr=False)
    maker_fee_fraction: tuple[int, int] = field(init=False, repr=False)
    taker_fee_fraction: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        expected_symbol = f"{self.base_asset}-{self.quote_asset}"
        if not self.base_asset or not self.quote_asset or self.symbol != expected_symbol:
            raise InvalidPairSpec(f"symbol {self.symbol!r} must be BASE-QUOTE of its assets", field="symbol")
        if self.base_asset == self.quote_asset:
            raise InvalidPairSpec("base and quote assets must differ", field="quote_asset")
        for name in ("tick_size", "lot_size", "min_quantity", "max_quantity", "min_notional",
                     "maker_fee", "taker_fee"):
            if not isinstance(getattr(self, name), Decimal):
                raise InvalidPairSpec(f"{name} must be a Decimal", field=name)
        if not (self.tick_size.is_finite() and self.tick_size > 0):
            raise InvalidPairSpec("tick_size must be positive", field="tick_size")
        if not (self.lot_size.is_finite() and self.lot_size > 0):
            raise InvalidPairSpec("lot_size must be positive", field="lot_size")
        put = object.__setattr__
        put(self, "base_atoms_per_lot", _exact_atoms(self.lot_size, "lot_size", "lot_size"))
        notional_unit = _exact_atoms(self.tick_size * self.lot_size, "tick_size × lot_size", None)
        put(self, "quote_atoms_per_tick_lot", notional_unit)
        put(self, "min_quantity_lots", self._whole_lots(self.min_quantity, "min_quantity"))
        put(self, "max_quantity_lots", self._whole_lots(self.max_quantity, "max_quantity"))
        if self.min_quantity_lots > self.max_quantity_lots:
            raise InvalidPairSpec("min_quantity must not exceed max_quantity", field="min_quantity")
        if not self.min_notional.is_finite() or self.min_notional < 0:
            raise InvalidPairSpec("min_notional must be ≥ 0", field="min_notional")
        put(self, "min_notional_atoms", _exact_atoms(self.min_notional, "min_notional", "min_notional"))
        put(self, "maker_fee_fraction", _fee_fraction(self.maker_fee, "maker_fee"))
        put(self, "taker_fee_fraction", _fee_fraction(self.taker_fee, "taker_fee"))

    def _whole_lots(self, value: Decimal, what: str) -> int:
        if not value.is_finite() or value <= 0 or value % self.lot_size != 0:
            raise InvalidPairSpec(f"{what} must be a positive multiple of lot_size", field=what)
        return int(value / self.lot_size)

    # -- edge conversions ---------------------------------------------------------------------------

    def price_to_ticks(self, price: Decimal, *, field: str = "price") -> int:
        """Convert a price to ticks, raising INVALID_TICK_SIZE naming `field` if it is not on the grid."""
        return whole_units(price, self.tick_size, field=field, error=InvalidTickSize, what="tick size")

    def quantity_to_lots(self, quantity: Decimal, *, field: str = "quantity") -> int:
        """Convert a base quantity to lots, raising INVALID_LOT_SIZE naming `field` if off the grid."""
        return whole_units(quantity, self.lot_size, field=field, error=InvalidLotSize, what="lot size")

    def amount_to_atoms(self, amount: Decimal, *, field: str = "quote_quantity") -> int:
        """Convert an asset amount to atoms, raising VALIDATION_ERROR if it has more than 8 decimals."""
        return to_atoms(amount, field=field)

    def ticks_to_price(self, ticks: int) -> Decimal:
        """Return the Decimal price of a tick count."""
        return ticks * self.tick_size

    def lots_to_quantity(self, lots: int) -> Decimal:
        """Return the Decimal base quantity of a lot count."""
        return lots * self.lot_size

    def format_price(self, ticks: int) -> str:
        """Render a tick count as an API price string."""
        return format_decimal(self.ticks_to_price(ticks))

    def format_quantity(self, lots: int) -> str:
        """Render a lot count as an API quantity string."""
        return format_decimal(self.lots_to_quantity(lots))

    def average_price(self, filled_lots: int, cumulative_quote_atoms: int) -> Decimal | None:
        """Return the average fill price (quote per base), exact to 8 decimals, or None if nothing filled."""
        if filled_lots == 0:
            return None
        return average_price(cumulative_quote_atoms, filled_lots * self.base_atoms_per_lot)

    def notional_atoms(self, ticks: int, lots: int) -> int:
        """Return price × quantity in quote atoms."""
        return ticks * lots * self.quote_atoms_per_tick_lot

    def fee_atoms(self, received_atoms: int, *, maker: bool) -> int:
        """Return the fee on an amount received, at the maker or taker rate, rounded up to one atom."""
        numerator, denominator = self.maker_fee_fraction if maker else self.taker_fee_fraction
        return -((-received_atoms * numerator) // denominator)


def require_decimal(value: object, *, field: str) -> Decimal:
    """Return value as a Decimal, refusing floats and anything else (money is never float)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return Decimal(value)
        except ArithmeticError as exc:
            raise ValidationError(f"{field} is not a decimal number", field=field) from exc
    raise ValidationError(f"{field} must be a decimal string", field=field)
