"""The energy register reading of a MeterValue's sampled values (OCPP 1.6, 2.0.1, 2.1), and
the readings of a 1.6 MeterValues, built for the store.

``_meter.pyx`` compiles ``Meter.samples_16`` (a saturated worker runs it for every
MeterValues; ADR 0005, decision 22) with the same results; this module is its pure-Python
twin, selected like the codec (``core.codec.pick``: ``CHARGEYARD_PURE=1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["ENERGY", "I64", "Meter", "energy_16", "energy_201", "finite", "i64", "select"]

ENERGY = "Energy.Active.Import.Register"
I64 = 2**63 - 1
UNSET = msgspec.UNSET


def i64(n: int) -> int:
    """Schema-valid integers can be arbitrarily large; the store keeps 64-bit ones."""
    return n if -I64 <= n <= I64 else (I64 if n > 0 else -I64)


def finite(x: float) -> float | None:
    return x if x - x == 0.0 else None  # inf - inf and nan - nan are nan


def _energy(sampled: list, wh_of: Callable[[Any], float | None]) -> float | None:
    """The ``Energy.Active.Import.Register`` reading (the default measurand) of a
    sampledValue list in Wh, preferring the total over per-phase readings."""
    best = None
    for sv in sampled:
        measurand = sv.measurand
        if measurand is not UNSET and measurand != ENERGY:
            continue
        wh = wh_of(sv)
        if wh is None:
            continue
        if sv.phase is UNSET:
            return wh
        if best is None:
            best = wh
    return best


def _wh_16(sv: Any) -> float | None:
    """1.6: a decimal string in Wh (the default) or kWh."""
    try:
        value = float(sv.value)
    except ValueError:
        return None
    return finite(value * 1000.0 if sv.unit == "kWh" else value)


def _wh_201(sv: Any) -> float | None:
    """2.0.1/2.1: value x 10^multiplier in Wh (the default) or kWh."""
    unit, mult = "Wh", 0
    uom = sv.unit_of_measure
    if uom is not UNSET:
        if uom.unit is not UNSET:
            unit = uom.unit
        if uom.multiplier is not UNSET:
            mult = uom.multiplier
    if unit not in ("Wh", "kWh") or not -9 <= mult <= 9:
        return None
    return finite(sv.value * (10.0 ** mult) * (1000.0 if unit == "kWh" else 1.0))


def energy_16(sampled: list) -> float | None:
    return _energy(sampled, _wh_16)


def energy_201(sampled: list) -> float | None:
    return _energy(sampled, _wh_201)


class Meter:
    """The per-message step, as a static function (the compiled class has the same)."""

    impl = "python"

    @staticmethod
    def samples_16(charger_id: str, tx: str, connector: int, meter_value: list,
                   sample: Callable[..., Any]) -> list:
        """``sample(charger_id, tx, at, energy_wh, connector)`` for each MeterValue with an
        energy reading (``energy_16``), in order; the connector clamped to 64 bits."""
        samples = []
        for mv in meter_value:
            wh = energy_16(mv.sampled_value)
            if wh is not None:
                samples.append(sample(charger_id, tx, mv.timestamp, wh, i64(connector)))
        return samples

    @staticmethod
    def handler_16(wants_events: Callable[[str], bool], sample: Callable[..., Any], commit: Callable[..., Any],
                   response: Any, rest: Callable[..., Any]) -> Callable[[Any, Any], Any]:
        """The 1.6 MeterValues handler's common path: the readings (``samples_16``, with the
        transaction id as text); no reading: ``response``; one reading and no event wanted
        (``wants_events(charger_id)``): ``commit(reading, response)``; anything else:
        ``rest(session, request, tx, readings, wants)``."""
        samples_16 = Meter.samples_16

        def MeterValues(s: Any, r: Any) -> Any:
            charger_id = s.charger_id
            tx = str(r.transaction_id) if r.transaction_id is not UNSET else ""
            samples = samples_16(charger_id, tx, r.connector_id, r.meter_value, sample)
            if not samples:
                return response
            wants = wants_events(charger_id)
            if len(samples) == 1 and not wants:
                return commit(samples[0], response)
            return rest(s, r, tx, samples, wants)
        return MeterValues


def select() -> type:
    """The compiled Meter unless absent or ``CHARGEYARD_PURE=1`` (``core.codec.pick``)."""
    from ..core.codec import pick

    def compiled() -> type:
        from ._meter import Meter as CMeter  # type: ignore[import-not-found]
        return CMeter
    return pick(Meter, compiled)
