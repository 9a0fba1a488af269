"""Every class of malformed input arrives over a real socket and gets the precise CALLERROR
(or close); the same connection, and another charger, are served afterwards."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

HB = '[2,"hb","Heartbeat",{}]'


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# (frame to send, expected [message id, code]) per version; None id: the frame's own id
CASES_16 = [
    ("garbage", ["-1", "FormationViolation"]),
    ('[2,"t1","Heartbeat",{', ["-1", "FormationViolation"]),                     # truncated
    (b'[2,"t2","DataTransfer",{"vendorId":"\xff\xfe"}]', ["-1", "FormationViolation"]),    # invalid UTF-8 (binary frame)
    ('[2,"t3","DataTransfer",{"vendorId":"\\ud800"}]', None),                   # lone surrogate: decodes or typed error
    ("[" * 30000 + "]" * 30000, ["-1", "FormationViolation"]),                   # deep nesting
    ('[2,"t5","StartTransaction",{"connectorId":1e999,"idTag":"a","meterStart":1,"timestamp":"2024-01-01T00:00:00Z"}]',
     ["t5", "PropertyConstraintViolation"]),                                       # huge number: out of range
    ('[2,"t6","StartTransaction",{"connectorId":NaN,"idTag":"a","meterStart":1,"timestamp":"2024-01-01T00:00:00Z"}]',
     ["-1", "FormationViolation"]),
    ('[2,"t7","Heartbeat",{},{}]', ["t7", "FormationViolation"]),                 # arity
    ('[2,"t8","Heartbeat"]', ["t8", "FormationViolation"]),
    ('[2,8,"Heartbeat",{}]', ["-1", "FormationViolation"]),                       # id type
    ('[2,"' + "x" * 37 + '","Heartbeat",{}]', ["-1", "FormationViolation"]),      # id too long
    ('[7,"t9","Heartbeat",{}]', ["t9", "FormationViolation"]),                    # unknown message type
    ('[2,"t10","NoSuchAction",{}]', ["t10", "NotImplemented"]),
    ('[2,"t11","RemoteStartTransaction",{"idTag":"a"}]', ["t11", "NotSupported"]),
    ('[2,"t12","Heartbeat",[]]', ["t12", "FormationViolation"]),
    ('[2,"t13","Heartbeat",{"extra":1}]', ["t13", "FormationViolation"]),
    ('[2,"t14","BootNotification",{"chargePointVendor":"V"}]', ["t14", "OccurenceConstraintViolation"]),
    ('[2,"t15","BootNotification",{"chargePointVendor":"V","chargePointModel":7}]', ["t15", "TypeConstraintViolation"]),
    ('[2,"t16","BootNotification",{"chargePointVendor":"' + "V" * 21 + '","chargePointModel":"M"}]',
     ["t16", "PropertyConstraintViolation"]),
    ('[2,"t17","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Dancing"}]',
     ["t17", "PropertyConstraintViolation"]),
    ('[2,"t18","Authorize",{"idTag":"a","idTag":"b"}]', None),                    # duplicate keys: last wins
]
CASES_201 = [
    ("garbage", ["-1", "RpcFrameworkError"]),
    ('[7,"u1","Heartbeat",{}]', ["u1", "MessageTypeNotSupported"]),
    ('[2,"u2","Heartbeat",{"extra":1}]', ["u2", "FormatViolation"]),
    ('[2,"u3","BootNotification",{"reason":"PowerUp"}]', ["u3", "OccurrenceConstraintViolation"]),
    ('[2,"u4","NoSuchAction",{}]', ["u4", "NotImplemented"]),
    ('[2,"u5","RequestStartTransaction",{}]', ["u5", "NotSupported"]),
    ('[2,"u6","Heartbeat",{},1]', ["u6", "RpcFrameworkError"]),
]


async def exchange(ws, frame):
    await ws.send(frame)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


@pytest.mark.parametrize("proto,cases", [("ocpp1.6", CASES_16), ("ocpp2.0.1", CASES_201)])
def test_malformed_frames_answered_and_connection_survives(node, proto, cases):
    async def scenario():
        async with websockets.connect(node.ws(f"bad-{proto}"), subprotocols=[proto],
                                      max_size=None) as ws:
            for frame, expected in cases:
                reply = await exchange(ws, frame)
                if expected is None:  # valid after all, or a typed error: never silence
                    assert reply[0] in (3, 4), (frame, reply)
                else:
                    assert reply[0] == 4 and reply[1:3] == expected, (frame[:60], reply)
                # the same connection still works after each one
                assert (await exchange(ws, HB))[0:2] == [3, "hb"]
            # a frame above max_frame (64 KiB) closes with 1009 ...
            await ws.send('[2,"big","DataTransfer",{"vendorId":"v","data":"' + "x" * 70000 + '"}]')
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        # ... and the charger (and any other) can connect and be served again
        for cid in (f"bad-{proto}", f"other-{proto}"):
            async with websockets.connect(node.ws(cid), subprotocols=[proto]) as ws:
                assert (await exchange(ws, HB))[0:2] == [3, "hb"]

    run(scenario())


def test_refuses_without_ocpp_subprotocol_and_bad_ids(node):
    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(node.ws("nosub")):
                pass
        assert info.value.response.status_code == 400
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(node.ws("nosub"), subprotocols=["mqtt"]):
                pass
        assert info.value.response.status_code == 400
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(node.ws("x" * 49), subprotocols=["ocpp1.6"]):
                pass
        assert info.value.response.status_code == 400
        # the first OCPP subprotocol of the client's list that the server speaks wins
        async with websockets.connect(node.ws("multi%20proto"), subprotocols=["mqtt", "ocpp2.0.1", "ocpp1.6"]) as ws:
            assert ws.subprotocol == "ocpp2.0.1"

    run(scenario())


def test_takeover_closes_the_old_connection(node):
    async def scenario():
        async with websockets.connect(node.ws("twin"), subprotocols=["ocpp1.6"]) as first:
            assert (await exchange(first, HB))[0] == 3
            async with websockets.connect(node.ws("twin"), subprotocols=["ocpp1.6"]) as second:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(first.recv(), 2)
                assert info.value.rcvd is not None and info.value.rcvd.code in (1000, 1001)
                assert (await exchange(second, HB))[0] == 3

    run(scenario())
