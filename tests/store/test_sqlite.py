"""SQLite-specific guarantees: migrations, pragmas, several processes on one file,
the event loop never blocked, and durability under kill -9."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time

import msgspec
import pytest

from chargeyard.store import migrations
from chargeyard.store.base import MeterSample, StartTransaction, StoreError, TransactionEvent, from_us, to_us
from chargeyard.store.sqlite import SqliteStore
from tests.support import schema_at

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_migrations_are_versioned_and_idempotent(tmp_path):
    path = tmp_path / "m.db"

    async def main():
        async with SqliteStore(path) as s:
            assert await s.schema_version() == migrations.LATEST
    run(main())
    run(main())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrations.migrate(conn) == []
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [v for v, _ in migrations.MIGRATIONS]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "n.db"

    async def make():
        async with SqliteStore(path):
            pass
    run(make())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (migrations.LATEST + 1,))
    conn.close()

    async def main():
        with pytest.raises(StoreError):
            await SqliteStore(path).open()
    run(main())


def _us(minutes: float) -> int:
    return to_us(T0 + dt.timedelta(minutes=minutes))


# A version 1 database as the version 1 store left it: readings folded into each
# transaction row (lowest without the Ended reading, highest, newest), repeats of a stored
# sample's key (tx 4 at 82: 30 then 25) only there.
_V1_DATA = [
    ("INSERT INTO transactions (charger_id, tx_id, kind, connector_id, evse_id, id_tag, start_reading_wh, "
     "min_reading_wh, max_reading_wh, meter_stop_wh, last_reading_wh, last_reading_at, started_at, stopped_at, "
     "stop_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        ("CP1", "1", 16, 1, 0, "TAG", 1000.0, 1100.0, 2200.0, 2300.0, 1100.0, _us(25), _us(0), _us(30), "Local"),
        ("CP1", "2", 16, 2, 0, "TAG", 500.0, 700.0, 900.0, None, 900.0, _us(50), _us(40), None, ""),
        ("CP1", "3", 16, 0, 0, "", None, None, None, 100.0, None, None, None, _us(5), "PowerLoss"),
        ("CS1", "tx-a", 20, 1, 1, "TOK", 10000.0, 10000.0, 11500.0, 11500.0, 11500.0, _us(20), _us(0), _us(20),
         "EVDisconnected"),
        ("CS1", "tx-c", 20, 0, 0, "", None, 50.0, 80.0, 40.0, 40.0, _us(7), _us(5), _us(7), "Local"),
        ("CP1", "4", 16, 1, 0, "TAG", 0.0, 10.0, 30.0, None, 25.0, _us(82), _us(80), None, "")]),
    ("INSERT INTO meter_samples (charger_id, tx_id, connector_id, at, energy_wh) VALUES (?, ?, ?, ?, ?)", [
        ("CP1", "1", 1, _us(10), 1600.0), ("CP1", "1", 1, _us(20), 2200.0), ("CP1", "1", 1, _us(5), 1300.0),
        ("CP1", "1", 1, _us(25), 1100.0), ("CP1", "2", 2, _us(45), 700.0), ("CP1", "2", 2, _us(50), 900.0),
        ("CP1", "4", 1, _us(81), 10.0), ("CP1", "4", 1, _us(82), 20.0),
        ("CP1", "9", 1, _us(70), 3000.0),  # its transaction not known yet
        ("CP1", "", 1, _us(60), 5000.0),
        ("CS1", "tx-a", 1, _us(0), 10000.0), ("CS1", "tx-a", 0, _us(10), 11000.0), ("CS1", "tx-a", 0, _us(20), 11500.0),
        ("CS1", "tx-c", 0, _us(5), 50.0), ("CS1", "tx-c", 0, _us(6), 80.0), ("CS1", "tx-c", 0, _us(7), 40.0)]),
    ("INSERT INTO tx_event_seqs (charger_id, tx_id, seq_no, event_type, at) VALUES (?, ?, ?, ?, ?)", [
        ("CS1", "tx-a", 0, "Started", _us(0)), ("CS1", "tx-a", 1, "Updated", _us(10)),
        ("CS1", "tx-a", 2, "Ended", _us(20)), ("CS1", "tx-c", 3, "Updated", _us(5)),
        ("CS1", "tx-c", 4, "Updated", _us(6)), ("CS1", "tx-c", 5, "Ended", _us(7))]),
    ("INSERT INTO last_readings (charger_id, connector_id, at, energy_wh) VALUES (?, ?, ?, ?)", [
        ("CP1", 1, _us(60), 5000.0)]),
]


def test_version_1_database_is_converted_in_place(tmp_path, monkeypatch):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema_at(conn, monkeypatch, 1)
    for sql, rows in _V1_DATA:
        conn.executemany(sql, rows)
    v1 = {(c, t): (start, energy, last_wh, last_at) for c, t, start, energy, last_wh, last_at in conn.execute(
        "SELECT charger_id, tx_id, meter_start_wh, energy_wh, last_reading_wh, last_reading_at FROM transactions")}
    conn.close()
    # tx-c: no start reading, so the lowest reading stands in, and that is not the Ended one (40)
    assert {k: v[:2] for k, v in v1.items()} == {
        ("CP1", "1"): (1000.0, 1300.0), ("CP1", "2"): (500.0, 400.0), ("CP1", "3"): (None, None),
        ("CS1", "tx-a"): (10000.0, 1500.0), ("CS1", "tx-c"): (50.0, 30.0), ("CP1", "4"): (0.0, 30.0)}

    async def main():
        async with SqliteStore(path) as s:
            assert await s.schema_version() == migrations.LATEST
            for (c, t), (start, energy, last_wh, last_at) in v1.items():
                tx = await s.get_transaction(c, t)
                assert (tx["meter_start_wh"], tx["energy_wh"], tx["last_reading_wh"], tx["last_reading_at"]) == (
                    start, energy, last_wh, from_us(last_at)), (c, t)
            assert [t["tx_id"] for t in await s.list_transactions()] == ["4", "2", "tx-c", "1", "tx-a", "3"]
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"], r["tx_id"]) for r in readings] == [
                (1, 25.0, "4"), (2, 900.0, "2")]
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1300.0, 1600.0, 2200.0, 1100.0]
            assert len(await s.list_meter_samples("CS1", "tx-a")) == 3
            # the store carries on: samples stored before their transaction still count
            await s.apply([StartTransaction("CP1", "9", 1, "TAG", 2000.0, T0 + dt.timedelta(minutes=65)),
                           MeterSample("CS1", "tx-c", T0 + dt.timedelta(minutes=8), 90.0)])
            assert (await s.get_transaction("CP1", "9"))["energy_wh"] == 1000.0
            assert (await s.get_transaction("CS1", "tx-c"))["energy_wh"] == 40.0
    run(main())
    conn = sqlite3.connect(path)
    try:
        chunks = {(c, t): [tuple(r) for r in msgspec.msgpack.decode(data)] for c, t, data in conn.execute(
            "SELECT charger_id, tx_id, data FROM meter_chunks WHERE chunk = 0")}
        closing = [(t, con, wh) for (_, t), rows in chunks.items() for con, _, wh, kind in rows if kind == 2]
        # the Ended events' readings; tx 4's repeat at 82 (lowest 10, highest 30, last 25)
        # follows its samples as its highest and last (closing) and its lowest
        assert sorted(closing) == [("4", 1, 25.0), ("4", 1, 30.0), ("tx-a", 0, 11500.0), ("tx-c", 0, 40.0)]
        assert chunks["CP1", "4"] == [(1, _us(81), 10.0, 0), (1, _us(82), 20.0, 0), (1, _us(82), 30.0, 2),
                                      (1, _us(82), 10.0, 0), (1, _us(82), 25.0, 2)]
        columns = {r[1] for r in conn.execute("PRAGMA table_xinfo(transactions)")}
        assert not columns & {"min_reading_wh", "max_reading_wh", "last_reading_wh", "last_reading_at",
                              "meter_start_wh", "energy_wh"}
    finally:
        conn.close()


def test_repeated_sample_keys_still_count(tmp_path):
    """A reading for a key already stored (a clock standing still, a replay with other
    values) is not kept raw, yet counts: it may raise the highest, lower the start estimate
    unless closing, and is the newest reading at its time."""
    def at(minutes: float) -> dt.datetime:
        return T0 + dt.timedelta(minutes=minutes)

    async def main():
        async with SqliteStore(tmp_path / "r.db") as s:
            async def tx(charger, tx_id):
                t = await s.get_transaction(charger, tx_id)
                return t["meter_start_wh"], t["energy_wh"], t["last_reading_wh"]
            await s.apply([StartTransaction("CP1", "1", 1, "T", 1000.0, at(0))])
            await s.apply([MeterSample("CP1", "1", at(10), 1500.0, 1), MeterSample("CP1", "1", at(10), 1700.0, 1)])
            assert await tx("CP1", "1") == (1000.0, 700.0, 1700.0)
            await s.apply([MeterSample("CP1", "1", at(10), 1600.0, 1), MeterSample("CP1", "1", at(9), 1200.0, 1)])
            assert await tx("CP1", "1") == (1000.0, 700.0, 1600.0)
            await s.apply([MeterSample("CP1", "1", at(10), 1500.0, 1)])  # the stored reading, repeated
            assert await tx("CP1", "1") == (1000.0, 700.0, 1500.0)
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1200.0, 1500.0]
            # 2.0.1, no start reading: the lowest reading not closing is the start
            await s.apply([TransactionEvent("CS1", "tx", 1, "Updated", at(5), "X", energy_wh=50.0),
                           TransactionEvent("CS1", "tx", 2, "Updated", at(6), "X", energy_wh=80.0),
                           TransactionEvent("CS1", "tx", 3, "Ended", at(6), "X", energy_wh=30.0)])
            assert await tx("CS1", "tx") == (50.0, 30.0, 30.0)
            await s.apply([MeterSample("CS1", "tx", at(5), 40.0)])
            assert await tx("CS1", "tx") == (40.0, 40.0, 30.0)
            await s.apply([MeterSample("CS1", "tx", at(6), 30.0)])  # the closing reading, now as a sample
            assert await tx("CS1", "tx") == (30.0, 50.0, 30.0)
            readings = (await s.get_charger("CS1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"], r["tx_id"]) for r in readings] == [(0, 30.0, "tx")]
    run(main())


def test_synchronous_setting(tmp_path):
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "x.db", synchronous="OFF")

    async def main():
        async with SqliteStore(tmp_path / "s.db") as s:
            level = await s._run(lambda: s.batches.db.execute("PRAGMA synchronous").fetchone()[0])
            assert level == 2  # FULL
    run(main())


@pytest.mark.parametrize("thread", [True, False], ids=["checkpoint-thread", "no-thread"])
def test_the_checkpoint_thread_copies_the_wal_while_the_writer_commits(tmp_path, thread):
    """Committed pages reach the database file within a few checkpoint periods, copied by the
    checkpoint thread; the writer's own (automatic) checkpoint would wait for
    ``WAL_AUTOCHECKPOINT`` pages, which these commits do not reach: without the thread the
    file is not written at all."""
    path = tmp_path / "c.db"

    async def main():
        async with SqliteStore(path, idle_fold_rows=1) as s:
            s.wal.CHECKPOINT_S = 0.05 if thread else 3600.0
            await asyncio.sleep(0.15)  # the thread (created at open) takes the new period after its wait
            if not thread:
                s.wal.checkpointer_stop.set()  # stopped: no checkpoint at all (close joins it)
            before = os.stat(path).st_mtime_ns  # in WAL mode only a checkpoint writes the file
            for k in range(10):
                await s.apply([MeterSample(f"CP{i}", "1", T0 + dt.timedelta(seconds=k), float(k), 1) for i in range(20)])
                while await s.maintain():
                    pass
            assert 50 < os.path.getsize(f"{path}-wal") // 4096 < s.wal.WAL_AUTOCHECKPOINT  # frames
            deadline = time.monotonic() + 1.5
            while os.stat(path).st_mtime_ns == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (os.stat(path).st_mtime_ns != before) is thread
    run(main())


def test_a_writer_without_its_checkpoint_thread_checkpoints_by_itself(tmp_path):
    (tmp_path / "a-dir.db").mkdir()  # what the thread's connection cannot open

    async def main():
        async with SqliteStore(tmp_path / "x.db") as s:
            assert s.wal.WAL_AUTOCHECKPOINT == await s._run(lambda: s.batches.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
            s.wal.path = tmp_path / "a-dir.db"
            s.wal._checkpoint_loop()  # as the thread would: its connection fails
            s.wal.path = tmp_path / "x.db"
            assert s.wal.checkpointer_failed
            await s.apply([MeterSample("CP1", "1", T0, 1.0, 1)])  # a small batch: the loop's connection
            assert s.batches.loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
            await s.put_id_tag("T", "Accepted")  # a write of the store thread's connection
            assert await s._run(lambda: s.batches.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 1000
    run(main())


_OPENER = """
import asyncio, sys
from chargeyard.store.sqlite import SqliteStore
async def main():
    async with SqliteStore(sys.argv[1]) as s:
        print(await s.schema_version(), flush=True)
asyncio.run(main())
"""


def test_processes_opening_a_new_file_at_once(tmp_path):
    path = str(tmp_path / "race.db")
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert {o[0].strip() for o in outs} == {str(migrations.LATEST)}


def test_event_loop_is_not_blocked_by_commits(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "l.db") as s:
            await s.apply([StartTransaction(f"CP{i}", str(i), 1, "T", 0.0, T0) for i in range(100)])
            gaps, stop = [], False

            async def ticker():
                last = time.perf_counter()
                while not stop:
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
            task = asyncio.create_task(ticker())
            for b in range(20):
                await s.apply([MeterSample(f"CP{i % 100}", str(i % 100), T0 + dt.timedelta(seconds=b * 1000 + i),
                                           float(i), 1) for i in range(1000)])
            stop = True
            await task
            assert len(gaps) > 20  # the loop kept turning while batches committed
    run(main())


def test_a_small_batch_commits_on_the_loop_thread_and_a_large_one_on_the_store_thread(tmp_path):
    """With the store thread held up, a batch of up to LOOP_BATCH_MAX ops still commits (on
    the event loop's thread, its own connection); a larger one waits for the store thread."""
    async def main():
        async with SqliteStore(tmp_path / "t.db") as s:
            small = [MeterSample("CP1", "1", T0 + dt.timedelta(seconds=i), float(i), 1) for i in range(100)]
            large = [MeterSample("CP2", "1", T0 + dt.timedelta(seconds=i), float(i), 1) for i in range(200)]
            assert len(small) <= s.LOOP_BATCH_MAX < len(large)
            blocker = asyncio.ensure_future(s._run(time.sleep, 0.5))
            await asyncio.sleep(0.05)
            assert await asyncio.wait_for(s.apply(small), 0.3) == [None] * len(small)
            later = asyncio.ensure_future(s.apply(large))
            await asyncio.sleep(0.2)
            assert not blocker.done() and not later.done()
            await blocker
            await later
            assert len(await s.list_meter_samples("CP1", "1")) == len(small)
            assert len(await s.list_meter_samples("CP2", "1")) == len(large)
    run(main())


def test_a_small_batch_does_not_block_the_loop_on_a_taken_write_lock(tmp_path):
    """Another connection (a process) holds the write lock: the small batch goes to the store
    thread, which waits for the lock while the loop keeps turning, and commits after."""
    path = tmp_path / "w.db"

    async def main():
        async with SqliteStore(path) as s:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                batch = asyncio.ensure_future(s.apply([MeterSample("CP1", "1", T0, 1.0, 1)]))
                turns = 0
                for _ in range(20):
                    await asyncio.sleep(0.01)
                    turns += 1
                assert turns == 20 and not batch.done()
            finally:
                other.execute("COMMIT")
                other.close()
            assert await asyncio.wait_for(batch, 5) == [None]
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1.0]
    run(main())


def test_close_never_fails_on_a_busy_database(tmp_path, caplog):
    """A node stopping while another process holds the write lock (a cluster's workers stop
    together; issue 19): close folds the log and runs ``PRAGMA optimize`` only if the lock
    comes within ``CLOSE_BUSY_S``, and otherwise skips them with a warning. It never raises,
    and nothing is lost: the next open's reads fold what was left."""
    path = tmp_path / "busy.db"

    async def main() -> None:
        s = SqliteStore(path)  # the default busy timeout: close must not wait that long
        s.CLOSE_BUSY_S = 0.2
        await s.open()
        await s.apply([MeterSample("CP1", "1", T0, 1.0, 1)])
        # a read through an index: PRAGMA optimize then wants to ANALYZE (a write)
        assert len(await s.list_meter_samples("CP1", "1")) == 1
        await s.apply([MeterSample("CP1", "1", T0 + dt.timedelta(seconds=1), 2.0, 1)])  # logged: close folds it
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        try:
            started = time.monotonic()
            await s.close()
            assert time.monotonic() - started < s.busy_timeout / 2
        finally:
            other.execute("ROLLBACK")
            other.close()
        async with SqliteStore(path) as s:
            assert [r["energy_wh"] for r in await s.list_meter_samples("CP1", "1")] == [1.0, 2.0]
    with caplog.at_level("WARNING", logger="chargeyard.store.sqlite"):
        run(main())
    assert "left for the next open to fold" in caplog.text and "optimize skipped" in caplog.text


# -- kill -9 ------------------------------------------------------------------------------

_WRITER = """
import asyncio, datetime as dt, sys
from chargeyard.store.sqlite import SqliteStore
from chargeyard.store.base import StartTransaction, MeterSample
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)
async def main():
    async with SqliteStore(sys.argv[1]) as s:
        n = 0
        while True:
            ops = [StartTransaction("CP", str(n), 1, "T", float(n), T0 + dt.timedelta(seconds=n))]
            ops += [MeterSample("CP", str(n), T0 + dt.timedelta(seconds=n, milliseconds=k), float(n + k), 1)
                    for k in range(1, 50)]
            await s.apply(ops)
            print(n, flush=True)  # only after apply returned: the charger would be told now
            n += 1
asyncio.run(main())
"""


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_committed_batches_survive_kill_9(tmp_path, synchronous):
    path = str(tmp_path / "k.db")
    script = _WRITER.replace("SqliteStore(sys.argv[1])", f"SqliteStore(sys.argv[1], synchronous={synchronous!r})")
    proc = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True)
    printed: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(printed) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: the next batch is being committed
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed += [int(x) for x in rest.split()]  # lines already written before the kill
    assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= 40

    async def check():
        async with SqliteStore(path) as s:
            for n in printed:
                tx = await s.get_transaction("CP", str(n))
                assert tx is not None, f"batch {n} was reported committed but is lost"
                assert len(await s.list_meter_samples("CP", str(n))) == 49
            # atomic: every batch present is complete, including one committed but not yet printed
            for tx in await s.list_transactions(limit=100000):
                assert len(await s.list_meter_samples("CP", tx["tx_id"])) == 49
                assert tx["energy_wh"] == 49.0
    run(check())

