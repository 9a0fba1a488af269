"""Monitoring on one node (``chargeyard run``, no Kafka): real chargers, the worker's
committed events, the in-process services, alerts read over the operator API
(issue 20, Proof: Monitoring).

- a charger dropped without a close raises ``charger_offline`` after ``--offline-after``
  and clears it when it is back;
- a takeover (the same id connecting again) raises nothing;
- StatusNotification Faulted raises ``connector_faulted``, Available clears it.
"""

from __future__ import annotations

import asyncio
import json
import time

import websockets

from tests.support import NodeProc, api_call

OFFLINE_AFTER = 1.0


async def _rpc(ws, frame: list) -> list:
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply[0] in (3, 4) and reply[1] == frame[1]:
            return reply


async def _boot(ws) -> None:
    reply = await _rpc(ws, [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}])
    assert reply[2]["status"] == "Accepted", reply


async def _status(ws, status: str, error_code: str = "NoError") -> None:
    await _rpc(ws, [2, f"s-{status}", "StatusNotification",
                    {"connectorId": 1, "errorCode": error_code, "status": status}])


async def _alerts(base: str, cid: str, active: str = "true") -> list[dict]:
    status, body = await api_call(base, "GET", f"/alerts?active={active}&charger_id={cid}")
    assert status == 200, body
    return body["items"]


async def _until(pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def test_monitoring_scenarios_on_one_node(tmp_path):
    node = NodeProc(tmp_path / "data", "--offline-after", str(OFFLINE_AFTER), "--heartbeat-interval", "120").start()
    base = node.url("/api/v1")

    async def scenario():
        # dropped without a close: charger_offline after the threshold, cleared when back
        ws = await websockets.connect(node.ws("mon-drop"), subprotocols=["ocpp1.6"])
        await _boot(ws)
        ws.transport.abort()  # no close frame: the TCP connection just goes
        await asyncio.sleep(OFFLINE_AFTER / 4)
        assert await _alerts(base, "mon-drop") == []  # not before --offline-after
        (alert,) = await _until(lambda: _alerts(base, "mon-drop"))
        assert alert["kind"] == "charger_offline" and alert["cleared_at"] is None
        async with websockets.connect(node.ws("mon-drop"), subprotocols=["ocpp1.6"]) as back:
            await _boot(back)
            await _until(lambda: _none(base, "mon-drop"))
            cleared = await _alerts(base, "mon-drop", "false")
            assert [a["id"] for a in cleared] == [alert["id"]] and cleared[0]["cleared_at"]

            # a takeover is not an outage
            async with websockets.connect(node.ws("mon-take"), subprotocols=["ocpp1.6"]) as first:
                await _boot(first)
                async with websockets.connect(node.ws("mon-take"), subprotocols=["ocpp1.6"]) as second:
                    await _boot(second)
                    await asyncio.wait_for(first.wait_closed(), 10)  # the old one was closed
                    await asyncio.sleep(OFFLINE_AFTER * 3)
                    assert await _alerts(base, "mon-take", "true") == []
                    assert await _alerts(base, "mon-take", "false") == []

                    # Faulted raises connector_faulted; Available clears it
                    await _status(second, "Faulted", "GroundFailure")
                    (alert,) = await _until(lambda: _alerts(base, "mon-take"))
                    assert alert["kind"] == "connector_faulted" and alert["connector_id"] == 1
                    await _status(second, "Available")
                    await _until(lambda: _none(base, "mon-take"))
                    assert [a["kind"] for a in await _alerts(base, "mon-take", "false")] == ["connector_faulted"]

    try:
        asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        node.stop()


async def _none(base: str, cid: str) -> bool:
    return await _alerts(base, cid) == []
