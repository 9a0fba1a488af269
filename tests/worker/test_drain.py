"""The worker's drain (``Worker.drain``, issue 23 item 2), in-process on real sockets:
readiness false and the listener closed before the first charger is closed, then the
chargers closed with 1001 in waves at ``drain_rate`` per second, each wave after a
store flush."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

import websockets

from chargeyard.worker.server import Worker
from tests.worker.test_server import BOOT16, rpc, run, url, worker

CHARGERS = 40


@pytest.mark.parametrize("RATE", [20.0, 25.0])  # 2 a wave; 2.5 a wave (fractional)
def test_drain_closes_chargers_in_waves_at_the_rate(tmp_path, RATE):
    async def scenario():
        async with worker(tmp_path, drain_rate=RATE, drain_timeout=5.0) as w:
            conns = [await websockets.connect(url(w, f"d-{i}"), subprotocols=["ocpp1.6"], ping_interval=None)
                     for i in range(CHARGERS)]
            for ws in conns:
                assert (await rpc(ws, BOOT16))[0] == 3
            flushes: list[tuple[float, int]] = []  # (when, sessions still open)
            real_flush = w.writer.flush

            async def flush() -> None:
                flushes.append((time.monotonic(), len(w.sessions)))
                await real_flush()

            w.writer.flush = flush  # type: ignore[method-assign]
            closed: list[tuple[float, int | None]] = []

            async def watch(ws) -> None:
                await asyncio.wait_for(ws.wait_closed(), 15)
                closed.append((time.monotonic(), ws.close_code))

            watchers = [asyncio.create_task(watch(ws)) for ws in conns]
            t0 = time.monotonic()
            drain = asyncio.create_task(w.drain())
            await asyncio.sleep(0)  # the drain's synchronous start has run
            assert not w.ready and w.draining
            await drain
            await asyncio.gather(*watchers)
            return t0, w, closed, flushes

    t0, w, closed, flushes = run(scenario(), 60)
    assert isinstance(w, Worker) and not w.sessions
    assert [code for _, code in closed] == [1001] * CHARGERS
    times = sorted(t for t, _ in closed)
    span = times[-1] - times[0]
    measured = (CHARGERS - 1) / span  # closes after the first one, over the time they took
    assert RATE * 0.5 <= measured <= RATE * 1.5, (measured, span)
    # waves of RATE x 0.1 s chargers (on average), a store flush before every wave
    assert len(flushes) == math.ceil(CHARGERS / (RATE * 0.1))
    assert flushes[0][1] == CHARGERS  # the first flush ran before anything was closed


def test_drain_rate_zero_closes_everyone_at_once(tmp_path):
    async def scenario():
        async with worker(tmp_path, drain_rate=0.0, drain_timeout=5.0) as w:
            conns = [await websockets.connect(url(w, f"z-{i}"), subprotocols=["ocpp1.6"], ping_interval=None)
                     for i in range(10)]
            t0 = time.monotonic()
            await w.drain()
            await asyncio.gather(*(asyncio.wait_for(ws.wait_closed(), 5) for ws in conns))
            return time.monotonic() - t0, [ws.close_code for ws in conns]

    took, codes = run(scenario())
    assert codes == [1001] * 10
    assert took < 2.0
