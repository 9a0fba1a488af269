"""Hostile input, bounded in count and time: the codec answers every input with a typed
result, never raises, stays fast, and the pure twin and the extension agree exactly."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chargeyard.core import Call, CallError, CallResult, FrameError, Send
from chargeyard.core.framing import ERROR_CODES, VALID_ERROR_CODES

from .conftest import CCodec, PyCodec

VERSIONS = ["1.6", "2.0.1", "2.1"]
PER_ITEM_S = 0.050  # generous: a decode takes microseconds; this only catches blow-ups
RESULT_TYPES = (Call, CallResult, CallError, Send, FrameError)
DEEP = 100_000

VALID_FRAMES = {
    "1.6": [
        b'[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]',
        b'[2,"a-1","Heartbeat",{}]',
        b'[2,"m","MeterValues",{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2024-05-01T10:00:00Z",'
        b'"sampledValue":[{"value":"1234.5","measurand":"Energy.Active.Import.Register","unit":"Wh"}]}]}]',
        b'[3,"x","{\\"a\\":1}"]', b'[3,"x",{"status":"Accepted"}]', b'[4,"x","GenericError","oops",{}]',
        b'[2,"s","StartTransaction",{"connectorId":1,"idTag":"TAG","meterStart":0,"timestamp":"2024-01-01T00:00:00Z"}]',
    ],
    "2.0.1": [
        b'[2,"1","BootNotification",{"chargingStation":{"model":"M","vendorName":"V"},"reason":"PowerUp"}]',
        b'[2,"2","TransactionEvent",{"eventType":"Updated","timestamp":"2024-01-01T00:00:00Z","triggerReason":'
        b'"MeterValuePeriodic","seqNo":3,"transactionInfo":{"transactionId":"tx1"},"meterValue":[{"timestamp":'
        b'"2024-01-01T00:00:00Z","sampledValue":[{"value":12.5}]}]}]',
        b'[2,"3","Heartbeat",{}]', b'[3,"3",{"currentTime":"2024-01-01T00:00:00Z"}]',
        b'[4,"3","FormatViolation","bad",{"a":1}]',
    ],
}
VALID_FRAMES["2.1"] = VALID_FRAMES["2.0.1"] + [
    b'[5,"3","InternalError","late failure",{}]',
    b'[6,"7","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"2024-01-01T00:00:00Z","data":[{"t":0,"v":"1"}]}]',
]


def impls() -> list:
    return [PyCodec] + ([CCodec] if CCodec is not None else [])


def hostile(version: str, rng: Any) -> list[bytes]:
    """Curated hostile inputs plus random mutations of valid frames."""
    out: list[bytes] = []
    valid = VALID_FRAMES[version]
    # random bytes, some looking a little like a frame
    for _ in range(300):
        n = rng.randint(0, 80)
        junk = bytes(rng.randrange(256) for _ in range(n))
        out += [junk, b"[2," + junk, b'[2,"1","Heartbeat",' + junk + b"]"]
    # truncated JSON: every prefix of a couple of frames, random prefixes of the rest
    for f in valid[:2]:
        out += [f[:k] for k in range(len(f))]
    for f in valid:
        out += [f[: rng.randrange(len(f))] for _ in range(20)]
    # invalid UTF-8 and surrogates: in the id, the action, the payload; escaped and raw
    for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\\ud800",
                b"\\udfff", b"\\ud800\\u0041", b"\\ud83d\\ude00", b"\\u0000", b"\\x41", b"\\"):
        out += [b'[2,"' + bad + b'","Heartbeat",{}]', b'[2,"1","' + bad + b'",{}]',
                b'[2,"1","Authorize",{"idTag":"' + bad + b'"}]',
                b'[2,"1","DataTransfer",{"vendorId":"' + bad + b'"}]',
                b'[3,"' + bad + b'",{}]', b'[4,"1","' + bad + b'","",{}]']
    # 100 000-level nesting, as the frame and inside a payload
    out += [b"[" * DEEP + b"]" * DEEP, b"[" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP,
            b'[2,"1","DataTransfer",{"vendorId":"v","data":' + b"[" * DEEP + b"]" * DEEP + b"}]",
            b'[2,"1","Heartbeat",' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"]",
            b'[3,"1",' + b"[" * DEEP + b"]" * DEEP + b"]",
            b'[4,"1","GenericError","",' + b'{"a":' * DEEP + b"{}" + b"}" * DEEP + b"]"]
    # huge numbers, NaN / Infinity, odd numerals
    for num in (b"1" * 400, b"-" + b"9" * 400, b"1e400", b"-1e400", b"1e-400", b"18446744073709551616",
                b"-9223372036854775809", b"2.0", b"2e0", b"-0", b"NaN", b"Infinity", b"-Infinity",
                b"nan", b"0x2", b"02", b"+2", b".5", b"1.", b"1e"):
        out += [b"[" + num + b',"1","Heartbeat",{}]',
                b'[2,"1","StatusNotification",{"connectorId":' + num
                + b',"errorCode":"NoError","status":"Available"}]',
                b'[2,"1","MeterValues",{"connectorId":1,"meterValue":[],"transactionId":' + num + b"}]",
                b'[2,"1","Heartbeat",' + num + b"]", b'[3,"1",' + num + b"]"]
    # duplicate keys
    out += [b'[2,"1","Authorize",{"idTag":"a","idTag":"b"}]', b'[2,"1","Authorize",{"idTag":"a","idTag":1}]',
            b'[2,"1","Heartbeat",{},{}]', b'[3,"1",{"a":1,"a":2}]', b'[4,"1","X","d",{"k":1,"k":2}]']
    # wrong arity and element types, unknown message types
    for f in (b"[]", b"[2]", b'[2,"1"]', b'[2,"1","Heartbeat"]', b'[2,"1","Heartbeat",{},{}]', b'[3,"1"]',
              b'[3,"1",{},{}]', b'[4,"1","GenericError","d"]', b'[4,"1","GenericError","d",{},1]',
              b'[5,"1","GenericError","d",{}]', b'[6,"1","Heartbeat",{}]', b'[6,"1","Heartbeat"]',
              b'[7,"1","Heartbeat",{}]', b'[0,"1"]', b'[-1,"1","x",{}]', b'[99999999999999999999,"1"]',
              b'["2","1","Heartbeat",{}]', b'[2.0,"1","Heartbeat",{}]', b'[true,"1","Heartbeat",{}]',
              b'[null,"1","Heartbeat",{}]', b'[[2],"1","Heartbeat",{}]', b'[2,1,"Heartbeat",{}]',
              b'[2,null,"Heartbeat",{}]', b'[2,["1"],"Heartbeat",{}]', b'[2,"1",5,{}]', b'[2,"1",null,{}]',
              b'[2,"1","Heartbeat",[]]', b'[2,"1","Heartbeat",null]', b'[2,"1","Heartbeat","{}"]',
              b'[3,"1",[]]', b'[3,"1",null]', b'[4,"1",5,"d",{}]', b'[4,"1","X",5,{}]', b'[4,"1","X","d",[]]',
              b'{"2":"1"}', b'"[2]"', b"2", b"null", b"", b" ", b"\x00", b"[2,\"1\",\"Heartbeat\",{}]x",
              b'[2,"1","Heartbeat",{}]]', b'[2,"1","Heartbeat",{}', b'[2 , "1" , "Heartbeat" , { } ]',
              b'\n\t[2,"1","Heartbeat",{}]\r\n', b'\xef\xbb\xbf[2,"1","Heartbeat",{}]'):
        out.append(f)
    # message ids: too long, empty, not strings, escapes, control characters
    for mid in (b'"' + b"x" * 36 + b'"', b'"' + b"x" * 37 + b'"', b'"' + b"x" * 145 + b'"', b'""',
                b'"\\u0031"', b'"a\\"b"', b'"\\n"', b'"\x01"', b'"\xc3\xa9"', b'"' + "é".encode() * 36 + b'"',
                b'"' + "é".encode() * 37 + b'"', b"1", b"1.5", b"{}", b"[]", b"true"):
        for tail in (b'"Heartbeat",{}]', b'{}]', b'"GenericError","d",{}]'):
            for mt in (b"2", b"3", b"4"):
                out.append(b"[" + mt + b"," + mid + b"," + tail)
    # unknown actions, wrong-direction actions, odd action spellings
    for action in (b"Foo", b"heartbeat", b"HEARTBEAT", b"Heart beat", b"Heartbeat ", b"", b"A" * 65,
                   b"A" * 5000, b"Reset", b"RemoteStartTransaction", b"GetVariables", b"SetChargingProfile",
                   b"NotifyPeriodicEventStream", b"Heartbeat\\u0000", b"Heart\\u0062eat", b"DataTransfer"):
        out += [b'[2,"1","' + action + b'",{}]', b'[6,"1","' + action + b'",{}]']
    # random byte-level mutations of valid frames
    for _ in range(1500):
        f = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            k = rng.randrange(len(f))
            if op < 0.3:
                del f[k]
            elif op < 0.6:
                f.insert(k, rng.choice(b'[]{}",:0123456789 \\\x00\xff-.eE'))
            elif op < 0.8:
                f[k] = rng.randrange(256)
            else:
                j = rng.randrange(len(f))
                f[k:k] = f[min(j, k): max(j, k)][:50]
        out.append(bytes(f))
    return out


def check_one(version: str, codecs: list, data: bytes, worst: list) -> Any:
    results = []
    for codec in codecs:
        t0 = time.perf_counter()
        try:
            res = codec.decode(data)
        except BaseException as exc:  # noqa: BLE001 - the contract is "never raises"
            raise AssertionError(f"{codec.impl} raised {exc!r} on {data[:200]!r}") from exc
        dt = time.perf_counter() - t0
        if dt > PER_ITEM_S:  # the machine is shared: a preempted run is retimed, not failed
            for _ in range(3):
                t0 = time.perf_counter()
                codec.decode(data)
                dt = min(dt, time.perf_counter() - t0)
        if dt > worst[0]:
            worst[0], worst[1] = dt, data[:80]
        assert dt < PER_ITEM_S, f"{codec.impl} took {dt * 1e3:.1f} ms on {data[:200]!r}"
        assert isinstance(res, RESULT_TYPES), (codec.impl, data[:200], res)
        if isinstance(res, FrameError):
            assert res.code in VALID_ERROR_CODES[version], res
            assert isinstance(res.message_id, str) and 0 < len(res.message_id) <= 36, res
            assert len(res.description) <= 255, res
        results.append(res)
    for other in results[1:]:
        assert other == results[0], f"pure and compiled differ on {data[:200]!r}:\n{results[0]}\n{other}"
    return results[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_fuzz_never_raises_and_impls_agree(version: str, rng, capsys) -> None:
    codecs = [impl(version, role) for impl in impls() for role in ("csms",)]
    chargers = [impl(version, "charger") for impl in impls()]
    inputs = hostile(version, rng)
    worst: list = [0.0, b""]
    kinds: dict[str, int] = {}
    t0 = time.perf_counter()
    for data in inputs:
        res = check_one(version, codecs, data, worst)
        check_one(version, chargers, data, worst)
        # memoryview / bytearray input gives the same answer as bytes
        if len(data) < 1000:
            assert check_one(version, codecs, memoryview(data), worst) == res
            assert check_one(version, codecs, bytearray(data), worst) == res
        name = type(res).__name__ + (f":{res.code}" if isinstance(res, FrameError) else "")
        kinds[name] = kinds.get(name, 0) + 1
    with capsys.disabled():
        print(f"\n[fuzz {version}] {len(inputs)} inputs x {len(codecs)} impls in "
              f"{time.perf_counter() - t0:.1f}s, slowest decode {worst[0] * 1e3:.2f} ms "
              f"({worst[1][:40]!r}), results {dict(sorted(kinds.items()))}, {rng!r}")


def expect(version: str, data: bytes, kind: str, msg_id: str, reply: bool = True) -> None:
    codes = ERROR_CODES[version]
    for impl in impls():
        res = impl(version).decode(data)
        assert isinstance(res, FrameError), (impl.impl, data, res)
        assert (res.code, res.message_id, res.reply) == (codes[kind], msg_id, reply), (impl.impl, data, res)


@pytest.mark.parametrize("version", VERSIONS)
def test_precise_codes(version: str) -> None:
    unreadable = [b"", b"\xff", b"not json", b'[2,"1","Heartbeat",{}', b"[" * DEEP, b"[" * DEEP + b"]" * DEEP,
                  b"{}", b"[]", b'"x"', b"[NaN]", b'["2","1","Heartbeat",{}]', b'[2.0,"1","Heartbeat",{}]',
                  b'[2,"1","Heartbeat",{}]x', b'[2,"1","Heartbeat",NaN]',
                  b'[2,"\\ud800","Heartbeat",{}]', b'[2,"\xed\xa0\x80","Heartbeat",{}]']
    for data in unreadable:
        expect(version, data, "frame", "-1")
    # id unreadable: not a string, empty, too long -> "-1"; a CALL still gets a reply
    for mid in (b"1", b"null", b'""', b'"' + b"x" * 37 + b'"', b"[]"):
        expect(version, b"[2," + mid + b',"Heartbeat",{}]', "frame", "-1")
        expect(version, b"[3," + mid + b",{}]", "frame", "-1", reply=False)
    assert isinstance(PyCodec(version).decode(b'[2,"' + b"x" * 36 + b'","Heartbeat",{}]'), Call)
    # JSON numbers msgspec cannot hold: the frame is readable, so the id is kept
    for impl in impls():
        res = impl(version).decode(b'[2,"9","Heartbeat",1e400]')
        assert isinstance(res, FrameError) and res.message_id == "9" and res.reply, res
    # wrong arity / element types with a readable id
    expect(version, b'[2,"7","Heartbeat"]', "frame", "7")
    expect(version, b'[2,"7","Heartbeat",{},{}]', "frame", "7")
    expect(version, b'[2,"7",5,{}]', "frame", "7")
    expect(version, b'[3,"7"]', "frame", "7", reply=False)
    expect(version, b'[4,"7","X","d",[]]', "frame", "7", reply=False)
    expect(version, b'[3,"7",[]]', "format", "7", reply=False)
    # payload not an object, unknown field, type, occurrence, property
    expect(version, b'[2,"7","Heartbeat",[]]', "format", "7")
    expect(version, b'[2,"7","Heartbeat",{"x":1}]', "format", "7")
    expect(version, b'[2,"7","Authorize",{"idTag":1}]' if version == "1.6"
           else b'[2,"7","Authorize",{"idToken":{"idToken":1,"type":"ISO14443"}}]', "type", "7")
    expect(version, b'[2,"7","Authorize",{}]', "occurrence", "7")
    expect(version, b'[2,"7","Authorize",{"idTag":"' + b"x" * 21 + b'"}]' if version == "1.6"
           else b'[2,"7","Authorize",{"idToken":{"idToken":"' + b"x" * 5000 + b'","type":"ISO14443"}}]', "property", "7")
    # unknown message type, unknown action, wrong direction
    expect(version, b'[7,"7","Heartbeat",{}]', "message_type", "7")
    if version != "2.1":
        expect(version, b'[6,"7","Heartbeat",{}]', "message_type", "7")
        expect(version, b'[5,"7","GenericError","",{}]', "message_type", "7")
    expect(version, b'[2,"7","FooBar",{}]', "not_implemented", "7")
    expect(version, b'[2,"7","Reset",{"type":"Hard"}]' if version == "1.6"
           else b'[2,"7","Reset",{"type":"Immediate"}]', "not_supported", "7")
    codes = ERROR_CODES[version]
    if version == "1.6":
        assert codes["format"] == "FormationViolation" and codes["occurrence"] == "OccurenceConstraintViolation"
    else:
        assert codes["format"] == "FormatViolation" and codes["occurrence"] == "OccurrenceConstraintViolation"
        assert codes["message_type"] == "MessageTypeNotSupported" and codes["frame"] == "RpcFrameworkError"


def test_json_roundtrip_of_hostile_results_is_safe(rng) -> None:
    """Every FrameError can be turned into reply bytes that parse as a CALLERROR."""
    for impl in impls():
        for version in VERSIONS:
            codec = impl(version)
            for data in hostile(version, rng)[::25]:
                res = codec.decode(data)
                if isinstance(res, FrameError) and res.reply:
                    frame = json.loads(codec.encode_reply_error(res))
                    assert frame[0] == 4 and frame[1] == res.message_id and frame[2] == res.code
