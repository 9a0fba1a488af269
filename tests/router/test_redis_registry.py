"""RedisRegistry beyond the contract: two workers, leases, fencing, outages, write rate."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from chargeyard.router.redis_registry import RedisRegistry, lease_key, owner_key
from chargeyard.router.registry import CallTimeout, NotConnected, RegistryUnavailable


async def worker(url: str, worker_id: str, lease_s: float = 2.0, delay: float = 0.0):
    """A RedisRegistry with a fake worker: records takeovers, answers calls."""
    reg = RedisRegistry(url, worker_id=worker_id, lease_s=lease_s)
    reg.takeovers = []  # type: ignore[attr-defined]
    reg.took = asyncio.Event()  # type: ignore[attr-defined]

    async def executor(charger_id, action, payload, timeout):
        if delay:
            await asyncio.sleep(delay)
        return {"served_by": worker_id, "action": action, "payload": payload}

    def on_takeover(cid, epoch):
        reg.takeovers.append((cid, epoch, time.monotonic()))  # type: ignore[attr-defined]
        reg.took.set()  # type: ignore[attr-defined]

    reg.attach(worker_id, executor, on_takeover)
    await reg.start()
    return reg


async def api(url: str) -> RedisRegistry:
    reg = RedisRegistry(url)  # API-only node: no worker id
    await reg.start()
    return reg


async def stop_all(*regs):
    for r in regs:
        await r.stop()


def test_takeover_across_workers_within_1s(srv, arun):
    async def body():
        a, b = await worker(srv.url, "wa"), await worker(srv.url, "wb")
        try:
            ea = await a.claim("CP-7", "ocpp1.6")
            t0 = time.monotonic()
            eb = await b.claim("CP-7", "ocpp1.6")
            await asyncio.wait_for(a.took.wait(), 1.0)
            (cid, epoch, at), = a.takeovers
            assert (cid, epoch) == ("CP-7", eb) and eb > ea and at - t0 < 1.0
            assert b.takeovers == []
            own = await a.owner("CP-7")
            assert (own.worker_id, own.epoch) == ("wb", eb)
            # the old session closes late: its release must not erase the new owner
            await a.release("CP-7", ea)
            assert (await b.owner("CP-7")).worker_id == "wb"
            assert set(await a.connected()) == {"CP-7"}
        finally:
            await stop_all(a, b)

    arun(body())


def test_forwarding_between_nodes(srv, arun):
    async def body():
        a, b, front = await worker(srv.url, "wa"), await worker(srv.url, "wb"), await api(srv.url)
        try:
            await a.claim("CP-A")
            await b.claim("CP-B")
            r = await front.call("CP-A", "Reset", {"type": "Hard"}, 2.0)
            assert r == {"served_by": "wa", "action": "Reset", "payload": {"type": "Hard"}}
            assert (await front.call("CP-B", "Reset", {}, 2.0))["served_by"] == "wb"
            # a worker forwards to another worker too
            assert (await a.call("CP-B", "Reset", {}, 2.0))["served_by"] == "wb"
            with pytest.raises(NotConnected):
                await front.call("CP-none", "Reset", {}, 1.0)
            # many concurrent calls are correlated correctly
            rs = await asyncio.gather(*(front.call("CP-A" if i % 2 else "CP-B", "X", {"i": i}, 2.0)
                                        for i in range(50)))
            for i, r in enumerate(rs):
                assert r["payload"] == {"i": i} and r["served_by"] == ("wa" if i % 2 else "wb")
        finally:
            await stop_all(a, b, front)

    arun(body())


def test_forwarded_call_times_out(srv, arun):
    async def body():
        slow, front = await worker(srv.url, "slow", delay=5.0), await api(srv.url)
        try:
            await slow.claim("CP-S")
            t0 = time.monotonic()
            with pytest.raises(CallTimeout):
                await front.call("CP-S", "Reset", {}, 0.5)
            assert time.monotonic() - t0 < 1.0
        finally:
            await stop_all(slow, front)

    arun(body())


def test_call_to_dead_owner_is_not_connected(srv, arun):
    async def body():
        a, front = await worker(srv.url, "wa"), await api(srv.url)
        await a.claim("CP-A")
        await a.stop()  # deletes its lease: its chargers are offline at once
        try:
            assert await front.owner("CP-A") is None
            assert await front.connected() == {}
            with pytest.raises(NotConnected):
                await front.call("CP-A", "Reset", {}, 1.0)
        finally:
            await front.stop()

    arun(body())


def test_stale_epoch_fenced(srv, arun):
    async def body():
        a, b = await worker(srv.url, "wa"), await worker(srv.url, "wb")
        try:
            ea = await a.claim("CP-F")
            assert await a.check_fence("CP-F", ea) is True
            eb = await b.claim("CP-F")
            assert await a.check_fence("CP-F", ea) is False  # stale owner's writes rejected
            assert await b.check_fence("CP-F", eb) is True
            await a.release("CP-F", ea)
            assert (await b.owner("CP-F")).epoch == eb
        finally:
            await stop_all(a, b)

    arun(body())


def test_lease_expiry_makes_owner_none(srv, arun):
    async def body():
        a, front = await worker(srv.url, "wa", lease_s=1.0), await api(srv.url)
        try:
            await a.claim("CP-L")
            assert (await front.owner("CP-L")).worker_id == "wa"
            a._lease_task.cancel()  # the worker hangs: no more renewals
            await asyncio.sleep(1.3)
            assert await front.owner("CP-L") is None
            assert "CP-L" not in await front.connected()
            with pytest.raises(NotConnected):
                await front.call("CP-L", "Reset", {}, 0.5)
        finally:
            await stop_all(a, front)

    arun(body())


def test_restarted_worker_drops_previous_incarnation(srv, arun):
    async def body():
        a = await worker(srv.url, "wa")
        await a.claim("CP-old")
        a._lease_task.cancel()  # crash: nothing cleaned up
        await a._r.aclose()
        a2 = await worker(srv.url, "wa")  # same worker id comes back, owns nothing
        try:
            assert await a2.owner("CP-old") is None
            assert await a2.connected() == {}
        finally:
            await a2.stop()

    arun(body(), timeout=20)


def test_redis_restart(fresh_valkey, arun):
    """While Redis is down calls fail fast and claims still answer; once it is back
    (empty: no persistence) every ownership is re-registered within one lease."""
    lease = 1.5

    async def body():
        a = await worker(fresh_valkey.url, "wa", lease_s=lease)
        front = await api(fresh_valkey.url)
        try:
            ea = await a.claim("CP-1")
            await a.claim("CP-2")
            e3 = await a.claim("CP-3")
            await asyncio.to_thread(fresh_valkey.kill)

            t0 = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                await front.call("CP-1", "Reset", {}, 5.0)
            with pytest.raises(RegistryUnavailable):
                await front.owner("CP-1")
            assert time.monotonic() - t0 < 1.0
            # claim/release never block or raise while Redis is down
            t0 = time.monotonic()
            e4 = await a.claim("CP-4", "ocpp2.0.1")
            await a.release("CP-3", e3)
            assert time.monotonic() - t0 < 1.0 and e4 > ea
            await a.publish({"charger_id": "CP-1", "type": "charger.status"})  # dropped, no error
            await asyncio.sleep(0.3)
            assert not a.healthy

            await asyncio.to_thread(fresh_valkey.restart)
            back = time.monotonic()
            while time.monotonic() - back < lease:
                try:
                    if set(await front.connected()) == {"CP-1", "CP-2", "CP-4"}:
                        break
                except RegistryUnavailable:
                    pass
                await asyncio.sleep(0.05)
            took = time.monotonic() - back
            got = await front.connected()
            assert set(got) == {"CP-1", "CP-2", "CP-4"}, got
            assert got["CP-1"].epoch == ea and got["CP-4"].protocol == "ocpp2.0.1"
            assert took < lease
            # epochs keep growing although Redis lost its counters
            assert await a.claim("CP-1") > ea
            # forwarding works again
            deadline = time.monotonic() + 2
            while True:
                try:
                    r = await front.call("CP-2", "Reset", {}, 1.0)
                    break
                except RegistryUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert r["served_by"] == "wa"
            print(f"re-registered {len(got)} chargers {took:.2f}s after Redis came back")
        finally:
            await stop_all(a, front)

    arun(body(), timeout=30)


def test_takeover_lost_during_outage_found_on_reassert(fresh_valkey, arun):
    """A charger moved to B while A could not hear it: A learns on re-assert."""

    async def body():
        a = await worker(fresh_valkey.url, "wa", lease_s=1.5)
        b = await worker(fresh_valkey.url, "wb", lease_s=1.5)
        try:
            await a.claim("CP-X")
            a._listen_task.cancel()  # A is deaf to the takeover notice
            await asyncio.sleep(0.05)
            eb = await b.claim("CP-X")
            assert a.takeovers == []
            a._dirty = True  # as after a Redis outage
            a._wake.set()
            await asyncio.wait_for(a.took.wait(), 2.0)
            assert a.takeovers[0][:2] == ("CP-X", eb)
            assert (await b.owner("CP-X")).worker_id == "wb"
        finally:
            await stop_all(a, b)

    arun(body())


async def _commands_per_s(r: aioredis.Redis, seconds: float) -> float:
    async def total():
        stats = await r.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if not k.endswith("_info"))

    before = await total()
    await asyncio.sleep(seconds)
    return (await total() - before) / seconds


def test_steady_state_writes_do_not_grow_with_chargers(fresh_valkey, arun, capsys):
    lease, window = 0.6, 2.0  # lease/3 = 0.2 s: ~5 renewals per second per worker

    async def body():
        r = aioredis.Redis.from_url(fresh_valkey.url, decode_responses=True)
        a = await worker(fresh_valkey.url, "wa", lease_s=lease)
        try:
            await asyncio.sleep(0.3)
            idle = await _commands_per_s(r, window)
            for i in range(0, 1000, 100):
                await asyncio.gather(*(a.claim(f"CP-{j}", "ocpp1.6") for j in range(i, i + 100)))
            await asyncio.sleep(0.3)
            loaded = await _commands_per_s(r, window)
            assert len(await a.connected()) == 1000
        finally:
            await a.stop()
            await r.aclose()
        with capsys.disabled():
            print(f"\nredis commands/s at steady state (lease {lease}s): "
                  f"0 chargers {idle:.2f}, 1000 chargers {loaded:.2f}")
        assert loaded <= idle + 1.0
        assert loaded < 10  # a handful of lease renewals, nothing per charger

    arun(body(), timeout=30)


def test_lease_key_and_owner_key_use_hash_tags():
    assert owner_key("CP:1") == "cy:{CP:1}:owner"
    assert lease_key("w1") == "cy:worker:{w1}"


def test_multi_key_scripts_stay_in_one_slot():
    """Redis Cluster: every script touches only keys of one hash slot."""
    from redis.crc import key_slot

    from chargeyard.router.redis_registry import epoch_key

    for cid in ("CP-1", "weird:id{x}", "ÄÖ-42"):
        assert key_slot(owner_key(cid).encode()) == key_slot(epoch_key(cid).encode())


def test_events_cross_nodes_and_attach_after_start(srv, arun):
    async def body():
        front = await api(srv.url)
        late = RedisRegistry(srv.url, lease_s=2.0)
        await late.start()  # started as API-only, becomes a worker afterwards
        calls = []

        async def executor(cid, action, payload, timeout):
            calls.append(action)
            return {"ok": True}

        late.attach("late", executor, lambda cid, e: None)
        try:
            await late.claim("CP-L")
            for _ in range(100):  # its channels are subscribed in the background
                if late._subscribed:
                    break
                await asyncio.sleep(0.02)
            deadline = time.monotonic() + 2
            while True:  # its channels are subscribed in the background
                try:
                    assert await front.call("CP-L", "Reset", {}, 1.0) == {"ok": True}
                    break
                except NotConnected:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            sub = await front.events("CP-L")  # subscribed when it returns
            await late.publish({"id": "e1", "type": "charger.connected", "charger_id": "CP-L"})
            got = await sub.next(2.0)
            await sub.close()
            assert got is not None and got[1]["id"] == "e1"
        finally:
            await stop_all(late, front)

    arun(body())


def test_same_charger_claimed_on_two_workers_during_outage(fresh_valkey, arun):
    """Both claims got provisional epochs while Redis was down: once it is back the
    later one owns the charger and the earlier worker is told to let go."""

    async def body():
        a = await worker(fresh_valkey.url, "wa", lease_s=1.5)
        b = await worker(fresh_valkey.url, "wb", lease_s=1.5)
        try:
            await asyncio.to_thread(fresh_valkey.kill)
            ea = await a.claim("CP-Z")
            await asyncio.sleep(0.01)
            eb = await b.claim("CP-Z")
            assert eb > ea
            await asyncio.to_thread(fresh_valkey.restart)
            await asyncio.wait_for(a.took.wait(), 1.5)
            assert a.takeovers[0][:2] == ("CP-Z", eb)
            assert b.takeovers == []

            async def owner_is_b():
                try:
                    o = await b.owner("CP-Z")
                except RegistryUnavailable:
                    return False
                return o is not None and (o.worker_id, o.epoch) == ("wb", eb)

            deadline = time.monotonic() + 1.5
            while not await owner_is_b():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert "CP-Z" not in a._owned
        finally:
            await stop_all(a, b)

    arun(body())


def test_garbage_on_worker_channels_is_survived(valkey, flush, arun):
    async def body():
        a, front = await worker(valkey.url, "wa"), await api(valkey.url)
        try:
            await a.claim("CP-G")
            r = aioredis.Redis.from_url(valkey.url)
            from chargeyard.router.redis_registry import calls_channel, control_channel

            for ch in (calls_channel("wa"), control_channel("wa")):
                for junk in ("not json", "{}", '{"type": "takeover"}', "[1,2]"):
                    await r.publish(ch, junk)
            await r.aclose()
            await asyncio.sleep(0.1)
            assert (await front.call("CP-G", "Reset", {}, 2.0))["served_by"] == "wa"
        finally:
            await stop_all(a, front)

    arun(body())


def test_claim_burst_queues_instead_of_failing(srv, arun):
    """500 chargers connecting at once: every claim reaches Redis (no provisional
    epochs, no connection errors), the pool bounds the connections."""

    async def body():
        a = await worker(srv.url, "wa")
        try:
            epochs = await asyncio.gather(*(a.claim(f"CP-{i}", "ocpp1.6") for i in range(500)))
            assert a.healthy and not a._dirty
            got = await a.connected()
            assert len(got) == 500 and all(got[f"CP-{i}"].epoch == e for i, e in enumerate(epochs))
        finally:
            await a.stop()

    arun(body())


def test_workers_build_events_only_for_watched_chargers(valkey, flush, arun):
    """wants_events is False until someone subscribes (any node), then True on every
    worker, also on one started afterwards; the window outlives the subscriber."""

    async def body():
        a, front = await worker(valkey.url, "wa"), await api(valkey.url)
        late = None
        try:
            assert not a.wants_events("CP-W")
            sub = await front.events("CP-W")
            deadline = time.monotonic() + 2
            while not a.wants_events("CP-W"):  # announced on cy:watch
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await a.publish({"id": "w1", "type": "charger.status", "charger_id": "CP-W"})
            got = await sub.next(2.0)
            assert got is not None and got[1]["id"] == "w1"
            await sub.close()
            late = await worker(valkey.url, "wl")  # reads the watched set at start
            assert late.wants_events("CP-W") and not late.wants_events("CP-other")
        finally:
            await stop_all(*(r for r in (a, front, late) if r is not None))

    arun(body())
