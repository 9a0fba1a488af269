"""The worker's events end to end with a real Kafka broker (issue 20, Proof): a broker
outage does not touch charger replies and loses nothing, and a worker killed with -9 right
after its commits publishes every acknowledged message's events after its restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import defaultdict

import pytest
import websockets

from chargeyard.router.registry import LocalRegistry
from chargeyard.store import events as ev
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.metrics import EVENTS_SPOOLED
from chargeyard.worker.relay import KafkaPublisher
from chargeyard.worker.server import Worker
from chargeyard.worker.settings import WorkerSettings
from tests.services.kafka_read import first_of_each, read_events, until
from tests.support import NodeProc

CHARGERS = 100
OUTAGE_S = 30.0
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _spooled() -> float:
    return EVENTS_SPOOLED._value.get()


async def _rpc(ws, frame: list) -> list:
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def _meter(i: int, tx: int, at: dt.datetime) -> list:
    return [2, f"m{i}", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": at.isoformat().replace("+00:00", "Z"), "sampledValue": [{"value": str(1000 + i)}]}]}]


def _start(cid_i: int) -> list:
    return [2, "s", "StartTransaction", {"connectorId": 1, "idTag": f"T{cid_i}", "meterStart": 1000,
                                         "timestamp": BASE.isoformat().replace("+00:00", "Z")}]



def test_broker_outage_spools_and_loses_nothing(own_kafka, tmp_path, run):
    """100 chargers meter through a worker whose relay publishes to Kafka; the broker is
    stopped for 30 s and started again. Every reply arrives during the outage, the spool
    rises and returns to 0, and the topic holds every committed event (the worker's live
    feed of committed batches says which), each id once after dedup, in commit order per
    charger."""
    own_kafka.start()
    committed: list[dict] = []  # every committed event, in commit order (the live feed)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "cy.db", outbox="w-outage")
        await store.open()
        registry = LocalRegistry("w-outage")
        await registry.start()
        w = Worker(WorkerSettings(worker_id="w-outage", host="127.0.0.1", ws_port=0, accept_unknown_tags=True,
                                  kafka_bootstrap=own_kafka.bootstrap, rate_limit=1000.0),
                   store, registry, sinks=[committed.append])
        # an outage shows up as an error within seconds (the product's default is 10 s)
        w.relay.publisher = KafkaPublisher(own_kafka.bootstrap, request_timeout_s=2.0)
        w.relay.backoff_max_s = 1.0
        await w.start()
        phase = {"name": "before"}
        replies: dict[str, int] = defaultdict(int)
        worst = [0.0]
        stop = asyncio.Event()

        async def charger(i: int) -> None:
            cid = f"cp-{i:03d}"
            async with websockets.connect(f"ws://127.0.0.1:{w.port}/ocpp/{cid}", subprotocols=["ocpp1.6"]) as ws:
                tx = (await _rpc(ws, _start(i)))[2]["transactionId"]
                n = 0
                while not stop.is_set():
                    n += 1
                    t0 = time.monotonic()
                    reply = await _rpc(ws, _meter(n, tx, BASE + dt.timedelta(milliseconds=n)))
                    worst[0] = max(worst[0], time.monotonic() - t0)
                    assert reply == [3, f"m{n}", {}], reply
                    replies[phase["name"]] += 1
                    await asyncio.sleep(0.25)

        chargers = [asyncio.create_task(charger(i)) for i in range(CHARGERS)]
        try:
            await until(lambda: replies["before"] >= CHARGERS * 4, 30)
            await until(lambda: w.relay.published > 0 and _spooled() == 0, 30)
            phase["name"] = "outage"
            await asyncio.to_thread(own_kafka.stop)
            outage_at = time.monotonic()
            peak = 0.0
            while time.monotonic() - outage_at < OUTAGE_S:
                await asyncio.sleep(0.5)
                peak = max(peak, _spooled())
                for t in chargers:
                    if t.done():
                        t.result()  # a failed reply fails the test now
            assert replies["outage"] >= CHARGERS * OUTAGE_S * 2, replies  # ~4/s per charger, all answered
            assert peak > 1000, peak  # the spool rose while the broker was down
            phase["name"] = "after"
            await asyncio.to_thread(own_kafka.start)
            await until(lambda: replies["after"] >= CHARGERS * 4, 60)
            stop.set()
            await asyncio.gather(*chargers)
            await until(lambda: _spooled() == 0 and w.relay.spooled == 0 and w.relay.errors_free(), 90)
        finally:
            stop.set()
            for t in chargers:
                t.cancel()
            await asyncio.gather(*chargers, return_exceptions=True)
            await w.stop()
            await registry.stop()
            await store.close()
        assert worst[0] < 5.0, worst
        # what the broker holds: every committed event, each once after dedup, in commit order
        # per charger (disconnects of the chargers' closes are committed by the worker's stop)
        want = [e for e in committed]
        ids = {e["id"] for e in want}
        got = first_of_each(await read_events(own_kafka.bootstrap, ev.TOPIC, ids, timeout=90))
        assert {e.id for e in got} == ids
        per_charger_want: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for e in want:  # the live feed repeats nothing, but be exact
            if e["id"] not in seen:
                seen.add(e["id"])
                per_charger_want[e["charger_id"]].append(e["id"])
        per_charger_got: dict[str, list[str]] = defaultdict(list)
        for e in got:
            per_charger_got[e.charger_id].append(e.id)
        assert per_charger_got == per_charger_want
        types = {e.type for e in got}
        assert {"charger.connected", "transaction.started", "transaction.meter", "charger.disconnected"} <= types
        metered = sum(1 for e in got if e.type == "transaction.meter")
        assert metered == sum(replies.values())  # one event per acknowledged reading

    run(scenario(), timeout=220)



def test_a_killed_worker_publishes_every_acknowledged_event_after_restart(own_kafka, tmp_path, run):
    """kill -9 of a node right after its commits (the broker down meanwhile, so nothing of
    them was published yet): once it runs again with the same worker id, the events of every
    acknowledged message are on the topic."""
    own_kafka.start()
    node = NodeProc(tmp_path / "data", "--worker-id", "w-kill", "--kafka-bootstrap", own_kafka.bootstrap,
                    "--accept-unknown-tags")
    acked: dict[str, list[str]] = defaultdict(list)  # charger -> ids of its acknowledged facts, in order

    async def chargers() -> None:
        async def one(i: int) -> None:
            cid = f"k-{i:02d}"
            async with websockets.connect(node.ws(cid), subprotocols=["ocpp1.6"]) as ws:
                reply = await _rpc(ws, _start(i))
                tx = reply[2]["transactionId"]
                acked[cid].append(ev.tx_started(cid, BASE, str(tx), 1).id)
                for n in range(1, 21):
                    at = BASE + dt.timedelta(seconds=n)
                    assert (await _rpc(ws, _meter(n, tx, at)))[0] == 3
                    acked[cid].append(ev.tx_meter(cid, at, str(tx), 1, float(1000 + n)).id)
                    await asyncio.sleep(0.01)
                stop = [2, "x", "StopTransaction", {"transactionId": tx, "meterStop": 1021,
                                                    "timestamp": (BASE + dt.timedelta(seconds=30)).isoformat()}]
                assert (await _rpc(ws, stop))[0] == 3
                acked[cid].append(ev.tx_ended(cid, BASE + dt.timedelta(seconds=30), str(tx), 1021.0).id)
                # a resent StopTransaction is answered, and reports nothing new
                assert (await _rpc(ws, stop))[0] == 3
        await asyncio.gather(*(one(i) for i in range(20)))

    try:
        node.start(timeout=60)
        own_kafka.stop()  # nothing of what follows is published before the kill
        run(chargers(), timeout=60)
        node.kill()  # -9, right after the last acknowledged commit
        own_kafka.start()
        node.start(timeout=60)
        want = {i for ids in acked.values() for i in ids}
        got = first_of_each(run(read_events(own_kafka.bootstrap, ev.TOPIC, want, timeout=90), timeout=120))
        got_ids = [e.id for e in got]
        assert want <= set(got_ids), len(want - set(got_ids))
        for cid, ids in acked.items():  # commit order per charger
            mine = [e.id for e in got if e.charger_id == cid and e.id in want]
            assert mine == ids, cid
        ended = [e for e in got if e.type == "transaction.ended"]
        assert len(ended) == 20  # the resends added nothing
        assert len([e for e in got if e.type == "charger.connected"]) >= 20
    finally:
        node.kill()
