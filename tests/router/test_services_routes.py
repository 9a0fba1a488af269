"""The services' routes on the operator API (router/api.py + services/api.py): tariffs
(admin to change), CDRs (404 until priced; null tariff and zero amounts when none
matches), alerts filtered by the token's charger ACL, alert SSE through ``Api.sse``
(keep-alive, Last-Event-ID replay), every body as the OpenAPI document says."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import aiohttp
import jsonschema

from chargeyard.config import Settings
from chargeyard.node import alert_publisher
from chargeyard.router import openapi
from chargeyard.router.api import Api
from chargeyard.router.registry import LocalRegistry
from chargeyard.router.tokens import FileTokens
from chargeyard.services import metrics as m
from chargeyard.services.api import ServicesApi
from chargeyard.services.billing.service import Billing
from chargeyard.services.monitoring.service import Monitoring
from chargeyard.services.storage import SqliteServiceStore
from chargeyard.store import events as ev

from .test_openapi import FakeStore

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
TARIFF = {"currency": "EUR", "per_kwh": "0.30", "per_minute": "0", "session_fee": "1.00", "vat_percent": "19",
          "chargers": ["CP-*"]}


class Txs:
    async def get_transaction(self, cid, tx):
        return {"charger_id": cid, "tx_id": tx, "energy_wh": 2000.0, "started_at": "2025-03-01T08:00:00Z",
                "stopped_at": "2025-03-01T08:30:00Z"}


def _schema(doc: dict, name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


async def _sse_event(resp: aiohttp.ClientResponse) -> dict:
    block: dict = {}
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if "data" in block:
                return block
            continue
        k, _, v = line.partition(": ")
        block[k] = v


def test_services_routes(tmp_path):
    doc = openapi.document()
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({"adm": ["admin"], "all": ["read"],
                                       "cp1": {"scopes": ["read"], "chargers": ["CP-1"]}}))

    async def main():
        registry = LocalRegistry()
        async with SqliteServiceStore(tmp_path / "s.db") as store:
            mon = await Monitoring(store, listeners=[alert_publisher(registry)]).open()
            settings = Settings(sse_keepalive=0.2)
            api = Api(settings, FakeStore(), registry, FileTokens(tokens_file),  # type: ignore[arg-type]
                      services=ServicesApi(store, store))
            await api.start("127.0.0.1", 0)
            base = f"http://127.0.0.1:{api.port}/api/v1"

            def auth(tok):
                return {"Authorization": f"Bearer {tok}"}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                    async def call(method, path, tok, status=200, schema=None, json_body=None):
                        async with http.request(method, base + path, headers=auth(tok), json=json_body) as r:
                            assert r.status == status, (path, await r.text())
                            got = await r.json() if status != 204 else None
                        if schema:
                            jsonschema.validate(got, _schema(doc, schema))
                        return got

                    # tariffs: admin changes, read reads
                    await call("PUT", "/tariffs/std", "all", 403, "Error", TARIFF)
                    got = await call("PUT", "/tariffs/std", "adm", 200, "Tariff", TARIFF)
                    assert got["per_kwh"] == "0.30" and got["chargers"] == ["CP-*"]
                    await call("PUT", "/tariffs/bad", "adm", 422, "Error", {"currency": "EUR", "per_kwh": "-1"})
                    assert [t["tariff_id"] for t in (await call("GET", "/tariffs", "cp1", 200, "TariffPage"))
                            ["items"]] == ["std"]
                    await call("GET", "/tariffs/std", "all", 200, "Tariff")
                    await call("GET", "/tariffs/nope", "all", 404, "Error")

                    # CDRs: 404 until priced; the worked example; no tariff: null, zeros, counted
                    await call("GET", "/chargers/CP-1/transactions/1/cdr", "all", 404, "Error")
                    unpriced = m.UNPRICED._value.get()
                    await Billing(store, Txs()).handle([ev.tx_ended("CP-1", T0, "1"), ev.tx_ended("XY-9", T0, "2")])
                    cdr = await call("GET", "/chargers/CP-1/transactions/1/cdr", "cp1", 200, "Cdr")
                    assert cdr == {"tariff_id": "std", "currency": "EUR", "energy_wh": 2000.0, "duration_s": 1800,
                                   "energy_cost": "0.60", "time_cost": "0.00", "session_fee": "1.00",
                                   "net": "1.60", "vat": "0.30", "total": "1.90"}
                    await call("GET", "/chargers/XY-9/transactions/2/cdr", "cp1", 403, "Error")  # its ACL
                    cdr = await call("GET", "/chargers/XY-9/transactions/2/cdr", "all", 200, "Cdr")
                    assert cdr["tariff_id"] is None and cdr["total"] == "0.00" and cdr["net"] == "0.00"
                    assert m.UNPRICED._value.get() == unpriced + 1

                    # alert SSE, filtered by the ACL; then the list, filtered too
                    async with http.get(base + "/alerts/events", headers=auth("cp1")) as sse_cp1, \
                            http.get(base + "/alerts/events", headers=auth("all")) as sse_all:
                        assert sse_cp1.status == 200 and sse_all.status == 200
                        assert (await sse_cp1.content.readline()).startswith(b": subscribed")
                        assert (await sse_all.content.readline()).startswith(b": subscribed")
                        await mon.handle([ev.status("XY-9", T0, 0, 1, "Faulted", "X")])
                        await mon.handle([ev.status("CP-1", T0, 1, 1, "Faulted", "X")])
                        first = await asyncio.wait_for(_sse_event(sse_all), 5)
                        assert first["event"] == "alert.raised"
                        assert json.loads(first["data"])["data"]["charger_id"] == "XY-9"
                        mine = await asyncio.wait_for(_sse_event(sse_cp1), 5)  # XY-9's was not sent
                        assert json.loads(mine["data"])["data"]["charger_id"] == "CP-1"
                        alert = json.loads(mine["data"])["data"]
                        assert alert["kind"] == "connector_faulted"
                        jsonschema.validate(alert, _schema(doc, "Alert"))
                    # Last-Event-ID replays what came after
                    async with http.get(base + "/alerts/events",
                                        headers={**auth("all"), "Last-Event-ID": first["id"]}) as sse:
                        replayed = await asyncio.wait_for(_sse_event(sse), 5)
                        assert json.loads(replayed["data"])["data"]["charger_id"] == "CP-1"
                    items = (await call("GET", "/alerts?active=true", "cp1", 200, "AlertPage"))["items"]
                    assert [a["charger_id"] for a in items] == ["CP-1"]
                    items = (await call("GET", "/alerts?active=true", "all", 200, "AlertPage"))["items"]
                    assert sorted(a["charger_id"] for a in items) == ["CP-1", "XY-9"]
                    items = (await call("GET", "/alerts?charger_id=XY-9", "all", 200, "AlertPage"))["items"]
                    assert [a["charger_id"] for a in items] == ["XY-9"]
                    # the ACL filters before the limit: XY-9's newer alert does not take cp1's page
                    await mon.handle([ev.status("XY-9", T0 + dt.timedelta(seconds=30), 0, 2, "Faulted", "X")])
                    items = (await call("GET", "/alerts?active=true&limit=1", "all", 200, "AlertPage"))["items"]
                    assert [a["charger_id"] for a in items] == ["XY-9"]
                    items = (await call("GET", "/alerts?active=true&limit=1", "cp1", 200, "AlertPage"))["items"]
                    assert [a["charger_id"] for a in items] == ["CP-1"]
                    await call("GET", "/alerts?active=maybe", "all", 422, "Error")
                    # Available clears it
                    await mon.handle([ev.status("CP-1", T0 + dt.timedelta(minutes=1), 1, 1, "Available", "")])
                    items = (await call("GET", "/alerts?active=false", "cp1", 200, "AlertPage"))["items"]
                    assert [a["kind"] for a in items] == ["connector_faulted"] and items[0]["cleared_at"]

                    await call("DELETE", "/tariffs/std", "all", 403, "Error")
                    await call("DELETE", "/tariffs/std", "adm", 204)
                    await call("DELETE", "/tariffs/std", "adm", 404, "Error")
            finally:
                await api.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_without_services_the_routes_answer_503():
    async def main():
        api = Api(Settings(), FakeStore(), LocalRegistry())  # type: ignore[arg-type]
        await api.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{api.port}/api/v1/tariffs") as r:
                    assert r.status == 503 and (await r.json())["error"]["code"] == "unavailable"
        finally:
            await api.stop()
    asyncio.run(asyncio.wait_for(main(), 30))
