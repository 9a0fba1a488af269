"""The baseline a user would pick today: the ``ocpp`` library on a ``websockets`` server.

Default settings everywhere (plain asyncio loop, ``websockets.serve`` defaults, the
library's own JSON-schema validation), with handlers for the actions the generator
sends, in OCPP 1.6 and 2.0.1. Unknown id tags are accepted, like Chargeyard with
``--accept-unknown-tags``. Nothing is stored: the baseline does strictly less work
than Chargeyard's durable path.

    python -m chargeyard.bench.ocpp_server --host 127.0.0.1 --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import resource
from datetime import datetime, timezone

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v16.enums import AuthorizationStatus as Auth16
from ocpp.v16.enums import RegistrationStatus as Reg16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from ocpp.v201.enums import RegistrationStatusEnumType as Reg201

_tx_ids = itertools.count(1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class ChargePoint16(CP16):
    @on(A16.boot_notification)
    async def on_boot(self, charge_point_vendor, charge_point_model, **kw):
        return r16.BootNotification(current_time=_now(), interval=300, status=Reg16.accepted)

    @on(A16.heartbeat)
    async def on_heartbeat(self, **kw):
        return r16.Heartbeat(current_time=_now())

    @on(A16.status_notification)
    async def on_status(self, connector_id, error_code, status, **kw):
        return r16.StatusNotification()

    @on(A16.authorize)
    async def on_authorize(self, id_tag, **kw):
        return r16.Authorize(id_tag_info={"status": Auth16.accepted})

    @on(A16.start_transaction)
    async def on_start(self, connector_id, id_tag, meter_start, timestamp, **kw):
        return r16.StartTransaction(transaction_id=next(_tx_ids),
                                    id_tag_info={"status": Auth16.accepted})

    @on(A16.stop_transaction)
    async def on_stop(self, meter_stop, timestamp, transaction_id, **kw):
        return r16.StopTransaction()

    @on(A16.meter_values)
    async def on_meter_values(self, connector_id, meter_value, **kw):
        return r16.MeterValues()


class ChargePoint201(CP201):
    @on(A201.boot_notification)
    async def on_boot(self, charging_station, reason, **kw):
        return r201.BootNotification(current_time=_now(), interval=300,
                                     status=Reg201.accepted)

    @on(A201.heartbeat)
    async def on_heartbeat(self, **kw):
        return r201.Heartbeat(current_time=_now())

    @on(A201.status_notification)
    async def on_status(self, timestamp, connector_status, evse_id, connector_id, **kw):
        return r201.StatusNotification()

    @on(A201.authorize)
    async def on_authorize(self, id_token, **kw):
        return r201.Authorize(id_token_info={"status": "Accepted"})

    @on(A201.transaction_event)
    async def on_tx_event(self, event_type, timestamp, trigger_reason, seq_no,
                          transaction_info, **kw):
        if kw.get("id_token"):
            return r201.TransactionEvent(id_token_info={"status": "Accepted"})
        return r201.TransactionEvent()

    @on(A201.meter_values)
    async def on_meter_values(self, evse_id, meter_value, **kw):
        return r201.MeterValues()


async def on_connect(websocket):
    path = websocket.request.path
    charger_id = path.rstrip("/").split("/")[-1]
    proto = websocket.subprotocol
    if proto == "ocpp1.6":
        cp = ChargePoint16(charger_id, websocket)
    elif proto == "ocpp2.0.1":
        cp = ChargePoint201(charger_id, websocket)
    else:
        return await websocket.close(1002, "no supported OCPP subprotocol")
    try:
        await cp.start()
    except websockets.exceptions.ConnectionClosed:
        pass


async def serve(host: str, port: int):
    async with websockets.serve(on_connect, host, port,
                                subprotocols=["ocpp1.6", "ocpp2.0.1"]) as server:
        await server.serve_forever()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    # A user would raise the fd limit too, or 20k chargers could not connect at all.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
