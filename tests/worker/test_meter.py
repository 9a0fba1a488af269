"""The readings of a 1.6 MeterValues and the common path of its handler
(``worker/handlers/ocpp16.py`` and its compiled twin ``_ocpp16.pyx``): the same results from both, for well-formed and
quirky sampled values."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from chargeyard.core import twins
from chargeyard.core.messages import v16
from chargeyard.store.base import MeterSample
from chargeyard.worker.handlers import ocpp16 as meter
from chargeyard.worker.handlers.common import i64

IMPLS = [twins.load("chargeyard.worker.handlers.ocpp16", pure=True)]
try:
    IMPLS.append(twins.load("chargeyard.worker.handlers.ocpp16", pure=False))
except ImportError:  # the pure-Python build: the twin alone
    pass

T = "2026-01-01T00:00:00Z"


def mv(*sampled: dict, at: str = T) -> dict:
    return {"timestamp": at, "sampledValue": list(sampled)}


def sv(value: str, **kw: str) -> dict:
    return {"value": value, **kw}


E = "Energy.Active.Import.Register"
CASES = {
    "plain": [mv(sv("1234"))],
    "explicit": [mv(sv("10", measurand=E, unit="Wh"))],
    "kWh": [mv(sv("1.5", measurand=E, unit="kWh"))],
    "other measurands first": [mv(sv("11040", measurand="Power.Active.Import"), sv("16", measurand="Current.Import"),
                                  sv("7", measurand=E))],
    "total over phases": [mv(sv("1", measurand=E, phase="L1"), sv("2", measurand=E, phase="L2"), sv("3", measurand=E))],
    "phases only: the first": [mv(sv("1", measurand=E, phase="L1"), sv("2", measurand=E, phase="L2"))],
    "not a number, then one": [mv(sv("abc"), sv(" 5 "))],
    "infinite and NaN": [mv(sv("inf")), mv(sv("nan")), mv(sv("1e308", unit="kWh")), mv(sv("-0"))],
    "none": [mv(sv("5", measurand="Voltage"))],
    "several values": [mv(sv(str(i)), at=f"2026-01-01T00:00:0{i}Z") for i in range(5)],
    "underscores": [mv(sv("1_000"))],
}


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.IMPL)
@pytest.mark.parametrize("connector", [0, 1, 2**63 - 1, 2**63, -2**63 + 1, -2**63, -2**70])
def test_the_connector_is_clamped_like_i64(impl, connector):
    req = msgspec.convert({"connectorId": 1, "meterValue": [mv(sv("1"))]}, v16.MeterValuesRequest)
    got = impl.samples_16("CP1", "", connector, req.meter_value)
    assert got[0].connector_id == i64(connector) and type(got[0].connector_id) is int


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.IMPL)
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_samples_16(impl, case):
    req = msgspec.convert({"connectorId": 2**70, "transactionId": 3, "meterValue": CASES[case]},
                          v16.MeterValuesRequest)
    got = impl.samples_16("CP1", "3", req.connector_id, req.meter_value)
    want = []
    for m in req.meter_value:
        wh = meter.energy_16(m.sampled_value)
        if wh is not None:
            want.append(MeterSample("CP1", "3", m.timestamp, wh, 2**63 - 1))
    assert got == want
    assert all(type(s.energy_wh) is float for s in got)
    if case == "kWh":
        assert got[0].energy_wh == 1500.0 and got[0].at == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    if case == "total over phases":
        assert [s.energy_wh for s in got] == [3.0]
    if case == "phases only: the first":
        assert [s.energy_wh for s in got] == [1.0]
    if case == "infinite and NaN":
        assert [s.energy_wh for s in got] == [-0.0]
    if case == "none":
        assert got == []


class _Session:
    charger_id = "CP1"


class _Commit(msgspec.Struct):
    op: object
    response: object


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.IMPL)
@pytest.mark.parametrize("case", list(CASES), ids=str)
@pytest.mark.parametrize("tx", [3, None])
def test_meter_values_16(impl, case, tx):
    """The handler's paths: no reading, the response; one, a commit of it; several,
    ``several`` with the readings (no event is built here: the commit derives them)."""
    body = {"connectorId": 1, "meterValue": CASES[case]}
    if tx is not None:
        body["transactionId"] = tx
    req = msgspec.convert(body, v16.MeterValuesRequest)
    response = object()

    def several(s, samples):
        return ("several", s, samples)
    h = impl.meter_values_16(several, _Commit, response)
    got = h(_Session, req)
    tx_text = "" if tx is None else str(tx)
    samples = meter.samples_16("CP1", tx_text, 1, req.meter_value)
    if not samples:
        assert got is response
    elif len(samples) == 1:
        assert got == _Commit(samples[0], response)
    else:
        assert got == ("several", _Session, samples)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.IMPL)
def test_other_types_than_the_codecs_read_through_getattr(impl):
    """A subclass of the request types, and StopTransaction's transaction data (other
    types with the same fields), give the same readings as the decoded types."""
    class Sub(v16.MeterValuesRequestMeterValueSampledValue):
        pass
    base = msgspec.convert({"connectorId": 1, "meterValue": [mv(sv("7", measurand=E))]}, v16.MeterValuesRequest)
    sub = Sub(value="7", measurand=E)
    subbed = msgspec.structs.replace(base, meter_value=[msgspec.structs.replace(base.meter_value[0],
                                                                                sampled_value=[sub])])
    stop = msgspec.convert({"meterStop": 1, "timestamp": T, "transactionId": 1,
                            "transactionData": [mv(sv("7", measurand=E))]}, v16.StopTransactionRequest)
    want = impl.samples_16("CP1", "1", 1, base.meter_value)
    assert want and want == impl.samples_16("CP1", "1", 1, subbed.meter_value)
    assert want == impl.samples_16("CP1", "1", 1, stop.transaction_data)


def test_the_compiled_twin_defines_the_meter_values_path():
    """The compiled module compiles the MeterValues path of ``ocpp16.py``: every name it
    defines is one of the pure module's, and the path's three are there."""
    if len(IMPLS) < 2:
        pytest.skip("the pure-Python build")
    pure, compiled = IMPLS
    assert set(compiled.__all__) == {"IMPL", "energy_16", "meter_values_16", "samples_16"}
    assert set(compiled.__all__) <= set(pure.__all__)
    assert all(hasattr(impl, name) for impl in IMPLS for name in impl.__all__)
