"""Checks shared by the generated message types (no I/O, no state)."""

from __future__ import annotations

import datetime
from fractions import Fraction
from typing import Annotated

from msgspec import Meta

#: ``format: date-time``: an RFC 3339 timestamp with a UTC offset.
DateTime = Annotated[datetime.datetime, Meta(tz=True)]


def multiple_of(value: float, step: float, name: str) -> None:
    """JSON Schema's ``multipleOf`` with the arithmetic of the reference validator.

    ``value / step`` must be a whole number in floating point (so 0.3 is *not* a
    multiple of 0.1, exactly as ``jsonschema`` decides); huge values fall back to
    exact fractions.
    """
    if isinstance(step, float):
        quotient = value / step
        try:
            failed = int(quotient) != quotient
        except (OverflowError, ValueError):
            failed = (Fraction(value) / Fraction(step)).denominator != 1
    else:
        failed = bool(value % step)
    if failed:
        raise ValueError(f"Expected `number` that's a multiple of {step}")
