"""GET /chargers and /transactions page end to end (``?limit=&cursor=``, ARCHITECTURE.md:
``{"items": [...], "next_cursor"}``) on both stores, and the token's charger ACL filters
them without cutting a listing short (issue 21, "Cluster-wide reads")."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import aiohttp
import pytest

from chargeyard.config import Settings
from chargeyard.router import api as api_mod
from chargeyard.router.api import Api
from chargeyard.router.registry import LocalRegistry
from chargeyard.router.tokens import FileTokens
from chargeyard.store import make_store
from chargeyard.store.base import StartTransaction, StopTransaction, UpsertCharger
from tests.cassandra.fixtures import cassandra  # noqa: F401  (the session's CQL server)

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
# 40 chargers; the ACL token reaches 6 of them, spread thinly over the id order
IDS = [f"{'DEPOT' if i % 7 == 3 else 'CP'}-{i:03d}" for i in range(40)]
DEPOT = sorted(c for c in IDS if c.startswith("DEPOT"))


@pytest.fixture(params=["sqlite", "scylla"])
def store_kind(request, tmp_path):
    if request.param == "sqlite":
        return lambda: make_store("sqlite", path=str(tmp_path / "cy.db"))
    hosts = request.getfixturevalue("cassandra").hosts
    keyspace = "cy_api_" + uuid.uuid4().hex[:12]
    asyncio.run(asyncio.wait_for(make_store("scylla", scylla_hosts=hosts, keyspace=keyspace).migrate(), 120))
    return lambda: make_store("scylla", scylla_hosts=hosts, keyspace=keyspace)


def _scenario(tmp_path, make, monkeypatch):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"all": ["read"], "depot": {"scopes": ["read"], "chargers": ["DEPOT-*"]}}))
    assert api_mod.ACL_ROUNDS == 10

    async def body():
        store = make()
        await store.open()
        ops = [UpsertCharger(c, "ocpp1.6", "V", "M", "S", "1", T0) for c in IDS]
        for i, c in enumerate(IDS):
            ops.append(StartTransaction(c, f"{c}-t", 1, "T", 0.0, T0 + dt.timedelta(minutes=i % 5)))
        ops.append(StopTransaction("DEPOT-003", "DEPOT-003-t", 9.0, T0 + dt.timedelta(hours=1)))
        await store.apply(ops)
        api = Api(Settings(), store, LocalRegistry(), FileTokens(tokens))  # type: ignore[arg-type]
        await api.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{api.port}/api/v1"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
                async def get(path, token="all", status=200):
                    async with s.get(base + path, headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == status, (path, await r.text())
                        return await r.json()

                async def walk(path, token="all", limit=7):
                    pages, cursor = [], None
                    for _ in range(50):
                        sep = "&" if "?" in path else "?"
                        page = await get(f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""), token)
                        assert set(page) == {"items", "next_cursor"} and len(page["items"]) <= limit
                        pages.append(page["items"])
                        cursor = page["next_cursor"]
                        if cursor is None:
                            return pages
                    raise AssertionError("next_cursor never ran out")

                pages = await walk("/chargers")
                assert [c["id"] for p in pages for c in p] == sorted(IDS)
                assert [len(p) for p in pages[:5]] == [7] * 5
                assert all(c["connected"] is False for p in pages for c in p)
                # the ACL: only DEPOT-*, each once, in order, though a store page holds few of them
                pages = await walk("/chargers", "depot", limit=4)
                assert [c["id"] for p in pages for c in p] == DEPOT
                assert len(pages[0]) == 4  # ten store pages filled it, the last one read again in part
                pages = await walk("/chargers", "depot", limit=2)
                assert [c["id"] for p in pages for c in p] == DEPOT
                # bounded: 3 store pages of 1 row do not reach a DEPOT: a short page, a cursor
                monkeypatch.setattr(api_mod, "ACL_ROUNDS", 3)
                page = await get("/chargers?limit=1", "depot")
                monkeypatch.setattr(api_mod, "ACL_ROUNDS", 10)
                assert page["items"] == [] and page["next_cursor"]

                txs = [t for p in await walk("/transactions", limit=6) for t in p]
                assert sorted(t["tx_id"] for t in txs) == sorted(f"{c}-t" for c in IDS)
                starts = [t["started_at"] for t in txs]
                assert starts == sorted(starts, reverse=True)
                txs = [t for p in await walk("/transactions", "depot", limit=2) for t in p]
                assert sorted(t["charger_id"] for t in txs) == DEPOT
                txs = [t for p in await walk("/transactions?active=false", "depot") for t in p]
                assert [t["tx_id"] for t in txs] == ["DEPOT-003-t"]
                txs = [t for p in await walk("/transactions?charger_id=DEPOT-010", "depot") for t in p]
                assert [t["tx_id"] for t in txs] == ["DEPOT-010-t"]
                await get("/transactions?charger_id=CP-001", "depot", status=403)
                await get("/transactions?cursor=nonsense", status=400)
                await get("/chargers?cursor=nonsense", status=400)
        finally:
            await api.stop()
            await store.close()

    asyncio.run(asyncio.wait_for(body(), 120))


def test_lists_page_and_the_acl_filters(store_kind, tmp_path, monkeypatch):
    _scenario(tmp_path, store_kind, monkeypatch)
