"""Chargers built on the `ocpp` library's own ChargePoint classes (the reference peer)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16Base
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as CP201Base
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201


def ts(offset_s: float = 0) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)).isoformat()


class CP16(CP16Base):
    remote_starts: list

    @on(A16.remote_start_transaction)
    def on_remote_start(self, id_tag, **kw):
        self.remote_starts = getattr(self, "remote_starts", []) + [id_tag]
        return r16.RemoteStartTransaction(status="Accepted")

    @on(A16.remote_stop_transaction)
    def on_remote_stop(self, transaction_id, **kw):
        return r16.RemoteStopTransaction(status="Accepted")

    @on(A16.get_configuration)
    def on_get_configuration(self, **kw):
        return r16.GetConfiguration(configuration_key=[{"key": "HeartbeatInterval", "readonly": False,
                                                        "value": "120"}])

    @on(A16.clear_cache)
    async def on_clear_cache(self, **kw):
        await asyncio.sleep(3600)  # never answers in time: the API must say 504


class CP201(CP201Base):
    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data, **kw):
        return r201.GetVariables(get_variable_result=[
            {"attribute_status": "Accepted", "component": d["component"], "variable": d["variable"],
             "attribute_value": "42"} for d in get_variable_data])

    @on(A201.request_start_transaction)
    def on_request_start(self, id_token, remote_start_id, **kw):
        return r201.RequestStartTransaction(status="Accepted")


@contextlib.asynccontextmanager
async def connect(cls, url: str, cid: str, subprotocol: str):
    async with websockets.connect(f"{url}", subprotocols=[subprotocol], open_timeout=5) as ws:
        cp = cls(cid, ws, response_timeout=10)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
