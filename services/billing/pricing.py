"""A transaction's price: exact decimal arithmetic, each line rounded half-even to the
currency's minor unit, the VAT on the sum of the rounded lines.

    energy_cost = per_kwh    x energy_wh / 1000
    time_cost   = per_minute x duration_s / 60
    session_fee = session_fee
    net         = energy_cost + time_cost + session_fee
    vat         = net x vat_percent / 100
    total       = net + vat

Worked example (issue 20): 0.30/kWh, a 1.00 fee, 19 % VAT, 2,000 Wh in 30 min at 0/min
-> energy 0.60, fee 1.00, net 1.60, VAT 0.30 (0.304), total 1.90.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Context, Decimal

import msgspec

from .tariffs import Tariff

# ISO 4217 minor units that are not 2 (every other code has 2)
_MINOR = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                     "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
_CTX = Context(prec=50, rounding=ROUND_HALF_EVEN)  # no intermediate rounding at any realistic size


def minor_unit(currency: str) -> int:
    return _MINOR.get(currency, 2)


class CdrBody(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /chargers/{id}/transactions/{tx}/cdr`` serves (and the OpenAPI document
    describes). Amounts are decimal strings with exactly the currency's minor-unit digits
    (``"1.90"``); ``tariff_id`` is None when no tariff matched (then every amount is zero)."""
    tariff_id: str | None
    currency: str
    energy_wh: float
    duration_s: int
    energy_cost: str
    time_cost: str
    session_fee: str
    net: str
    vat: str
    total: str


class CDR(CdrBody, frozen=True, kw_only=True):
    """A charge detail record: the served body, and which transaction it prices."""
    charger_id: str
    tx_id: str
    started_at: str | None = None
    stopped_at: str | None = None

    def api(self) -> dict:
        """The body of ``GET /chargers/{id}/transactions/{tx}/cdr``."""
        return {k: getattr(self, k) for k in CdrBody.__struct_fields__}


def _round(x: Decimal, places: int) -> Decimal:
    return x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=_CTX)


def _dec(x: float | int | str | Decimal | None) -> Decimal:
    if x is None:
        return Decimal(0)
    if isinstance(x, float):
        return Decimal(repr(x))  # the shortest decimal that reads back as this float
    return Decimal(x)


def duration_s(started_at: dt.datetime | None, stopped_at: dt.datetime | None) -> int:
    """Whole seconds of the session (a fraction is dropped; unknown or negative -> 0)."""
    if started_at is None or stopped_at is None or stopped_at <= started_at:
        return 0
    return int((stopped_at - started_at).total_seconds())


def price(tariff: Tariff, charger_id: str, tx_id: str, energy_wh: float | None,
          started_at: dt.datetime | None, stopped_at: dt.datetime | None) -> CDR:
    places = minor_unit(tariff.currency)
    wh = _dec(energy_wh)
    if wh < 0:
        wh = Decimal(0)
    secs = duration_s(started_at, stopped_at)
    energy = _round(_CTX.divide(_CTX.multiply(tariff.per_kwh, wh), 1000), places)
    time_cost = _round(_CTX.divide(_CTX.multiply(tariff.per_minute, Decimal(secs)), 60), places)
    fee = _round(tariff.session_fee, places)
    net = energy + time_cost + fee
    vat = _round(_CTX.divide(_CTX.multiply(net, tariff.vat_percent), 100), places)
    total = net + vat
    return CDR(charger_id=charger_id, tx_id=tx_id, tariff_id=tariff.tariff_id, currency=tariff.currency,
               energy_wh=float(wh), duration_s=secs, energy_cost=str(energy), time_cost=str(time_cost),
               session_fee=str(fee), net=str(net), vat=str(vat), total=str(total),
               started_at=_iso(started_at), stopped_at=_iso(stopped_at))


def unpriced(currency: str, charger_id: str, tx_id: str, energy_wh: float | None,
             started_at: dt.datetime | None, stopped_at: dt.datetime | None) -> CDR:
    """The CDR of a transaction no tariff matches: tariff_id None, zero amounts."""
    zero = str(_round(Decimal(0), minor_unit(currency)))
    return CDR(charger_id=charger_id, tx_id=tx_id, tariff_id=None, currency=currency,
               energy_wh=float(max(_dec(energy_wh), Decimal(0))), duration_s=duration_s(started_at, stopped_at),
               energy_cost=zero, time_cost=zero, session_fee=zero, net=zero, vat=zero, total=zero,
               started_at=_iso(started_at), stopped_at=_iso(stopped_at))


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat() + "Z"
