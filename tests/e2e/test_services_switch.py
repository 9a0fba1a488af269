"""``--services``: on one node without Kafka, billing and monitoring consume the outbox in
the worker's process (auto) or not at all (off: the relay drops the events, the outbox
does not grow). A Faulted connector is the witness: an alert with auto, none with off."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
import websockets

from tests.support import NodeProc


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _boot_and_fault(url: str) -> None:
    async with websockets.connect(url, subprotocols=["ocpp1.6"]) as ws:
        for i, (action, payload) in enumerate([
                ("BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "X1"}),
                ("StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"})]):
            await ws.send(json.dumps([2, str(i), action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3, reply


@pytest.mark.parametrize("services", ["auto", "off"])
def test_services_consume_the_outbox_in_process_or_not_at_all(tmp_path, services):
    node = NodeProc(tmp_path / "data", "--services", services).start()
    try:
        asyncio.run(_boot_and_fault(node.ws("CP-SW-1")))
        deadline = time.monotonic() + 20
        while True:  # every event relayed (to the services, or to nobody), none left behind
            _, text = node.request("GET", "/metrics")
            if _metric(text, "chargeyard_events_published_total") >= 3 and \
                    _metric(text, "chargeyard_events_spooled") == 0:
                break
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while True:
            status, body = node.get("/api/v1/alerts?active=true")
            assert status == 200, body
            kinds = [a["kind"] for a in body["items"]]
            if services == "off" or kinds:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert kinds == (["connector_faulted"] if services == "auto" else [])
    finally:
        assert node.stop() == 0


def test_an_unknown_services_value_stops_the_start(tmp_path):
    done = subprocess.run([sys.executable, "-m", "chargeyard.cli", "run", "--data-dir", str(tmp_path),
                           "--ws-port", "0", "--http-port", "0", "--services", "elsewhere"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "--services elsewhere: auto or off" in done.stderr, done.stderr
