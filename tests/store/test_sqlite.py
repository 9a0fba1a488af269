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

import pytest

from chargeyard.store import migrations
from chargeyard.store.base import MeterSample, StartTransaction, StoreError
from chargeyard.store.sqlite import SqliteStore

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


def test_synchronous_setting(tmp_path):
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "x.db", synchronous="OFF")

    async def main():
        async with SqliteStore(tmp_path / "s.db") as s:
            level = await s._run(lambda: s._db.execute("PRAGMA synchronous").fetchone()[0])
            assert level == 2  # FULL
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
