"""A simulated OCPP 1.6 charger built on the `ocpp` library, for the README walk-through.

    python examples/charger16.py CP-1 [ws://127.0.0.1:9000/ocpp]

It boots, reports its connector Available, and obeys the CSMS: RemoteStartTransaction
starts a transaction (meter values every 2 s, +500 Wh each), RemoteStopTransaction
stops it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Charger(ChargePoint):
    tx: int | None = None
    meter_wh = 10_000

    @on(Action.remote_start_transaction)
    def remote_start(self, id_tag, connector_id=1, **_):
        asyncio.get_running_loop().create_task(self.start_session(id_tag, connector_id))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def remote_stop(self, transaction_id, **_):
        asyncio.get_running_loop().create_task(self.stop_session())
        return call_result.RemoteStopTransaction(status="Accepted" if transaction_id == self.tx else "Rejected")

    async def start_session(self, id_tag: str, connector_id: int) -> None:
        res = await self.call(call.StartTransaction(connector_id=connector_id, id_tag=id_tag,
                                                    meter_start=self.meter_wh, timestamp=now()))
        self.tx = res.transaction_id
        print(f"transaction {self.tx} started ({res.id_tag_info['status']})", flush=True)
        await self.call(call.StatusNotification(connector_id=connector_id, error_code="NoError",
                                                status="Charging", timestamp=now()))
        while self.tx is not None:
            await asyncio.sleep(2)
            if self.tx is None:
                break
            self.meter_wh += 500
            await self.call(call.MeterValues(connector_id=connector_id, transaction_id=self.tx, meter_value=[{
                "timestamp": now(), "sampledValue": [
                    {"value": str(self.meter_wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]))

    async def stop_session(self) -> None:
        tx, self.tx = self.tx, None
        if tx is None:
            return
        await self.call(call.StopTransaction(transaction_id=tx, meter_stop=self.meter_wh, timestamp=now(),
                                             reason="Remote"))
        await self.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available",
                                                timestamp=now()))
        print(f"transaction {tx} stopped at {self.meter_wh} Wh", flush=True)


async def main(cid: str, base: str) -> None:
    async with websockets.connect(f"{base}/{cid}", subprotocols=["ocpp1.6"]) as ws:
        cp = Charger(cid, ws)
        runner = asyncio.create_task(cp.start())
        boot = await cp.call(call.BootNotification(charge_point_vendor="Example", charge_point_model="Sim-1"))
        print(f"{cid} boot: {boot.status}, heartbeat every {boot.interval} s", flush=True)
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available",
                                              timestamp=now()))
        await runner


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "CP-1",
                     sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:9000/ocpp"))
