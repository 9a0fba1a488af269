"""The sharded cluster for real: valkey, 3 workers, the API node and nginx.

Chargers spread over the workers through nginx; every node answers operator calls
for chargers held elsewhere (forwarded through Redis); a SIGKILLed worker's chargers
come back through nginx without losing anything acknowledged; a valkey restart does
not interrupt chargers; a stale owner is fenced."""

from __future__ import annotations

import asyncio
import collections
import random
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from chargeyard.router.redis_registry import RedisRegistry, lease_key, owner_key
from tests.cluster.chargers import Charger, Disconnected, close_all, fleet, ts, until
from tests.cluster.conftest import LEASE

pytestmark = pytest.mark.slow
NAMES = ["w1", "w2", "w3", "api"]  # node i of ClusterProc.node_ports()


def redis_of(cluster) -> aioredis.Redis:
    return aioredis.Redis(port=cluster.cluster.valkey.port, decode_responses=True, socket_timeout=2)


async def owners(r: aioredis.Redis, ids) -> dict[str, tuple[str, int]]:
    """charger -> (worker_id, epoch) from the registry's owner keys."""
    async with r.pipeline(transaction=False) as p:
        for cid in ids:
            p.get(owner_key(cid))
        vals = await p.execute()
    out = {}
    for cid, v in zip(ids, vals):
        if v:
            w, _, e = v.rpartition(":")
            out[cid] = (w, int(e))
    return out


class Http:
    """One aiohttp session for many requests (bounded by a total timeout each)."""

    def __init__(self, timeout: float = 15) -> None:
        self.s = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def __call__(self, base: str, method: str, path: str, body=None, headers=None):
        async with self.s.request(method, base + path, json=body, headers=headers) as r:
            return r.status, (await r.json(content_type=None) if r.content_length != 0 else None)

    async def close(self) -> None:
        await self.s.close()


async def start_tx(c: Charger) -> int:
    r = await c.call("StartTransaction", {"connectorId": 1, "idTag": "T-CL", "meterStart": 1000,
                                          "timestamp": ts()})
    assert r["idTagInfo"]["status"] == "Accepted", r
    return r["transactionId"]


async def bounded_gather(coros, limit: int = 50):
    sem = asyncio.Semaphore(limit)

    async def one(co):
        async with sem:
            return await co

    return await asyncio.gather(*(one(c) for c in coros))


def test_300_chargers_spread_and_calls_from_every_node(cluster, arun):
    ids = [f"sp-{i:03d}" for i in range(300)]
    bases = [f"http://127.0.0.1:{p}" for p in cluster.node_ports()]

    async def body():
        t0 = time.monotonic()
        chargers = await fleet(cluster.ws, ids)
        took = time.monotonic() - t0
        by_id = {c.cid: c for c in chargers}
        r, http = redis_of(cluster), Http()
        try:
            own = await owners(r, ids)
            assert len(own) == 300
            spread = collections.Counter(w for w, _ in own.values())
            assert set(spread) == {"w1", "w2", "w3"} and min(spread.values()) >= 30, spread
            # each worker's own API shows the owner of chargers held anywhere
            sample = random.Random(1).sample(ids, 12)
            for base in bases[:3]:
                for cid in sample:
                    st, doc = await http(base, "GET", f"/api/v1/chargers/{cid}")
                    assert st == 200 and doc["connected"] and doc["worker_id"] == own[cid][0], doc
            # an operator call on every node reaches a charger owned by another node
            for name, base in zip(NAMES, bases):
                cid = next(c for c in ids if own[c][0] != name)
                st, doc = await http(base, "POST", f"/api/v1/chargers/{cid}/calls/Reset", {"type": "Soft"})
                assert (st, doc) == (200, {"result": {"status": "Accepted"}}), (name, cid, st, doc)
                assert by_id[cid].calls_seen[-1] == "Reset"
            st, doc = await http(cluster.url(""), "GET", "/api/v1/chargers")
            assert st == 200 and sum(i["connected"] for i in doc["items"] if i["id"] in by_id) == 300
            print(f"\n300 chargers through nginx in {took:.1f}s; spread {dict(sorted(spread.items()))}")
        finally:
            await close_all(chargers)
            await http.close()
            await r.aclose()

    arun(body(), timeout=120)


def test_sigkill_worker_chargers_come_back_nothing_acknowledged_lost(cluster, arun):
    ids = [f"kl-{i:03d}" for i in range(300)]
    victim_i, victim = 1, "w2"

    async def body():
        chargers = await fleet(cluster.ws, ids)
        r, http = redis_of(cluster), Http()
        stop, resume = asyncio.Event(), asyncio.Event()
        state: dict[str, dict] = {}
        lost: dict[str, tuple[int, int]] = {}
        served: dict[str, float] = {}
        loops: list[asyncio.Task] = []
        try:
            txs = await bounded_gather([start_tx(c) for c in chargers])
            for c, tx in zip(chargers, txs):
                state[c.cid] = {"tx": tx, "acked": 1000, "sent": 1000}
            before = await owners(r, ids)
            victims = {cid for cid in ids if before[cid][0] == victim}
            assert len(victims) >= 30

            async def metered(c: Charger) -> None:
                st = state[c.cid]
                await asyncio.sleep(random.random())
                while not stop.is_set():
                    st["sent"] = st["acked"] + 10
                    try:
                        await c.meter(st["tx"], st["sent"], timeout=20)
                        st["acked"] = st["sent"]
                    except Disconnected:
                        lost[c.cid] = (st["acked"], st["sent"])
                        await c.reconnect(time.monotonic() + 45)
                        await c.call("Heartbeat", {})
                        served[c.cid] = time.monotonic()
                        await resume.wait()  # the store is checked before it meters on
                        continue
                    await asyncio.sleep(0.7 + 0.6 * random.random())

            loops = [asyncio.create_task(metered(c)) for c in chargers]

            async def all_acked() -> bool:
                return all(s["acked"] > 1000 for s in state.values())

            await until(all_acked, 30, 0.05, "every charger has acknowledged meter values")
            t_kill = time.monotonic()
            await asyncio.to_thread(cluster.workers[victim_i].kill)
            await until(lambda: _done(served, victims, loops), 60, 0.05, "victims served again")
            kill_to_served = max(served.values()) - t_kill
            assert set(lost) == victims and set(served) == victims

            # nothing a charger was told was accepted is lost (the value in flight may be there)
            async def check(cid):
                st, doc = await http(cluster.url(""), "GET",
                                     f"/api/v1/chargers/{cid}/transactions/{state[cid]['tx']}")
                acked, sent = lost[cid]
                assert st == 200 and acked - 1000 <= doc["energy_wh"] <= sent - 1000, (cid, lost[cid], doc)
            await bounded_gather([check(cid) for cid in victims], 20)
            resume.set()

            # after the dead incarnation's lease: ownership points at live workers only
            await asyncio.sleep(max(0.0, t_kill + LEASE + 0.5 - time.monotonic()))
            after = await owners(r, ids)
            moved = collections.Counter(after[cid][0] for cid in victims)
            for cid in ids:
                w, e = after[cid]
                assert await r.exists(lease_key(w)), (cid, w)
                if cid in victims:
                    assert e > before[cid][1], (cid, before[cid], after[cid])
                else:
                    assert after[cid] == before[cid]

            async def shown(cid):
                st, doc = await http(cluster.url(""), "GET", f"/api/v1/chargers/{cid}")
                assert st == 200 and doc["connected"] and doc["worker_id"] == after[cid][0], (cid, doc)
            await bounded_gather([shown(cid) for cid in victims], 20)

            # the cluster restarted the worker (same id and ports); it serves the API again
            await until(lambda: _restarted(cluster), 45, 0.1, "worker-2 restarted")
            base = cluster.node_url(victim_i, "")
            for cid in sorted(victims)[:10]:
                st, doc = await http(base, "POST", f"/api/v1/chargers/{cid}/calls/Reset", {"type": "Hard"})
                assert (st, doc) == (200, {"result": {"status": "Accepted"}}), (cid, st, doc)

            stop.set()
            await asyncio.wait_for(asyncio.gather(*loops), 40)
            finals = await bounded_gather([http(cluster.url(""), "GET",
                                                f"/api/v1/chargers/{cid}/transactions/{state[cid]['tx']}")
                                           for cid in ids], 20)
            for cid, (st, doc) in zip(ids, finals):
                assert st == 200 and doc["energy_wh"] == state[cid]["acked"] - 1000, (cid, state[cid], doc)
            print(f"\nSIGKILL {victim} holding {len(victims)}/300 chargers: all served again "
                  f"{kill_to_served:.2f}s after the kill; moved to {dict(sorted(moved.items()))}; "
                  f"restarted {cluster.cluster.restarts[-1][1] - t_kill:.1f}s after the kill")
        finally:
            stop.set()
            resume.set()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await close_all(chargers)
            await http.close()
            await r.aclose()

    arun(body(), timeout=180)


async def _done(served, victims, loops):
    for t in loops:
        if t.done() and t.exception() is not None:
            raise t.exception()
    return set(served) >= victims


async def _restarted(cluster):
    if not any(name == "worker-2" for name, _ in cluster.cluster.restarts):
        return False
    try:
        return (await asyncio.to_thread(cluster.node_get, 1, "/readyz", 2))[0] == 200
    except OSError:
        return False


def test_valkey_restart_chargers_served_throughout(cluster, arun):
    ids = [f"vk-{i:02d}" for i in range(30)]
    bases = [f"http://127.0.0.1:{p}" for p in cluster.node_ports()]
    # plus one charger straight on each worker (nginx may still skip a just-restarted one)
    pinned = {f"vk-pin-{w}": sp.ws_port for w, sp in zip(NAMES, cluster.cluster.specs)}

    async def body():
        chargers = await fleet(cluster.ws, ids)
        chargers += await fleet(lambda cid: f"ws://127.0.0.1:{pinned[cid]}/ocpp/{cid}", list(pinned))
        http = Http()
        try:
            txs = await bounded_gather([start_tx(c) for c in chargers])
            target = chargers[0].cid
            st, _ = await http(cluster.url(""), "POST", f"/api/v1/chargers/{target}/calls/Reset", {"type": "Soft"})
            assert st == 200
            r = redis_of(cluster)
            try:
                own = await owners(r, [c.cid for c in chargers])
            finally:
                await r.aclose()
            one_per_worker = {w: cid for cid, (w, _) in sorted(own.items())}
            assert set(one_per_worker) == {"w1", "w2", "w3"}, own
            meter = {c.cid: 1000 for c in chargers}

            async def round_trip():
                async def one(c, tx):
                    assert (await c.call("Heartbeat", {}, timeout=10))["currentTime"]
                    meter[c.cid] += 10
                    await c.meter(tx, meter[c.cid], timeout=10)
                await asyncio.gather(*(one(c, tx) for c, tx in zip(chargers, txs)))

            t_down = time.monotonic()
            await asyncio.to_thread(cluster.cluster.valkey.kill)
            rounds, refused = 0, collections.Counter()
            while time.monotonic() - t_down < 3.0:  # the outage: chargers keep being answered
                await round_trip()
                rounds += 1
                for base in bases:
                    st, doc = await http(base, "POST", f"/api/v1/chargers/{target}/calls/Reset",
                                         {"type": "Soft"})
                    assert st == 503 and doc["error"]["code"] == "registry_unavailable", (base, st, doc)
                    refused[st] += 1
                await asyncio.sleep(0.2)
            await asyncio.to_thread(cluster.cluster.restart_valkey)
            t_up = time.monotonic()

            async def forwarding_works():  # from every node to a charger on every worker
                for base in bases:
                    for cid in one_per_worker.values():
                        st, _ = await http(base, "POST", f"/api/v1/chargers/{cid}/calls/Reset",
                                           {"type": "Soft"})
                        if st != 200:
                            return False
                return True
            await until(forwarding_works, 3 * LEASE, 0.05, "forwarding after the valkey restart")
            recovery = time.monotonic() - t_up
            await round_trip()
            # every charger is reachable from every node again
            late = {}
            for c in chargers:
                async def reached(c=c):
                    st, doc = await http(bases[random.randrange(4)], "POST",
                                         f"/api/v1/chargers/{c.cid}/calls/Reset", {"type": "Soft"})
                    if st != 200:
                        late[c.cid] = (st, doc)
                    return st == 200
                await until(reached, LEASE, 0.05, f"{c.cid} reachable ({late.get(c.cid)})")
            all_back = time.monotonic() - t_up
            for c, tx in zip(chargers, txs):  # and everything acknowledged is stored
                st, doc = await http(cluster.url(""), "GET", f"/api/v1/chargers/{c.cid}/transactions/{tx}")
                assert st == 200 and doc["energy_wh"] == meter[c.cid] - 1000
            print(f"\nvalkey down {t_up - t_down:.1f}s: {rounds} rounds of Heartbeat+MeterValues from {len(chargers)} "
                  f"chargers all answered, operator calls {dict(refused)}; forwarding back "
                  f"{recovery:.2f}s after valkey restarted (lease {LEASE}s), to all {all_back:.2f}s; "
                  f"late at first: {late}")
            assert recovery <= LEASE + 1.0, recovery
        finally:
            await close_all(chargers)
            await http.close()

    arun(body(), timeout=120)


def test_stale_owner_fenced_on_real_valkey(cluster, arun):
    cid = "fence-1"
    ws_ports = [sp.ws_port for sp in cluster.cluster.specs]

    async def body():
        r = redis_of(cluster)
        old = Charger(f"ws://127.0.0.1:{ws_ports[0]}/ocpp/{cid}", cid)
        new = Charger(f"ws://127.0.0.1:{ws_ports[1]}/ocpp/{cid}", cid)
        stale = RedisRegistry(f"redis://127.0.0.1:{cluster.cluster.valkey.port}/0", worker_id="w1")
        try:
            await old.reconnect(time.monotonic() + 10)
            # (a claim made while a worker still sees Redis as down is written within lease/3)
            w_old, e_old = (await until(lambda: owners(r, [cid]), LEASE, 0.05, "owner key"))[cid]
            assert w_old == "w1"
            await new.reconnect(time.monotonic() + 10)
            await asyncio.wait_for(asyncio.shield(old._reader), 2.0)  # old session closed in < 1 s

            async def moved():
                got = await owners(r, [cid])
                return got if got.get(cid, ("",))[0] == "w2" else None
            w_new, e_new = (await until(moved, LEASE, 0.05, "owner w2"))[cid]
            assert w_new == "w2" and e_new > e_old
            # the stale owner (w1 at its old epoch) can neither release nor write
            assert await stale.check_fence(cid, e_old) is False
            assert await stale.check_fence(cid, e_new) is True
            await stale.release(cid, e_old)
            assert (await owners(r, [cid]))[cid] == ("w2", e_new)
            st, doc = await asyncio.to_thread(cluster.post, f"/api/v1/chargers/{cid}/calls/Reset", {"type": "Soft"})
            assert (st, doc) == (200, {"result": {"status": "Accepted"}})
            assert new.calls_seen == ["Reset"] and old.calls_seen == []
        finally:
            await close_all([old, new])
            await stale.stop()
            await r.aclose()

    arun(body(), timeout=60)
