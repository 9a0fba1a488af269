"""The SQLite store's events outbox: each batch writes the events of its facts in its own
commit (none for a failed write, every one after kill -9 once committed), repeats report
nothing, and the relay publishes them from the store to the real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid

import pytest

from chargeyard.store import events as ev
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction, StopTransaction,
                                   StoreError, TransactionEvent, UpsertCharger)
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.relay import KafkaPublisher, Relay

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


async def _events(store) -> list[ev.Event]:
    return [ev.decode(r.payload) for r in await store.outbox_read(0, 100_000)]


def test_batches_write_the_events_of_their_facts(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "s.db", outbox="w1") as s:
            await s.apply([ev.ConnectionOpened("cp", "ocpp1.6", 3, "w1", at(0)),
                           UpsertCharger("cp", "ocpp1.6", "V", "M", at=at(0)),
                           ConnectorStatus("cp", 0, 1, "Preparing", "NoError", at(1)),
                           StartTransaction("cp", "7", 1, "TAG", 100.0, at(2)),
                           MeterSample("cp", "7", at(3), 150.0, 1), ChargerSeen("cp", at(4))])
            await s.apply([StartTransaction("cp", "8", 1, "TAG", 100.0, at(2)),  # a retry: tx 7
                           StopTransaction("cp", "7", 200.0, at(5), "Local"),
                           StopTransaction("cp", "7", 200.0, at(5), "Local"),  # a resend
                           TransactionEvent("cp", "t2", 0, "Started", at(6), energy_wh=0.0, connector_id=2),
                           TransactionEvent("cp", "t2", 0, "Started", at(6), energy_wh=0.0, connector_id=2),
                           ev.ConnectionClosed("cp", 3, "takeover", "w1", at(7))])
            got = await _events(s)
            assert [e.type for e in got] == [
                "charger.connected", "charger.booted", "charger.status", "transaction.started",
                "transaction.meter", "charger.heartbeat", "transaction.ended", "transaction.started",
                "transaction.meter", "charger.disconnected"]
            assert ev.data_of(got[6]).transaction_id == "7" and ev.data_of(got[7]).transaction_id == "t2"
            assert [r.seq for r in await s.outbox_read(0, 100)] == list(range(1, 11))
            assert await s.outbox_spooled() == 10
            await s.outbox_mark_published(4)
            assert await s.outbox_spooled() == 6
            assert [r.seq for r in await s.outbox_read(0, 100)] == list(range(5, 11))
            await s.outbox_mark_published(10)
            assert await s.outbox_spooled() == 0 and await s.outbox_read(0, 100) == []
    asyncio.run(main())


def test_a_failed_write_has_no_event(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "s.db", outbox="w1") as s:
            with pytest.raises(StoreError):
                await s.apply([ConnectorStatus("cp", 0, 1, "Faulted", "X", at(0)), object()])  # type: ignore[list-item]
            assert await _events(s) == [] and (await s.get_charger("cp")) is None
            await s.apply([ConnectorStatus("cp", 0, 1, "Faulted", "X", at(0))])
            assert [e.type for e in await _events(s)] == ["charger.status"]
    asyncio.run(main())


def test_no_outbox_no_events(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "s.db") as s:
            await s.apply([ConnectorStatus("cp", 0, 1, "Faulted", "X", at(0)),
                           ev.ConnectionOpened("cp", "ocpp1.6", 1, "w", at(0))])  # accepted, no effect
            assert await s.outbox_read(0, 10) == [] and await s.outbox_spooled() == 0
    asyncio.run(main())


_CHILD = """
import asyncio, datetime as dt, os, signal, sys
from chargeyard.store.sqlite import SqliteStore
from chargeyard.store.base import MeterSample, StartTransaction
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
async def main():
    s = SqliteStore(sys.argv[1], outbox="w1")
    await s.open()
    await s.apply([StartTransaction("cp", "1", 1, "TAG", 0.0, T0)])
    for b in range(30):
        await s.apply([MeterSample("cp", "1", T0 + dt.timedelta(seconds=b * 10 + i), float(b * 10 + i), 1)
                       for i in range(10)])
        print(b, flush=True)  # acknowledged: the batch is durable
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""


def test_committed_events_survive_kill_9(tmp_path):
    db = tmp_path / "s.db"
    p = subprocess.run([sys.executable, "-c", _CHILD, str(db)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ))
    assert p.returncode == -9, p.stderr
    acked = len(p.stdout.split())

    async def main():
        async with SqliteStore(db, outbox="w1") as s:
            got = await _events(s)
            assert acked == 30 and len(got) == 1 + 300
            assert [ev.data_of(e).energy_wh for e in got[1:]] == [float(i) for i in range(300)]
    asyncio.run(main())


def test_relay_publishes_from_the_store(tmp_path):
    from chargeyard.kafka_broker import KafkaBroker, java_bin
    from tests.services.kafka_read import first_of_each, read_events, until
    try:
        java_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    broker = KafkaBroker(tmp_path / "kafka", partitions=3)
    broker.start()
    topic = f"events-{uuid.uuid4().hex[:8]}"

    async def main():
        async with SqliteStore(tmp_path / "s.db", outbox="w1") as s:
            relay = Relay(s, KafkaPublisher(broker.bootstrap, topic), poll_s=0.05, metrics=False).start()
            for b in range(20):
                await s.apply([ConnectorStatus(f"cp-{i}", 0, 1, "Available" if b % 2 else "Charging", "", at(b))
                               for i in range(10)])
                relay.wake()
            await until(lambda: relay.published == 200 and relay.spooled == 0)
            await relay.close()
            assert await _events(s) == []  # all published and trimmed
        want = {ev.status(f"cp-{i}", at(b), 0, 1, "Available" if b % 2 else "Charging", "").id
                for b in range(20) for i in range(10)}
        got = first_of_each(await read_events(broker.bootstrap, topic, want))
        assert {e.id for e in got} == want
        for i in range(10):  # per charger, commit order
            mine = [e for e in got if e.charger_id == f"cp-{i}"]
            assert [e.time for e in mine] == [at(b) for b in range(20)]
    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        broker.stop()
