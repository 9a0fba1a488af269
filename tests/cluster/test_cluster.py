"""`chargeyard cluster` for real: valkey, two workers, the API and nginx.

Chargers go through nginx, operator calls are forwarded through Redis to the
owning worker, and a charger that reconnects to another worker has its old
connection closed within 1 s."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from chargeyard import procs
from chargeyard.cluster import Cluster
from chargeyard.config import Settings

websockets = pytest.importorskip("websockets")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        procs.find_valkey_server()
        procs.find_nginx()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    ws_port, http_port = procs.cluster_ports(2)
    s = Settings(data_dir=str(tmp_path_factory.mktemp("cluster")), ws_port=ws_port,
                 http_port=http_port, call_timeout=5.0, drain_timeout=2.0)
    c = Cluster(s, workers=2, start_timeout=30)
    c.start()
    yield c
    c.stop()


async def boot(ws) -> None:
    await ws.send(json.dumps([2, "b1", "BootNotification",
                              {"chargePointVendor": "Acme", "chargePointModel": "X1"}]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply[0] == 3 and reply[2]["status"] == "Accepted", reply


async def answer_calls(ws, seen: list) -> None:
    """The charger side: accept every CALL from the CSMS."""
    async for raw in ws:
        msg = json.loads(raw)
        if msg[0] == 2:
            seen.append(msg[2])
            await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))


async def api(c: Cluster, method: str, path: str, body=None):
    url = f"http://127.0.0.1:{c.settings.http_port}{path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.request(method, url, json=body) as r:
            return r.status, await r.json()


async def until(pred, timeout: float = 3.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


def test_charger_through_nginx_and_forwarded_call(cluster, arun):
    async def body():
        url = f"ws://127.0.0.1:{cluster.settings.ws_port}/ocpp/CP-CL-1"
        async with websockets.connect(url, subprotocols=["ocpp1.6"]) as ws:
            assert ws.subprotocol == "ocpp1.6"
            await boot(ws)
            seen: list = []
            t = asyncio.create_task(answer_calls(ws, seen))

            async def listed():
                st, doc = await api(cluster, "GET", "/api/v1/chargers")
                return [i for i in doc["items"] if i["id"] == "CP-CL-1" and i["connected"]]

            (item,) = await until(listed)
            assert item["protocol"] == "ocpp1.6"
            st, doc = await api(cluster, "POST", "/api/v1/chargers/CP-CL-1/calls/Reset", {"type": "Soft"})
            assert (st, doc) == (200, {"result": {"status": "Accepted"}})
            assert seen == ["Reset"]
            t.cancel()
        st, doc = await api(cluster, "POST", "/api/v1/chargers/CP-NOPE/calls/Reset", {"type": "Soft"})
        assert st == 404

    arun(body(), timeout=30)


def test_reconnect_to_other_worker_closes_old_within_1s(cluster, arun):
    w1, w2 = cluster.workers[0].port, cluster.workers[1].port

    async def body():
        old = await websockets.connect(f"ws://127.0.0.1:{w1}/ocpp/CP-MOVE", subprotocols=["ocpp1.6"])
        await boot(old)

        async def owned_by_w1():
            st, doc = await api(cluster, "GET", "/api/v1/chargers")
            return any(i["id"] == "CP-MOVE" and i["connected"] for i in doc["items"])

        await until(owned_by_w1)
        new = await websockets.connect(f"ws://127.0.0.1:{w2}/ocpp/CP-MOVE", subprotocols=["ocpp1.6"])
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(old.wait_closed(), 1.0)
            took = time.monotonic() - t0
            assert old.close_code in (1000, 1001), old.close_code
            await boot(new)
            seen: list = []
            t = asyncio.create_task(answer_calls(new, seen))
            st, doc = await api(cluster, "POST", "/api/v1/chargers/CP-MOVE/calls/Reset", {"type": "Hard"})
            assert st == 200 and seen == ["Reset"]
            t.cancel()
            print(f"cross-worker takeover closed the old connection in {took * 1000:.0f} ms")
        finally:
            await old.close()
            await new.close()

    arun(body(), timeout=30)
