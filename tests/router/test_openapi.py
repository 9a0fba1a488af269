"""/api/v1/openapi.json: a valid OpenAPI 3.1 document that describes every route the
API serves, with schemas the responses satisfy (issue 19, rough edge 11)."""

from __future__ import annotations

import asyncio

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from chargeyard.config import Settings
from chargeyard.router import openapi
from chargeyard.router.api import Api
from chargeyard.router.registry import LocalRegistry

TX = {"charger_id": "CP-1", "tx_id": "1001", "connector_id": 1, "evse_id": None, "id_tag": "T1",
      "meter_start_wh": 10000, "meter_stop_wh": None, "energy_wh": 500.5, "started_at": "2026-12-06T00:00:00Z",
      "stopped_at": None, "stop_reason": None, "active": True, "stop_id_tag": None, "reservation_id": None,
      "last_reading_wh": 10500.5, "last_reading_at": "2026-12-06T00:01:00Z"}


class FakeStore:
    """The store's API reads, in memory."""

    def __init__(self) -> None:
        self.tags = {f"TAG-{i:02d}": "Accepted" for i in range(5)}

    async def list_chargers(self):
        return [{"id": "CP-1", "protocol": "ocpp1.6", "vendor": "V", "model": "M", "serial": None,
                 "firmware": None, "last_seen": "2026-12-06T00:00:00Z", "last_boot": None}]

    async def get_charger(self, cid):
        if cid != "CP-1":
            return None
        return {**(await self.list_chargers())[0], "connectors": [
            {"evse_id": 0, "connector_id": 1, "status": "Available", "error_code": "NoError", "info": None,
             "at": "2026-12-06T00:00:00Z"}], "last_readings": []}

    async def list_transactions(self, charger_id=None, active=None, limit=1000):
        return [TX][:limit]

    async def get_transaction(self, cid, tx):
        return TX if (cid, tx) == ("CP-1", "1001") else None

    async def get_id_tag(self, tag):
        return self.tags.get(tag)

    async def put_id_tag(self, tag, status, expiry=None):
        self.tags[tag] = status

    async def delete_id_tag(self, tag):
        return self.tags.pop(tag, None) is not None

    async def list_id_tags(self, after=None, limit=100):
        return [{"id_tag": k, "status": v, "expiry": None} for k, v in sorted(self.tags.items())
                if after is None or k > after][:limit]


def test_document_is_valid_openapi():
    validate(openapi.document())


def test_every_route_is_documented_and_every_operation_served():
    api = Api(Settings(), FakeStore(), LocalRegistry())  # type: ignore[arg-type]
    doc = openapi.document()
    served = {(r.method, openapi.doc_path(r.resource.canonical)) for r in api.app.router.routes()}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "servers"}
    assert served == documented
    for path, ops in doc["paths"].items():
        if path in ("/metrics", "/healthz", "/readyz"):
            assert ops["servers"] == [{"url": "/"}]
        else:
            assert "servers" not in ops and doc["servers"] == [{"url": "/api/v1"}]
        for method, op in ops.items():
            if method == "servers":
                continue
            scope = op["x-scope"]
            assert scope in (None, "read", "command", "admin")
            assert ("Scope: " + scope if scope else "No token needed.") in op["description"], (method, path)
            if method != "get":
                assert scope in ("command", "admin"), (method, path)


def _schema(doc: dict, name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def test_responses_match_their_schemas():
    doc = openapi.document()
    store = FakeStore()

    async def body():
        api = Api(Settings(), store, LocalRegistry())  # type: ignore[arg-type]
        await api.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{api.port}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async def get(path, schema, status=200, method="GET", json=None):
                    async with s.request(method, base + path, json=json) as r:
                        assert r.status == status, (path, await r.text())
                        got = await r.json()
                    jsonschema.validate(got, _schema(doc, schema))
                    return got

                async with s.get(base + "/api/v1/openapi.json") as r:
                    assert r.status == 200 and (await r.json())["openapi"] == "3.1.0"
                await get("/api/v1/chargers", "ChargerPage")
                await get("/api/v1/chargers/CP-1", "Charger")
                await get("/api/v1/chargers/nope", "Error", 404)
                await get("/api/v1/transactions?charger_id=CP-1&active=true", "TransactionPage")
                await get("/api/v1/transactions?active=maybe", "Error", 400)
                await get("/api/v1/chargers/CP-1/transactions/1001", "Transaction")
                await get("/api/v1/id-tags/TAG-01", "IdTag")
                await get("/api/v1/id-tags/NEW", "IdTag", method="PUT", json={"status": "Blocked"})
                await get("/api/v1/id-tags/NEW", "Error", 422, method="PUT", json={"status": "Nope"})
                await get("/api/v1/chargers/CP-1/calls/Reset", "Error", 404, method="POST", json={})
                await get("/healthz", "Health")
                await get("/readyz", "Ready")
                # the id tags, paged
                seen, cursor = [], ""
                for _ in range(10):
                    page = await get(f"/api/v1/id-tags?limit=2&cursor={cursor}", "IdTagPage")
                    seen += [i["id_tag"] for i in page["items"]]
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                assert seen == sorted(store.tags)
                await get("/api/v1/id-tags?limit=0", "Error", 400)
                page = await get("/api/v1/chargers?limit=1", "ChargerPage")
                assert [i["id"] for i in page["items"]] == ["CP-1"] and page["next_cursor"] is None
                page = await get("/api/v1/chargers?cursor=CP-1", "ChargerPage")
                assert page["items"] == []
        finally:
            await api.stop()

    asyncio.run(asyncio.wait_for(body(), 30))


@pytest.mark.parametrize("name", ["IdTagBody", "TokenBody", "Transaction", "Charger", "IdTagPage"])
def test_schemas_come_from_the_structs(name):
    import msgspec

    _, comps = msgspec.json.schema_components([getattr(openapi, name)],
                                              ref_template="#/components/schemas/{name}")
    assert openapi.document()["components"]["schemas"][name] == comps[name]
