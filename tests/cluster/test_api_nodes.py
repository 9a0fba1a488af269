"""Every node is an API node: live events of a charger held by one worker reach an
SSE subscriber on another node, and tokens live in Redis (seeded from
``--tokens-file``), so a revoke through one node is refused by all at once."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.cluster.chargers import Charger, close_all, ts
from tests.cluster.conftest import start_cluster

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture(scope="module")
def tcluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("tcluster")
    tokens = d / "tokens.json"
    tokens.write_text(json.dumps({"admin-secret": ["admin"]}))
    c = start_cluster(d, workers=2, tokens_file=str(tokens))
    yield c
    c.stop()


async def http(s, base, method, path, body=None, token="admin-secret"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, base + path, json=body, headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


def test_sse_on_another_node_sees_the_transaction(tcluster, arun):
    cid = "sse-1"

    async def body():
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            ch = Charger(tcluster.ws(cid), cid)
            await ch.reconnect(time.monotonic() + 10)
            try:
                st, doc = await http(s, tcluster.url(""), "GET", f"/api/v1/chargers/{cid}")
                assert st == 200 and doc["worker_id"] in ("w1", "w2")
                owner_i = int(doc["worker_id"][1:]) - 1
                # subscribers on the API node and on the worker that does not hold the charger
                subs = [tcluster.node_url(2, ""), tcluster.node_url(1 - owner_i, "")]
                seen: list[list[str]] = [[] for _ in subs]
                ready = [asyncio.Event() for _ in subs]

                async def listen(k: int, base: str) -> None:
                    async with s.get(base + f"/api/v1/chargers/{cid}/events", headers=ADMIN,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_read=20)) as r:
                        assert r.status == 200
                        async for line in r.content:
                            text = line.decode().strip()
                            if text == ": subscribed":  # written once the subscription exists
                                ready[k].set()
                            if text.startswith("event: "):
                                seen[k].append(text[7:])
                                if text[7:] == "transaction.ended":
                                    return

                tasks = [asyncio.create_task(listen(k, b)) for k, b in enumerate(subs)]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 10)
                r = await ch.call("StartTransaction", {"connectorId": 1, "idTag": "T-SSE",
                                                       "meterStart": 0, "timestamp": ts()})
                tx = r["transactionId"]
                await ch.meter(tx, 500)
                await ch.call("StopTransaction", {"transactionId": tx, "meterStop": 900, "timestamp": ts()})
                await asyncio.wait_for(asyncio.gather(*tasks), 15)
                for got in seen:
                    assert {"transaction.started", "transaction.meter", "transaction.ended"} <= set(got), seen
            finally:
                await close_all([ch])

    arun(body(), timeout=60)


def test_token_revoked_on_one_node_refused_by_all(tcluster, arun):
    bases = [tcluster.node_url(i, "") for i in range(3)] + [tcluster.url("")]

    async def body():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            chargers = [Charger(tcluster.ws(c), c) for c in ("acl-a1", "acl-a2", "other-1")]
            for c in chargers:
                await c.reconnect(time.monotonic() + 10)
            try:
                assert (await http(s, bases[0], "GET", "/api/v1/chargers", token=None))[0] == 401
                # the server makes the secret and shows it once; the token's id (its hash) revokes it
                st, temp = await http(s, bases[0], "POST", "/api/v1/tokens", {"scopes": ["read"]})
                assert st == 201 and temp["token"] and temp["id"] != temp["token"]
                for b in bases:
                    assert (await http(s, b, "GET", "/api/v1/chargers", token=temp["token"]))[0] == 200, b
                # a token with a charger ACL sees only its chargers in the list
                st, acl = await http(s, bases[1], "POST", "/api/v1/tokens",
                                     {"scopes": ["read"], "chargers": ["acl-*"]})
                assert st == 201
                for b in bases:
                    st, doc = await http(s, b, "GET", "/api/v1/chargers", token=acl["token"])
                    assert st == 200 and sorted(i["id"] for i in doc["items"]) == ["acl-a1", "acl-a2"], doc
                    assert (await http(s, b, "GET", "/api/v1/chargers/other-1", token=acl["token"]))[0] == 403
                st, _ = await http(s, bases[1], "DELETE", f"/api/v1/tokens/{temp['id']}")
                assert st == 204
                for b in bases:  # at once: no cache between Redis and any node
                    st, doc = await http(s, b, "GET", "/api/v1/chargers", token=temp["token"])
                    assert st == 401 and doc["error"]["code"] == "unauthenticated", (b, st, doc)
                assert (await http(s, bases[2], "GET", "/api/v1/chargers"))[0] == 200  # admin still works
            finally:
                await close_all(chargers)

    arun(body(), timeout=60)
