"""Checks shared by the generated message types (no I/O, no state)."""

from __future__ import annotations

import datetime
import re
from fractions import Fraction
from typing import Annotated, Any

import msgspec.inspect as mi
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


# -- date-time: RFC 3339 exactly as the reference validator reads it ---------------------
#
# msgspec's datetime parser accepts two ISO 8601 spellings that RFC 3339 (and so
# ``jsonschema`` with ``rfc3339-validator``) rejects: a space between date and time and
# an offset without a colon (``+0100``). Rejecting them must not cost the hot path, so
# the codecs first look at the raw payload bytes for anything that *could* be such a
# spelling (:func:`dt_suspect`; a superset: a digit, a space, a digit -- impossible
# outside a string in valid JSON --, a time followed by a colon-less offset and a closing
# quote, or a
# ``\u`` escape that could spell either) and only then walk the payload's date-time
# fields with the exact pattern (:func:`bad_datetime`).

#: Same grammar as rfc3339-validator (case-insensitive, as jsonschema upper-cases);
#: day-of-month validity is already checked by msgspec's parser.
RFC3339 = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-\d{2}[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII)
_SPACE = re.compile(rb"\d \d")


def _hhmm_before(b: bytes, j: int) -> bool:
    """``dd:dd`` or ``dd:dd.d+`` ends at ``b[j]``."""
    m = j
    while m >= 0 and 48 <= b[m] <= 57:
        m -= 1
    if 0 <= m < j and b[m] == 46:  # '.'
        j = m - 1
    return j >= 4 and b[j - 4:j - 2].isdigit() and b[j - 2] == 58 and b[j - 1:j + 1].isdigit()


def dt_suspect(b: bytes) -> bool:
    """True if the raw payload *could* hold a date-time spelling msgspec accepts but RFC
    3339 does not (``\\d \\d``, ``hh:mm[.f][+-]hhmm"`` or a ``\\u`` escape). Built from
    ``bytes.find`` (memchr) because a regular expression over the payload costs more than
    the decode; the C twin is ``_codec._dt_suspect``."""
    if b.find(b"\\") >= 0 and b.find(b"\\u") >= 0:
        return True
    if b.find(b" ") >= 0 and _SPACE.search(b) is not None:
        return True
    for sign in (b"+", b"-"):
        k = b.find(sign)
        while k >= 0:
            if b[k + 5:k + 6] == b'"' and b[k + 1:k + 5].isdigit() and _hhmm_before(b, k - 1):
                return True
            k = b.find(sign, k + 1)
    return False

_PLANS: dict[Any, Any] = {}


def _plan(t: Any) -> Any:
    """What to look at in a decoded-to-builtins payload: ``"dt"``, ``("list", plan)``,
    ``("struct", ((json_name, plan), ...))`` or None when no date-time is inside."""
    if isinstance(t, mi.DateTimeType):
        return "dt"
    if isinstance(t, mi.ListType):
        sub = _plan(t.item_type)
        return ("list", sub) if sub is not None else None
    if isinstance(t, mi.UnionType):
        subs = [p for p in (_plan(x) for x in t.types) if p is not None]
        return subs[0] if subs else None
    if isinstance(t, mi.StructType):
        cls = t.cls
        if cls not in _PLANS:
            _PLANS[cls] = None  # cycle guard
            fields = tuple((f.encode_name, p) for f in t.fields
                           if (p := _plan(f.type)) is not None)
            _PLANS[cls] = ("struct", fields) if fields else None
        return _PLANS[cls]
    return None


def datetime_plan(struct_type: type) -> Any:
    """The (cached) plan of a generated message type; None if it has no date-time."""
    try:
        return _PLANS[struct_type]
    except KeyError:
        return _plan(mi.type_info(struct_type))


def bad_datetime(plan: Any, obj: Any, path: str = "$") -> str | None:
    """The path of the first date-time string in ``obj`` that is not RFC 3339, else None."""
    if plan == "dt":
        if isinstance(obj, str) and RFC3339.fullmatch(obj) is None:
            return path
        return None
    if plan[0] == "list":
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                if (bad := bad_datetime(plan[1], item, f"{path}[{i}]")) is not None:
                    return bad
        return None
    if isinstance(obj, dict):
        for name, sub in plan[1]:
            if name in obj and (bad := bad_datetime(sub, obj[name], f"{path}.{name}")) is not None:
                return bad
    return None
