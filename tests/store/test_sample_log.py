"""The SQLite store's reading log: readings are appended packed to ``reading_log_<table>`` and
folded into ``meter_chunks`` in bulk (one table inside ``apply`` at ``fold_rows``, a slice by
``maintain()``, all before reads and on close); the results are those of storing every
reading at once, in arrival order."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sqlite3
import zlib

import msgspec
import pytest

from chargeyard.store import migrations
from chargeyard.store.base import (ChargerSeen, MeterSample, StartTransaction, StopTransaction, StoreError,
                                   TransactionEvent, to_us)
from chargeyard.store.sqlite import SqliteStore
from chargeyard.store.logrows import reading_log
from chargeyard.store.sqlite.readings import Readings
from chargeyard.store.sqlite.sql import CHUNK_INSERT, LOG_COUNT
from tests.support import schema_at

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def counts(path) -> tuple[int, int]:
    """(readings in the log, readings in meter_chunks) as committed, seen from another connection."""
    conn = sqlite3.connect(path)
    try:
        return (conn.execute(LOG_COUNT).fetchone()[0],
                conn.execute("SELECT coalesce(sum(rows), 0) FROM meter_chunks").fetchone()[0])
    finally:
        conn.close()


def inbox(path) -> list[int]:
    """The reading counts of the packed inbox rows, oldest first."""
    conn = sqlite3.connect(path)
    try:
        return [n for (n,) in conn.execute("SELECT rows FROM sample_inbox ORDER BY seq")]
    finally:
        conn.close()


def log_rows(path, table: int) -> list[int]:
    """The reading counts of a log table's packed rows, oldest first."""
    conn = sqlite3.connect(path)
    try:
        return [n for (n,) in conn.execute(f"SELECT rows FROM reading_log_{table} ORDER BY rowid")]
    finally:
        conn.close()


def chunks(path, charger: str, tx: str) -> list[tuple]:
    """A transaction's chunks: (chunk, low, high, newest at, its connector, its reading, readings)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT chunk, low_wh, high_wh, last_at, last_connector, last_wh, data FROM meter_chunks "
                            "WHERE charger_id = ? AND tx_id = ? ORDER BY chunk", (charger, tx)).fetchall()
        return [(*r[:6], [tuple(x) for x in msgspec.msgpack.decode(r[6])]) for r in rows]
    finally:
        conn.close()


def samples(charger: str, tx: str, minutes: range, wh: float = 0.0) -> list[MeterSample]:
    return [MeterSample(charger, tx, at(m), wh + m, 1) for m in minutes]


def test_apply_folds_at_fold_rows(tmp_path):
    path = tmp_path / "t.db"

    async def main():
        async with SqliteStore(path, fold_rows=5) as s:
            await s.apply([StartTransaction("CP1", "1", 1, "T", 0.0, at(0))])
            await s.apply(samples("CP1", "1", range(1, 4)))
            assert counts(path) == (3, 0)  # committed in the log only
            # an event's reading is logged too: 3 + 1 + 1 reaches fold_rows, and the first
            # non-empty table (round robin from 0: CP1's) is folded in the same commit
            assert (reading_log("CP1"), reading_log("CS1")) == (37, 38)
            await s.apply([TransactionEvent("CS1", "t", 1, "Updated", at(1), energy_wh=5.0),
                           MeterSample("CP1", "1", at(4), 4.0, 1), ChargerSeen("CP1", at(4))])
            assert counts(path) == (1, 4)
            await s.apply(samples("CP1", "1", range(5, 7)))
            assert counts(path) == (3, 4)  # 1 + 2 logged and not folded: below fold_rows
            assert (await s.get_transaction("CP1", "1"))["energy_wh"] == 6.0
            assert counts(path) == (1, 6)  # a read of one charger folds its table
            assert len(await s.list_transactions()) == 2
            assert counts(path) == (0, 7)  # a read across chargers folds every table
            # one chunk per transaction per fold, numbered by fold: the first fold, then the read's
            assert [(c[0], c[5], len(c[6])) for c in chunks(path, "CP1", "1")] == [(1, 4.0, 4), (2, 6.0, 2)]
    run(main())


@pytest.mark.parametrize("bad", [
    StartTransaction("CP1", "2", 1, "T", "x", at(2)),  # not a number
    # readings a chunk cannot hold: the batch fails in its own transaction (packed into the
    # inbox or the log, the reading would fail every later move or fold)
    MeterSample("CP1", "1", at(2), float("nan"), 1),
    MeterSample("CP1", "1", at(2), 2.0, 2**63),  # beyond INTEGER
    MeterSample("CP1", "1\udc80", at(2), 2.0, 1),  # not UTF-8
], ids=["start", "nan", "int65", "surrogate"])
def test_a_failed_batch_logs_nothing(tmp_path, bad):
    path = tmp_path / "f.db"

    async def main():
        async with SqliteStore(path, fold_rows=2, idle_fold_rows=1) as s:
            await s.apply(samples("CP1", "1", range(1, 2)))
            with pytest.raises(StoreError):  # the sample is logged, then the next op fails: neither stays
                await s.apply([MeterSample("CP1", "1", at(3), 3.0, 1), bad])
            assert counts(path) == (1, 0) and inbox(path) == [1]
            assert await s.maintain() == 1  # the log still folds (the inbox moved first)
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1.0]
    run(main())


def test_every_read_folds_the_log_first(tmp_path):
    path = tmp_path / "r.db"

    async def main():
        async with SqliteStore(path) as s:
            await s.apply([StartTransaction("CP1", "1", 1, "T", 0.0, at(0))])
            reads = {
                "get_transaction": lambda m: s.get_transaction("CP1", "1"),
                "list_transactions": lambda m: s.list_transactions("CP1"),
                "list_meter_samples": lambda m: s.list_meter_samples("CP1", "1"),
                "get_charger": lambda m: s.get_charger("CP1"),
            }
            for m, (name, read) in enumerate(reads.items(), start=1):
                await s.apply([MeterSample("CP1", "1", at(m), 10.0 * m, 1), MeterSample("CP1", "", at(m), 5.0 * m, 2)])
                assert counts(path)[0] == 2
                got = await read(m)
                assert counts(path)[0] == 0, name
                if name == "get_transaction":
                    assert got["last_reading_wh"] == 10.0 * m
                elif name == "list_transactions":
                    assert got[0]["energy_wh"] == 10.0 * m
                elif name == "list_meter_samples":
                    assert got[-1]["energy_wh"] == 10.0 * m and len(got) == m
                else:
                    assert [(r["connector_id"], r["energy_wh"]) for r in got["last_readings"]] == [
                        (1, 10.0 * m), (2, 5.0 * m)]
            # reads that do not look at samples leave the log alone
            await s.apply(samples("CP1", "1", range(10, 12)))
            await s.list_chargers()
            await s.get_id_tag("T")
            assert counts(path)[0] == 2
    run(main())


def test_another_store_on_the_same_file_sees_what_one_logged(tmp_path):
    """Cluster workers share one file: what one process logged is folded by another's read
    or threshold (the fold reads the table, not what its own process logged)."""
    path = tmp_path / "shared.db"

    async def main():
        async with SqliteStore(path) as a, SqliteStore(path, fold_rows=3) as b:
            await a.apply([StartTransaction("CP1", "1", 1, "T", 1000.0, at(0))])
            await a.apply(samples("CP1", "1", range(1, 5), 1000.0))
            assert counts(path) == (4, 0)
            tx = await b.get_transaction("CP1", "1")
            assert (tx["energy_wh"], tx["last_reading_wh"]) == (4.0, 1004.0)
            assert counts(path) == (0, 4)
            await a.apply(samples("CP1", "1", range(5, 7), 1000.0))
            await b.apply(samples("CP1", "1", range(7, 10), 1000.0))  # b's threshold folds a's rows as well
            assert counts(path) == (0, 9)
            assert len(await a.list_meter_samples("CP1", "1")) == 9
            await a.apply(samples("CP1", "1", range(10, 11), 1000.0))
        assert counts(path) == (0, 10)  # closing folds
    run(main())


def test_a_log_left_behind_is_folded_after_open(tmp_path):
    """A process killed with rows in the log: they were committed, and the next store on the
    file counts them towards its threshold and folds them before a read."""
    path = tmp_path / "left.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn)
    add = f"INSERT INTO reading_log_{reading_log('CP1')} (rows, data) VALUES (?, ?)"
    conn.execute(add, (3, msgspec.msgpack.encode([("CP1", "", 1, to_us(at(m)), 100.0 + m, 0) for m in range(3)])))
    conn.close()

    async def main():
        async with SqliteStore(path, fold_rows=4) as s:
            assert s.deferred_rows == 3
            await s.apply(samples("CP1", "", range(3, 4), 100.0))
            # the 3 left behind count: the batch's reading reaches fold_rows, and they are
            # folded; the batch's waits in the inbox
            assert counts(path) == (1, 3)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(add, (1, msgspec.msgpack.encode([("CP1", "", 1, to_us(at(9)), 109.0, 0)])))
        conn.close()
        async with SqliteStore(path) as s:
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"]) for r in readings] == [(1, 109.0)]
    run(main())


# -- arrival order: readings keep it across batches, whenever the fold comes --------------

def _order_batches() -> list[list]:
    return [
        [StartTransaction("CP1", "1", 1, "T", 1000.0, at(0)),
         TransactionEvent("CS1", "tx", 1, "Started", at(0), "X", energy_wh=100.0)],
        [MeterSample("CP1", "1", at(5), 1400.0, 1), MeterSample("CS1", "tx", at(10), 250.0)],
        # the Ended event's reading comes for the key the sample above stored first
        [StopTransaction("CP1", "1", 1500.0, at(6), "Local"),
         TransactionEvent("CS1", "tx", 2, "Ended", at(10), "X", energy_wh=300.0, stop_reason="Local")],
        [MeterSample("CS1", "tx", at(10), 260.0), MeterSample("CP1", "1", at(5), 1450.0, 1)],
        [TransactionEvent("CS1", "tx", 2, "Ended", at(10), "X", energy_wh=999.0)],  # a repeat: ignored
    ]


@pytest.mark.parametrize("fold_rows", [1, 2, 10**9])
def test_readings_keep_their_order_across_batches(tmp_path, fold_rows):
    """Today's results whether the log is folded after every batch or only when read: the
    sample stored first keeps its key; the closing reading and the later sample are repeats
    (the newest reading at 10 min is the last to come, 260)."""
    async def main():
        async with SqliteStore(tmp_path / "o.db", fold_rows=fold_rows) as s:
            results = [await s.apply(b) for b in _order_batches()]
            assert results == [["1", True], [None, None], [True, True], [None, None], [False]]
            cs = await s.get_transaction("CS1", "tx")
            assert (cs["meter_start_wh"], cs["energy_wh"], cs["meter_stop_wh"]) == (100.0, 200.0, 300.0)
            assert (cs["last_reading_wh"], cs["last_reading_at"], cs["active"]) == (260.0, "2025-03-01T08:10:00.000Z",
                                                                                    False)
            cp = await s.get_transaction("CP1", "1")
            assert (cp["energy_wh"], cp["last_reading_wh"], cp["active"]) == (500.0, 1450.0, False)
            assert [x["energy_wh"] for x in await s.list_meter_samples("CS1", "tx")] == [100.0, 250.0]
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1400.0]
    run(main())


class Seeded(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed_value = seed

    def __repr__(self) -> str:
        return f"Seeded({self.seed_value})"


def _random_batches(rng: random.Random) -> list[list]:
    """Few chargers, transactions and instants, so keys repeat and events meet samples."""
    batches, seqs = [], {}
    for _ in range(rng.randint(1, 10)):
        batch = []
        for _ in range(rng.randint(1, 8)):
            charger, tx = rng.choice("AB"), rng.choice(["1", "2", ""])
            when, wh, k = at(rng.randint(0, 4)), float(rng.randint(0, 9) * 10), rng.random()
            if k < 0.5:
                batch.append(MeterSample(charger, tx, when, wh, rng.randint(0, 2)))
            elif k < 0.8:
                tx = tx or "e"
                seqs[charger, tx] = seq = seqs.get((charger, tx), 0) + rng.randint(0, 1)
                batch.append(TransactionEvent(charger, tx, seq, rng.choice(["Started", "Updated", "Ended"]), when,
                                              "X", connector_id=rng.randint(0, 2),
                                              energy_wh=wh if rng.random() < 0.8 else None))
            elif k < 0.9:
                batch.append(StartTransaction(charger, tx or "1", rng.randint(0, 2), "T", wh, when))
            else:
                batch.append(StopTransaction(charger, tx or "1", wh, when))
        batches.append(batch)
    return batches


async def _everything(s: SqliteStore) -> dict:
    out: dict = {"transactions": await s.list_transactions(limit=1000)}
    for charger in "AB":
        out[charger] = await s.get_charger(charger)
        for tx in ["1", "2", "", "e"]:
            out[charger, tx] = (await s.get_transaction(charger, tx), await s.list_meter_samples(charger, tx))
    return out


@pytest.mark.parametrize("rng", [Seeded(n) for n in range(40)], ids=repr)
def test_fold_points_do_not_change_results(tmp_path, rng):
    """The same batches give the same results and reads whether the log is folded after every
    batch, now and then, or only at the end (reads in between fold it too)."""
    batches = _random_batches(rng)

    async def replay(name: str, fold_rows: int, read_between: bool, slice_rows: int = 0,
                     inbox_batch: int | None = None, move_rows: int | None = None) -> tuple:
        async with SqliteStore(tmp_path / f"{name}.db", fold_rows=fold_rows,
                               idle_fold_rows=1 if slice_rows else None) as s:
            s.readings.IDLE_FOLD_SLICE = slice_rows or s.readings.IDLE_FOLD_SLICE
            s.readings.INBOX_BATCH = s.readings.INBOX_BATCH if inbox_batch is None else inbox_batch
            s.readings.INBOX_MOVE_ROWS = move_rows or s.readings.INBOX_MOVE_ROWS
            results = []
            for batch in batches:
                results.append(await s.apply(batch))
                if read_between and rng.random() < 0.5:
                    await _everything(s)
                for _ in range(rng.randrange(3) if slice_rows else 0):  # the writer's idle folds
                    await s.maintain()
            return results, await _everything(s)

    async def main():
        every = await replay("every", 1, False)
        assert await replay("end", 10**9, False) == every
        assert await replay("sometimes", 3, False) == every
        assert await replay("reads", 10**9, True) == every
        # idle folds take a table's oldest rows, a few at a time, between batches
        assert await replay("slices", 10**9, False, slice_rows=1) == every
        assert await replay("slices-reads", 10**9, True, slice_rows=3) == every
        # batches straight into the log tables, or some through the inbox, moved at idle time
        assert await replay("direct", 1, False, inbox_batch=0) == every
        assert await replay("mixed", 10**9, True, slice_rows=2, inbox_batch=4, move_rows=3) == every
    run(main())


def test_idle_fold_takes_the_oldest_rows_of_a_table(tmp_path):
    """``maintain`` folds the table's oldest log rows holding IDLE_FOLD_SLICE readings (at
    least: whole rows), only once ``idle_fold_rows`` are logged; the rest stays logged in
    order and folds later."""
    path = tmp_path / "s.db"

    async def main():
        async with SqliteStore(path, idle_fold_rows=6) as s:
            s.readings.IDLE_FOLD_SLICE, s.readings.INBOX_BATCH = 3, 0
            await s.apply(samples("CP1", "1", range(2), 1000.0))
            await s.apply(samples("CP1", "1", range(2, 4), 1000.0))
            assert not s.maintenance_due() and await s.maintain() == 0 and counts(path) == (4, 0)
            await s.apply(samples("CP1", "1", range(4, 7), 1000.0))
            assert s.maintenance_due() and s.deferred_rows == 7
            assert await s.maintain() == 4 and counts(path) == (3, 4)  # two rows: 2 readings, then 2 more
            assert not s.maintenance_due()  # 3 logged: below idle_fold_rows again
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [
                1000.0 + i for i in range(7)]  # a read folds the rest, in order
            assert counts(path) == (0, 7)
    run(main())


# -- schema version 3 ----------------------------------------------------------------------

def test_version_2_database_gets_the_log(tmp_path, monkeypatch):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema_at(conn, monkeypatch, 2)
    us = lambda minutes: to_us(at(minutes))  # noqa: E731
    conn.execute("INSERT INTO transactions (charger_id, tx_id, kind, connector_id, id_tag, start_reading_wh, "
                 "started_at) VALUES ('CP1', '1', 16, 1, 'T', 1000.0, ?)", (us(0),))
    conn.executemany("INSERT INTO meter_samples (charger_id, tx_id, at, connector_id, energy_wh) VALUES (?, ?, ?, ?, ?)",
                     [("CP1", "1", us(10), 1, 1500.0), ("CP1", "1", us(20), 1, 1800.0), ("CP1", "", us(30), 2, 500.0)])
    conn.execute("INSERT INTO sample_repeats (charger_id, tx_id, at, connector_id, low_wh, high_wh, last_wh) "
                 "VALUES ('CP1', '1', ?, 1, 1700.0, 1900.0, 1850.0)", (us(20),))
    conn.execute("INSERT INTO last_readings (charger_id, connector_id, at, energy_wh) VALUES ('CP1', 2, ?, 500.0)",
                 (us(30),))
    conn.close()

    async def main():
        async with SqliteStore(path) as s:
            assert await s.schema_version() == migrations.LATEST
            tx = await s.get_transaction("CP1", "1")
            assert (tx["meter_start_wh"], tx["energy_wh"], tx["last_reading_wh"]) == (1000.0, 900.0, 1850.0)
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"], r["tx_id"]) for r in readings] == [
                (1, 1850.0, "1"), (2, 500.0, "")]
            await s.apply([MeterSample("CP1", "1", at(25), 2000.0, 1), MeterSample("CP1", "1", at(20), 1750.0, 1),
                           MeterSample("CP1", "", at(31), 510.0, 2)])
            tx = await s.get_transaction("CP1", "1")
            assert (tx["energy_wh"], tx["last_reading_wh"]) == (1000.0, 2000.0)
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1500.0, 1800.0, 2000.0]
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"]) for r in readings] == [(1, 2000.0), (2, 510.0)]
    run(main())
    # the stored samples became chunk 0, the repeat of 20 min its highest, lowest and last
    # after them; the later batch's readings, one chunk per transaction
    assert chunks(path, "CP1", "1") == [
        (0, 1500.0, 1900.0, to_us(at(20)), 1, 1850.0,
         [(1, to_us(at(10)), 1500.0, 0), (1, to_us(at(20)), 1800.0, 0), (1, to_us(at(20)), 1900.0, 2),
          (1, to_us(at(20)), 1700.0, 0), (1, to_us(at(20)), 1850.0, 2)]),
        (1, 1750.0, 2000.0, to_us(at(25)), 1, 2000.0, [(1, to_us(at(25)), 2000.0, 0), (1, to_us(at(20)), 1750.0, 0)])]


def test_fold_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "x.db", fold_rows=0)


def test_idle_fold_commits_without_a_sync_and_restores_the_level(tmp_path):
    """A fold moves readings that are durable already: its COMMIT does not wait for the disk,
    and the batches after it are synced as configured. The fold reads and packs on the store
    thread, outside any transaction, and writes on the loop's connection."""
    async def main():
        async with SqliteStore(tmp_path / "n.db", idle_fold_rows=1) as s:
            await s.apply(samples("CP1", "1", range(3), 1000.0))
            read, wrote = [], []
            s.batches.db.set_trace_callback(read.append)
            s.batches.loop_conn.set_trace_callback(wrote.append)
            assert await s.maintain() == 3
            s.batches.db.set_trace_callback(None)
            s.batches.loop_conn.set_trace_callback(None)
            assert read and all(q.startswith("SELECT") for q in read), read
            # the loop's connection commits at NORMAL (its batches are synced by the WAL's
            # sync thread, folds need no sync), the store thread's at FULL
            assert "COMMIT" in wrote and any(q.startswith("DELETE FROM reading_log_") for q in wrote)
            assert not any(q.startswith("PRAGMA") for q in wrote), wrote
            assert s.wal.walsync is not None and s.batches.loop_conn.execute("PRAGMA synchronous").fetchone()[0] == 1
            assert await s._run(lambda: s.batches.db.execute("PRAGMA synchronous").fetchone()[0]) == 2
            # with the sync thread off, the fold sets NORMAL for its own transaction only
            s.wal.stop_sync()
            s.batches.loop_conn.execute("PRAGMA synchronous = FULL")
            await s.apply(samples("CP1", "1", range(3, 6), 1000.0))
            wrote.clear()
            s.batches.loop_conn.set_trace_callback(wrote.append)
            assert await s.maintain() == 3
            s.batches.loop_conn.set_trace_callback(None)
            assert wrote[0] == "PRAGMA synchronous = NORMAL" and wrote[-1] == "PRAGMA synchronous = FULL"
            assert s.batches.loop_conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    run(main())


def test_a_read_across_chargers_lets_batches_commit_between_bucket_folds(tmp_path):
    """``list_transactions()`` without a charger folds the log one bucket per transaction:
    a batch added after the read started commits long before the read ends (it waits for
    one bucket's fold, not the whole log's), and the read still sees every reading that was
    committed before it started."""
    path = tmp_path / "x.db"

    async def main():
        async with SqliteStore(path) as s:
            chargers = [f"CP{i}" for i in range(400)]
            assert len({reading_log(c) for c in chargers}) == 64  # every table holds rows
            await s.apply([StartTransaction(c, "1", 1, "T", 1000.0, at(0)) for c in chargers])
            await s.apply([MeterSample(c, "1", at(m), 1000.0 + m, 1) for c in chargers for m in range(1, 4)])
            read = asyncio.ensure_future(s.list_transactions())
            await asyncio.sleep(0)  # the read has handed its first fold to the store thread
            batch = asyncio.ensure_future(s.apply(samples("CP0", "1", range(10, 12), 1000.0)))
            await batch
            assert not read.done()
            txs = await read
            assert len(txs) == 400 and all(t["energy_wh"] >= 3.0 for t in txs)
            assert counts(path)[0] <= 2  # only what was logged after the fold of its bucket
    run(main())


# -- the log: a batch's readings packed, into the inbox or one row per log table ----------

@pytest.mark.parametrize("inbox_batch", [Readings.INBOX_BATCH, 5], ids=["inbox", "tables"])
def test_a_batch_logs_its_readings_packed(tmp_path, inbox_batch):
    """Fewer than INBOX_BATCH readings: one inbox row; more: one row per log table they fall
    in. Either way a read of a charger moves the inbox and folds that charger's table."""
    path = tmp_path / "i.db"

    async def main():
        async with SqliteStore(path) as s:
            s.readings.INBOX_BATCH = inbox_batch
            await s.apply([StartTransaction("CP1", "1", 1, "T", 1000.0, at(0))])
            await s.apply(samples("CP1", "1", range(1, 4), 1000.0)
                          + [TransactionEvent("CS1", "t", 1, "Started", at(1), "X", energy_wh=7.0)]
                          + samples("CP1", "1", range(4, 5), 1000.0))
            if inbox_batch > 5:
                assert inbox(path) == [5] and log_rows(path, reading_log("CP1")) == []
            else:
                assert inbox(path) == [] and log_rows(path, reading_log("CP1")) == [4]
                assert log_rows(path, reading_log("CS1")) == [1]
            assert counts(path) == (5, 0) and s.deferred_rows == 5
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [1001.0 + i for i in range(4)]
            assert inbox(path) == [] and counts(path) == (1, 4)  # CP1's table folded by the read
            assert (await s.get_transaction("CS1", "t"))["meter_start_wh"] == 7.0
    run(main())


@pytest.mark.parametrize("damage", ["c1", "9196a2fffea1310c0acb3ff000000000000000"], ids=["not-msgpack", "not-utf8"])
@pytest.mark.parametrize("where", ["inbox", "table"])
def test_a_damaged_packed_row_is_a_store_error(tmp_path, where, damage):
    path = tmp_path / "d.db"

    async def main():
        async with SqliteStore(path) as s:
            s.readings.INBOX_BATCH = s.readings.INBOX_BATCH if where == "inbox" else 0
            await s.apply(samples("CP1", "1", range(1, 3)))
            table = "sample_inbox" if where == "inbox" else f"reading_log_{reading_log('CP1')}"
            await s._run(s.batches.write, lambda conn: conn.execute(f"UPDATE {table} SET data = x'{damage}'"))
            with pytest.raises(StoreError, match=f"{table} row .* is unreadable"):
                await s.list_meter_samples("CP1", "1")
            await s._run(s.batches.write, lambda conn: conn.execute(f"DELETE FROM {table}"))
    run(main())


# -- the inbox: a small batch's readings in one packed row ----------------------------------

def test_a_large_batch_moves_the_inbox_first(tmp_path):
    """The inbox holds older rows than any batch after it: a batch logged straight into the
    log tables moves the inbox there first, so the reading that came first keeps its key."""
    path = tmp_path / "l.db"

    async def main():
        async with SqliteStore(path) as s:
            s.readings.INBOX_BATCH = 3
            await s.apply([StartTransaction("CP1", "1", 1, "T", 1000.0, at(0))])
            await s.apply(samples("CP1", "1", range(1, 3), 1000.0))  # 1001, 1002: into the inbox
            assert inbox(path) == [2]
            await s.apply(samples("CP1", "1", range(1, 5), 2000.0))  # the same keys again, and two new
            assert inbox(path) == [] and counts(path) == (6, 0)
            got = await s.list_meter_samples("CP1", "1")
            assert [x["energy_wh"] for x in got] == [1001.0, 1002.0, 2003.0, 2004.0]
            assert (await s.get_transaction("CP1", "1"))["last_reading_wh"] == 2004.0
    run(main())


def test_idle_time_moves_the_inbox_in_bulk(tmp_path):
    path = tmp_path / "m.db"

    async def main():
        async with SqliteStore(path) as s:
            s.readings.INBOX_MOVE_ROWS, s.readings.INBOX_MOVE_BATCHES = 5, 0
            await s.apply(samples("CP1", "1", range(0, 2)))
            await s.apply(samples("CP1", "1", range(2, 4)))
            assert not s.maintenance_due() and await s.maintain() == 0
            await s.apply(samples("CP1", "1", range(4, 6)))
            assert s.maintenance_due()
            assert await s.maintain() == 6  # whole packed rows, oldest first, at least INBOX_MOVE_ROWS
            assert inbox(path) == [] and counts(path) == (6, 0) and s.deferred_rows == 6
            assert not s.maintenance_due()  # the readings wait in their table for a fold
    run(main())


def test_a_move_takes_batches_worth_and_a_full_inbox_goes_to_the_tables(tmp_path):
    """A move by maintain() takes INBOX_MOVE_BATCHES batches' worth (their moving mean), so
    big batches move in big steps; every batch goes to the inbox until it holds INBOX_MAX,
    then a batch moves it and logs into the tables itself."""
    path = tmp_path / "b.db"

    async def main():
        async with SqliteStore(path) as s:
            s.readings.INBOX_MOVE_ROWS, s.readings.INBOX_MOVE_BATCHES, s.readings.INBOX_MOVE_MAX, s.readings.INBOX_MAX = 4, 3, 1000, 100
            assert s.readings.move_rows == 4
            for k in range(4):  # batches of 10: the mean goes up to 10 (at 1/8 a batch)
                await s.apply([MeterSample(f"CP{k}{j}", "", at(k), float(j), 1) for j in range(10)])
            assert inbox(path) == [10] * 4 and 4 < s.readings.move_rows < 30
            s.readings.batch_readings = 10.0
            assert s.readings.move_rows == 30 and s.maintenance_due()
            assert await s.maintain() == 30  # three inbox rows, the oldest
            assert inbox(path) == [10] and counts(path) == (40, 0)
            for k in range(9):
                await s.apply([MeterSample(f"CQ{k}{j}", "", at(k), float(j), 1) for j in range(10)])
            assert inbox(path) == [10] * 10  # 100: full
            await s.apply([MeterSample(f"CR{j}", "", at(0), float(j), 1) for j in range(10)])
            assert inbox(path) == [] and counts(path) == (140, 0)  # moved, then logged into the tables
            s.readings.batch_readings = 10_000.0
            assert s.readings.move_rows == 1000  # INBOX_MOVE_MAX
            assert len(await s.list_meter_samples("CR3", "")) == 1
    run(main())


def test_an_inbox_left_behind_is_counted_and_read(tmp_path):
    """A process killed with rows in the inbox: they were committed; the next store counts
    them, and a read sees them."""
    path = tmp_path / "k.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn)
    rows = [("CP1", "", 1, to_us(at(m)), 100.0 + m, 0) for m in range(3)]
    conn.execute("INSERT INTO sample_inbox (rows, data) VALUES (?, ?)", (3, msgspec.msgpack.encode(rows)))
    conn.close()

    async def main():
        async with SqliteStore(path) as s:
            assert s.deferred_rows == 3
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"]) for r in readings] == [(1, 102.0)]
            assert inbox(path) == []
    run(main())


# -- schema version 5: chunks ---------------------------------------------------------------

def test_version_4_database_keeps_every_reading(tmp_path, monkeypatch):
    """A version 4 file with readings folded (samples and a repeat), in its log's buckets and
    in its inbox (kept: newer than the buckets, and in the new log's format): after the
    migration every read gives what version 4 gave."""
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema_at(conn, monkeypatch, 4)
    us = lambda minutes: to_us(at(minutes))  # noqa: E731
    conn.execute("INSERT INTO transactions (charger_id, tx_id, kind, connector_id, id_tag, started_at) "
                 "VALUES ('CP1', '1', 16, 1, 'T', ?)", (us(0),))
    conn.executemany("INSERT INTO meter_samples (charger_id, tx_id, at, connector_id, energy_wh, closing) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [("CP1", "1", us(10), 1, 1500.0, 0), ("CP1", "1", us(20), 1, 1800.0, 0),
                      ("CP1", "1", us(30), 1, 2100.0, 1), ("CP1", "", us(5), 2, 50.0, 0)])
    conn.execute("INSERT INTO sample_repeats (charger_id, tx_id, connector_id, at, low_wh, high_wh, last_wh) "
                 "VALUES ('CP1', '1', 1, ?, NULL, 2200.0, 2150.0)", (us(30),))
    conn.execute("INSERT INTO last_readings (charger_id, connector_id, at, energy_wh) VALUES ('CP1', 2, ?, 50.0)",
                 (us(5),))
    old = f"sample_log_{zlib.crc32(b'CP1') % migrations.LOG_BUCKETS}"  # CP1's bucket in version 4
    conn.execute(f"INSERT INTO {old} (charger_id, tx_id, connector_id, at, energy_wh) VALUES ('CP1', '1', 1, ?, 1400.0)",
                 (us(8),))
    conn.execute("INSERT INTO sample_inbox (rows, data) VALUES (2, ?)", (msgspec.msgpack.encode(
        [("CP1", "1", 1, us(40), 2300.0, 0), ("CP1", "", 2, us(6), 60.0, 0)]),))
    conn.close()

    async def main():
        async with SqliteStore(path) as s:
            assert await s.schema_version() == migrations.LATEST >= 6
            assert s.deferred_rows == 3  # the old log's rows wait in the new log
            tx = await s.get_transaction("CP1", "1")
            assert (tx["meter_start_wh"], tx["energy_wh"], tx["last_reading_wh"]) == (1400.0, 900.0, 2300.0)
            assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "1")] == [
                1400.0, 1500.0, 1800.0, 2100.0, 2300.0]
            readings = (await s.get_charger("CP1"))["last_readings"]
            assert [(r["connector_id"], r["energy_wh"], r["tx_id"]) for r in readings] == [
                (1, 2300.0, "1"), (2, 60.0, "")]
            assert len(await s.list_meter_samples("CP1", "")) == 2
    run(main())
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & {"meter_samples", "sample_repeats", "sample_log_0"}
        assert {"meter_chunks", "fold_seq", "reading_log_0", "reading_log_15", "sample_inbox"} <= tables
    finally:
        conn.close()


# -- schema version 6: chunks in a rowid table ------------------------------------------------

def test_version_5_chunks_move_to_a_rowid_table(tmp_path, monkeypatch):
    """A version 5 file (chunks in a WITHOUT ROWID table) migrates to version 6 (a rowid
    table and a unique index on the key) with every chunk and every read unchanged; folds
    after it go on numbering chunks, and a duplicate key is still refused."""
    path = tmp_path / "v5.db"
    samples = [MeterSample("CP1", "1", at(i), 1000.0 + 10 * i, 1) for i in range(6)]
    samples += [MeterSample("CP2", "", at(i), 50.0 + i, 2) for i in range(3)]

    async def reads(s):
        return (await s.get_transaction("CP1", "1"), await s.list_meter_samples("CP1", "1"),
                await s.list_meter_samples("CP2", ""), (await s.get_charger("CP2"))["last_readings"])

    async def version_5():
        with monkeypatch.context() as m:
            m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
            m.setattr(migrations, "LATEST", 5)
            async with SqliteStore(path) as s:
                assert await s.schema_version() == 5
                await s.apply([StartTransaction("CP1", "1", 1, "T", 990.0, at(0))])
                await s.apply(samples[:4])
                await s._fold_in_steps()  # one fold: chunks of it
                await s.apply(samples[4:])
                return await reads(s)
    before = run(version_5())
    conn = sqlite3.connect(path)
    try:
        assert "WITHOUT ROWID" in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'meter_chunks'").fetchone()[0]
        chunks_5 = conn.execute("SELECT charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, "
                                "last_wh, rows, data FROM meter_chunks ORDER BY charger_id, tx_id, chunk").fetchall()
    finally:
        conn.close()
    assert len(chunks_5) >= 3

    async def version_6():
        async with SqliteStore(path) as s:
            assert await s.schema_version() == migrations.LATEST >= 6
            got = await reads(s)
            await s.apply([MeterSample("CP1", "1", at(10), 2000.0, 1)])
            tx = await s.get_transaction("CP1", "1")
            return got, tx
    after, tx = run(version_6())
    assert after == before
    assert (tx["last_reading_wh"], tx["energy_wh"]) == (2000.0, 1010.0)
    conn = sqlite3.connect(path)
    try:
        assert "WITHOUT ROWID" not in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'meter_chunks'").fetchone()[0]
        assert conn.execute("SELECT sql FROM sqlite_master WHERE name = 'meter_chunks_key'").fetchone()[0]
        rows = conn.execute("SELECT charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, last_wh, "
                            "rows, data FROM meter_chunks ORDER BY charger_id, tx_id, chunk").fetchall()
        new = [r for r in rows if r not in chunks_5]
        assert [r for r in rows if r in chunks_5] == chunks_5 and len(new) == 1
        assert new[0][:2] == ("CP1", "1") and new[0][2] > max(r[2] for r in chunks_5)  # numbered after them
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(CHUNK_INSERT, rows[0][:10])
    finally:
        conn.close()
