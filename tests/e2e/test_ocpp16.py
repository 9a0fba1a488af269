"""End to end with the `ocpp` library's 1.6 ChargePoint: boot, authorize, transaction,
meter values, stop, retries, and operator calls through the API."""

from __future__ import annotations

import asyncio

from ocpp.v16 import call

from tests.e2e.chargers import CP16, connect, ts
from tests.support import api_call


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_session_energy_and_retries(node):
    base = node.url("")

    async def scenario():
        assert (await api_call(base, "PUT", "/api/v1/id-tags/TAG16", {"status": "Accepted"}))[0] == 200
        async with connect(CP16, node.ws("cp16-a"), "cp16-a", "ocpp1.6") as cp:
            boot = await cp.call(call.BootNotification(charge_point_model="M1", charge_point_vendor="ACME"))
            assert boot.status == "Accepted" and boot.interval == 120
            assert (await cp.call(call.Heartbeat())).current_time
            assert (await cp.call(call.Authorize(id_tag="TAG16"))).id_tag_info["status"] == "Accepted"
            assert (await cp.call(call.Authorize(id_tag="NOPE"))).id_tag_info["status"] == "Invalid"
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing",
                                                  timestamp=ts()))
            start = call.StartTransaction(connector_id=1, id_tag="TAG16", meter_start=1000, timestamp=ts())
            r1 = await cp.call(start)
            r2 = await cp.call(start)  # a retry: same transaction
            assert r1.transaction_id == r2.transaction_id
            assert r1.id_tag_info["status"] == "Accepted"
            tx = r1.transaction_id
            await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
                "timestamp": ts(), "sampledValue": [
                    {"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                    {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}]}]))
            status, body = await api_call(base, "GET", f"/api/v1/chargers/cp16-a/transactions/{tx}")
            assert status == 200 and body["energy_wh"] == 1500 and body["stopped_at"] is None
            stop = call.StopTransaction(meter_stop=4000, timestamp=ts(), transaction_id=tx, reason="Local",
                                        id_tag="TAG16")
            await cp.call(stop)
            await cp.call(stop)  # resent: accepted again, applied once
            # a stop for a transaction nobody knows is accepted too (chargers resend forever)
            await cp.call(call.StopTransaction(meter_stop=10, timestamp=ts(), transaction_id=987654))
        status, body = await api_call(base, "GET", f"/api/v1/chargers/cp16-a/transactions/{tx}")
        assert status == 200
        assert body["energy_wh"] == 3000 and body["meter_start_wh"] == 1000 and body["meter_stop_wh"] == 4000
        assert body["id_tag"] == "TAG16" and body["stop_reason"] == "Local" and body["stopped_at"]
        status, body = await api_call(base, "GET", "/api/v1/chargers/cp16-a")
        assert status == 200 and body["vendor"] == "ACME" and body["model"] == "M1"
        assert any(c["status"] == "Preparing" for c in body["connectors"])
        status, body = await api_call(base, "GET", "/api/v1/transactions?charger_id=cp16-a&active=false")
        assert status == 200 and any(str(t["tx_id"]) == str(tx) for t in body["items"])

    run(scenario())


def test_operator_calls(node):
    base = node.url("")

    async def scenario():
        async with connect(CP16, node.ws("cp16-b"), "cp16-b", "ocpp1.6") as cp:
            await cp.call(call.BootNotification(charge_point_model="M1", charge_point_vendor="ACME"))
            p = "/api/v1/chargers/cp16-b/calls"
            status, body = await api_call(base, "POST", f"{p}/RemoteStartTransaction", {"idTag": "TAG16"})
            assert (status, body) == (200, {"result": {"status": "Accepted"}})
            assert cp.remote_starts == ["TAG16"]
            status, body = await api_call(base, "POST", f"{p}/RemoteStopTransaction", {"transactionId": 1})
            assert (status, body) == (200, {"result": {"status": "Accepted"}})
            status, body = await api_call(base, "POST", f"{p}/GetConfiguration", {})
            assert status == 200 and body["result"]["configurationKey"][0]["key"] == "HeartbeatInterval"
            # invalid payload for 1.6: 422, nothing sent
            status, body = await api_call(base, "POST", f"{p}/RemoteStartTransaction", {"idTag": 5})
            assert status == 422 and body["error"]["code"] == "payload_invalid"
            status, body = await api_call(base, "POST", f"{p}/RemoteStartTransaction", {"idTag": "x" * 21})
            assert status == 422
            # a charger-initiated action is not an operator call
            status, body = await api_call(base, "POST", f"{p}/Heartbeat", {})
            assert status == 422
            # the charger has no handler for Reset: it answers CALLERROR NotImplemented -> 502
            status, body = await api_call(base, "POST", f"{p}/Reset", {"type": "Soft"})
            assert status == 502 and body["error"]["code"] == "NotImplemented"
            # the charger never answers ClearCache -> 504 after the call timeout
            status, body = await api_call(base, "POST", f"{p}/ClearCache?timeout=0.5", {})
            assert status == 504 and body["error"]["code"] == "timeout"
        status, body = await api_call(base, "POST", "/api/v1/chargers/nobody/calls/Reset", {"type": "Soft"})
        assert status == 404 and body["error"]["code"] == "not_connected"

    run(scenario())
