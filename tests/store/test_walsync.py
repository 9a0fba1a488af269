"""The WAL's sync thread (``store/walsync.py`` and its compiled twin ``_walsync.pyx``): a
batch committed on the loop's thread at NORMAL is acknowledged only after an fdatasync of
the WAL that started after its commit, and a failed sync fails it."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import select
import sqlite3
import threading

import pytest

from chargeyard.store import walsync
from chargeyard.store.base import MeterSample, StoreError
from chargeyard.store.sqlite import SqliteStore
from tests.support import twin_modules

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
IMPLS = [m.WalSync for m in twin_modules("chargeyard.store.walsync")]


def _sync_once(impl: type, fd: int, n: int) -> tuple[int, int, int]:
    ws = impl(fd)
    t = threading.Thread(target=ws.run, daemon=True)
    t.start()
    try:
        ws.request(n)
        ready, _, _ = select.select([ws.done_fd], [], [], 5.0)
        assert ready, "the sync thread did not report within 5 s"
        return ws.collect()
    finally:
        ws.stop()
        t.join(5.0)
        assert not t.is_alive()
        ws.close()


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_the_sync_thread_reports_what_it_synced_and_what_failed(impl, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    assert _sync_once(impl, os.open(path, os.O_RDONLY), 7) == (7, 0, 0)
    # /dev/null cannot be synced (EINVAL): a real failing fdatasync, reported with its commit
    synced, failed, err = _sync_once(impl, os.open("/dev/null", os.O_RDONLY), 3)
    assert (synced, failed, err) == (0, 3, errno.EINVAL)


def test_a_loop_batch_is_acknowledged_after_a_sync_and_fails_if_the_sync_fails(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "w.db") as s:
            assert s.wal.walsync is not None and s.batches.loop_conn.execute("PRAGMA synchronous").fetchone()[0] == 1
            assert await s.apply([MeterSample("CP1", "1", T0, 1.0, 1)]) == [None]
            synced, failed, _ = s.wal.walsync.collect()
            assert s.wal.loop_commits == 1 and synced >= 1 and failed == 0
            # pipelined, as the writer does: commit, commit, ..., each acknowledged when the
            # sync's report covers it
            durable = []
            for i in range(1, 50):
                results, synced = await s.apply_then([MeterSample("CP1", "1", T0 + dt.timedelta(seconds=i), float(i), 1)])
                assert results == [None] and synced is not None
                durable.append(synced)
            await asyncio.gather(*durable)
            assert s.wal.walsync.collect()[0] == s.wal.loop_commits >= 2 and not s.wal.waiters
            # the WAL's descriptor swapped for one that cannot sync: the batch fails, the store goes on
            s.wal.stop_sync()
            bad = walsync.WalSync(os.open("/dev/null", os.O_RDONLY))
            asyncio.get_running_loop().add_reader(bad.done_fd, s.wal.on_synced)
            s.wal.walsync = bad
            s.wal.syncer = threading.Thread(target=bad.run, daemon=True)
            s.wal.syncer.start()
            with pytest.raises(StoreError, match="could not be synced"):
                await s.apply([MeterSample("CP1", "1", T0 + dt.timedelta(seconds=60), 60.0, 1)])
        async with SqliteStore(tmp_path / "w.db") as s:  # committed (not synced) rows are there after all
            assert len(await s.list_meter_samples("CP1", "1")) == 51
    asyncio.run(main())


def test_the_write_that_restarts_the_wal_runs_on_the_store_thread(tmp_path):
    """The first write after a checkpoint copied every frame restarts the WAL and syncs its
    new header in that transaction: the loop's batch then goes to the store thread."""
    async def main():
        async with SqliteStore(tmp_path / "r.db") as s:
            s.wal.checkpointer_stop.set()  # this test checkpoints by itself
            s.wal.checkpointer.join(5.0)
            on_loop: list[str] = []
            s.batches.loop_conn.set_trace_callback(on_loop.append)
            assert await s.apply([MeterSample("CP1", "1", T0, 1.0, 1)]) == [None]
            assert "BEGIN IMMEDIATE" in on_loop and not s.wal.restarts()
            other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
            try:
                busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                other.close()
            assert busy == 0 and frames == copied > 0 and s.wal.restarts()
            on_loop.clear()
            assert await s.apply([MeterSample("CP1", "1", T0 + dt.timedelta(seconds=1), 2.0, 1)]) == [None]
            assert on_loop == [] and not s.wal.restarts()  # the store thread's, and the WAL restarted
            assert await s.apply([MeterSample("CP1", "1", T0 + dt.timedelta(seconds=2), 3.0, 1)]) == [None]
            assert "BEGIN IMMEDIATE" in on_loop  # the loop's again
            assert len(await s.list_meter_samples("CP1", "1")) == 3
    asyncio.run(main())


def test_a_fenced_checkpoint_pass_copies_part_of_the_wal_without_completing(tmp_path):
    """Between checkpoint periods, a pass fenced by a read transaction copies frames but stops
    short of the WAL's end: the database file is then not synced by it and the WAL cannot
    restart (SQLite does both only after a pass that copied every frame)."""
    from chargeyard.store.sqlite.wal import _SHM_BACKFILL, _SHM_MX_FRAME, _U32, _sync_file_range
    if _sync_file_range is None:
        pytest.skip("no sync_file_range here")

    async def main():
        async with SqliteStore(tmp_path / "f.db") as s:
            s.wal.checkpointer_stop.set()  # this test checkpoints by itself
            s.wal.checkpointer.join(5.0)
            for i in range(20):
                await s.apply([MeterSample(f"CP{i}", "1", T0, float(i), 1)])
            conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
            fence = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
            db_fd = s.wal.db_fd
            try:
                assert s.wal._trickle_pass(conn, fence, db_fd) is False and fence.in_transaction  # the fence
                for i in range(20):  # the writer commits past it
                    await s.apply([MeterSample("CPX", "1", T0 + dt.timedelta(seconds=i), float(i), 1)])
                assert s.wal._trickle_pass(conn, fence, db_fd, renew=False) is True and not fence.in_transaction
                mx, copied = _U32(s.wal.shm, _SHM_MX_FRAME)[0], _U32(s.wal.shm, _SHM_BACKFILL)[0]
                assert 0 < copied < mx and not s.wal.restarts()
                # a period's pass with nothing committed meanwhile copies the rest: the WAL restarts
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                assert busy == 0 and frames == done == mx and s.wal.restarts()
                # at saturation (the last batch on the store thread) no fence, no fenced pass
                s.wal.batches_on_loop = False
                assert s.wal._trickle_pass(conn, fence, db_fd) is False and not fence.in_transaction
            finally:
                conn.close()
                fence.close()
            assert len(await s.list_meter_samples("CPX", "1")) == 20
    asyncio.run(main())


_LOCK_PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, int(sys.argv[2]), 1, 0))
print(struct.unpack("hh4xqqi4x", got)[0] != fcntl.F_UNLCK)
"""


def _locked_by_another_process(path, offset: int) -> bool:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _LOCK_PROBE, str(path), str(offset)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_the_store_keeps_sqlites_locks_on_its_files(tmp_path):
    """The store opens descriptors of SQLite's files of its own (the wal-index it maps, the
    database file for the checkpoint thread). Closing any descriptor of a file drops every
    POSIX lock the process holds on it, SQLite's included: the store must not, while its
    connections are open. Otherwise another process that opens the database takes the
    wal-index for unused and truncates it (SIGBUS in every process that maps it)."""
    async def main():
        async with SqliteStore(tmp_path / "l.db") as s:
            await s.apply([MeterSample("CP1", "1", T0, 1.0, 1)])
            assert s.wal.shm is not None and s.wal.db_fd is not None
            # SQLite's "DMS" byte of the wal-index (os_unix.c: (22 + 8) * 4 + 8) and the
            # first byte of the database file's SHARED range (PENDING_BYTE + 2)
            assert _locked_by_another_process(tmp_path / "l.db-shm", 128)
            assert _locked_by_another_process(tmp_path / "l.db", 0x40000002)
    asyncio.run(main())
