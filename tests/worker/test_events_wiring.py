"""The worker's events come from committed batches (issue 20): none before its commit
(StatusNotification is answered before it), none for a repeat (a resent StopTransaction),
the connection's own events (connected after the claim, disconnected with its reason, a
takeover saying so), security events (a rejected id tag, SecurityEventNotification), and
the in-process consumers fed from the outbox by the relay."""

from __future__ import annotations

import asyncio
import json

import websockets

from chargeyard.router.registry import LocalRegistry
from chargeyard.store import events as ev
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.server import Worker
from chargeyard.worker.settings import WorkerSettings

BOOT16 = [2, "b", "BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "AC22"}]
STATUS16 = [2, "s", "StatusNotification", {"connectorId": 1, "status": "Faulted", "errorCode": "GroundFailure",
                                           "timestamp": "2026-01-01T00:00:00Z"}]


class GatedStore(SqliteStore):
    """Commits only while ``gate`` is set."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = asyncio.Event()
        self.gate.set()

    async def apply_then(self, ops):  # type: ignore[override]
        await self.gate.wait()
        return await super().apply_then(ops)


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def rpc(ws, frame: list) -> list:
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def until(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def _worker(tmp_path, live: list, outbox: list, **settings):
    store = GatedStore(tmp_path / "cy.db", outbox="w1")
    await store.open()
    registry = LocalRegistry("w1")
    await registry.start()
    w = Worker(WorkerSettings(worker_id="w1", host="127.0.0.1", ws_port=0, **settings), store, registry,
               sinks=[live.append], event_sinks=[outbox.extend])
    w.relay.poll_s = 0.05
    await w.start()
    return w, store, registry


async def _stop(w, store, registry) -> None:
    await w.stop()
    await registry.stop()
    await store.close()


def test_events_follow_commits_only(tmp_path):
    live: list[dict] = []
    outbox: list[ev.Event] = []

    async def scenario():
        w, store, registry = await _worker(tmp_path, live, outbox, accept_unknown_tags=True)
        try:
            async with websockets.connect(f"ws://127.0.0.1:{w.port}/ocpp/cp-1", subprotocols=["ocpp1.6"]) as ws:
                assert (await rpc(ws, BOOT16))[2]["status"] == "Accepted"
                await until(lambda: any(e["type"] == "charger.booted" for e in live))
                store.gate.clear()
                # answered before its commit: its event waits for the commit
                assert await rpc(ws, STATUS16) == [3, "s", {}]
                await asyncio.sleep(0.2)
                assert not any(e["type"] == "charger.status" for e in live)
                assert not any(e.type == "charger.status" for e in outbox)
                store.gate.set()
                await until(lambda: any(e["type"] == "charger.status" for e in live))
                status = next(e for e in live if e["type"] == "charger.status")
                assert status["data"]["status"] == "Faulted" and status["data"]["connector_id"] == 1
                start = await rpc(ws, [2, "t", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                                    "timestamp": "2026-01-01T00:00:00Z"}])
                stop = [2, "x", "StopTransaction", {"transactionId": start[2]["transactionId"], "meterStop": 500,
                                                    "timestamp": "2026-01-01T01:00:00Z"}]
                await rpc(ws, stop)
                await rpc(ws, stop)  # a resend: answered, nothing new reported
                await rpc(ws, [2, "h", "Heartbeat", {}])
            await until(lambda: any(e.type == "charger.disconnected" for e in outbox))
        finally:
            await _stop(w, store, registry)
        for events in ([e["type"] for e in live], [e.type for e in outbox]):
            assert events.count("transaction.ended") == 1, events
            assert events.count("charger.booted") == 1 and events.count("charger.status") == 1
            assert events[0] == "charger.connected" and events[-1] == "charger.disconnected"
        # the live feed and the outbox are the same events
        assert [e["id"] for e in live] == [e.id for e in outbox]
        closed = ev.data_of(next(e for e in outbox if e.type == "charger.disconnected"))
        assert closed.epoch >= 1 and closed.worker_id == "w1" and not closed.takeover
    run(scenario())


def test_takeover_and_security_events(tmp_path):
    live: list[dict] = []
    outbox: list[ev.Event] = []

    async def scenario():
        w, store, registry = await _worker(tmp_path, live, outbox, accept_unknown_tags=False)
        try:
            url = f"ws://127.0.0.1:{w.port}/ocpp/cp-2"
            first = await websockets.connect(url, subprotocols=["ocpp2.0.1"])
            await until(lambda: any(e["type"] == "charger.connected" for e in live))
            async with websockets.connect(url, subprotocols=["ocpp2.0.1"]) as ws:
                await until(lambda: sum(e["type"] == "charger.connected" for e in live) == 2)
                reply = await rpc(ws, [2, "a", "Authorize", {"idToken": {"idToken": "NOPE", "type": "ISO14443"}}])
                assert reply[2]["idTokenInfo"]["status"] != "Accepted"
                assert await rpc(ws, [2, "e", "SecurityEventNotification", {
                    "type": "TamperDetectionActivated", "timestamp": "2026-01-01T00:00:00Z",
                    "techInfo": "lid"}]) == [3, "e", {}]
                await until(lambda: sum(e["type"] == "charger.security_event" for e in live) == 2)
            await first.close()
            await until(lambda: sum(e.type == "charger.disconnected" for e in outbox) == 2)
        finally:
            await _stop(w, store, registry)
        opened = [ev.data_of(e) for e in outbox if e.type == "charger.connected"]
        closed = [ev.data_of(e) for e in outbox if e.type == "charger.disconnected"]
        assert opened[0].epoch < opened[1].epoch
        takeover = next(c for c in closed if c.epoch == opened[0].epoch)
        assert takeover.takeover and takeover.reason == "takeover"
        assert not next(c for c in closed if c.epoch == opened[1].epoch).takeover
        kinds = [ev.data_of(e).type for e in outbox if e.type == "charger.security_event"]
        assert kinds == ["IdTagRejected", "TamperDetectionActivated"]
    run(scenario())
