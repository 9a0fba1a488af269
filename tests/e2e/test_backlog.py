"""A charger replaying its offline backlog (old timestamps, in a burst, without waiting for
replies) is stored by its own timestamps, while a live charger is still served promptly."""

from __future__ import annotations

import asyncio
import json
import time

import websockets

from tests.support import api_call


def test_offline_backlog_stored_by_charger_time_without_starving_live_traffic(node):
    base = node.url("")

    async def scenario():
        async with websockets.connect(node.ws("backlog-1"), subprotocols=["ocpp1.6"]) as old, \
                websockets.connect(node.ws("live-1"), subprotocols=["ocpp1.6"]) as live:
            await old.send('[2,"s","StartTransaction",{"connectorId":1,"idTag":"B","meterStart":5000,'
                           '"timestamp":"2025-06-01T08:00:00Z"}]')
            tx = json.loads(await asyncio.wait_for(old.recv(), 5))[2]["transactionId"]
            n = 600
            frames = [json.dumps([2, f"m{i}", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
                "timestamp": f"2025-06-01T{8 + i // 60 // 60:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
                "sampledValue": [{"value": str(5000 + 10 * i), "unit": "Wh"}]}]}]) for i in range(1, n + 1)]
            frames.append(json.dumps([2, "stop", "StopTransaction", {
                "transactionId": tx, "meterStop": 5000 + 10 * n, "timestamp": "2025-06-01T09:00:00Z"}]))

            async def replay():  # pipelined: the whole backlog at once
                for f in frames:
                    await old.send(f)
                return [json.loads(await asyncio.wait_for(old.recv(), 20)) for _ in frames]

            async def live_heartbeats():
                lat = []
                for i in range(20):
                    t = time.perf_counter()
                    await live.send(f'[2,"h{i}","Heartbeat",{{}}]')
                    assert json.loads(await asyncio.wait_for(live.recv(), 5))[0] == 3
                    lat.append(time.perf_counter() - t)
                    await asyncio.sleep(0.02)
                return lat

            replies, lat = await asyncio.gather(replay(), live_heartbeats())
            assert [r[1] for r in replies] == [json.loads(f)[1] for f in frames]  # all, in order
            assert all(r[0] == 3 for r in replies)
            lat.sort()
            print(f"live heartbeat latency during a {n}-message backlog: p50 {lat[10] * 1e3:.1f} ms, "
                  f"max {lat[-1] * 1e3:.1f} ms")
            assert lat[10] < 0.25  # the live charger is not starved
            status, body = await api_call(base, "GET", f"/api/v1/chargers/backlog-1/transactions/{tx}")
            assert status == 200
            assert body["started_at"].startswith("2025-06-01T08:00:00")
            assert body["stopped_at"].startswith("2025-06-01T09:00:00")
            assert body["energy_wh"] == 10 * n

    asyncio.run(asyncio.wait_for(scenario(), 60))
