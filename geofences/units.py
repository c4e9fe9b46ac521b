"""Length units marketers use for geofence radii, converted to metres exactly.

Factors are the international definitions (1 yd = 0.9144 m exactly), applied in decimal
so that ``to_metres(50, "yd")`` is the same float as ``DEFAULT_RADIUS_M`` (45.72).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = ["UNITS", "UNIT_FACTORS", "parse_unit", "to_metres", "unit_aliases"]

# Kept as Decimal: a binary float product such as 150 * 0.3048 is 45.720000000000006,
# while the decimal product rounds once to the float nearest the true length.
_FACTORS: dict[str, Decimal] = {
    "m": Decimal("1"),
    "yd": Decimal("0.9144"),
    "ft": Decimal("0.3048"),
    "km": Decimal("1000"),
    "mi": Decimal("1609.344"),
}

#: Canonical unit names, in the order error messages list them.
UNITS: tuple[str, ...] = tuple(_FACTORS)

#: Metres per unit, as floats, for callers that only need an approximate factor.
UNIT_FACTORS: dict[str, float] = {unit: float(f) for unit, f in _FACTORS.items()}

_ALIASES: dict[str, str] = {
    **{a: "m" for a in ("m", "meter", "meters", "metre", "metres")},
    **{a: "yd" for a in ("yd", "yds", "yard", "yards")},
    **{a: "ft" for a in ("ft", "foot", "feet")},
    **{a: "km" for a in ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres")},
    **{a: "mi" for a in ("mi", "mile", "miles")},
}


def unit_aliases() -> frozenset[str]:
    """Every accepted spelling (lower case), e.g. for recognising ``radius_<unit>`` columns."""
    return frozenset(_ALIASES)


def parse_unit(text: str) -> str:
    """Canonical unit name (``m``, ``yd``, ``ft``, ``km`` or ``mi``) for a spelling.

    Case and surrounding spaces are ignored.

    >>> parse_unit(" Yards ")
    'yd'
    """
    unit = _ALIASES.get(text.strip().casefold())
    if unit is None:
        raise ValueError(f"unknown unit {text.strip()!r} (use m, yd, ft, km or mi)")
    return unit


def _decimal(value: float | int | str | Decimal) -> Decimal:
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, float):
        # repr() is the shortest decimal that reads back as this float: what the
        # user typed, not its binary approximation.
        number = Decimal(repr(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def to_metres(value: float | int | str | Decimal, unit: str) -> float:
    """Length ``value`` given in ``unit`` (any accepted spelling), in metres.

    >>> to_metres(50, "yd")
    45.72
    >>> to_metres(0.5, "mi")
    804.672
    """
    return float(_decimal(value) * _FACTORS[parse_unit(unit)])
