"""services/api.py over a real aiohttp server on 127.0.0.1: tariffs, CDRs, alerts, SSE."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import aiohttp
from aiohttp import web

from chargeyard.services.api import AlertFeed, ServicesApi
from chargeyard.services.billing.service import Billing
from chargeyard.services.monitoring.service import Monitoring
from chargeyard.store import events as ev

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


class Txs:
    async def get_transaction(self, cid, tx):
        return {"charger_id": cid, "tx_id": tx, "energy_wh": 2000.0, "started_at": "2025-03-01T08:00:00Z",
                "stopped_at": "2025-03-01T08:30:00Z"}


def test_services_api(services_store):
    async def main():
        async with services_store() as store:
            feed = AlertFeed()
            mon = await Monitoring(store, listeners=[feed]).open()
            app = web.Application()
            ServicesApi(store, store, feed, keepalive_s=0.2).add_routes(app.router)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api/v1"
            try:
                async with aiohttp.ClientSession() as http:
                    body = {"currency": "EUR", "per_kwh": "0.30", "per_minute": "0", "session_fee": "1.00",
                            "vat_percent": "19", "chargers": ["*"], "valid_from": None, "valid_to": None}
                    async with http.put(f"{base}/tariffs/std", json=body) as r:
                        assert r.status == 200 and (await r.json())["per_kwh"] == "0.30"
                    async with http.put(f"{base}/tariffs/bad", json={"currency": "EUR", "per_kwh": "-1"}) as r:
                        assert r.status == 422 and (await r.json())["error"]["code"] == "invalid_tariff"
                    async with http.get(f"{base}/tariffs") as r:
                        assert [t["tariff_id"] for t in (await r.json())["items"]] == ["std"]
                    async with http.get(f"{base}/chargers/cp/transactions/1/cdr") as r:
                        assert r.status == 404
                    await Billing(store, Txs()).handle([ev.tx_ended("cp", T0, "1")])
                    async with http.get(f"{base}/chargers/cp/transactions/1/cdr") as r:
                        assert await r.json() == {"tariff_id": "std", "currency": "EUR", "energy_wh": 2000.0,
                                                  "duration_s": 1800, "energy_cost": "0.60", "time_cost": "0.00",
                                                  "session_fee": "1.00", "net": "1.60", "vat": "0.30",
                                                  "total": "1.90"}
                    async with http.get(f"{base}/alerts/events") as sse:
                        await asyncio.sleep(0.05)
                        await mon.handle([ev.status("cp", T0, 0, 1, "Faulted", "X")])
                        lines = []
                        while not any(x.startswith("data:") for x in lines):
                            lines.append((await sse.content.readline()).decode().strip())
                        assert "event: alert.raised" in lines
                        data = json.loads(next(x for x in lines if x.startswith("data:"))[5:])
                        assert data["kind"] == "connector_faulted" and data["connector_id"] == 1
                    async with http.get(f"{base}/alerts", params={"active": "true", "charger_id": "cp"}) as r:
                        (item,) = (await r.json())["items"]
                        assert set(item) == {"id", "kind", "charger_id", "connector_id", "raised_at",
                                             "cleared_at", "detail"}
                    async with http.delete(f"{base}/tariffs/std") as r:
                        assert r.status == 204
                    async with http.get(f"{base}/tariffs/std") as r:
                        assert r.status == 404
            finally:
                await runner.cleanup()
    asyncio.run(asyncio.wait_for(main(), 30))
