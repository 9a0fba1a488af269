"""Frame vectors, encode round trips, CALLERROR codes, decode_result and the codec switch;
every test runs against the pure-Python twin and the compiled extension (``codec_cls``)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import msgspec
import pytest

from chargeyard.core import (
    Call, CallError, CallResult, FrameError, PayloadError, Send, Tables,
)
from chargeyard.core.framing import ERROR_CODES, VALID_ERROR_CODES
from chargeyard.core.messages import v16, v21, v201

UTC = datetime.timezone.utc
BOOT16 = b'[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]'


# -- frame vectors ---------------------------------------------------------------------
def test_call_16(codec_cls) -> None:
    res = codec_cls("1.6").decode(BOOT16)
    assert res == Call("19223201", "BootNotification", v16.BootNotificationRequest(
        charge_point_vendor="VendorX", charge_point_model="SingleSocketCharger"))


def test_a_view_is_decoded_in_place_and_not_kept(codec_cls) -> None:
    """The listener hands over a view of picows' read buffer, reused after the call: what
    decode returns must not refer to it. A view that is not contiguous is decoded too."""
    buf = bytearray(BOOT16)
    res = codec_cls("1.6").decode(memoryview(buf))
    buf[:] = b" " * len(buf)  # the socket layer reuses its buffer
    assert res == codec_cls("1.6").decode(BOOT16)
    assert res.payload.charge_point_vendor == "VendorX" and res.message_id == "19223201"
    doubled = bytes(c for ch in BOOT16 for c in (ch, 0))  # every other byte: a strided view
    assert codec_cls("1.6").decode(memoryview(doubled)[::2]) == res
    assert isinstance(codec_cls("1.6").decode(memoryview(b"[2,")), FrameError)


def test_call_201_transaction_event(codec_cls) -> None:
    frame = (b'[2,"t1","TransactionEvent",{"eventType":"Updated","timestamp":"2024-05-01T10:00:00+02:00",'
             b'"triggerReason":"MeterValuePeriodic","seqNo":4,"transactionInfo":{"transactionId":"X"},'
             b'"meterValue":[{"timestamp":"2024-05-01T10:00:00Z","sampledValue":[{"value":1.5}]}]}]')
    res = codec_cls("2.0.1").decode(frame)
    assert isinstance(res, Call) and res.action == "TransactionEvent"
    p = res.payload
    assert isinstance(p, v201.TransactionEventRequest)
    assert p.event_type == "Updated" and p.seq_no == 4 and p.transaction_info.transaction_id == "X"
    assert p.timestamp == datetime.datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert p.meter_value[0].sampled_value[0].value == 1.5


def test_callresult_and_decode_result(codec_cls) -> None:
    codec = codec_cls("1.6", "charger")
    res = codec.decode(b'[3,"19223201",{"status":"Accepted","currentTime":"2024-05-01T10:00:00Z","interval":300}]')
    assert isinstance(res, CallResult) and res.message_id == "19223201"
    assert isinstance(res.payload, msgspec.Raw)
    out = codec.decode_result("BootNotification", res.payload)
    assert out == v16.BootNotificationResponse(status="Accepted", interval=300,
                                               current_time=datetime.datetime(2024, 5, 1, 10, tzinfo=UTC))
    # raw bytes work too
    assert codec.decode_result("BootNotification", bytes(res.payload)) == out
    with pytest.raises(PayloadError) as exc:
        codec.decode_result("BootNotification", b'{"status":"Maybe","currentTime":"2024-05-01T10:00:00Z","interval":1}')
    assert exc.value.code == "PropertyConstraintViolation"
    with pytest.raises(PayloadError) as exc:
        codec.decode_result("BootNotification", b'{"status":"Accepted","interval":1}')
    assert exc.value.code == "OccurenceConstraintViolation"
    with pytest.raises(PayloadError) as exc:
        codec.decode_result("NoSuchAction", b"{}")
    assert exc.value.code == "NotImplemented"
    with pytest.raises(PayloadError) as exc:
        codec.decode_result("Heartbeat", b'{"currentTime": "2024-05-01T10:00:00Z"')
    assert exc.value.code == "FormationViolation"


def test_callerror(codec_cls) -> None:
    for version in ("1.6", "2.0.1", "2.1"):
        res = codec_cls(version).decode(b'[4,"9","NotImplemented","no such thing",{"hint":1}]')
        assert res == CallError("9", "NotImplemented", "no such thing", {"hint": 1}, False)


def test_21_callresulterror_and_send(codec_cls) -> None:
    codec = codec_cls("2.1")
    assert codec.decode(b'[5,"9","InternalError","late",{}]') == CallError("9", "InternalError", "late", {}, True)
    res = codec.decode(b'[6,"7","NotifyPeriodicEventStream",{"id":1,"pending":0,'
                       b'"basetime":"2024-01-01T00:00:00Z","data":[{"t":0,"v":"1"}]}]')
    assert isinstance(res, Send) and res.action == "NotifyPeriodicEventStream"
    assert isinstance(res.payload, v21.REQUESTS["NotifyPeriodicEventStream"])
    bad = codec.decode(b'[6,"7","NotifyPeriodicEventStream",{"id":"x"}]')
    assert isinstance(bad, FrameError) and not bad.reply and bad.message_type == 6
    for version in ("1.6", "2.0.1"):  # not in these versions
        for frame in (b'[5,"9","InternalError","late",{}]', b'[6,"7","Heartbeat",{}]'):
            res = codec_cls(version).decode(frame)
            assert isinstance(res, FrameError) and res.code == ERROR_CODES[version]["message_type"], res


def test_whitespace_tolerant(codec_cls) -> None:
    codec = codec_cls("1.6")
    compact = codec.decode(BOOT16)
    spaced = json.dumps(json.loads(BOOT16), indent=2).encode()
    for frame in (spaced, b" \r\n\t" + BOOT16 + b"\n", BOOT16.replace(b",", b" , ").replace(b"[", b"[ "),
                  b'[ 2 ,\n "19223201" ,\t"BootNotification" , {"chargePointVendor" : "VendorX",'
                  b' "chargePointModel":"SingleSocketCharger" } ] '):
        assert codec.decode(frame) == compact, frame
    assert codec.decode(b'[ 3 , "1" , { } ]') == CallResult("1", msgspec.Raw(b"{}"))


def test_draft6_integral_floats(codec_cls) -> None:
    # 2.0.1 / 2.1 are draft-06 (1.0 is an integer); 1.6 is draft-04 (it is not)
    res = codec_cls("2.0.1").decode(b'[2,"1","StatusNotification",{"timestamp":"2024-01-01T00:00:00Z",'
                                    b'"connectorStatus":"Available","evseId":1.0,"connectorId":2.0}]')
    assert isinstance(res, Call) and res.payload.evse_id == 1 and type(res.payload.evse_id) is int
    res = codec_cls("2.0.1").decode(b'[2,"1","StatusNotification",{"timestamp":"2024-01-01T00:00:00Z",'
                                    b'"connectorStatus":"Available","evseId":1.5,"connectorId":2}]')
    assert isinstance(res, FrameError) and res.code == "TypeConstraintViolation"
    res = codec_cls("1.6").decode(b'[2,"1","StatusNotification",{"connectorId":1.0,"errorCode":"NoError",'
                                  b'"status":"Available"}]')
    assert isinstance(res, FrameError) and res.code == "TypeConstraintViolation"


@pytest.mark.parametrize("ts,ok", [
    ("2024-01-01T00:00:00Z", True), ("2024-01-01t00:00:00z", True), ("2024-01-01T00:00:00.123456789+05:30", True),
    ("2024-01-01T00:00:00-00:00", True), ("2024-01-01 00:00:00Z", False), ("2024-01-01T00:00:00+0100", False),
    ("2024-01-01T00:00:00.5-0130", False), ("2024-01-01T00:00:00", False), ("2024-02-30T00:00:00Z", False),
])
def test_datetime_is_rfc3339(codec_cls, ts: str, ok: bool) -> None:
    codec = codec_cls("1.6", "charger")
    frame = json.dumps([2, "1", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                       "timestamp": ts}]).encode()
    res = codec_cls("1.6").decode(frame)
    assert isinstance(res, Call) is ok, res
    if not ok:
        assert res.code == "PropertyConstraintViolation" and res.message_id == "1"
    escaped = frame.replace(b"T", b"\\u0054")  # the same text through JSON escapes
    assert isinstance(codec_cls("1.6").decode(escaped), Call) is ok
    body = json.dumps({"currentTime": ts}).encode()
    if ok:
        codec.decode_result("Heartbeat", body)
    else:
        with pytest.raises(PayloadError):
            codec.decode_result("Heartbeat", body)


# -- encoding --------------------------------------------------------------------------
def test_encode_round_trips(codec_cls) -> None:
    csms, charger = codec_cls("2.0.1", "csms"), codec_cls("2.0.1", "charger")
    req = v201.GetVariablesRequest(get_variable_data=[v201.GetVariableDataType(
        component=v201.ComponentType(name="OCPPCommCtrlr"), variable=v201.VariableType(name="HeartbeatInterval"))])
    wire = csms.encode_call("c-1", "GetVariables", req)
    assert json.loads(wire)[:3] == [2, "c-1", "GetVariables"]
    assert charger.decode(wire) == Call("c-1", "GetVariables", req)
    resp = v201.HeartbeatResponse(current_time=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    wire = csms.encode_result("h-1", resp)
    assert wire == b'[3,"h-1",{"currentTime":"2024-01-02T03:04:05Z"}]'
    back = charger.decode(wire)
    assert isinstance(back, CallResult) and charger.decode_result("Heartbeat", back.payload) == resp
    wire = csms.encode_error("e-1", "FormatViolation", "x" * 300, {"k": "v"})
    err = charger.decode(wire)
    assert err == CallError("e-1", "FormatViolation", "x" * 255, {"k": "v"}, False)
    assert json.loads(csms.encode_error("e-2", "GenericError")) == [4, "e-2", "GenericError", "", {}]
    fe = csms.decode(b'[2,"q","Heartbeat",{"extra":1}]')
    assert json.loads(csms.encode_reply_error(fe)) == [4, "q", "FormatViolation", fe.description, {}]
    # ids that need JSON escaping come back intact
    for mid in ('a"b', "back\\slash", "é", "\x01"):
        assert json.loads(csms.encode_result(mid, {}))[1] == mid


def test_impls_encode_identically() -> None:
    from .conftest import CCodec, PyCodec
    if CCodec is None:
        pytest.skip("extension not built")
    resp = v16.BootNotificationResponse(status="Accepted", interval=300,
                                        current_time=datetime.datetime(2024, 1, 1, tzinfo=UTC))
    a, b = PyCodec("1.6"), CCodec("1.6")
    for mid in ("1", "x" * 36, 'q"', "é😀", "\n"):
        assert a.encode_result(mid, resp) == b.encode_result(mid, resp)
        assert a.encode_call(mid, "Reset", {"type": "Hard"}) == b.encode_call(mid, "Reset", {"type": "Hard"})
        assert a.encode_error(mid, "GenericError", "d" * 300) == b.encode_error(mid, "GenericError", "d" * 300)


class _Tagged(msgspec.Struct, tag="t"):
    pass


class _ArrayLike(msgspec.Struct, array_like=True):
    pass


def test_impls_encode_results_byte_identically() -> None:
    """Every reply is built by ``encode_result``; the compiled one writes an empty-object
    payload itself (a fieldless Struct type the encoder writes as ``{}``, an id that needs
    no escaping). Both give the same bytes for ids that need escaping, non-ASCII ids, and
    payloads with and without fields, tagged or array-like, asked in any order (the
    compiled codec caches its per-type check)."""
    from .conftest import CCodec, PyCodec
    if CCodec is None:
        pytest.skip("extension not built")
    ids = ["m1", "", "a b", 'q"uote', "back\\slash", "tab\t", "nl\n", "\x00", "\x1f", "\x7f", "é", "😀",
           "x" * 36, "~!@#$%^&*()", "</script>", "\u2028"]
    payloads = [v16.MeterValuesResponse(), v16.StatusNotificationResponse(), v201.MeterValuesResponse(),
                v16.StopTransactionResponse(),  # all fields optional: {} here, but not always
                v16.StopTransactionResponse(id_tag_info=v16.StopTransactionResponseIdTagInfo(status="Accepted")),
                v16.HeartbeatResponse(current_time=datetime.datetime(2026, 1, 1, tzinfo=UTC)),
                {}, {"a": 1}, [], None, _Tagged(), _ArrayLike()]
    for version in ("1.6", "2.0.1"):
        pure, compiled = PyCodec(version), CCodec(version)
        for rounds in range(2):  # the second round after the compiled codec's per-type check
            for mid in ids:
                for payload in (payloads if rounds == 0 else payloads[::-1]):
                    want = pure.encode_result(mid, payload)
                    assert compiled.encode_result(mid, payload) == want, (mid, payload)
                    assert msgspec.json.decode(want)[1] == mid
    assert CCodec("1.6").encode_result("m1", v16.MeterValuesResponse()) == b'[3,"m1",{}]'


# -- CALLERROR codes ---------------------------------------------------------------------
def test_error_code_tables() -> None:
    assert ERROR_CODES["1.6"] == {
        "frame": "FormationViolation", "message_type": "FormationViolation", "format": "FormationViolation",
        "type": "TypeConstraintViolation", "occurrence": "OccurenceConstraintViolation",
        "property": "PropertyConstraintViolation", "not_implemented": "NotImplemented",
        "not_supported": "NotSupported", "internal": "InternalError", "generic": "GenericError"}
    for v in ("2.0.1", "2.1"):
        assert ERROR_CODES[v] == {
            "frame": "RpcFrameworkError", "message_type": "MessageTypeNotSupported", "format": "FormatViolation",
            "type": "TypeConstraintViolation", "occurrence": "OccurrenceConstraintViolation",
            "property": "PropertyConstraintViolation", "not_implemented": "NotImplemented",
            "not_supported": "NotSupported", "internal": "InternalError", "generic": "GenericError"}
    for v, codes in ERROR_CODES.items():
        assert set(codes.values()) <= VALID_ERROR_CODES[v]
        assert "ProtocolError" in VALID_ERROR_CODES[v]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_codes_by_failure(codec_cls, version: str) -> None:
    codes = ERROR_CODES[version]
    codec = codec_cls(version)
    boot = (b'{"chargePointVendor":%s,"chargePointModel":"M"%s}' if version == "1.6"
            else b'{"reason":"PowerUp","chargingStation":{"vendorName":%s,"model":"M"%s}}')
    cases = {
        "type": boot % (b"5", b""), "occurrence": b"{}", "property": boot % (b'"' + b"v" * 60 + b'"', b""),
        "format": boot % (b'"V"', b',"bogus":1'),
    }
    for kind, payload in cases.items():
        res = codec.decode(b'[2,"m","BootNotification",' + payload + b"]")
        assert isinstance(res, FrameError) and res.code == codes[kind] and res.message_id == "m", (kind, res)
        assert res.reply and res.action == "BootNotification" and res.message_type == 2
    assert codec.decode(b'[2,"m","BootNotification",[]]').code == codes["format"]
    assert codec.decode(b'[2,"m","Nope",{}]').code == "NotImplemented"
    assert codec.decode(b'[2,"m","GetLocalListVersion",{}]').code == "NotSupported"
    assert codec_cls(version, "charger").decode(b'[2,"m","GetLocalListVersion",{}]').action == "GetLocalListVersion"
    res = codec.decode(b"garbage")
    assert (res.code, res.message_id) == (codes["frame"], "-1")


def test_tables_validate() -> None:
    t = Tables("1.6")
    assert t.validate("Reset", "request", {"type": "Soft"}) == v16.ResetRequest(type="Soft")
    with pytest.raises(PayloadError) as exc:
        t.validate("Reset", "request", {"type": "Later"})
    assert exc.value.code == "PropertyConstraintViolation"
    with pytest.raises(PayloadError) as exc:
        t.validate("Reset", "request", {"type": object()})
    assert exc.value.code == "TypeConstraintViolation"
    with pytest.raises(ValueError):
        Tables("3.0")
    with pytest.raises(ValueError):
        Tables("1.6", "router")


# -- the switch --------------------------------------------------------------------------
def _impl_in_subprocess(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEYARD_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", "import chargeyard.core as c; print(c.IMPL, c.Codec.impl)"],
                         env=full, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_pure_switch() -> None:
    assert _impl_in_subprocess(CHARGEYARD_PURE="1") == "python python"
    from .conftest import CCodec
    if CCodec is not None:
        assert _impl_in_subprocess() == "cython cython"
        assert _impl_in_subprocess(CHARGEYARD_REQUIRE_EXT="1") == "cython cython"
