# cython: language_level=3
"""``meter.py``'s ``Meter.samples_16`` compiled: the same readings, the same results (the
twin's docstrings hold); calls between its steps stay in C."""

from msgspec import UNSET

from .meter import ENERGY, I64

cdef object _UNSET = UNSET
cdef object _ENERGY = ENERGY
cdef object _I64 = I64
cdef object _MINUS_I64 = -I64


cdef inline object _i64(n):
    """``meter.i64``: clamped to 64 bits."""
    if _MINUS_I64 <= n <= _I64:
        return n
    return _I64 if n > 0 else _MINUS_I64


cdef object _wh_16(sv):
    cdef double v
    try:
        v = float(sv.value)
    except ValueError:
        return None
    if sv.unit == "kWh":
        v = v * 1000.0
    if v - v == 0.0:  # finite: inf - inf and nan - nan are nan
        return v
    return None


cdef object _energy_16(sampled):
    best = None
    for sv in sampled:
        measurand = sv.measurand
        if measurand is not _UNSET and measurand != _ENERGY:
            continue
        wh = _wh_16(sv)
        if wh is None:
            continue
        if sv.phase is _UNSET:
            return wh
        if best is None:
            best = wh
    return best


class Meter:
    impl = "compiled"

    @staticmethod
    def samples_16(charger_id, tx, connector, meter_value, sample):
        cdef list samples = []
        for mv in meter_value:
            wh = _energy_16(mv.sampled_value)
            if wh is not None:
                samples.append(sample(charger_id, tx, mv.timestamp, wh, _i64(connector)))
        return samples
