"""Leniency profiles: a quirky model's violations are accepted, counted and logged once;
every other charger stays strict."""

from __future__ import annotations

import asyncio
import json
import re

import websockets

from tests.support import NodeProc

QUIRKY = ('[2,"q{n}","StatusNotification",{{"connectorId":"1","errorCode":"noerror","status":"available",'
          '"firmwareBuild":"x"}}]')


def test_leniency_profile_by_model(tmp_path):
    prof = tmp_path / "leniency.toml"
    prof.write_text('[[profile]]\nname = "acme"\nvendor = "ACME"\nmodel = "AC22*"\n'
                    'relax = ["unknown_fields", "numeric_strings", "enum_case"]\n')
    n = NodeProc(tmp_path / "data", "--leniency-file", str(prof)).start()

    async def scenario():
        async with websockets.connect(n.ws("quirky"), subprotocols=["ocpp1.6"]) as q, \
                websockets.connect(n.ws("strict"), subprotocols=["ocpp1.6"]) as s:
            # before its boot says which model it is, the quirky charger is strict too
            await q.send(QUIRKY.format(n=0))
            assert json.loads(await q.recv())[0] == 4
            for ws, model in ((q, "AC22-X"), (s, "OTHER")):
                await ws.send(json.dumps([2, "b", "BootNotification",
                                          {"chargePointVendor": "ACME", "chargePointModel": model}]))
                assert json.loads(await ws.recv())[2]["status"] == "Accepted"
            for i in range(1, 4):
                await q.send(QUIRKY.format(n=i))
                assert json.loads(await q.recv()) == [3, f"q{i}", {}]
            await s.send(QUIRKY.format(n=9))
            reply = json.loads(await s.recv())
            assert reply[0] == 4 and reply[1] == "q9"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        status, body = n.get("/api/v1/chargers/quirky")
        assert status == 200 and body["connectors"][0]["status"] == "Available"
        text = n.request("GET", "/metrics")[1]
        counts = dict(re.findall(r'chargeyard_leniency_relaxed_total\{rule="(\w+)"\} (\d+)', text))
        assert counts == {"unknown_fields": "3.0", "numeric_strings": "3.0", "enum_case": "3.0"} or \
            {k: float(v) for k, v in counts.items()} == {"unknown_fields": 3, "numeric_strings": 3, "enum_case": 3}
        logged = [line for line in n.log if "relaxed rule" in line and "quirky" in line]
        assert len(logged) == 3  # once per rule for this charger, not once per message
    finally:
        n.stop()
