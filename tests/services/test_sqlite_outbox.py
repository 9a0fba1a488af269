"""store/sqlite_outbox.py: events commit with their facts (none for a failed write, all
after kill -9 once committed), read in order per worker, trimmed once published, and
relayed to the real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest

from chargeyard.store import events as ev
from chargeyard.store.sqlite import outbox as ob
from chargeyard.worker.relay import KafkaPublisher, Relay
from tests.services.kafka_read import first_of_each, read_events, until

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def _db(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    ob.create(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS facts (k TEXT PRIMARY KEY)")
    return conn


def _batch(conn, worker, facts, fail=False):
    """One batch transaction: facts and their events, committed together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for k in facts:
            conn.execute("INSERT INTO facts VALUES (?)", (k,))
        ob.write_events(conn, worker, [ev.heartbeat(k, T0) for k in facts])
        if fail:
            raise RuntimeError("disk full")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def test_events_commit_with_their_facts_only(tmp_path):
    conn = _db(tmp_path / "s.db")
    _batch(conn, "w1", ["a", "b"])
    with pytest.raises(RuntimeError):
        _batch(conn, "w1", ["c"], fail=True)
    _batch(conn, "w1", ["d", "e", "f"])
    _batch(conn, "w2", ["x"])
    rows = ob.read(conn, "w1", 0, 100)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [ev.decode(r.payload).charger_id for r in rows] == ["a", "b", "d", "e", "f"]
    assert [r.key for r in ob.read(conn, "w2", 0, 100)] == ["x"]
    assert [r.seq for r in ob.read(conn, "w1", 3, 2)] == [4, 5]
    assert ob.spooled(conn, "w1") == 5
    conn.execute("BEGIN IMMEDIATE")
    ob.mark(conn, "w1", 3)  # the second batch (seq 3..5) is published in part: it stays
    conn.execute("COMMIT")
    assert ob.spooled(conn, "w1") == 2
    assert conn.execute("SELECT count(*) FROM event_outbox WHERE worker = 'w1'").fetchone()[0] == 1
    assert [r.seq for r in ob.read(conn, "w1", ob.published(conn, "w1"), 100)] == [4, 5]
    conn.execute("BEGIN IMMEDIATE")
    ob.mark(conn, "w1", 5)
    conn.execute("COMMIT")
    assert ob.spooled(conn, "w1") == 0 and ob.read(conn, "w1", 5, 100) == []
    _batch(conn, "w1", ["g"])  # numbering goes on after a full trim
    assert [r.seq for r in ob.read(conn, "w1", 0, 100)] == [6]


_CHILD = """
import os, signal, sqlite3, sys, datetime as dt
from chargeyard.store import events as ev
from chargeyard.store.sqlite import outbox as ob
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL"); conn.execute("PRAGMA synchronous=FULL")
ob.create(conn)
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
for b in range(20):
    conn.execute("BEGIN IMMEDIATE")
    ob.write_events(conn, "w", [ev.tx_meter("cp", T0 + dt.timedelta(seconds=b * 10 + i), "1", 1, float(i)) for i in range(10)])
    conn.execute("COMMIT")
    print(b, flush=True)
conn.execute("BEGIN IMMEDIATE")
ob.write_events(conn, "w", [ev.heartbeat("never", T0)])  # not committed
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_committed_events_survive_kill_9(tmp_path):
    db = tmp_path / "s.db"
    p = subprocess.run([sys.executable, "-c", _CHILD, str(db)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ))
    assert p.returncode == -9
    acked = len(p.stdout.split())  # batches the child saw committed before it died
    conn = _db(db)
    rows = ob.read(conn, "w", 0, 10_000)
    assert acked == 20 and len(rows) == 200 and [r.seq for r in rows] == list(range(1, 201))
    assert all(r.key == "cp" for r in rows)


def test_relay_from_the_sqlite_outbox(kafka, run, tmp_path):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    conn = _db(tmp_path / "s.db")

    async def main():
        box = await ob.SqliteOutbox(tmp_path / "s.db", "w1").open()
        relay = Relay(box, KafkaPublisher(kafka.bootstrap, topic), poll_s=0.05, metrics=False).start()
        keys = [f"cp-{i % 7}-{i}" for i in range(300)]
        for i in range(0, 300, 30):
            _batch(conn, "w1", keys[i:i + 30])
            relay.wake()
            await asyncio.sleep(0)
        await until(lambda: relay.published == 300)
        await until(lambda: relay.spooled == 0)
        await relay.close()
        assert await box.outbox_spooled() == 0
        assert conn.execute("SELECT count(*) FROM event_outbox").fetchone()[0] == 0
        await box.close()
        want = [ev.heartbeat(k, T0).id for k in keys]
        got = first_of_each(await read_events(kafka.bootstrap, topic, set(want)))
        assert [e.id for e in got] == want  # one partition here: the whole commit order
    run(main())
