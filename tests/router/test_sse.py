"""The operator API's Server-Sent Events: the stream stays open through silence with
keep-alive comments, ``: subscribed`` comes once the subscription exists, and
``Last-Event-ID`` replays what a reconnecting client missed (issue 19, bug 1)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chargeyard.config import Settings
from chargeyard.router.api import Api
from chargeyard.router.registry import LocalRegistry


@pytest.fixture(params=["local", "redis"])
def registry_factory(request):
    if request.param == "local":
        return lambda: LocalRegistry("w1")
    from chargeyard.router.redis_registry import RedisRegistry

    url = request.getfixturevalue("valkey").url
    return lambda: RedisRegistry(url, worker_id="w1", lease_s=2.0)


async def read_block(r: aiohttp.ClientResponse) -> list[str]:
    """One SSE block: the lines up to the blank line."""
    lines = []
    while True:
        line = (await r.content.readline()).decode()
        assert line, "the stream ended"
        if line == "\n":
            return lines
        lines.append(line.rstrip("\n"))


def test_stream_outlives_silence_and_replays_after_reconnect(registry_factory):
    async def body():
        reg = registry_factory()
        await reg.start()
        api = Api(Settings(sse_keepalive=0.1), store=None, registry=reg)  # type: ignore[arg-type]
        await api.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{api.port}/api/v1/chargers/CP-S/events"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
                async with s.get(url) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    assert await read_block(r) == [": subscribed"]
                    # published right after the line: the subscription exists already
                    await reg.publish({"id": "a", "type": "charger.status", "charger_id": "CP-S"})
                    first = await read_block(r)
                    assert first[1:3] == ["event: charger.status", 'data: {"id":"a","type":"charger.status",'
                                          '"charger_id":"CP-S"}'] and first[0].startswith("id: ")
                    for _ in range(5):  # silence, far longer than one keep-alive period
                        assert await read_block(r) == [": keep-alive"]
                    await reg.publish({"id": "b", "type": "charger.status", "charger_id": "CP-S"})
                    block = await read_block(r)
                    while block == [": keep-alive"]:
                        block = await read_block(r)
                    assert block[1] == "event: charger.status" and '"id":"b"' in block[2]
                # gone for a while; two events happen meanwhile
                await reg.publish({"id": "c", "type": "charger.status", "charger_id": "CP-S"})
                await reg.publish({"id": "d", "type": "charger.status", "charger_id": "CP-S"})
                last = first[0][4:]
                async with s.get(url, headers={"Last-Event-ID": last}) as r:
                    assert await read_block(r) == [": subscribed"]
                    seen = []
                    while len(seen) < 3:
                        block = await read_block(r)
                        if block[0].startswith("id: "):
                            seen.append(block[2])
                    assert ['"id":"b"' in seen[0], '"id":"c"' in seen[1], '"id":"d"' in seen[2]] == [True] * 3
        finally:
            await api.stop()
            await reg.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
