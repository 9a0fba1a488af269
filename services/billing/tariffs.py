"""Tariffs: what a session costs, per charger (by id globs) and validity window.

    PUT /api/v1/tariffs/{tariff_id}
    {"currency":"EUR","per_kwh":"0.30","per_minute":"0","session_fee":"1.00","vat_percent":"19",
     "chargers":["DE-BER-*"],"valid_from":"2025-01-01T00:00:00Z","valid_to":null}

Prices are decimals (strings or numbers in JSON; kept as ``Decimal``, never floats).
The tariff of a transaction is the one valid at its start whose best-matching glob is the
most specific: an exact id beats any pattern, then the pattern with more literal
characters (``DE-BER-0*`` beats ``DE-*`` beats ``*``), then more single-character
wildcards and fewer ``*`` (``DE-BER-?`` beats ``DE-BER-*``); ties go to the latest
``valid_from``, then the smallest ``tariff_id``, so the choice never depends on order.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Iterable

import msgspec

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_WILD = set("*?[")


class TariffError(ValueError):
    """A tariff that cannot be used (the API answers 422 with this message)."""


class Tariff(msgspec.Struct, frozen=True, kw_only=True):
    tariff_id: str
    currency: str
    per_kwh: Decimal = Decimal(0)
    per_minute: Decimal = Decimal(0)
    session_fee: Decimal = Decimal(0)
    vat_percent: Decimal = Decimal(0)
    chargers: list[str] = msgspec.field(default_factory=lambda: ["*"])
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None  # exclusive

    def __post_init__(self) -> None:
        if not self.tariff_id or len(self.tariff_id) > 64:
            raise TariffError("tariff_id must be 1-64 characters")
        if not _CURRENCY.match(self.currency):
            raise TariffError("currency must be an ISO 4217 code such as EUR")
        for name in ("per_kwh", "per_minute", "session_fee", "vat_percent"):
            v = getattr(self, name)
            if not v.is_finite() or v < 0:
                raise TariffError(f"{name} must be a finite, non-negative decimal")
        if not self.chargers or not all(isinstance(g, str) and 0 < len(g) <= 64 for g in self.chargers):
            raise TariffError("chargers must list 1-64 character id globs")
        for name in ("valid_from", "valid_to"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise TariffError(f"{name} needs a time zone (e.g. ...Z)")
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise TariffError("valid_to must be after valid_from")

    def valid_at(self, t: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= t) and (self.valid_to is None or t < self.valid_to)

    def specificity(self, charger_id: str) -> tuple | None:
        """How specifically this tariff names ``charger_id``: None if no glob matches;
        else (1, ...) for an exact id, (0, literals, single wildcards, -stars) for the best
        matching pattern (greater is more specific)."""
        best: tuple | None = None
        for g in self.chargers:
            if not (_WILD & set(g)):
                s = (1, len(g), 0, 0) if g == charger_id else None
            elif fnmatchcase(charger_id, g):
                s = (0, *_literals(g))
            else:
                s = None
            if s is not None and (best is None or s > best):
                best = s
        return best


def _literals(glob: str) -> tuple[int, int, int]:
    """How much a glob pins down: (characters that match only themselves, single-character
    wildcards ``?``/``[...]``, minus the number of ``*``)."""
    lit = single = stars = 0
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            stars, i = stars + 1, i + 1
        elif c == "?":
            single, i = single + 1, i + 1
        elif c == "[":
            j = glob.find("]", i + 2)
            if j < 0:
                lit, i = lit + 1, i + 1
            else:
                single, i = single + 1, j + 1
        else:
            lit, i = lit + 1, i + 1
    return lit, single, -stars


def match(tariffs: Iterable[Tariff], charger_id: str, at: dt.datetime) -> Tariff | None:
    """The tariff for a transaction of ``charger_id`` that started at ``at``."""
    best: tuple | None = None
    chosen: Tariff | None = None
    for t in tariffs:
        if not t.valid_at(at):
            continue
        s = t.specificity(charger_id)
        if s is None:
            continue
        start = t.valid_from.timestamp() if t.valid_from else float("-inf")
        key = (s, start, _Rev(t.tariff_id))
        if best is None or key > best:
            best, chosen = key, t
    return chosen


class _Rev(str):
    """Reverses string order inside a max(): the smallest tariff id wins a tie."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__lt__(self, other)


_encoder = msgspec.json.Encoder(decimal_format="string")


def to_json(t: Tariff) -> dict:
    return msgspec.json.decode(_encoder.encode(t))


def from_json(tariff_id: str, body: bytes | dict) -> Tariff:
    """A tariff from an API body (the id comes from the path); raises TariffError."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            body = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise TariffError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise TariffError("the body must be a JSON object")
    body = dict(body, tariff_id=tariff_id)
    for k in ("per_kwh", "per_minute", "session_fee", "vat_percent"):
        if isinstance(body.get(k), float):
            body[k] = repr(body[k])  # 0.3 -> "0.3", never the binary float's expansion
    try:
        return msgspec.convert(body, Tariff, strict=False)
    except (msgspec.ValidationError, InvalidOperation) as exc:
        raise TariffError(str(exc)) from None
