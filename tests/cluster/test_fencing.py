"""Fenced writes across workers (issue 21, item 3; ADR 0016): two workers with real Redis
(valkey) and one SQLite file, as ``chargeyard cluster`` shares it (each worker its own store
object and connections, as each worker process has).

The old owner's writes are held back (its commits wait on a gate) while the charger
reconnects to the other worker and gets writes acknowledged there; the takeover notice never
reaches the old owner (as when its pub/sub connection is down). Released, the old owner's late
writes do not land, the charger gets no CALLRESULT for them, its old connection is closed
(1000), and everything the new owner acknowledged stands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from chargeyard.router.redis_registry import RedisRegistry
from chargeyard.store import make_store
from chargeyard.worker.server import Worker
from chargeyard.worker.settings import WorkerSettings

pytestmark = pytest.mark.slow

CID = "CP-FENCE-1"
BOOT = [2, "b", "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "X1"}]


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def worker(db: Path, url: str, worker_id: str, *, notified: bool = True) -> AsyncIterator[Worker]:
    store = make_store("sqlite", path=db)
    await store.open()
    registry = RedisRegistry(url, worker_id=worker_id, lease_s=2.0)
    w = Worker(WorkerSettings(worker_id=worker_id, host="127.0.0.1", ws_port=0), store, registry)
    if not notified:  # the takeover notice is lost: only the store can tell this worker
        w.on_takeover = lambda charger_id, epoch: None  # type: ignore[method-assign]
    await registry.start()
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await registry.stop()
        await store.close()


def gate(w: Worker) -> asyncio.Event:
    """Hold the worker's commits until the returned event is set."""
    opened = asyncio.Event()
    opened.set()
    apply_then = w.store.apply_then

    async def gated(ops):
        await opened.wait()
        return await apply_then(ops)
    w.store.apply_then = gated  # type: ignore[method-assign]
    return opened


async def rpc(ws, frame: list) -> list:
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def meter(mid: str, tx: int, wh: float, minute: int) -> list:
    return [2, mid, "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": f"2026-01-01T00:{minute:02d}:00Z", "sampledValue": [{"value": str(wh)}]}]}]


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_stale_owner_late_writes_do_not_land(valkey, tmp_path):
    db = tmp_path / "cluster" / "store" / "chargeyard.db"

    async def body():
        async with worker(db, valkey.url, "w1", notified=False) as w1, worker(db, valkey.url, "w2") as w2:
            ws1 = await websockets.connect(f"ws://127.0.0.1:{w1.port}/ocpp/{CID}", subprotocols=["ocpp1.6"])
            assert (await rpc(ws1, BOOT))[2]["status"] == "Accepted"
            start = await rpc(ws1, [2, "s", "StartTransaction", {
                "connectorId": 1, "idTag": "T1", "meterStart": 1000, "timestamp": "2026-01-01T00:00:00Z"}])
            tx = start[2]["transactionId"]
            assert (await rpc(ws1, meter("m1", tx, 1500, 1)))[0] == 3
            await until(lambda: w1.sessions[CID].epoch > 0)
            await w1.writer.flush()
            old_epoch = w1.sessions[CID].epoch

            # the old owner stalls: its late writes queue up behind the gate
            opened = gate(w1)
            opened.clear()
            await ws1.send(json.dumps(meter("late-m", tx, 9999, 5)))
            await ws1.send(json.dumps([2, "late-s", "StopTransaction", {
                "transactionId": tx, "meterStop": 9999, "timestamp": "2026-01-01T00:06:00Z"}]))
            await until(lambda: w1.writer.queue_depth >= 2)

            # the charger is now on w2: a new epoch, writes acknowledged there
            ws2 = await websockets.connect(f"ws://127.0.0.1:{w2.port}/ocpp/{CID}", subprotocols=["ocpp1.6"])
            assert (await rpc(ws2, BOOT))[2]["status"] == "Accepted"
            assert (await rpc(ws2, meter("m2", tx, 2000, 2)))[0] == 3
            assert (await rpc(ws2, meter("m3", tx, 2500, 3)))[0] == 3
            new_epoch = w2.sessions[CID].epoch
            assert new_epoch > old_epoch
            assert w1.sessions[CID].closed_reason is None  # w1 was not told (notice lost)

            # the old owner goes on: the store refuses its late writes, it closes the session
            opened.set()
            got = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws1.recv(), 5)))
            assert got == []  # no CALLRESULT (nor CALLERROR) for the late messages
            assert ws1.close_code == 1000
            await w1.writer.flush()
            assert w1.writer.fenced_ops >= 2

            # everything w2 acknowledged stands; nothing of w1's late writes landed
            tx_row = await w2.store.get_transaction(CID, str(tx))
            assert tx_row["active"] and tx_row["meter_stop_wh"] is None
            assert tx_row["energy_wh"] == 1500.0
            samples = [x["energy_wh"] for x in await w2.store.list_meter_samples(CID, str(tx))]
            assert 9999.0 not in samples and {1500.0, 2000.0, 2500.0} <= set(samples)

            # and the new owner keeps writing
            assert (await rpc(ws2, [2, "s2", "StopTransaction", {
                "transactionId": tx, "meterStop": 3000, "timestamp": "2026-01-01T00:07:00Z"}]))[0] == 3
            tx_row = await w2.store.get_transaction(CID, str(tx))
            assert tx_row["meter_stop_wh"] == 3000.0 and tx_row["energy_wh"] == 2000.0
            await ws2.close()
    run(body())


def test_takeover_notice_and_fence_together(valkey, tmp_path):
    """The usual path: the notice closes the old connection at once; writes it had queued
    are refused all the same, and the new owner's stand."""
    db = tmp_path / "store" / "chargeyard.db"

    async def body():
        async with worker(db, valkey.url, "w1") as w1, worker(db, valkey.url, "w2") as w2:
            ws1 = await websockets.connect(f"ws://127.0.0.1:{w1.port}/ocpp/{CID}-2", subprotocols=["ocpp1.6"])
            assert (await rpc(ws1, BOOT))[2]["status"] == "Accepted"
            await until(lambda: w1.sessions[f"{CID}-2"].epoch > 0)
            await w1.writer.flush()
            opened = gate(w1)
            opened.clear()
            await ws1.send(json.dumps([2, "st", "StatusNotification", {
                "connectorId": 1, "status": "Faulted", "errorCode": "OtherError",
                "timestamp": "2026-01-01T00:09:00Z"}]))
            await until(lambda: w1.writer.queue_depth >= 1)
            ws2 = await websockets.connect(f"ws://127.0.0.1:{w2.port}/ocpp/{CID}-2", subprotocols=["ocpp1.6"])
            assert (await rpc(ws2, BOOT))[2]["status"] == "Accepted"
            assert (await rpc(ws2, [2, "st2", "StatusNotification", {
                "connectorId": 1, "status": "Available", "errorCode": "NoError",
                "timestamp": "2026-01-01T00:08:00Z"}]))[0] == 3
            await until(lambda: w2.sessions[f"{CID}-2"].epoch > 0)
            await w2.writer.flush()
            await asyncio.wait_for(ws1.wait_closed(), 5)  # the notice: closed within 1 s
            assert ws1.close_code == 1000
            opened.set()
            await w1.writer.flush()
            assert w1.writer.fenced_ops >= 1
            charger = await w2.store.get_charger(f"{CID}-2")
            assert [c["status"] for c in charger["connectors"] if c["connector_id"] == 1] == ["Available"]
            await ws2.close()
    run(body())
