"""The README walk-through, step by step, against a real node and the example charger."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support import api_call

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "charger16.py"


def test_readme_walkthrough(node):
    base = node.url("")
    charger = subprocess.Popen([sys.executable, str(EXAMPLE), "CP-1", f"ws://127.0.0.1:{node.ws_port}/ocpp"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def scenario():
        assert (await api_call(base, "PUT", "/api/v1/id-tags/TAG-1", {"status": "Accepted"}))[0] == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # wait for the charger to boot and connect
            status, body = await api_call(base, "GET", "/api/v1/chargers/CP-1")
            if status == 200 and body["connected"] and body.get("vendor") == "Example":
                break
            await asyncio.sleep(0.1)
        events: list[dict] = []

        async def watch():
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/api/v1/chargers/CP-1/events") as r:
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            events.append(json.loads(line[6:]))

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        status, body = await api_call(base, "POST", "/api/v1/chargers/CP-1/calls/RemoteStartTransaction",
                                      {"idTag": "TAG-1", "connectorId": 1})
        assert (status, body) == (200, {"result": {"status": "Accepted"}})
        while not any(e["type"] == "transaction.meter" for e in events):
            await asyncio.sleep(0.1)
        status, body = await api_call(base, "GET", "/api/v1/transactions?charger_id=CP-1&active=true")
        tx = body["items"][0]["tx_id"]
        status, body = await api_call(base, "POST", "/api/v1/chargers/CP-1/calls/RemoteStopTransaction",
                                      {"transactionId": int(tx)})
        assert (status, body) == (200, {"result": {"status": "Accepted"}})
        while not any(e["type"] == "transaction.ended" for e in events):
            await asyncio.sleep(0.1)
        watcher.cancel()
        status, body = await api_call(base, "GET", f"/api/v1/chargers/CP-1/transactions/{tx}")
        assert status == 200 and body["energy_wh"] >= 500 and body["stopped_at"] and body["id_tag"] == "TAG-1"
        assert body["stop_reason"] == "Remote"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 40))
    finally:
        charger.terminate()
        charger.communicate(timeout=10)
