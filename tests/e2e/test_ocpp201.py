"""End to end with the `ocpp` library's 2.0.1 ChargePoint: TransactionEvent with kWh and
multipliers, retried events applied once, GetVariables and RequestStartTransaction via the API."""

from __future__ import annotations

import asyncio

from ocpp.v201 import call

from tests.e2e.chargers import CP201, connect, ts
from tests.support import api_call


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def energy(value: float, unit: str, multiplier: int = 0) -> list:
    return [{"timestamp": ts(), "sampled_value": [
        {"value": value, "measurand": "Energy.Active.Import.Register",
         "unit_of_measure": {"unit": unit, "multiplier": multiplier}},
        {"value": 11.0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "kW"}}]}]


def test_transaction_events(node):
    base = node.url("")

    async def scenario():
        assert (await api_call(base, "PUT", "/api/v1/id-tags/TAG201", {"status": "Accepted"}))[0] == 200
        async with connect(CP201, node.ws("cp201-a"), "cp201-a", "ocpp2.0.1") as cp:
            boot = await cp.call(call.BootNotification(
                charging_station={"model": "M2", "vendor_name": "ACME"}, reason="PowerUp"))
            assert boot.status == "Accepted" and boot.interval == 120
            auth = await cp.call(call.Authorize(id_token={"id_token": "TAG201", "type": "ISO14443"}))
            assert auth.id_token_info["status"] == "Accepted"
            await cp.call(call.StatusNotification(timestamp=ts(), connector_status="Occupied", evse_id=1,
                                                  connector_id=1))
            tx = {"transaction_id": "tx-201-a"}
            started = await cp.call(call.TransactionEvent(
                event_type="Started", timestamp=ts(), trigger_reason="Authorized", seq_no=0,
                transaction_info=tx, id_token={"id_token": "TAG201", "type": "ISO14443"},
                evse={"id": 1, "connector_id": 1}, meter_value=energy(1.0, "kWh")))
            assert started.id_token_info["status"] == "Accepted"
            upd = call.TransactionEvent(event_type="Updated", timestamp=ts(), trigger_reason="MeterValuePeriodic",
                                        seq_no=1, transaction_info=tx, meter_value=energy(25, "Wh", 2))
            await cp.call(upd)
            await cp.call(upd)  # retried: applied once
            status, body = await api_call(base, "GET", "/api/v1/chargers/cp201-a/transactions/tx-201-a")
            assert status == 200 and body["energy_wh"] == 1500 and body["stopped_at"] is None
            await cp.call(call.TransactionEvent(
                event_type="Ended", timestamp=ts(), trigger_reason="EVDeparted", seq_no=2,
                transaction_info={**tx, "stopped_reason": "EVDisconnected"}, meter_value=energy(3.5, "kWh")))
            # an Ended for a transaction nobody knows is accepted too
            await cp.call(call.TransactionEvent(
                event_type="Ended", timestamp=ts(), trigger_reason="EVDeparted", seq_no=9,
                transaction_info={"transaction_id": "never-started"}))
        status, body = await api_call(base, "GET", "/api/v1/chargers/cp201-a/transactions/tx-201-a")
        assert status == 200
        assert body["energy_wh"] == 2500 and body["meter_start_wh"] == 1000 and body["meter_stop_wh"] == 3500
        assert body["stop_reason"] == "EVDisconnected" and body["id_tag"] == "TAG201" and body["stopped_at"]

    run(scenario())


def test_operator_calls_201(node):
    base = node.url("")

    async def scenario():
        async with connect(CP201, node.ws("cp201-b"), "cp201-b", "ocpp2.0.1") as cp:
            await cp.call(call.BootNotification(charging_station={"model": "M2", "vendor_name": "ACME"},
                                                reason="PowerUp"))
            p = "/api/v1/chargers/cp201-b/calls"
            status, body = await api_call(base, "POST", f"{p}/GetVariables", {"getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]})
            assert status == 200
            assert body["result"]["getVariableResult"][0]["attributeValue"] == "42"
            status, body = await api_call(base, "POST", f"{p}/RequestStartTransaction", {
                "idToken": {"idToken": "TAG201", "type": "ISO14443"}, "remoteStartId": 7})
            assert (status, body["result"]["status"]) == (200, "Accepted")
            # a 1.6 action name is not a 2.0.1 operator call
            status, body = await api_call(base, "POST", f"{p}/RemoteStartTransaction", {"idTag": "x"})
            assert status == 422
            status, body = await api_call(base, "POST", f"{p}/RequestStartTransaction", {"remoteStartId": 7})
            assert status == 422
        status, body = await api_call(base, "GET", "/api/v1/chargers")
        assert status == 200
        item = next(i for i in body["items"] if i["id"] == "cp201-b")
        assert item["protocol"] in ("ocpp2.0.1", "2.0.1") and item["vendor"] == "ACME"

    run(scenario())
