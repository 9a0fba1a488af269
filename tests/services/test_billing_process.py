"""``chargeyard billing`` as a process against the real broker, on a real SQLite store
(services/runner.py) and on ScyllaDB (the session's Cassandra, through the app's CLI as
k8s runs it): kill -9 mid-stream, restart, and every ended transaction has exactly one
CDR, equal to its tariff applied to the store's energy."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal

from chargeyard.services.billing import Tariff
from chargeyard.services.storage import SqliteServiceStore
from chargeyard.store import events as ev
from chargeyard.store import make_store
from chargeyard.store.base import StartTransaction, StopTransaction
from chargeyard.worker.relay import KafkaPublisher, Relay
from tests.services.kafka_read import until

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
N = 300
FIRST = 60  # events published before billing on ScyllaDB is killed


def _cdr_count(db) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM cdrs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _start(data_dir, bootstrap, topic) -> subprocess.Popen:
    with open(data_dir / "billing.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "chargeyard.services.runner", "billing",
                                 "--kafka-bootstrap", bootstrap, "--data-dir", str(data_dir), "--topic", topic],
                                stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_billing_killed_mid_stream(kafka, run, tmp_path):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    data = tmp_path

    async def setup() -> list[ev.Event]:
        store = make_store("sqlite", data_dir=data)
        await store.open()
        ops, ended = [], []
        for i in range(N):
            cid, tx = f"cp-{i % 30}", str(1000 + i)
            stop_at = T0 + dt.timedelta(minutes=10 + i % 50)
            ops += [StartTransaction(cid, tx, 1, "TAG", 100.0 + i, T0),  # distinct: not a retry
                    StopTransaction(cid, tx, 100.0 + 7 * i + 0.5, stop_at)]
            ended.append(ev.tx_ended(cid, stop_at, tx, 0.0))
        await store.apply(ops)
        await store.close()
        async with SqliteServiceStore(data / "services.db") as s:
            await s.put_tariff(Tariff(tariff_id="t", currency="EUR", per_kwh=Decimal("0.35"),
                                      per_minute=Decimal("0.02"), session_fee=Decimal("0.50"),
                                      vat_percent=Decimal("19")))
        return ended

    async def publish(events) -> None:
        box = ev.MemoryOutbox()
        relay = Relay(box, KafkaPublisher(kafka.bootstrap, topic), metrics=False, batch_max=40).start()
        box.on_append = relay.wake
        box.append(*events)
        await until(lambda: relay.published == len(events))
        await relay.close()

    ended = run(setup())
    proc = _start(data, kafka.bootstrap, topic)
    try:
        run(publish(ended))
        deadline = time.monotonic() + 60
        while _cdr_count(data / "services.db") == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _cdr_count(data / "services.db") > 0
        run(publish(ended[: N // 3]))  # and some events published twice
        proc = _start(data, kafka.bootstrap, topic)
        deadline = time.monotonic() + 60
        while _cdr_count(data / "services.db") < N and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # nothing more comes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    async def check() -> None:
        store = make_store("sqlite", data_dir=data)
        await store.open()
        async with SqliteServiceStore(data / "services.db") as s:
            cdrs = await s.list_cdrs(limit=10 * N)
            assert len(cdrs) == N == len({(c.charger_id, c.tx_id) for c in cdrs})
            for c in cdrs:
                tx = await store.get_transaction(c.charger_id, c.tx_id)
                assert c.energy_wh == tx["energy_wh"] == 7 * int(c.tx_id[1:]) + 0.5 - int(c.tx_id[1:])
                wh = Decimal(repr(tx["energy_wh"]))
                minutes = Decimal(c.duration_s) / 60
                q = Decimal("0.01")
                net = ((Decimal("0.35") * wh / 1000).quantize(q) + (Decimal("0.02") * minutes).quantize(q)
                       + Decimal("0.50"))
                assert (c.net, c.total) == (str(net), str(net + (net * Decimal("0.19")).quantize(q)))
        await store.close()
    run(check())
    assert proc.returncode == 0


def test_billing_killed_mid_stream_on_scylla(own_kafka, cassandra, run, tmp_path):
    """The cluster's set-up: the topic made by `chargeyard events create-topic` (the k8s Job),
    `chargeyard billing --store scylla` (the k8s Deployment) on a keyspace migrated by
    `chargeyard store migrate`, killed -9 mid-stream and restarted: every ended transaction
    has exactly one CDR in ScyllaDB, equal to its tariff applied to the store's energy."""
    from chargeyard import cli
    from chargeyard.services.scylla_storage import ScyllaServiceStore
    from chargeyard.store.scylla import ScyllaStore

    own_kafka.start()
    keyspace = "cy_bill_" + uuid.uuid4().hex[:10]
    store_args = ["--store", "scylla", "--scylla-hosts", cassandra.hosts, "--keyspace", keyspace]
    assert cli.main(["store", "migrate", "--data-dir", str(tmp_path), *store_args]) == 0
    assert cli.main(["events", "create-topic", "--kafka-bootstrap", own_kafka.bootstrap, "--topic-partitions", "4",
                     "--topic-replication-factor", "1", "--topic-min-insync-replicas", "1"]) == 0
    argv = [sys.executable, "-m", "chargeyard.cli", "billing", "--kafka-bootstrap", own_kafka.bootstrap,
            "--data-dir", str(tmp_path), "--http-port", "0", *store_args]

    def start() -> subprocess.Popen:
        with open(tmp_path / "billing.log", "ab") as log:
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))

    async def main() -> None:
        db = await ScyllaStore(cassandra.hosts, keyspace=keyspace).__aenter__()
        services = await ScyllaServiceStore(db).open()
        ops, ended = [], []
        for i in range(N):
            cid, tx = f"cp-{i % 30}", str(1000 + i)
            stop_at = T0 + dt.timedelta(minutes=10 + i % 50)
            ops += [StartTransaction(cid, tx, 1, "TAG", 100.0 + i, T0),
                    StopTransaction(cid, tx, 100.0 + 7 * i + 0.5, stop_at)]
            ended.append(ev.tx_ended(cid, stop_at, tx, 0.0))
        await db.apply(ops)
        await services.put_tariff(Tariff(tariff_id="t", currency="EUR", per_kwh=Decimal("0.35"),
                                         per_minute=Decimal("0.02"), session_fee=Decimal("0.50"),
                                         vat_percent=Decimal("19")))

        async def publish(events) -> None:
            box = ev.MemoryOutbox()
            relay = Relay(box, KafkaPublisher(own_kafka.bootstrap, ev.TOPIC), metrics=False, batch_max=40).start()
            box.on_append = relay.wake
            box.append(*events)
            await until(lambda: relay.published == len(events), timeout=60)
            await relay.close()

        async def cdrs() -> int:
            return len(await services.list_cdrs(limit=10 * N))

        proc = start()
        try:
            # the first events only, so the kill lands mid-stream however fast billing is
            await publish(ended[:FIRST])
            deadline = time.monotonic() + 90
            while await cdrs() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            killed_at = await cdrs()
            print(f"billing killed with {killed_at} of {N} CDRs written")
            assert 0 < killed_at <= FIRST, (tmp_path / "billing.log").read_text()[-2000:]
            await publish(ended[FIRST:] + ended[: N // 3])  # the rest, and some events again
            proc = start()
            deadline = time.monotonic() + 90
            while await cdrs() < N and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # nothing more comes
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        assert proc.returncode == 0, (tmp_path / "billing.log").read_text()[-2000:]
        got = await services.list_cdrs(limit=10 * N)
        assert len(got) == N == len({(c.charger_id, c.tx_id) for c in got}), killed_at
        q = Decimal("0.01")
        for c in got:
            tx = await db.get_transaction(c.charger_id, c.tx_id)
            assert c.energy_wh == tx["energy_wh"] == 7 * int(c.tx_id[1:]) + 0.5 - int(c.tx_id[1:])
            net = ((Decimal("0.35") * Decimal(repr(tx["energy_wh"])) / 1000).quantize(q)
                   + (Decimal("0.02") * Decimal(c.duration_s) / 60).quantize(q) + Decimal("0.50"))
            assert (c.net, c.total) == (str(net), str(net + (net * Decimal("0.19")).quantize(q)))
        await services.close()
        await db.close()
    run(main(), timeout=300)
