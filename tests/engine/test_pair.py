"""Pair specs, Decimal ↔ integer conversions, formatting."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from tradeengine.engine import (
    InvalidLotSize,
    InvalidPairSpec,
    InvalidTickSize,
    PairSpec,
    ValidationError,
    format_atoms,
    format_decimal,
    from_atoms,
    require_decimal,
)
from tradeengine.engine.units import atoms_of, average_price


def _spec(**overrides: object) -> PairSpec:
    fields: dict[str, object] = dict(
        symbol="BTC-USDT",
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=Decimal("0.01"),
        lot_size=Decimal("0.00001"),
        min_quantity=Decimal("0.0001"),
        max_quantity=Decimal("100"),
        min_notional=Decimal("5"),
        maker_fee=Decimal("0.001"),
        taker_fee=Decimal("0.0015"),
    )
    fields.update(overrides)
    return PairSpec(**fields)  # type: ignore[arg-type]


def test_pair_spec_keeps_exact_integer_forms() -> None:
    spec = _spec()
    assert spec.base_atoms_per_lot == 1000
    assert spec.quote_atoms_per_tick_lot == 10
    assert (spec.min_quantity_lots, spec.max_quantity_lots) == (10, 10_000_000)
    assert spec.min_notional_atoms == 500_000_000
    assert spec.taker_fee_fraction == (3, 2000)


def test_pair_spec_whose_notional_is_not_whole_atoms_is_rejected() -> None:
    with pytest.raises(InvalidPairSpec):
        _spec(tick_size=Decimal("0.0001"), lot_size=Decimal("0.00001"))


def test_pair_spec_with_a_lot_size_finer_than_one_atom_is_rejected() -> None:
    with pytest.raises(InvalidPairSpec):
        _spec(lot_size=Decimal("0.000000001"), tick_size=Decimal("100"), min_quantity=Decimal("0.000000001"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"symbol": "BTCUSDT"},
        {"quote_asset": "BTC", "symbol": "BTC-BTC"},
        {"tick_size": Decimal(0)},
        {"min_quantity": Decimal("0.000015")},
        {"min_quantity": Decimal("200")},
        {"maker_fee": Decimal(1)},
        {"taker_fee": Decimal("-0.001")},
        {"min_notional": Decimal("0.000000001")},
        {"tick_size": 0.01},
    ],
)
def test_inconsistent_pair_specs_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidPairSpec):
        _spec(**overrides)


def test_price_off_the_tick_grid_is_invalid_tick_size_on_the_price_field() -> None:
    with pytest.raises(InvalidTickSize) as caught:
        _spec().price_to_ticks(Decimal("100.005"))
    assert caught.value.code == "INVALID_TICK_SIZE" and caught.value.field == "price"
    assert "100.005" in caught.value.message and "0.01" in caught.value.message


def test_stop_price_off_the_grid_names_the_stop_price_field() -> None:
    with pytest.raises(InvalidTickSize) as caught:
        _spec().price_to_ticks(Decimal("1.001"), field="stop_price")
    assert caught.value.field == "stop_price"


def test_quantity_off_the_lot_grid_is_invalid_lot_size() -> None:
    with pytest.raises(InvalidLotSize) as caught:
        _spec().quantity_to_lots(Decimal("0.000001"))
    assert caught.value.field == "quantity"


def test_non_positive_or_non_finite_values_are_validation_errors() -> None:
    for bad in (Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity")):
        with pytest.raises(ValidationError):
            _spec().price_to_ticks(bad)


def test_conversions_round_trip() -> None:
    spec = _spec()
    assert spec.price_to_ticks(Decimal("50000.5")) == 5_000_050
    assert spec.ticks_to_price(5_000_050) == Decimal("50000.50")
    assert spec.quantity_to_lots(Decimal("0.5")) == 50_000
    assert spec.format_quantity(50_000) == "0.5"
    assert spec.format_price(5_000_000) == "50000"
    assert spec.amount_to_atoms(Decimal("1.5")) == 150_000_000


def test_conversions_are_exact_for_every_size_the_api_takes() -> None:
    """30 digits before the point and 8 after: past the default context's 28 digits of precision."""
    spec = _spec()
    assert spec.amount_to_atoms(Decimal("9" * 30 + ".12345678")) == int("9" * 30 + "12345678")
    assert spec.amount_to_atoms(Decimal("180000000000000000000")) == 18 * 10**27
    assert spec.price_to_ticks(Decimal("1" * 30 + ".5")) == int("1" * 30 + "50")
    with pytest.raises(InvalidTickSize):
        spec.price_to_ticks(Decimal("1" * 30 + ".005"))


def test_amount_with_more_than_eight_decimals_is_refused() -> None:
    with pytest.raises(ValidationError):
        _spec().amount_to_atoms(Decimal("0.000000001"))


def test_fee_is_rounded_up_to_one_atom() -> None:
    spec = _spec()
    assert spec.fee_atoms(1000, maker=False) == 2  # 1.5 atoms → 2
    assert spec.fee_atoms(1000, maker=True) == 1
    assert spec.fee_atoms(0, maker=True) == 0


def test_average_price_is_cumulative_quote_over_filled_base() -> None:
    spec = _spec()
    assert spec.average_price(0, 0) is None
    assert spec.average_price(3, 3 * 1000 * 50000) == Decimal(50000)


@pytest.mark.parametrize(("quote", "base", "average"), [
    (10**8, 3 * 10**8, "0.33333333"),
    (2 * 10**8, 3 * 10**8, "0.66666667"),
    (5, 10**9, "0"),  # 0.000000005: half to even, down
    (15, 10**9, "0.00000002"),  # 0.000000015: half to even, up
    (10**36, 10**5, "10000000000000000000000000000000"),  # 1e28 for 0.001: no 28-digit limit
    (10**37 + 1, 3 * 10**8, "33333333333333333333333333333.33333334"),
])
def test_an_average_price_is_exact_to_8_places_half_even_at_any_size(
        quote: int, base: int, average: str) -> None:
    assert format_decimal(average_price(quote, base)) == average


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("50000.5000", "50000.5"),
        ("50000.00", "50000"),
        ("1E+3", "1000"),
        ("0.00000001", "0.00000001"),
        ("1E-8", "0.00000001"),
        ("-2.50", "-2.5"),
        ("0.000", "0"),
    ],
)
def test_decimals_render_without_exponent_or_trailing_zeros(value: str, text: str) -> None:
    assert format_decimal(Decimal(value)) == text


def _digit_by_digit(value: Decimal) -> str:
    """A plain rendering from the digits and the exponent: the reference for format_decimal."""
    if value == 0:
        return "0"
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    if exponent >= 0:
        text += "0" * exponent
    else:
        places = -exponent
        text = text.rjust(places + 1, "0")
        text = f"{text[:-places]}.{text[-places:]}".rstrip("0").rstrip(".")
    return ("-" if sign else "") + text


def test_decimals_render_digit_for_digit_whatever_their_size_or_exponent() -> None:
    rng = random.Random(7)
    values = [Decimal("-0.000"), Decimal("1E+30"), Decimal("1E-30"), Decimal("9" * 60 + "." + "1" * 60)]
    for _ in range(5000):
        digits = rng.randrange(-10**rng.randint(1, 60), 10**rng.randint(1, 60))
        values.append(Decimal(digits).scaleb(rng.randint(-60, 40)))
    assert [format_decimal(v) for v in values] == [_digit_by_digit(v) for v in values]
    with pytest.raises(ValidationError, match="non-finite"):
        format_decimal(Decimal("NaN"))


def test_atoms_render_as_decimal_strings() -> None:
    assert format_atoms(150_000_000) == "1.5"


def test_atoms_render_exactly_like_the_decimal_they_stand_for() -> None:
    rng = random.Random(3)
    values = [0, 1, -1, 10**8, -(10**8), 123_456_789, 10**28 - 1, 10**28, -(10**28), 10**40 + 7]
    values += [rng.randrange(-10**rng.randrange(1, 40), 10**rng.randrange(1, 40)) for _ in range(5000)]
    assert [format_atoms(v) for v in values] == [format_decimal(from_atoms(v)) for v in values]
    # exact, however large (a 28-digit context once rounded balances from 10^20 up)
    assert format_atoms(19_999_999_999_999_999_999_999_999_999) == "199999999999999999999.99999999"
    assert format_atoms(10**40 + 7) == "100000000000000000000000000000000.00000007"
    assert atoms_of(from_atoms(10**40 + 7)) == 10**40 + 7


def test_floats_are_never_accepted_as_money() -> None:
    with pytest.raises(ValidationError):
        require_decimal(0.1, field="price")
    assert require_decimal("0.1", field="price") == Decimal("0.1")
    with pytest.raises(ValidationError):
        require_decimal("abc", field="price")
