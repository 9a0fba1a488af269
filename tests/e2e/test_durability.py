"""kill -9 in the middle of metered sessions: after restart, everything a charger was
told was accepted is in the store (replies are sent only after the batch commit)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from tests.cassandra.fixtures import scylla_store_args
from tests.support import NodeProc


@pytest.mark.parametrize("store", ["sqlite", "scylla"])
def test_sigkill_loses_nothing_acknowledged(tmp_path, store, request):
    # scylla: the ScyllaDB store on the session's Cassandra (tests/cassandra); the node dies, the database does not
    args = scylla_store_args(request.getfixturevalue("cassandra")) if store == "scylla" else []
    node = NodeProc(tmp_path, "--accept-unknown-tags", *args).start()
    acked: dict[str, tuple[int, int]] = {}  # charger -> (transaction id, last acknowledged Wh)
    sent = [0]

    async def charger(cid: str) -> None:
        try:
            async with websockets.connect(node.ws(cid), subprotocols=["ocpp1.6"]) as ws:
                await ws.send('[2,"b","BootNotification",{"chargePointVendor":"K","chargePointModel":"K9"}]')
                await asyncio.wait_for(ws.recv(), 5)
                await ws.send('[2,"s","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":0,'
                              '"timestamp":"2026-01-01T00:00:00Z"}]')
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                tx = reply[2]["transactionId"]
                acked[cid] = (tx, 0)
                for i in range(1, 100_000):
                    wh = i * 10
                    await ws.send(json.dumps([2, f"m{i}", "MeterValues", {
                        "connectorId": 1, "transactionId": tx, "meterValue": [{
                            "timestamp": "2026-01-01T00:00:%02dZ" % (i % 60),
                            "sampledValue": [{"value": str(wh), "unit": "Wh"}]}]}]))
                    sent[0] += 1
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if reply[0] == 3 and reply[1] == f"m{i}":
                        acked[cid] = (tx, wh)
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            return

    async def scenario() -> None:
        tasks = [asyncio.create_task(charger(f"k{i}")) for i in range(20)]
        deadline = time.monotonic() + 20
        while sent[0] < 3000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        node.kill()  # SIGKILL while MeterValues are in flight
        await asyncio.wait_for(asyncio.gather(*tasks), 15)

    asyncio.run(scenario())
    assert len(acked) == 20 and sent[0] >= 1000, (len(acked), sent[0])
    node2 = NodeProc(tmp_path, *args).start()
    try:
        lost = []
        for cid, (tx, wh) in acked.items():
            status, body = node2.get(f"/api/v1/chargers/{cid}/transactions/{tx}")
            if status != 200 or body["energy_wh"] < wh:
                lost.append((cid, tx, wh, status, body))
        print(f"acknowledged MeterValues: {sum(w // 10 for _, w in acked.values())}, sent {sent[0]}, lost {len(lost)}")
        assert not lost
    finally:
        node2.stop()
