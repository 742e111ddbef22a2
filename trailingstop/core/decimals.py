"""Exact decimals: one arithmetic context, the digit limits, and the canonical decimal string.

Money is never rounded silently here (DESIGN §3, "Digits"). What the system accepts is bounded:

* prices and quantities: at most 20 integer digits and 20 decimals (the CRD patterns);
* trailingPercent and maxSlippagePercent: at most 2 integer digits and 8 decimals;
* trailingAmount: a price's digits.

Everything computed from those fits :data:`EXACT` with room to spare: a stop level is a price
times ``1 ± p/100`` (at most 21 + 30 digits), an order value a quantity times a price (at most
40 + 40 digits), a filter check a difference and an integer quotient of such numbers. ``EXACT``
has 100 digits and traps ``Inexact``: if a computation ever needed rounding, it raises instead
of deciding on a rounded number.

Python's default context has 28 digits and *does* round, silently, even for ``-x`` and ``x * 1``;
so code that handles money calls ``EXACT``'s methods (or ``copy_negate``) instead of operators.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

EXACT = decimal.Context(
    prec=100,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)

# Decimal strings as users write them (CRD, manifests, trade files): plain ASCII digits with an
# optional fraction; no sign, exponent, spaces or other scripts' digits. "> 0" is checked as "has a
# non-zero digit", which is exact for strings of this shape, so the CRD's CEL rule and Python agree
# to the last digit. At most two integer digits makes trailingPercent's "< 100" part of its pattern.
QUANTITY_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
PRICE_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
TRAILING_PERCENT_PATTERN = r"^[0-9]{1,2}(\.[0-9]{1,8})?$"
# trailingAmount is a price distance (quote units): a price's digits. maxSlippagePercent is a
# percent like trailingPercent, but 0 is allowed (a limit at the trigger price itself).
TRAILING_AMOUNT_PATTERN = PRICE_PATTERN
SLIPPAGE_PERCENT_PATTERN = TRAILING_PERCENT_PATTERN
NONZERO_DIGIT = "[1-9]"
# Digits of a price and of a percent (DESIGN §3 "Digits"): the widths a decimal string is padded to
# when two of them are compared as strings (the CRD's CEL rules compare money that way, exactly).
PRICE_INTEGER_DIGITS = 20
PRICE_FRACTION_DIGITS = 20

# Values on the bus and in a status: a computed order value is the largest (quantity x price).
WIRE_INTEGER_DIGITS = 40
WIRE_FRACTION_DIGITS = 40
# A decimal string longer than this is refused before it is even parsed.
WIRE_MAX_CHARS = WIRE_INTEGER_DIGITS + WIRE_FRACTION_DIGITS + 2


def digits(number: Decimal) -> tuple[int, int]:
    """(integer digits, fraction digits) of a finite decimal, trailing zeros not counted.

    ``digits(Decimal("0012.3400")) == (2, 2)``; zero is ``(0, 0)``. Works on the decimal's tuple,
    so no context is involved (``normalize()`` would round to the context's precision).
    """
    _, coefficient, exponent = number.as_tuple()
    assert isinstance(exponent, int), "digits() needs a finite decimal"
    length = len(coefficient)
    while length and coefficient[length - 1] == 0:
        length -= 1
        exponent += 1
    if length == 0:
        return 0, 0
    return max(0, length + exponent), max(0, -exponent)


def to_wire(number: Decimal) -> str:
    """The canonical decimal string: fixed-point, no exponent, no trailing zeros, exact.

    ``to_wire(Decimal("1.50")) == "1.5"``, ``to_wire(Decimal("1E+3")) == "1000"``; every digit of
    the number is kept, however many there are (formatting with ``f`` involves no context).
    """
    if not number.is_finite():
        raise ValueError(f"not a finite decimal: {number}")
    if number.is_zero():
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def negate(number: Decimal) -> Decimal:
    """``-number``, exactly (the unary minus operator rounds to the context's 28 digits)."""
    return number.copy_negate()


def oriented(number: Decimal, sign: int) -> Decimal:
    """``number * sign`` for a sign of +1 or -1, exactly."""
    return number if sign > 0 else number.copy_negate()
