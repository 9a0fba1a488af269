"""The energy register reading of a MeterValue's sampled values (OCPP 1.6, 2.0.1, 2.1), and
the readings of a 1.6 MeterValues, built for the store.

``_meter.pyx`` compiles ``samples_16`` and the common path of the 1.6 MeterValues handler
(``meter_values_16``): a saturated worker runs them for every message. This module is their
pure-Python twin; callers take either through ``core.twins.load("chargeyard.worker.meter")``.
Both define the same public names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..store.base import MeterSample

__all__ = ["ENERGY", "I64", "IMPL", "energy_16", "energy_201", "finite", "i64", "meter_values_16", "samples_16"]

ENERGY = "Energy.Active.Import.Register"
I64 = 2**63 - 1
UNSET = msgspec.UNSET
IMPL = "python"


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


def samples_16(charger_id: str, tx: str, connector: int, meter_value: list) -> list[MeterSample]:
    """A ``MeterSample`` for each MeterValue with an energy reading (``energy_16``), in
    order; the connector clamped to 64 bits."""
    samples = []
    for mv in meter_value:
        wh = energy_16(mv.sampled_value)
        if wh is not None:
            samples.append(MeterSample(charger_id, tx, mv.timestamp, wh, i64(connector)))
    return samples


def meter_values_16(wants_events: Callable[[str], bool], several: Callable[..., Any], commit: Callable[..., Any],
                    accepted: Any) -> Callable[[Any, Any], Any]:
    """The 1.6 MeterValues handler (``handlers/ocpp16.py``), bound to a worker's
    ``wants_events``. The common case is answered here: no reading: ``accepted`` at once;
    one reading and nobody listening: ``commit(reading, accepted)``. Anything else goes
    to ``several(session, request, tx, readings, wants_event)``."""

    def meter_values(session: Any, req: Any) -> Any:
        charger_id = session.charger_id
        tx = str(req.transaction_id) if req.transaction_id is not UNSET else ""
        readings = samples_16(charger_id, tx, req.connector_id, req.meter_value)
        if not readings:
            return accepted
        wants_event = wants_events(charger_id)
        if len(readings) == 1 and not wants_event:
            return commit(readings[0], accepted)
        return several(session, req, tx, readings, wants_event)
    return meter_values
