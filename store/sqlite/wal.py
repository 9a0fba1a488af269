"""The WAL: its settings, its checkpoints, and the sync that makes a loop batch durable.

* WAL journal, ``synchronous=FULL`` by default: a COMMIT returns only after the WAL is
  written *and* fsynced, so a committed batch survives kill -9 and power loss
  (``docs/adr/0002-reply-after-commit.md``). ``synchronous="NORMAL"`` keeps kill -9
  safety (the WAL write has reached the kernel before COMMIT returns) but not power loss.
* Batches committed on the event loop's thread commit at NORMAL; a thread that never takes
  the GIL (``store/walsync.py``, compiled ``store/_walsync.pyx``) fdatasyncs the WAL for them, and a batch's durability future
  (:meth:`Wal.durable`) is done only once a sync covered its commit: the durability of
  FULL, without the loop sleeping through the disk.
* Another thread checkpoints (copies the WAL into the database file) on a connection of its
  own, so no COMMIT waits for a checkpoint; between its periods it starts the database
  file's writeback a little at a time (:meth:`Wal._trickle_pass`).
* The wal-index tells when the next write transaction restarts the WAL (:meth:`Wal.restarts`):
  that transaction syncs the WAL's new header, so it is left to the store thread.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import mmap
import os
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ...core import twins
from ..base import StoreError

__all__ = ["Wal", "configure", "use_wal"]

log = logging.getLogger("chargeyard.store.sqlite")

WalSync = twins.load("chargeyard.store.walsync").WalSync

_U32 = struct.Struct("=I").unpack_from  # the wal-index is in the machine's byte order
# The wal-index (the "-shm" file; SQLite's file format, "WAL-index format"): its first header
# copy's mxFrame (the WAL's last valid frame), and the checkpoint's nBackfill (frames copied
# into the database). Equal and not 0: every frame is copied, and the next write restarts the WAL.
_SHM_MX_FRAME, _SHM_BACKFILL, _SHM_HEAD = 16, 96, 136
WAL_AUTOCHECKPOINT = 4000  # pages: a writer checkpoints itself past this (the checkpoint thread fallen behind)


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)`` (not in ``os``); ctypes releases the GIL around it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages back; wait for nothing


def use_wal(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
    """Put the file in WAL mode (once per file; later connections find it so)."""
    deadline = time.monotonic() + busy_timeout
    while True:  # the switch to WAL can report "locked" without calling the busy handler
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if mode.lower() != "wal":
        raise StoreError(f"{path}: cannot use WAL journal (got {mode})")


def configure(conn: sqlite3.Connection, synchronous: str) -> None:
    """The settings of a connection that writes (the WAL mode is the file's)."""
    for pragma in (f"synchronous = {synchronous}", "temp_store = MEMORY", "cache_size = -32000",
                   "journal_size_limit = 67108864", f"wal_autocheckpoint = {WAL_AUTOCHECKPOINT}"):
        conn.execute(f"PRAGMA {pragma}")


class _Waiter:
    """A loop commit waiting for a sync of the WAL to cover it (one per batch)."""

    __slots__ = ("commit", "future")

    def __init__(self, commit: int, future: asyncio.Future) -> None:
        self.commit = commit
        self.future = future


class Wal:
    """The WAL machinery of one store: ``start`` after its connections are open, ``stop``
    before they close, ``close_files`` after."""

    CHECKPOINT_S = 0.1  # the checkpoint thread's period
    TRICKLE_S = 0.01  # between its periods, a fenced pass this often (see _trickle_pass)
    CHECKPOINT_PASSES = 8  # passes it makes to catch up with the writer, so the WAL can restart
    WAL_AUTOCHECKPOINT = WAL_AUTOCHECKPOINT

    def __init__(self, path: Path, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.checkpointer: threading.Thread | None = None
        self.checkpointer_stop = threading.Event()
        self.checkpointer_failed = False  # the writers then checkpoint as SQLite does by default
        self.default_checkpoint: set[sqlite3.Connection] = set()  # connections told so
        self.batches_on_loop = True  # the last batch committed on the loop's thread
        self.walsync: Any = None  # the sync thread's protocol (walsync.py), while it runs
        self.syncer: threading.Thread | None = None
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.loop_commits = 0  # commits numbered for the sync thread
        self.shm: mmap.mmap | None = None  # the wal-index, read only (see restarts)
        self.held_fds: list[int] = []  # descriptors of SQLite's files, closed last (see _hold)
        self.db_fd: int | None = None  # the database file's, for the checkpoint thread
        self.fence_mark = 0  # the WAL's last frame when the checkpoint thread took its fence

    # -- lifecycle -------------------------------------------------------------------

    def start(self, loop_conn: sqlite3.Connection | None) -> None:
        """On the event loop, once the connections are open: the checkpoint thread, the
        wal-index map, and (for ``loop_conn``'s batches) the sync thread."""
        try:
            self.db_fd = self._hold(self.path)
        except OSError as e:
            log.warning("sqlite: no fenced checkpoint passes (%s)", e)
        self.checkpointer_stop.clear()
        self.checkpointer = threading.Thread(target=self._checkpoint_loop, name="chargeyard-sqlite-checkpoint",
                                             daemon=True)
        self.checkpointer.start()
        self._map_wal_index()
        self._start_sync(loop_conn)

    async def stop(self) -> None:
        """Stop the sync thread (releasing its waiters) and the checkpoint thread."""
        self.stop_sync()
        self.checkpointer_stop.set()
        if self.checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.checkpointer.join)
            self.checkpointer = None
        shm, self.shm = self.shm, None  # after the checkpoint thread, which reads it
        if shm is not None:
            shm.close()

    def close_files(self) -> None:
        """After the store's connections are closed: see ``_hold``."""
        fds, self.held_fds, self.db_fd = self.held_fds, [], None
        for fd in fds:
            os.close(fd)

    def _hold(self, path: str | os.PathLike[str]) -> int:
        """A read-only descriptor of one of SQLite's files, closed only after the store's
        connections (``close_files``). POSIX record locks belong to the process: closing any
        descriptor of a file drops every lock the process holds on it, SQLite's included (the
        shared lock its connections keep on the database file, their locks in the wal-index).
        Another process could then take the wal-index for unused and truncate it (and every
        process that maps it gets SIGBUS), or write while this one believes it holds a lock."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.held_fds.append(fd)
        return fd

    def _map_wal_index(self) -> None:
        """Map the wal-index's first bytes, read only, for ``restarts`` (SQLite maps the same
        file: one page cache). Without it, the loop's writes restart the WAL themselves."""
        try:
            fd = self._hold(f"{self.path}-shm")
            if os.fstat(fd).st_size >= _SHM_HEAD:
                self.shm = mmap.mmap(fd, _SHM_HEAD, prot=mmap.PROT_READ)
        except OSError as e:
            log.warning("sqlite: cannot read the wal-index (%s): WAL restarts may block the loop", e)

    def writing(self, conn: sqlite3.Connection) -> None:
        """Before a write transaction of ``conn``: with the checkpoint thread gone, the
        connection checkpoints as SQLite does by default."""
        if self.checkpointer_failed and conn not in self.default_checkpoint:
            self.default_checkpoint.add(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 1000")

    # -- the sync of loop batches ----------------------------------------------------

    def _start_sync(self, loop_conn: sqlite3.Connection | None) -> None:
        """The loop's batches commit at NORMAL, and a thread of its own syncs the WAL for
        them; each batch's durability future is done once a sync covered it. Not needed at
        ``synchronous=NORMAL``; without the WAL file's descriptor, they sync in their COMMIT
        instead."""
        if self.synchronous == "NORMAL" or loop_conn is None:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.warning("sqlite: no WAL sync thread (%s): batches sync in their COMMIT", e)
            return
        try:
            ws = WalSync(fd)
        except BaseException:
            os.close(fd)
            raise
        asyncio.get_running_loop().add_reader(ws.done_fd, self.on_synced)
        loop_conn.execute("PRAGMA synchronous = NORMAL")
        self.walsync = ws
        self.syncer = threading.Thread(target=ws.run, name="chargeyard-sqlite-walsync", daemon=True)
        self.syncer.start()

    def durable(self) -> asyncio.Future:
        """A future done once the WAL is synced up to the loop's last commit."""
        self.loop_commits += 1
        n = self.loop_commits
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(_Waiter(n, fut))
        self.walsync.request(n)
        return fut

    def on_synced(self) -> None:
        """The sync thread's report (its eventfd is readable): release the commits it
        covered. A failed sync fails every commit it was for, whatever later syncs report:
        after an fsync error the kernel may have dropped those pages."""
        synced, failed, err = self.walsync.collect()
        covered = max(synced, failed)
        waiters = self.waiters
        while waiters and waiters[0].commit <= covered:
            w = waiters.popleft()
            fut = w.future
            if fut.done():
                continue
            if w.commit <= failed:
                fut.set_exception(StoreError(f"sqlite: the WAL could not be synced: {os.strerror(err)}"))
                fut.exception()  # the caller gets it; never "never retrieved"
            else:
                fut.set_result(None)

    def stop_sync(self) -> None:
        ws, self.walsync = self.walsync, None
        if ws is None:
            return
        asyncio.get_running_loop().remove_reader(ws.done_fd)
        ws.stop()
        if self.syncer is not None:
            self.syncer.join()
            self.syncer = None
        try:
            if self.waiters:  # only when closed under a batch: sync it here
                os.fdatasync(ws.wal_fd)
            while self.waiters:
                fut = self.waiters.popleft().future
                if not fut.done():
                    fut.set_result(None)
        finally:
            ws.close()

    def restarts(self) -> bool:
        """The next write transaction restarts the WAL: the checkpoint thread has copied every
        frame (the wal-index says so). The transaction that restarts it writes the WAL's new
        header and syncs it before its frames, whatever ``synchronous`` (NORMAL included): an
        fdatasync that would block the event loop after every checkpoint. The store thread
        makes that transaction instead. A checkpoint completing between this look and the
        loop's BEGIN leaves that restart to the loop, as before."""
        shm = self.shm
        if shm is None:
            return False
        mx = _U32(shm, _SHM_MX_FRAME)[0]
        return mx != 0 and _U32(shm, _SHM_BACKFILL)[0] == mx

    # -- checkpoints -----------------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        """The checkpoint thread: every ``CHECKPOINT_S``, PASSIVE checkpoints on a connection of
        its own copy the WAL into the database file and sync it while the writer goes on
        committing, so no batch waits for a checkpoint (SQLite's automatic one runs in the
        COMMIT that crosses its threshold, and takes milliseconds). The writer appends
        meanwhile, so it makes up to ``CHECKPOINT_PASSES`` passes, each shorter, until a pass
        finds nothing new: every frame is copied, and the writer's next transaction starts the
        WAL over. A writer past ``WAL_AUTOCHECKPOINT`` pages (this thread fallen behind)
        checkpoints by itself; if this thread cannot open its connection, the writers go back
        to SQLite's default. Between periods, every ``TRICKLE_S``, it makes the fenced passes
        of ``_trickle_pass``."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as e:
            log.warning("sqlite checkpoint thread cannot start (%s); the writer checkpoints by itself", e)
            self.checkpointer_failed = True
            return
        failing = False
        fence, db_fd = None, self.db_fd
        if _sync_file_range is not None and db_fd is not None:
            try:
                fence = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                        check_same_thread=False)
            except sqlite3.Error as e:
                log.warning("sqlite: no fenced checkpoint passes (%s)", e)
        ticks = 1 if fence is None else max(1, round(self.CHECKPOINT_S / self.TRICKLE_S))
        tick = 0
        try:
            while not self.checkpointer_stop.wait(self.CHECKPOINT_S / ticks):
                tick += 1
                try:
                    if tick % ticks:
                        self._trickle_pass(conn, fence, db_fd, renew=(tick + 1) % ticks != 0)  # type: ignore[arg-type]
                        continue
                    if fence is not None and fence.in_transaction:  # left by a failed tick
                        fence.execute("COMMIT")
                    seen = -1
                    for _ in range(self.CHECKPOINT_PASSES):
                        busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if busy or frames == seen:  # nothing committed since the last pass: all copied
                            break
                        seen = frames
                    failing = False
                except sqlite3.Error as e:  # e.g. the disk: tried again next period
                    if not failing:
                        log.warning("sqlite checkpoint failed: %s", e)
                    failing = True
        finally:
            conn.close()
            if fence is not None:
                fence.close()

    def _trickle_pass(self, conn: sqlite3.Connection, fence: sqlite3.Connection, db_fd: int,
                      renew: bool = True) -> bool:
        """A tick between the checkpoint thread's periods, while batches commit on the loop's
        thread (partial load). If the fence (a read transaction of a connection of its own,
        taken at the previous tick) is held and the writer has committed past it: one PASSIVE
        pass, which copies no frame past a reader's snapshot and so stops short of the WAL's
        end, then ``sync_file_range`` starts the writeback of the pages it copied (no flush,
        no wait). The fence is then let go, and taken again unless the next tick is a period's
        (``renew``), whose passes must be able to copy every frame. The period's passes then
        find little left to write when they sync the database file: the disk gets a small
        writeback every tick instead of a burst every period, which delayed the WAL's syncs
        (``docs/adr/0014-checkpoints.md``). Durability stays SQLite's own: each pass syncs the
        WAL before copying, and only a pass that copied every frame syncs the database file
        and lets the WAL restart, which a fenced pass never does. Returns whether a pass ran."""
        shm = self.shm
        ran = False
        try:
            if (fence.in_transaction and shm is not None and self.batches_on_loop
                    and _U32(shm, _SHM_MX_FRAME)[0] > self.fence_mark):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                ran = True
        finally:
            if fence.in_transaction:
                fence.execute("COMMIT")
        if ran:
            _sync_file_range(db_fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[misc]
        if renew and shm is not None and self.batches_on_loop:
            fence.execute("BEGIN")
            fence.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()  # the snapshot
            self.fence_mark = _U32(shm, _SHM_MX_FRAME)[0]  # its end, or later
        return ran
