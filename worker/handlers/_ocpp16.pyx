# cython: language_level=3
"""Compiled twin of the MeterValues path of ``ocpp16.py`` (read its docstring):
``samples_16``, ``meter_values_16`` and ``energy_16`` with the same results; the calls
between their steps stay in C."""

from msgspec import UNSET

from chargeyard.core.messages import v16 as _v16
from chargeyard.store.base import MeterSample
from chargeyard.worker.handlers.common import ENERGY, I64

__all__ = ["IMPL", "energy_16", "meter_values_16", "samples_16"]

IMPL = "compiled"

cdef object _UNSET = UNSET
cdef object _ENERGY = ENERGY
cdef object _I64 = I64
cdef object _MINUS_I64 = -I64
cdef object _Sample = MeterSample


# -- the 1.6 MeterValues Structs' fields, read from their slots (``_slots.pxi``) for the exact
# types the codec decodes; any other type (StopTransaction's transactionData, a subclass)
# goes through getattr.

include "../_slots.pxi"

cdef object _REQ = _v16.MeterValuesRequest
cdef object _MV = _v16.MeterValuesRequestMeterValue
cdef object _SV = _v16.MeterValuesRequestMeterValueSampledValue
cdef Py_ssize_t _REQ_TX = _offset(_REQ, "transaction_id")
cdef Py_ssize_t _REQ_CON = _offset(_REQ, "connector_id")
cdef Py_ssize_t _REQ_MV = _offset(_REQ, "meter_value")
cdef Py_ssize_t _MV_SAMPLED = _offset(_MV, "sampled_value")
cdef Py_ssize_t _MV_AT = _offset(_MV, "timestamp")
cdef Py_ssize_t _SV_VALUE = _offset(_SV, "value")
cdef Py_ssize_t _SV_UNIT = _offset(_SV, "unit")
cdef Py_ssize_t _SV_PHASE = _offset(_SV, "phase")
cdef Py_ssize_t _SV_MEASURAND = _offset(_SV, "measurand")


def _check():
    sv = _SV(value="1", unit="Wh", measurand=_ENERGY)
    mv = _MV(timestamp=None, sampled_value=[sv])
    req = _REQ(connector_id=3, meter_value=[mv], transaction_id=7)
    _check_slots("chargeyard.worker.handlers._ocpp16", (
        (sv, _SV, _SV_VALUE, "value"), (sv, _SV, _SV_UNIT, "unit"), (sv, _SV, _SV_PHASE, "phase"),
        (sv, _SV, _SV_MEASURAND, "measurand"), (mv, _MV, _MV_SAMPLED, "sampled_value"),
        (mv, _MV, _MV_AT, "timestamp"), (req, _REQ, _REQ_TX, "transaction_id"),
        (req, _REQ, _REQ_CON, "connector_id"), (req, _REQ, _REQ_MV, "meter_value")))


_check()


cdef inline object _i64(n):
    """``common.i64``: clamped to 64 bits."""
    if _MINUS_I64 <= n <= _I64:
        return n
    return _I64 if n > 0 else _MINUS_I64


cdef object _wh_16(sv):
    cdef double v
    try:
        v = float(_field(sv, _SV, _SV_VALUE, "value"))
    except ValueError:
        return None
    if _field(sv, _SV, _SV_UNIT, "unit") == "kWh":
        v = v * 1000.0
    if v - v == 0.0:  # finite: inf - inf and nan - nan are nan
        return v
    return None


cdef object _energy_16(sampled):
    best = None
    for sv in sampled:
        measurand = _field(sv, _SV, _SV_MEASURAND, "measurand")
        if measurand is not _UNSET and measurand != _ENERGY:
            continue
        wh = _wh_16(sv)
        if wh is None:
            continue
        if _field(sv, _SV, _SV_PHASE, "phase") is _UNSET:
            return wh
        if best is None:
            best = wh
    return best


cdef list _samples_16(charger_id, tx, connector, meter_value):
    cdef list samples = []
    for mv in meter_value:
        wh = _energy_16(_field(mv, _MV, _MV_SAMPLED, "sampled_value"))
        if wh is not None:
            samples.append(_Sample(charger_id, tx, _field(mv, _MV, _MV_AT, "timestamp"), wh, _i64(connector)))
    return samples


cdef object _meter_values_16(session, req, several, commit, accepted):
    t = _field(req, _REQ, _REQ_TX, "transaction_id")
    tx = "" if t is _UNSET else str(t)
    cdef list readings = _samples_16(session.charger_id, tx, _field(req, _REQ, _REQ_CON, "connector_id"),
                                     _field(req, _REQ, _REQ_MV, "meter_value"))
    if not readings:
        return accepted
    if len(readings) == 1:
        return commit(readings[0], accepted)
    return several(session, readings)


def energy_16(sampled):
    return _energy_16(sampled)


def samples_16(charger_id, tx, connector, meter_value):
    return _samples_16(charger_id, tx, connector, meter_value)


def meter_values_16(several, commit, accepted):
    def meter_values(session, req):
        return _meter_values_16(session, req, several, commit, accepted)
    return meter_values
