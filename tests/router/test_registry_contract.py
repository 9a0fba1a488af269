"""The Registry contract (router/registry.py docstring), run on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from chargeyard.router.registry import (
    CallRejected,
    CallTimeout,
    LocalRegistry,
    NotConnected,
    PayloadInvalid,
    Registry,
)


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request):
    """The contract holds on both event loops the product runs on."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner = uvloop.run
    else:
        runner = asyncio.run

    def run(coro, timeout: float = 20.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)

        return runner(bounded())

    return run


@pytest.fixture(params=["local", "redis", "redis-cluster-mode", "redis-cluster"])
def make(request):
    """``await make()`` -> a started registry with a fake worker attached; stopped after."""
    made: list[Registry] = []

    async def factory(worker_id: str = "w1") -> Registry:
        if request.param == "local":
            reg: Registry = LocalRegistry(worker_id)
        else:
            from chargeyard.router.redis_registry import RedisRegistry

            server = {"redis": "valkey", "redis-cluster-mode": "valkey_cluster_mode",
                      "redis-cluster": "valkey_cluster"}[request.param]
            url = request.getfixturevalue(server).url
            reg = RedisRegistry(url, worker_id=worker_id, lease_s=2.0)
        reg.takeovers = []  # type: ignore[attr-defined]
        reg.calls = []  # type: ignore[attr-defined]

        async def executor(charger_id, action, payload, timeout):
            reg.calls.append((charger_id, action, payload))  # type: ignore[attr-defined]
            if action == "Reject":
                raise CallRejected("NotSupported", "nope", {"why": 1})
            if action == "Slow":
                raise CallTimeout("charger silent")
            if action == "Invalid":
                raise PayloadInvalid("bad payload")
            return {"status": "Accepted", "echo": payload}

        reg.attach(worker_id, executor, lambda cid, e: reg.takeovers.append((cid, e)))  # type: ignore[attr-defined]
        await reg.start()
        made.append(reg)
        return reg

    if request.param == "redis":
        request.getfixturevalue("flush")
    elif request.param == "redis-cluster-mode":
        import redis

        r = redis.Redis.from_url(request.getfixturevalue("valkey_cluster_mode").url)
        r.flushall()
        r.close()
    elif request.param == "redis-cluster":
        request.getfixturevalue("valkey_cluster").flushall()
    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    # registries are stopped inside each test's loop (see `stopping`)


@contextlib.asynccontextmanager
async def stopping(*regs: Registry):
    try:
        yield
    finally:
        for r in regs:
            await r.stop()


def test_claim_epochs_increase_and_owner(make, arun):
    async def body():
        reg = await make()
        async with stopping(reg):
            e1 = await reg.claim("CP-1", "ocpp1.6")
            o = await reg.owner("CP-1")
            assert o is not None and (o.worker_id, o.epoch, o.protocol) == ("w1", e1, "ocpp1.6")
            e2 = await reg.claim("CP-1", "ocpp2.0.1")
            assert e2 > e1
            assert (await reg.owner("CP-1")).epoch == e2
            assert await reg.owner("CP-unknown") is None

    arun(body())


def test_epochs_keep_growing_across_a_restart(make, arun):
    """The store remembers each charger's highest epoch (fencing, ADR 0016): a registry
    started again (a restarted node) must hand out larger epochs, or the reconnected
    chargers' first writes are refused as stale and they are dropped once more."""
    async def body():
        first = await make()
        async with stopping(first):
            before = await first.claim("CP-1", "ocpp1.6")
        started = time.time_ns() // 1_000_000
        while time.time_ns() // 1_000_000 == started:  # a process restarts in more than 1 ms
            await asyncio.sleep(0.0005)
        again = await make()
        async with stopping(again):
            assert await again.claim("CP-1", "ocpp1.6") > before

    arun(body())


def test_reclaim_by_the_same_worker(make, arun):
    """A charger reconnecting to the worker that holds it gets a newer epoch; only
    *another* worker is told through ``on_takeover`` (the worker replaces its own
    session itself), see test_redis_registry.py for the cross-worker case."""
    async def body():
        reg = await make()
        async with stopping(reg):
            e1 = await reg.claim("CP-1", "ocpp1.6")
            e2 = await reg.claim("CP-1", "ocpp1.6")
            assert e2 > e1
            assert reg.takeovers == []

    arun(body())


def test_release_only_with_current_epoch(make, arun):
    async def body():
        reg = await make()
        async with stopping(reg):
            e1 = await reg.claim("CP-1")
            e2 = await reg.claim("CP-1")
            await reg.release("CP-1", e1)  # stale session closing late
            assert (await reg.owner("CP-1")).epoch == e2
            assert "CP-1" in await reg.connected()
            await reg.release("CP-1", e2)
            assert await reg.owner("CP-1") is None
            assert "CP-1" not in await reg.connected()

    arun(body())


def test_connected_lists_live_chargers(make, arun):
    async def body():
        reg = await make()
        async with stopping(reg):
            ea = await reg.claim("A", "ocpp1.6")
            await reg.claim("B", "ocpp2.0.1")
            eb = await reg.claim("B", "ocpp2.0.1")
            got = await reg.connected()
            assert set(got) == {"A", "B"}
            assert got["A"].epoch == ea and got["B"].epoch == eb
            assert got["B"].protocol == "ocpp2.0.1" and got["A"].worker_id == "w1"

    arun(body())


def test_call_results_and_errors(make, arun):
    async def body():
        reg = await make()
        async with stopping(reg):
            with pytest.raises(NotConnected):
                await reg.call("CP-1", "Reset", {"type": "Soft"}, 1.0)
            await reg.claim("CP-1", "ocpp1.6")
            assert await reg.call("CP-1", "Reset", {"type": "Soft"}, 1.0) == {
                "status": "Accepted", "echo": {"type": "Soft"}}
            with pytest.raises(CallRejected) as ei:
                await reg.call("CP-1", "Reject", {}, 1.0)
            assert ei.value.error_code == "NotSupported" and ei.value.description == "nope"
            with pytest.raises(CallTimeout):
                await reg.call("CP-1", "Slow", {}, 1.0)
            with pytest.raises(PayloadInvalid):
                await reg.call("CP-1", "Invalid", {}, 1.0)

    arun(body())


def test_publish_subscribe(make, arun):
    async def body():
        reg = await make()
        async with stopping(reg):
            got_one: list[dict] = []
            got_all: list[dict] = []

            async def consume(sub, sink, n):
                while len(sink) < n:
                    item = await sub.next(5.0)
                    if item is not None:
                        sink.append(item[1])
                await sub.close()

            # events() returns once subscribed: no sleep before publishing
            t1 = asyncio.create_task(consume(await reg.events("CP-1"), got_one, 1))
            t2 = asyncio.create_task(consume(await reg.events("*"), got_all, 2))
            ev1 = {"id": "1", "type": "charger.status", "charger_id": "CP-1", "data": {"s": "A"}}
            ev2 = {"id": "2", "type": "charger.status", "charger_id": "CP-2", "data": {"s": "B"}}
            await reg.publish(ev1)
            await reg.publish(ev2)
            await asyncio.wait_for(asyncio.gather(t1, t2), 3)
            assert got_one == [ev1]
            assert got_all == [ev1, ev2]

    arun(body())


def test_events_subscribed_on_return_ids_increase_and_replay(make, arun):
    """``events()`` has subscribed when it returns (no sleep needed); a quiet ``next``
    returns None and the subscription survives; ``after`` replays the newer events."""
    from chargeyard.router.registry import REPLAY_EVENTS

    async def body():
        reg = await make()
        async with stopping(reg):
            sub = await reg.events("CP-R")
            assert await sub.next(0.3) is None  # silence: nothing, and still subscribed
            evs = [{"id": f"e{i}", "type": "charger.status", "charger_id": "CP-R", "data": {"i": i}}
                   for i in range(5)]
            for ev in evs[:3]:
                await reg.publish(ev)
            got = [await sub.next(3.0) for _ in range(3)]
            assert [g[1] for g in got] == evs[:3]
            ids = [g[0] for g in got]
            assert _ordered(ids) and len(set(ids)) == 3
            await sub.close()
            for ev in evs[3:]:  # nobody listens now; the window keeps them
                await reg.publish(ev)
            again = await reg.events("CP-R", after=ids[1])
            replay = [await again.next(3.0) for _ in range(3)]
            assert [r[1] for r in replay] == evs[2:]
            assert _ordered([ids[1]] + [r[0] for r in replay])
            assert await again.next(0.2) is None
            await again.close()
            # the window is bounded
            for i in range(4 * REPLAY_EVENTS):
                await reg.publish({"id": f"f{i}", "type": "charger.status", "charger_id": "CP-R"})
            late = await reg.events("CP-R", after=ids[0])
            n = 0
            while await late.next(0.3) is not None:
                n += 1
            assert REPLAY_EVENTS <= n < 4 * REPLAY_EVENTS
            await late.close()

    arun(body())


def _ordered(ids: list[str]) -> bool:
    """Stream ids increase: integers on one node, ``ms-seq`` stream ids on Redis."""
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    return all(a < b for a, b in zip(keys, keys[1:]))
