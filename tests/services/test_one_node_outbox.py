"""One node, end to end from the real SQLite outbox: store ops committed with
``SqliteStore(outbox=...)`` -> Relay(LocalPublisher) -> ``InProcessServices`` (as
app/node.py composes them) -> the operator API (``Api`` with ``ServicesApi`` and the
alert stream). The monitoring scenarios of issue 20 and a transaction priced with the
issue's worked example, read back over HTTP.

The worker writes these same ops (ConnectionOpened/Closed with the registry epoch,
ConnectorStatus, Start/StopTransaction); the charger-level version of these scenarios
needs the worker's event wiring (events-worker)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import aiohttp

from chargeyard.config import Settings
from chargeyard.node import alert_publisher, service_settings
from chargeyard.router.api import Api
from chargeyard.router.registry import LocalRegistry
from chargeyard.services.api import ServicesApi
from chargeyard.services.runner import InProcessServices
from chargeyard.store.base import ConnectorStatus, StartTransaction, StopTransaction
from chargeyard.store.events import ConnectionClosed, ConnectionOpened
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.relay import LocalPublisher, Relay

UTC = dt.timezone.utc
OFFLINE_AFTER = 0.5


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


async def until(pred, timeout: float = 10.0, step: float = 0.05):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await pred()
        if got:
            return got
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(step)


def test_one_node_alerts_and_cdr_from_the_outbox(tmp_path, run):
    async def main():
        # the priced transaction is back-dated 30 min: not stalled by then
        s = Settings(data_dir=str(tmp_path), offline_after=OFFLINE_AFTER, stall_after=3600, sse_keepalive=0.5)
        store = SqliteStore(tmp_path / "chargeyard.db", outbox="local")
        await store.open()
        registry = LocalRegistry()
        services = await InProcessServices(service_settings(s), store, tick_s=0.05,
                                           listeners=[alert_publisher(registry)]).open()
        relay = Relay(store, LocalPublisher(services.handle), metrics=False, poll_s=0.05, name="local").start()
        api = Api(s, store, registry, services=ServicesApi(services.store, services.store))
        await api.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{api.port}/api/v1"

        async def commit(*ops):
            await store.apply(list(ops))
            relay.wake()

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async def get(path, status=200):
                    async with http.get(base + path) as r:
                        assert r.status == status, (path, await r.text())
                        return await r.json()

                async def alerts(**q):
                    return (await get("/alerts?" + "&".join(f"{k}={v}" for k, v in q.items())))["items"]

                sse = await http.get(base + "/alerts/events")
                assert (await sse.content.readline()).startswith(b": subscribed")

                # a transaction priced end to end: the worked example
                body = {"currency": "EUR", "per_kwh": "0.30", "per_minute": "0", "session_fee": "1.00",
                        "vat_percent": "19", "chargers": ["*"]}
                async with http.put(base + "/tariffs/std", json=body) as r:
                    assert r.status == 200, await r.text()
                t0 = now() - dt.timedelta(minutes=30)
                await commit(ConnectionOpened("CP-1", "ocpp1.6", 1, "local", now()),
                             StartTransaction("CP-1", "101", 1, "TAG", 10_000.0, t0))
                await get("/chargers/CP-1/transactions/101/cdr", 404)  # not ended: not priced
                await commit(StopTransaction("CP-1", "101", 12_000.0, t0 + dt.timedelta(minutes=30)))
                cdr = await until(lambda: _json_or_none(http, base + "/chargers/CP-1/transactions/101/cdr"))
                tx = await get("/chargers/CP-1/transactions/101")
                assert tx["energy_wh"] == cdr["energy_wh"] == 2000
                assert cdr == {"tariff_id": "std", "currency": "EUR", "energy_wh": 2000.0, "duration_s": 1800,
                               "energy_cost": "0.60", "time_cost": "0.00", "session_fee": "1.00", "net": "1.60",
                               "vat": "0.30", "total": "1.90"}

                # dropped without a close: charger_offline after --offline-after, cleared on reconnect
                await commit(ConnectionOpened("CP-2", "ocpp1.6", 1, "local", now()))
                await commit(ConnectionClosed("CP-2", 1, "lost", "local", now()))
                await asyncio.sleep(OFFLINE_AFTER / 5)
                assert await alerts(charger_id="CP-2") == []  # not before the threshold
                (a,) = await until(lambda: alerts(charger_id="CP-2", active="true"))
                assert a["kind"] == "charger_offline" and a["cleared_at"] is None
                raised = await asyncio.wait_for(_next_event(sse), 5)
                assert raised["event"] == "alert.raised" and raised["data"]["data"]["charger_id"] == "CP-2"
                await commit(ConnectionOpened("CP-2", "ocpp1.6", 2, "local", now()))
                await until(lambda: _none_active(alerts, "CP-2"))
                cleared = await asyncio.wait_for(_next_event(sse), 5)
                assert cleared["event"] == "alert.cleared" and cleared["data"]["data"]["kind"] == "charger_offline"

                # a takeover is not an outage: the old session closes with reason takeover
                await commit(ConnectionOpened("CP-3", "ocpp1.6", 1, "local", now()))
                await commit(ConnectionOpened("CP-3", "ocpp1.6", 2, "local", now()),
                             ConnectionClosed("CP-3", 1, "takeover", "local", now()))
                await asyncio.sleep(OFFLINE_AFTER * 3)
                assert await alerts(charger_id="CP-3") == []

                # Faulted raises connector_faulted; Available clears it
                await commit(ConnectorStatus("CP-1", 0, 2, "Faulted", "GroundFailure", now()))
                (a,) = await until(lambda: alerts(charger_id="CP-1", active="true"))
                assert a["kind"] == "connector_faulted" and a["connector_id"] == 2
                assert a["detail"]["error_code"] == "GroundFailure"
                await commit(ConnectorStatus("CP-1", 0, 2, "Available", "NoError", now()))
                await until(lambda: _none_active(alerts, "CP-1"))
                assert [x["kind"] for x in await alerts(charger_id="CP-1", active="false")] == ["connector_faulted"]
                sse.close()
        finally:
            await api.stop()
            await relay.close()
            await services.close()
            await store.close()

    run(main(), 60)


async def _json_or_none(http, url):
    async with http.get(url) as r:
        return await r.json() if r.status == 200 else None


async def _none_active(alerts, cid):
    return await alerts(charger_id=cid, active="true") == []


async def _next_event(resp) -> dict:
    block: dict = {}
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if "data" in block:
                block["data"] = json.loads(block["data"])
                return block
            continue
        k, _, v = line.partition(": ")
        block[k] = v
