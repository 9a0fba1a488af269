"""SQLite backend: the embedded default, one file shared by every process of a node.

* WAL journal, ``synchronous=FULL`` by default: a COMMIT returns only after the WAL is
  written *and* fsynced, so a committed batch survives kill -9 and power loss
  (``docs/adr/0002-reply-after-commit.md``). ``synchronous="NORMAL"`` keeps kill -9
  safety (the WAL write has reached the kernel before COMMIT returns) but not power loss.
* Large batches, reads and the fold's reads run on one dedicated thread (a single-thread
  executor) that owns the connection. Small batches (``LOOP_BATCH_MAX``) and the fold's
  short writes commit on the event loop's thread, on a second connection at NORMAL; a
  third thread, which never takes the GIL (``walsync.py``), fdatasyncs the WAL for those
  batches, and ``apply`` (``apply_then``'s future) is done only once a sync covered its
  batch: the same durability as FULL, without the loop sleeping through the disk. A fourth
  thread checkpoints (copies the WAL into the database file) on a connection of its own,
  so no COMMIT waits for a checkpoint.
* ``apply`` is one ``BEGIN IMMEDIATE … COMMIT``; runs of consecutive ops of the same bulk
  type (MeterSample, ChargerSeen, ConnectorStatus, UpsertCharger) go through
  ``executemany`` on cached prepared statements.
* Readings (MeterSamples, and the reading a TransactionEvent carries) are *stored in
  chunks* (``meter_chunks``): one row per transaction (or charger without one) per fold,
  holding its readings packed (msgpack, arrival order) and their lowest not closing,
  highest and newest, so a transaction's ``meter_start_wh``/``energy_wh`` and last reading
  are derived from its chunks' columns, and a read of its samples unpacks its chunks (a
  key's sample is its first reading; later ones for the same key, e.g. a clock standing
  still, count as readings only). A row per chunk instead of one per reading pays the
  B-tree's per-row work and a charger's leaf write once for many readings. Chunks are
  appended to a rowid table, their key in a unique index (schema 6).
* On the way there readings wait in a log: a batch appends them packed as one row of
  ``sample_inbox`` (its bytes in the WAL, not a page per log table it touches); the inbox is
  moved in bulk, oldest first (its rows are newer than theirs), into the ``reading_log_<n>``
  tables, one packed row per table its readings' chargers fall in (``READING_LOGS`` tables
  by CRC-32 of the id, the same in every process): by ``maintain()`` once ``_move_rows``
  wait (``INBOX_MOVE_BATCHES`` batches' worth, so a move takes many readings per table
  under load), before a read, and by a batch once ``INBOX_MAX`` wait, which then logs into
  the tables itself (as does a batch of ``INBOX_BATCH`` readings). The moves and folds read
  the packed rows in C (``logrows``). A table is *folded*: its oldest rows
  become one chunk per transaction in them (numbered by ``fold_seq``, so chunks keep arrival
  order) and the newest reading per connector of samples without a transaction
  (``last_readings``), and are deleted, in one write transaction. Folding is deferred work
  done between batches: while this store has ``idle_fold_rows`` readings logged and not
  folded, ``maintain()`` (the writer calls it when no batch waits, and under load as the
  deferred work's share, every few milliseconds) folds the oldest ``IDLE_FOLD_SLICE``
  readings of the next non-empty table (round robin), a pause of about a millisecond. The
  threshold sets the chunks' size: a fold takes what a charger logged since its last one
  (about 64 readings at 1,000 chargers). A writer that calls ``maintain()`` too rarely lets
  the log grow to ``fold_rows``; from there each ``apply`` folds one whole table inside its
  transaction. Before a read of samples or readings, the charger's table (every table, for
  a read across chargers) is folded while it holds rows (rows other processes logged
  included: the fold reads the tables, under the write lock), so reads see every committed
  reading; every table on ``close``. A read across chargers first folds the tables one
  transaction each, so batches commit in between. A charger's readings are all in one
  table, so tables fold in any order. Log rows commit with their batch and a fold is all or
  nothing: kill -9 loses nothing, and a log left at open is folded by the next read or
  threshold.
* Several processes may share the file: ``busy_timeout`` waits for the write lock, and
  1.6 transaction ids come from a counter row bumped inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import datetime as dt
import os
import logging
import mmap
import sqlite3
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec

from . import logrows, migrations, walsync
from .migrations import READING_LOGS, pack, reading_log, unpack_chunk, unpack_log
from .base import (to_us, from_us, ChargerSeen, ConnectorStatus, MeterSample, Op, StartTransaction, StopTransaction, Store,
                   StoreError, TransactionEvent, UpsertCharger)

__all__ = ["SqliteStore"]

WalSync = walsync.select()
_ROWS = logrows.select()  # the per-reading steps, compiled unless CHARGEYARD_PURE=1
_checked = _ROWS.checked

log = logging.getLogger(__name__)

TX_ID_MAX = 2**31 - 1  # positive signed 32-bit: what every 1.6 charger can hold



_us, _iso = to_us, from_us


# -- statements (module constants: sqlite3's statement cache keys on the text) --------

_UPSERT_CHARGER = """
INSERT INTO chargers (charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
ON CONFLICT (charger_id) DO UPDATE SET
    protocol = excluded.protocol, vendor = excluded.vendor, model = excluded.model,
    serial = excluded.serial, firmware = excluded.firmware,
    last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen),
    last_boot = max(coalesce(last_boot, excluded.last_boot), excluded.last_boot)"""

_CHARGER_SEEN = """
INSERT INTO chargers (charger_id, last_seen) VALUES (?1, ?2)
ON CONFLICT (charger_id) DO UPDATE SET
    last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen)"""

_CONNECTOR_STATUS = """
INSERT INTO connectors (charger_id, evse_id, connector_id, status, error_code, info, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (charger_id, evse_id, connector_id) DO UPDATE SET
    status = excluded.status, error_code = excluded.error_code, info = excluded.info, at = excluded.at
WHERE excluded.at >= connectors.at"""

# -- the reading log (kind: 0 a MeterSample, 1 a TransactionEvent's reading, 2 an Ended
# event's), READING_LOGS tables by charger (``reading_log``), rows packed; folded into
# meter_chunks, one table's oldest rows at a time


class _LogSql:
    """The statements of one reading log table."""

    def __init__(self, b: int) -> None:
        self.table = log = f"reading_log_{b}"
        self.add = f"INSERT INTO {log} (rows, data) VALUES (?1, ?2)"
        self.take = f"SELECT rowid, rows, data FROM {log} ORDER BY rowid"
        self.drop_prefix = f"DELETE FROM {log} WHERE rowid <= ?1"
        self.span = f"SELECT count(*), min(rowid), coalesce(sum(length(data)), 0) FROM {log} WHERE rowid <= ?1"
        self.empty = f"DELETE FROM {log}"  # the whole table: SQLite's truncate, no row by row
        self.pending = f"SELECT EXISTS (SELECT 1 FROM {log})"
        # a read of one of its chargers: rows of that charger may still wait in the inbox
        self.read_pending = f"SELECT EXISTS (SELECT 1 FROM {log}) OR EXISTS (SELECT 1 FROM sample_inbox)"


_LOGS = [_LogSql(b) for b in range(READING_LOGS)]
_LOG_PENDING = "SELECT EXISTS (SELECT 1 FROM sample_inbox) OR " + " OR ".join(
    f"EXISTS (SELECT 1 FROM reading_log_{b})" for b in range(READING_LOGS))
_INBOX_COUNT = "SELECT coalesce(sum(rows), 0) FROM sample_inbox"
_LOG_COUNT = "SELECT " + " + ".join(f"(SELECT coalesce(sum(rows), 0) FROM reading_log_{b})"
                                    for b in range(READING_LOGS)) + f" + ({_INBOX_COUNT})"
# the inbox: a small batch's log rows packed into one row, moved into the log tables later
_INBOX_ADD = "INSERT INTO sample_inbox (rows, data) VALUES (?1, ?2)"
_INBOX_TAKE = "SELECT seq, rows, data FROM sample_inbox ORDER BY seq"
_INBOX_DROP = "DELETE FROM sample_inbox WHERE seq <= ?1"
_INBOX_SPAN = "SELECT count(*), min(seq), coalesce(sum(length(data)), 0) FROM sample_inbox WHERE seq <= ?1"
_INBOX_PENDING = "SELECT EXISTS (SELECT 1 FROM sample_inbox)"
_FOLD_SEQ = "UPDATE fold_seq SET n = n + 1 RETURNING n"
_CHUNK_ROWS = "SELECT data FROM meter_chunks WHERE charger_id = ?1 AND tx_id = ?2 ORDER BY chunk"
_LOCK_TAKEN = object()  # _write_on_loop: the write lock was taken, nothing done
_U32 = struct.Struct("=I").unpack_from  # the wal-index is in the machine's byte order
# The wal-index (the "-shm" file; SQLite's file format, "WAL-index format"): its first header
# copy's mxFrame (the WAL's last valid frame), and the checkpoint's nBackfill (frames copied
# into the database). Equal and not 0: every frame is copied, and the next write restarts the WAL.
_SHM_MX_FRAME, _SHM_BACKFILL, _SHM_HEAD = 16, 96, 136


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

# the newest reading of samples without a transaction, per connector: by at, of equals the last
_LAST_READING = """
INSERT INTO last_readings (charger_id, connector_id, at, energy_wh, tx_id) VALUES (?1, ?2, ?3, ?4, '')
ON CONFLICT (charger_id, connector_id) DO UPDATE SET
    at = excluded.at, energy_wh = excluded.energy_wh, tx_id = excluded.tx_id
WHERE excluded.at >= last_readings.at"""


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """SQLite's exceptions, and those of an op the schema cannot hold, as StoreError."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.Error as e:
        raise StoreError(f"sqlite: {e}") from e
    except (TypeError, ValueError, OverflowError) as e:  # an op the schema cannot hold
        raise StoreError(f"sqlite: bad operation: {e!r}") from e


def _packed(rows: list) -> bytes:
    try:
        return pack(rows)
    except ValueError as e:  # e.g. a lone surrogate in an id
        raise StoreError(f"sqlite: bad operation: a reading cannot be stored: {e}") from e


log_bucket = reading_log  # a charger's log table (CRC-32: the same in every process)


def _take(conn: sqlite3.Connection, sql: str, table: str, limit: int | None,
          packed: bool = False) -> tuple[list, int, int | None, bool, tuple[int, int | None, int]]:
    """The oldest packed rows of the inbox or a log table (``sql`` selects key, readings,
    data in order), holding ``limit`` readings or more (all, without a limit): (their log
    rows, or with ``packed`` their (key, data) as stored, how many readings, the last key
    taken or None, whether rows stay, and their span: how many packed rows, the first key,
    their bytes). A transaction that drops rows taken outside it first compares their span
    with what the table holds up to the last key."""
    rows: list = []
    taken, last, first, count, size = 0, None, None, 0, 0
    cur = conn.execute(sql)
    try:
        for key, n, data in cur:
            if limit is not None and taken >= limit:
                return rows, taken, last, True, (count, first, size)
            if packed:
                rows.append((key, data))
            else:
                rows += _unpacked(table, key, data)
            taken += n
            last = key
            if first is None:
                first = key
            count += 1
            size += len(data)
    finally:
        cur.close()
    return rows, taken, last, False, (count, first, size)


def _unpacked(table: str, key: int, data: bytes) -> list:
    try:
        return unpack_log(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # only a damaged file or a foreign writer
        raise StoreError(f"sqlite: {table} row {key} is unreadable: {e}") from e


def _packed_rows(step: str, table: str, rows: list[tuple[int, bytes]], *args: Any) -> Any:
    """``Rows.<step>`` (``fold``, ``split_packed``) of a table's (key, data) rows: compiled,
    or the twin's when the compiled one finds a row it does not read (which the twin reads,
    or reports as unreadable with its key)."""
    datas = [data for _, data in rows]
    try:
        out = getattr(_ROWS, step)(datas, *args)
        return getattr(logrows.Rows, step)(datas, *args) if out is None else out
    except (msgspec.DecodeError, UnicodeDecodeError):
        for key, data in rows:
            _unpacked(table, key, data)  # raises for the first unreadable row
        raise


_TX_ENSURE = """
INSERT INTO transactions (charger_id, tx_id, kind) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"""

_START_KEY = """
INSERT INTO tx_starts (charger_id, connector_id, id_tag, meter_start_wh, started_at, tx_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT DO UPDATE SET tx_id = tx_starts.tx_id
RETURNING tx_id"""

_START_TX = """
UPDATE transactions SET connector_id = ?3, id_tag = ?4, start_reading_wh = ?5, started_at = ?6,
    reservation_id = ?7
WHERE charger_id = ?1 AND tx_id = ?2"""

_STOP_OPEN = """
UPDATE transactions SET meter_stop_wh = ?3, stopped_at = ?4, stop_reason = ?5, stop_id_tag = ?6
WHERE charger_id = ?1 AND tx_id = ?2 AND stopped_at IS NULL"""

_EVENT_SEQ = """
INSERT INTO tx_event_seqs (charger_id, tx_id, seq_no, event_type, trigger_reason, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"""

# ?1 charger ?2 tx ?3 at ?4 evse ?5 connector ?6 id_tag
_EVENT_COMMON = """
UPDATE transactions SET
    evse_id = CASE WHEN ?4 != 0 THEN ?4 ELSE evse_id END,
    connector_id = CASE WHEN ?5 != 0 THEN ?5 ELSE connector_id END,
    id_tag = CASE WHEN ?6 != '' AND (?7 = 0 OR id_tag = '') THEN ?6 ELSE id_tag END,
    stop_id_tag = CASE WHEN ?6 != '' AND ?7 = 1 THEN ?6 ELSE stop_id_tag END,
    started_at = CASE WHEN ?7 = 0 THEN min(coalesce(started_at, ?3), ?3) ELSE started_at END
WHERE charger_id = ?1 AND tx_id = ?2"""

_EVENT_BEGIN_READING = """
UPDATE transactions SET start_reading_wh = ?3 WHERE charger_id = ?1 AND tx_id = ?2"""

_EVENT_END = """
UPDATE transactions SET stopped_at = ?3, stop_reason = ?4, meter_stop_wh = ?5
WHERE charger_id = ?1 AND tx_id = ?2 AND stopped_at IS NULL"""

# the readings of a transaction t, from its chunks: the lowest not closing,
_LOWEST = """(SELECT min(low_wh) FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id)"""
# the highest,
_HIGHEST = """(SELECT max(high_wh) FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id)"""
# and the newest: by at, then the lowest connector (2.0.1 events after Started mostly carry 0);
# of a repeated key, the last reading (the later chunk's)
_NEWEST = """(SELECT {} FROM meter_chunks c WHERE c.charger_id = t.charger_id AND c.tx_id = t.tx_id
        ORDER BY c.last_at DESC, c.last_connector, c.chunk DESC LIMIT 1)"""
# a transaction with its readings (the lowest and the highest where the energy rule needs them)
_TX_SELECT = f"""
SELECT charger_id, tx_id, connector_id, evse_id, id_tag, kind, start_reading_wh, meter_stop_wh, started_at,
    stopped_at, stop_reason, stop_id_tag, reservation_id,
    CASE WHEN start_reading_wh IS NULL THEN {_LOWEST} END,
    CASE WHEN kind != 16 OR meter_stop_wh IS NULL OR start_reading_wh IS NULL THEN {_HIGHEST} END,
    {_NEWEST.format("c.last_wh")}, {_NEWEST.format("c.last_at")}
FROM {{}} t"""

_TX_GET = _TX_SELECT.format("transactions") + " WHERE charger_id = ?1 AND tx_id = ?2"
_TX_ORDER = "ORDER BY started_at DESC NULLS LAST, charger_id, tx_id"

# newest reading per connector: samples without a transaction, and each transaction's own
_LAST_READINGS = f"""
SELECT connector_id, energy_wh, at, tx_id FROM (
    SELECT connector_id, energy_wh, at, tx_id,
           row_number() OVER (PARTITION BY connector_id ORDER BY at DESC, tx_id DESC) AS rn
    FROM (SELECT connector_id, energy_wh, at, tx_id FROM last_readings WHERE charger_id = ?1
          UNION ALL
          SELECT connector_id, {_NEWEST.format("c.last_wh")}, {_NEWEST.format("c.last_at")} AS at, tx_id
          FROM transactions t WHERE charger_id = ?1)
    WHERE at IS NOT NULL)
WHERE rn = 1 ORDER BY connector_id"""


def _tx_dict(r: tuple) -> dict:
    """A row of ``_TX_SELECT`` -> the API shape, meter_start_wh and energy_wh by the rule in
    store/base.py (``MeterSample``)."""
    kind, start, stop, low, high = r[5], r[6], r[7], r[13], r[14]
    meter_start = start if start is not None else low
    if meter_start is None:
        energy = None
    elif kind == 16 and stop is not None and start is not None:
        energy = stop - start
    else:
        energy = max(meter_start, meter_start if high is None else high,
                     meter_start if stop is None else stop) - meter_start
    return {"charger_id": r[0], "tx_id": r[1], "connector_id": r[2], "evse_id": r[3], "id_tag": r[4],
            "meter_start_wh": meter_start, "meter_stop_wh": stop, "energy_wh": energy, "started_at": _iso(r[8]),
            "stopped_at": _iso(r[9]), "stop_reason": r[10], "active": r[9] is None, "stop_id_tag": r[11],
            "reservation_id": r[12], "last_reading_wh": r[15], "last_reading_at": _iso(r[16])}


class SqliteStore(Store):
    """``SqliteStore(path, *, synchronous="FULL", busy_timeout=10.0, fold_rows=FOLD_ROWS,
    idle_fold_rows=IDLE_FOLD_ROWS)``: :meth:`maintain` (the writer calls it when it has no
    batch waiting, and every few milliseconds under load), with ``idle_fold_rows`` readings
    logged by this store, folds the oldest ``IDLE_FOLD_SLICE`` readings of a log table in a
    transaction of its own. With ``fold_rows`` (a writer that never calls it), ``apply``
    folds one whole log table inside each batch's transaction."""

    FOLD_ROWS = 192_000
    IDLE_FOLD_ROWS = 64_000
    IDLE_FOLD_SLICE = 1024  # readings (at least: whole log rows) a maintain() fold takes, a table's oldest
    INBOX_BATCH = 1 << 30  # a batch logging fewer readings (every batch) packs them into one inbox row
    INBOX_MOVE_ROWS = 512  # the least inbox readings a move by maintain() takes, oldest first; its trigger
    INBOX_MOVE_BATCHES = 64  # ... or this many batches' worth (their mean), whichever is more,
    INBOX_MOVE_MAX = 16384  # up to this many
    INBOX_MAX = 65536  # with this many in the inbox, a batch moves it and logs into the tables
    CHECKPOINT_S = 0.1  # the checkpoint thread's period
    TRICKLE_S = 0.01  # between its periods, a fenced pass this often (see _trickle_pass)
    CHECKPOINT_PASSES = 8  # passes it makes to catch up with the writer, so the WAL can restart
    WAL_AUTOCHECKPOINT = 4000  # pages: the writer checkpoints itself past this (a checkpoint thread fallen behind)
    LOOP_BATCH_MAX = 128  # ops: a batch this small commits on the event loop's thread (see apply)

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 10.0, fold_rows: int = FOLD_ROWS,
                 idle_fold_rows: int | None = None) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA (OFF would lose commits)")
        if fold_rows < 1 or (idle_fold_rows is not None and idle_fold_rows < 1):
            raise ValueError("fold_rows and idle_fold_rows must be at least 1")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.fold_rows = fold_rows
        self.idle_fold_rows = min(fold_rows, self.IDLE_FOLD_ROWS if idle_fold_rows is None else idle_fold_rows)
        self._logged = 0  # readings this store logged and has not folded (a trigger only)
        self._inboxed = 0  # of those, readings in the inbox (also a trigger only)
        self._batch_readings = 0.0  # readings a batch logs, a moving mean (the size of a move)
        self._log_rows: list[tuple] = []  # the log rows of the batch being applied, in order
        self._next_fold = 0  # the log table the threshold folds next
        self._buckets: dict[str, int] = {}  # charger id -> its log table
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self._checkpointer_failed = False  # the writers then checkpoint as SQLite does by default
        self._default_checkpoint: set[sqlite3.Connection] = set()  # connections told so
        self._loop_conn: sqlite3.Connection | None = None  # small batches' connection (the loop's thread)
        self._tx_conn: Any = None  # the connection of the batch being applied (its ops' statements)
        self._batches_on_loop = True  # the last batch committed on the loop's thread (see maintain)
        self._walsync: Any = None  # the WAL's sync thread's protocol (walsync.py), when it runs
        self._shm: mmap.mmap | None = None  # the wal-index, read only (see _wal_restarts)
        self._held_fds: list[int] = []  # descriptors of SQLite's files, closed last (see _hold)
        self._db_fd: int | None = None  # the database file's, for the checkpoint thread
        self._fence_mark = 0  # the WAL's last frame when the checkpoint thread took its fence
        self._syncer: threading.Thread | None = None
        self._sync_waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self._loop_commits = 0  # commits numbered for the sync thread
        self._executor: ThreadPoolExecutor | None = None
        self._single: dict[type, Callable[[Any], Any]] = {
            StartTransaction: self._start, StopTransaction: self._stop, TransactionEvent: self._event}
        self._bulk: dict[type, Callable[[list], None]] = {
            MeterSample: self._samples, ChargerSeen: self._seen, ConnectorStatus: self._statuses,
            UpsertCharger: self._chargers}

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise StoreError("store is not open")
        with _store_errors():
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chargeyard-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        try:
            self._db_fd = self._hold(self.path)
        except OSError as e:
            log.warning("sqlite: no fenced checkpoint passes (%s)", e)
        self._checkpointer_stop.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="chargeyard-sqlite-checkpoint",
                                              daemon=True)
        self._checkpointer.start()
        self._map_wal_index()
        self._start_wal_sync()

    def _hold(self, path: str | os.PathLike[str]) -> int:
        """A read-only descriptor of one of SQLite's files, closed only after the store's
        connections (``close``). POSIX record locks belong to the process: closing any
        descriptor of a file drops every lock the process holds on it, SQLite's included (the
        shared lock its connections keep on the database file, their locks in the wal-index).
        Another process could then take the wal-index for unused and truncate it (and every
        process that maps it gets SIGBUS), or write while this one believes it holds a lock."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._held_fds.append(fd)
        return fd

    def _map_wal_index(self) -> None:
        """Map the wal-index's first bytes, read only, for ``_wal_restarts`` (SQLite maps the
        same file: one page cache). Without it, the loop's writes restart the WAL themselves."""
        try:
            fd = self._hold(f"{self.path}-shm")
            if os.fstat(fd).st_size >= _SHM_HEAD:
                self._shm = mmap.mmap(fd, _SHM_HEAD, prot=mmap.PROT_READ)
        except OSError as e:
            log.warning("sqlite: cannot read the wal-index (%s): WAL restarts may block the loop", e)

    def _start_wal_sync(self) -> None:
        """The loop's batches commit at NORMAL, and a thread of its own syncs the WAL for
        them (``walsync.py``); each batch's ``apply`` returns once a sync covered it. Not
        needed at ``synchronous=NORMAL``; without the WAL file's descriptor, they sync in
        their COMMIT instead."""
        if self.synchronous == "NORMAL" or self._loop_conn is None:
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
        asyncio.get_running_loop().add_reader(ws.done_fd, self._on_synced)
        self._loop_conn.execute("PRAGMA synchronous = NORMAL")
        self._walsync = ws
        self._syncer = threading.Thread(target=ws.run, name="chargeyard-sqlite-walsync", daemon=True)
        self._syncer.start()

    def _durable(self) -> asyncio.Future:
        """A future done once the WAL is synced up to the loop's last commit (see
        ``_start_wal_sync``)."""
        self._loop_commits += 1
        n = self._loop_commits
        fut = asyncio.get_running_loop().create_future()
        self._sync_waiters.append((n, fut))
        self._walsync.request(n)
        return fut

    def _on_synced(self) -> None:
        """The sync thread's report (its eventfd is readable): release the commits it
        covered. A failed sync fails every commit it was for, whatever later syncs report:
        after an fsync error the kernel may have dropped those pages."""
        synced, failed, err = self._walsync.collect()
        waiters = self._sync_waiters
        while waiters and waiters[0][0] <= max(synced, failed):
            n, fut = waiters.popleft()
            if fut.done():
                continue
            if n <= failed:
                fut.set_exception(StoreError(f"sqlite: the WAL could not be synced: {os.strerror(err)}"))
                fut.exception()  # the caller gets it; never "never retrieved"
            else:
                fut.set_result(None)

    def _stop_wal_sync(self) -> None:
        ws, self._walsync = self._walsync, None
        if ws is None:
            return
        asyncio.get_running_loop().remove_reader(ws.done_fd)
        ws.stop()
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        try:
            if self._sync_waiters:  # only when closed under a batch: sync it here
                os.fdatasync(ws.wal_fd)
            while self._sync_waiters:
                _, fut = self._sync_waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
        finally:
            ws.close()

    def _checkpoint_loop(self) -> None:
        """The checkpoint thread: every ``CHECKPOINT_S``, PASSIVE checkpoints on a connection of
        its own copy the WAL into the database file and sync it while the writer goes on
        committing, so no batch waits for a checkpoint (SQLite's automatic one runs in the
        COMMIT that crosses its threshold: 5-12 ms here). The writer appends meanwhile, so it
        makes up to ``CHECKPOINT_PASSES`` passes, each shorter, until a pass finds nothing new:
        every frame is copied, and the writer's next transaction starts the WAL over. A writer
        past ``WAL_AUTOCHECKPOINT`` pages (this thread fallen behind) checkpoints by itself; if
        this thread cannot open its connection, the writer goes back to SQLite's default.
        Between periods, every ``TRICKLE_S``, it makes the fenced passes of ``_trickle_pass``."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as e:
            log.warning("sqlite checkpoint thread cannot start (%s); the writer checkpoints by itself", e)
            self._checkpointer_failed = True
            return
        failing = False
        fence, db_fd = None, self._db_fd
        if _sync_file_range is not None and db_fd is not None:
            try:
                fence = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                        check_same_thread=False)
            except sqlite3.Error as e:
                log.warning("sqlite: no fenced checkpoint passes (%s)", e)
        ticks = 1 if fence is None else max(1, round(self.CHECKPOINT_S / self.TRICKLE_S))
        tick = 0
        try:
            while not self._checkpointer_stop.wait(self.CHECKPOINT_S / ticks):
                tick += 1
                try:
                    if tick % ticks:
                        self._trickle_pass(conn, fence, db_fd, renew=(tick + 1) % ticks != 0)
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
        (ADR 0005, decisions 20 and 21). Durability stays SQLite's own: each pass syncs the
        WAL before copying, and only a pass that copied every frame syncs the database file
        and lets the WAL restart, which a fenced pass never does. Returns whether a pass ran."""
        shm = self._shm
        ran = False
        try:
            if (fence.in_transaction and shm is not None and self._batches_on_loop
                    and _U32(shm, _SHM_MX_FRAME)[0] > self._fence_mark):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                ran = True
        finally:
            if fence.in_transaction:
                fence.execute("COMMIT")
        if ran:
            _sync_file_range(db_fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[misc]
        if renew and shm is not None and self._batches_on_loop:
            fence.execute("BEGIN")
            fence.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()  # the snapshot
            self._fence_mark = _U32(shm, _SHM_MX_FRAME)[0]  # its end, or later
        return ran

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            deadline = time.monotonic() + self.busy_timeout
            while True:  # the switch to WAL can report "locked" without calling the busy handler
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal (got {mode})")
            self._configure(conn)
            migrations.migrate(conn)
            self._logged = conn.execute(_LOG_COUNT).fetchone()[0]
            self._inboxed = conn.execute(_INBOX_COUNT).fetchone()[0]
            # the event loop's: it never waits for the write lock (busy timeout 0: the batch
            # then goes to the store thread), the rest as above
            loop_conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                        check_same_thread=False, cached_statements=256)
            try:
                self._configure(loop_conn)
            except BaseException:
                loop_conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        self._conn, self._loop_conn = conn, loop_conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        """The settings of a connection that writes (the WAL mode is the file's)."""
        for pragma in (f"synchronous = {self.synchronous}", "temp_store = MEMORY", "cache_size = -32000",
                       "journal_size_limit = 67108864", f"wal_autocheckpoint = {self.WAL_AUTOCHECKPOINT}"):
            conn.execute(f"PRAGMA {pragma}")

    async def close(self) -> None:
        if self._executor is None:
            return
        self._stop_wal_sync()
        self._checkpointer_stop.set()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        shm, self._shm = self._shm, None  # after the checkpoint thread, which reads it
        if shm is not None:
            shm.close()
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None
            fds, self._held_fds, self._db_fd = self._held_fds, [], None
            for fd in fds:  # after the connections: see _hold
                os.close(fd)

    def _close_sync(self) -> None:
        if self._loop_conn is not None:
            loop_conn, self._loop_conn = self._loop_conn, None
            loop_conn.close()
        if self._conn is None:
            return
        try:
            if self._conn.execute(_LOG_PENDING).fetchone()[0]:
                self._write(self._fold)
            self._conn.execute("PRAGMA optimize")
        finally:
            conn, self._conn = self._conn, None
            conn.close()

    async def schema_version(self) -> int:
        return await self._run(lambda: migrations.current_version(self._db))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection | None = None) -> Any:
        """``fn(conn)`` in one write transaction of ``conn`` (the store thread's by default)."""
        conn = self._db if conn is None else conn
        if self._checkpointer_failed and conn not in self._default_checkpoint:
            self._default_checkpoint.add(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 1000")
        conn.execute("BEGIN IMMEDIATE")
        counters = self._logged, self._inboxed  # they follow the transaction: restored on rollback
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._logged, self._inboxed = counters
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _read(self, fn: Callable[[sqlite3.Connection], Any], charger_id: str | None = None) -> Any:
        """A read that looks at samples or readings (of one charger, or of all): when the log
        holds rows for them (this or another process's), their log table (or every table) is
        folded first, and the read runs in the fold's transaction."""
        conn = self._db
        b = None if charger_id is None else self._bucket(charger_id)
        if not conn.execute(_LOG_PENDING if b is None else _LOGS[b].read_pending).fetchone()[0]:
            return fn(conn)

        def fold_then_read(conn: sqlite3.Connection) -> Any:
            if b is None:
                self._fold(conn)
            else:
                self._move_inbox(conn)
                self._fold_bucket(conn, b)
            return fn(conn)
        return self._write(fold_then_read)

    # -- writes ----------------------------------------------------------------------

    async def apply(self, ops: list[Op]) -> list[Any]:
        """One transaction. A batch of up to ``LOOP_BATCH_MAX`` ops commits right here, on
        the event loop's thread and its own connection, instead of going to the store thread
        and back (two thread switches that cost more CPU and latency at partial load); with
        the WAL's sync thread running it commits at NORMAL and returns once a sync covered it
        (``_start_wal_sync``). If the file's write lock is taken (a fold for a read, another
        process) it does not wait: the batch goes to the store thread, as larger ones do,
        which keeps the loop turning through their longer commits."""
        results, durable = await self.apply_then(ops)
        if durable is not None:
            await durable
        return results

    async def apply_then(self, ops: list[Op]) -> tuple[list[Any], asyncio.Future | None]:
        """``apply``, returning as soon as the batch is committed, with a future done once a
        sync of the WAL covered it (None: durable already), so that the writer commits the
        next batch while the disk syncs this one."""
        if not ops:
            return [], None

        def apply(c: sqlite3.Connection) -> list[Any]:
            return self._apply_ops(c, ops)
        if self._loop_conn is not None and len(ops) <= self.LOOP_BATCH_MAX:
            if self._wal_restarts():  # it syncs the WAL's new header: not on the loop
                if self._walsync is None:
                    return await self._run(self._write, apply), None
                result = await self._run(self._write_relaxed, apply)
                return result, self._durable()  # synced like the loop's, by the sync thread
            result = self._write_on_loop(self._write, apply)
            if result is not _LOCK_TAKEN:
                self._batches_on_loop = True
                return result, (None if self._walsync is None else self._durable())
        self._batches_on_loop = False
        return await self._run(self._write, apply), None

    def _wal_restarts(self) -> bool:
        """The next write transaction restarts the WAL: the checkpoint thread has copied every
        frame (the wal-index says so). The transaction that restarts it writes the WAL's new
        header and syncs it before its frames, whatever ``synchronous`` (NORMAL included):
        one fdatasync, 0.3 ms at the median and 2 ms at p99 here, that would block the event
        loop ~10 times a second (checkpoints every ``CHECKPOINT_S``). The store thread makes
        that transaction instead. A checkpoint completing between this look and the loop's
        BEGIN leaves that restart to the loop, as before."""
        shm = self._shm
        if shm is None:
            return False
        mx = _U32(shm, _SHM_MX_FRAME)[0]
        return mx != 0 and _U32(shm, _SHM_BACKFILL)[0] == mx

    def _write_on_loop(self, write: Callable[..., Any], fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``write(fn, conn)`` (``_write`` or ``_write_relaxed``) on the loop's connection,
        right here; ``_LOCK_TAKEN`` when BEGIN IMMEDIATE found the file's write lock taken
        (nothing was done: the store thread, which waits for the lock, is the caller's
        fallback)."""
        conn = self._loop_conn
        with _store_errors():
            try:
                return write(fn, conn)
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or conn.in_transaction:
                    raise
        return _LOCK_TAKEN

    def _apply_ops(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        self._tx_conn = conn
        results: list[Any] = [None] * len(ops)
        self._log_rows = log_rows = []
        i, n = 0, len(ops)
        while i < n:
            t = type(ops[i])
            bulk = self._bulk.get(t)
            if bulk is not None:
                j = _ROWS.run_end(ops, i)
                bulk(ops[i:j])
                i = j
                continue
            single = self._single.get(t)
            if single is None:
                raise StoreError(f"not a store operation: {t.__name__}")
            results[i] = single(ops[i])
            i += 1
        if log_rows:
            self._log(conn, log_rows)
        if self._logged >= self.fold_rows:  # fold one log table: a short pause, not one for the whole log
            self._fold_some(conn)
        return results

    def _log(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """Append a batch's log rows: as one inbox row (its bytes in the WAL, instead of a page
        per log table it touches: 11 pages instead of 64-70 for 1,000 readings); with
        ``INBOX_MAX`` readings in the inbox (or ``INBOX_BATCH`` in the batch), as one packed
        row per log table they fall in, in order, after moving the inbox (older rows) there."""
        _checked(rows)
        self._batch_readings += (len(rows) - self._batch_readings) * 0.125
        if len(rows) < self.INBOX_BATCH and self._inboxed < self.INBOX_MAX:
            conn.execute(_INBOX_ADD, (len(rows), _packed(rows)))
            self._inboxed += len(rows)
            return
        self._move_inbox(conn)  # one query when the inbox is empty (other processes' rows included)
        self._append(conn, rows)

    def _append(self, conn: sqlite3.Connection, rows: list) -> None:
        """Log rows into their tables, one packed row per table, in order."""
        for b, n, data in self._parts(rows):
            conn.execute(_LOGS[b].add, (n, data))

    def _parts(self, rows: list) -> list[tuple[int, int, bytes]]:
        """Log rows as (table, readings, packed) per table they fall in, in order."""
        parts = _ROWS.split(rows, self._buckets, READING_LOGS, log_bucket)
        return [(b, len(part), _packed(part)) for b, part in enumerate(parts) if part]

    def _move_inbox(self, conn: sqlite3.Connection, limit: int | None = None) -> int:
        """Move the inbox's packed rows (the oldest, up to at least ``limit`` readings, when
        given) into the log tables, in order; returns how many readings moved. Inbox rows are
        newer than every log table row, so the tables keep arrival order."""
        plan = self._plan_move(conn, limit)
        if plan is None:
            self._inboxed = 0
            return 0
        return self._apply_move(conn, plan, False)

    def _plan_move(self, conn: sqlite3.Connection, limit: int | None) -> tuple | None:
        """A move's reads and packing (no write): None with an empty inbox."""
        rows, moved, last, more, span = _take(conn, _INBOX_TAKE, "sample_inbox", limit, packed=True)
        if last is None:
            return None
        return last, more, span, moved, _packed_rows("split_packed", "sample_inbox", rows, READING_LOGS, log_bucket)

    def _apply_move(self, conn: sqlite3.Connection, plan: tuple, planned_apart: bool) -> int:
        """A move's writes, in the caller's write transaction. ``planned_apart``: the plan
        was read outside it, so the inbox may have changed since (a batch or a read moved it,
        another process): nothing is done, 0 returned, unless its rows are still there."""
        last, more, span, moved, parts = plan
        if planned_apart and tuple(conn.execute(_INBOX_SPAN, (last,)).fetchone()) != span:
            return 0
        for b, n, data in parts:
            conn.execute(_LOGS[b].add, (n, data))
        conn.execute(_INBOX_DROP, (last,))
        # batches may have added to the inbox since a plan read apart from this transaction
        self._inboxed = max(0, self._inboxed - moved) if more or planned_apart else 0
        return moved

    def _fold_some(self, conn: sqlite3.Connection, limit: int | None = None) -> int:
        """Fold the next non-empty log table (round robin), or its oldest ``limit`` readings
        (at least; whole log rows: the table stays next until it is empty); returns how many
        readings were folded."""
        plan = self._plan_next_fold(conn, limit)
        if plan is not None:
            return self._apply_fold(conn, plan, False)
        if self._inboxed:  # every logged reading waits in the inbox
            self._move_inbox(conn)
            return self._fold_some(conn, limit)
        self._logged = 0
        return 0

    def _plan_next_fold(self, conn: sqlite3.Connection, limit: int | None) -> tuple | None:
        """The fold plan of the next non-empty log table, round robin (a table stays next
        until a plan takes its last rows); None when every table is empty."""
        for _ in range(READING_LOGS):
            b = self._next_fold
            plan = self._plan_fold(conn, b, limit)
            if plan is None or not plan[2]:
                self._next_fold = (b + 1) % READING_LOGS
            if plan is not None:
                return plan
        return None

    @property
    def deferred_rows(self) -> int:
        return self._logged

    @property
    def _move_rows(self) -> int:
        """The readings a move by ``maintain()`` takes (at least: whole inbox rows), and its
        trigger: ``INBOX_MOVE_BATCHES`` batches' worth, within ``INBOX_MOVE_ROWS`` and
        ``INBOX_MOVE_MAX``. Under heavy load a move then takes about as many inbox rows as
        under light load, and each log table gets a row of many readings instead of a few
        (the move's writes: 91 ns a reading moving 16 batches of 1,000, 162 moving 4)."""
        return int(min(self.INBOX_MOVE_MAX, max(self.INBOX_MOVE_ROWS,
                                                self.INBOX_MOVE_BATCHES * self._batch_readings)))

    def maintenance_due(self) -> bool:
        return ((self._inboxed >= self._move_rows or self._logged >= self.idle_fold_rows)
                and self._executor is not None)

    def maintenance_overlaps(self) -> bool:
        return self._loop_conn is not None and self._batches_on_loop

    async def maintain(self) -> int:
        """Move the inbox's oldest ``_move_rows`` readings into the log tables, or fold a
        log table's oldest ``IDLE_FOLD_SLICE``, in a transaction of its own committed without
        waiting for the disk: both only move readings that are already durable, so losing one
        to a power cut loses nothing (the rows are back where they were), and the next batch's
        COMMIT syncs the WAL up to and including it. Returns the readings moved or folded."""
        if not self.maintenance_due():
            return 0
        if not self.maintenance_overlaps():
            return await self._run(self._write_relaxed, self._slice_in_place)
        apply = await self._run(self._plan_slice)
        result = _LOCK_TAKEN if self._wal_restarts() else self._write_on_loop(self._write_relaxed, apply)
        if result is _LOCK_TAKEN:  # a batch on the store thread, a read, another process
            result = await self._run(self._write_relaxed, apply)
        return result

    def _plan_slice(self) -> Callable[[sqlite3.Connection], int]:
        """The reads and the CPU work of a ``maintain()`` slice, on the store thread and
        outside any write transaction, so that batches commit meanwhile: returns its writes,
        to make in a transaction. With nothing in the tables to fold (only the inbox, or a
        counter to reset), the whole slice is left to the transaction."""
        conn = self._db
        move = self._move_rows
        if self._inboxed >= move:
            plan = self._plan_move(conn, move)
            if plan is not None:
                return functools.partial(self._apply_move, plan=plan, planned_apart=True)
        else:
            plan = self._plan_next_fold(conn, self.IDLE_FOLD_SLICE)
            if plan is not None:
                return functools.partial(self._apply_fold, plan=plan, planned_apart=True)
        return self._slice_in_place

    def _slice_in_place(self, conn: sqlite3.Connection) -> int:
        move = self._move_rows
        if self._inboxed >= move:
            return self._move_inbox(conn, move)
        return self._fold_some(conn, self.IDLE_FOLD_SLICE)

    def _write_relaxed(self, fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection | None = None) -> Any:
        """``_write`` committed at ``synchronous=NORMAL``, without waiting for the disk: for a
        transaction that only moves durable rows (a fold), which the next synced COMMIT
        covers and losing which loses nothing; or for a batch the WAL's sync thread then
        syncs (``_durable``)."""
        conn = self._db if conn is None else conn
        relaxed = self.synchronous != "NORMAL" and not (conn is self._loop_conn and self._walsync is not None)
        if relaxed:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            return self._write(fn, conn)
        finally:
            if relaxed:
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def _chargers(self, run: list[UpsertCharger]) -> None:
        now = time.time_ns() // 1000
        self._tx_conn.executemany(_UPSERT_CHARGER, [
            (o.charger_id, o.protocol, o.vendor, o.model, o.serial, o.firmware,
             _us(o.at) if o.at is not None else now) for o in run])

    def _seen(self, run: list[ChargerSeen]) -> None:
        self._tx_conn.executemany(_CHARGER_SEEN, [(o.charger_id, _us(o.at)) for o in run])

    def _statuses(self, run: list[ConnectorStatus]) -> None:
        self._tx_conn.executemany(_CONNECTOR_STATUS, [
            (o.charger_id, o.evse_id, o.connector_id, o.status, o.error_code, o.info, _us(o.at)) for o in run])

    def _bucket(self, charger_id: str) -> int:
        return logrows.table(charger_id, self._buckets, log_bucket)

    def _samples(self, run: list[MeterSample]) -> None:
        _ROWS.sample_rows(run, self._log_rows)
        self._logged += len(run)

    def _fold(self, conn: sqlite3.Connection) -> None:
        """Fold the whole log (the inbox moved first); inside the caller's write transaction."""
        self._move_inbox(conn)
        for b in range(READING_LOGS):
            self._fold_bucket(conn, b)
        self._logged = 0

    def _fold_bucket(self, conn: sqlite3.Connection, b: int, limit: int | None = None) -> tuple[int, bool]:
        """Store one log table's readings (its oldest rows holding ``limit`` readings or more,
        when given) as chunks, one per transaction (or charger without one), and the newest
        reading per connector of samples without a transaction; delete them from the log.
        Returns how many readings were folded (and counts them off ``_logged``) and whether
        log rows stay. A charger's readings are all in one table and a fold takes the oldest,
        so folding tables in any order, whole or a prefix at a time, keeps every charger's
        order; chunks are numbered by fold (``fold_seq``), so they keep it too."""
        plan = self._plan_fold(conn, b, limit)
        if plan is None:
            return 0, False
        return self._apply_fold(conn, plan, False), plan[2]

    def _plan_fold(self, conn: sqlite3.Connection, b: int, limit: int | None) -> tuple | None:
        """A fold's reads and packing (no write): None with an empty table."""
        rows, folded, last, more, span = _take(conn, _LOGS[b].take, _LOGS[b].table, limit, packed=True)
        if last is None:
            return None
        chunks, lasts = _packed_rows("fold", _LOGS[b].table, rows)
        return b, last, more, span, folded, chunks, lasts

    def _apply_fold(self, conn: sqlite3.Connection, plan: tuple, planned_apart: bool) -> int:
        """A fold's writes, in the caller's write transaction; returns the readings folded.
        ``planned_apart``: as for ``_apply_move`` (another fold, or a batch's, took the rows:
        0)."""
        b, last, more, span, folded, chunks, lasts = plan
        sql = _LOGS[b]
        if planned_apart and tuple(conn.execute(sql.span, (last,)).fetchone()) != span:
            return 0
        seq = conn.execute(_FOLD_SEQ).fetchone()[0]
        conn.executemany(migrations.CHUNK_INSERT, [
            (charger, tx, seq, *summary, n, data) for charger, tx, summary, n, data in chunks])
        if lasts:
            conn.executemany(_LAST_READING, lasts)
        if more or planned_apart:  # rows logged since a plan read apart are kept
            conn.execute(sql.drop_prefix, (last,))
        else:
            conn.execute(sql.empty)
        self._logged = max(0, self._logged - folded)
        return folded

    def _ensure_tx(self, charger_id: str, tx_id: str, kind: int) -> bool:
        return self._tx_conn.execute(_TX_ENSURE, (charger_id, tx_id, kind)).rowcount == 1

    def _start(self, o: StartTransaction) -> str:
        conn = self._tx_conn
        started = _us(o.started_at)
        tx = conn.execute(_START_KEY, (o.charger_id, o.connector_id, o.id_tag, float(o.meter_start_wh),
                                       started, o.tx_id)).fetchall()[0][0]
        if tx == o.tx_id:
            self._ensure_tx(o.charger_id, tx, 16)
            conn.execute(_START_TX, (o.charger_id, tx, o.connector_id, o.id_tag, float(o.meter_start_wh),
                                     started, o.reservation_id))
        return tx

    def _stop(self, o: StopTransaction) -> bool:
        conn = self._tx_conn
        args = (o.charger_id, o.tx_id, float(o.meter_stop_wh), _us(o.stopped_at), o.reason, o.id_tag)
        if conn.execute(_STOP_OPEN, args).rowcount == 1:
            return True
        if self._ensure_tx(o.charger_id, o.tx_id, 16):  # unknown: recorded as a closed transaction
            conn.execute(_STOP_OPEN, args)
        return False

    def _event(self, o: TransactionEvent) -> bool:
        conn = self._tx_conn
        at = _us(o.at)
        if conn.execute(_EVENT_SEQ, (o.charger_id, o.tx_id, o.seq_no, o.event_type, o.trigger_reason,
                                     at)).rowcount == 0:
            return False
        ended = o.event_type == "Ended"
        self._ensure_tx(o.charger_id, o.tx_id, 20)
        conn.execute(_EVENT_COMMON, (o.charger_id, o.tx_id, at, o.evse_id, o.connector_id, o.id_tag,
                                     1 if ended else 0))
        wh = None if o.energy_wh is None else float(o.energy_wh)
        if wh is not None:
            self._log_rows.append((o.charger_id, o.tx_id, o.connector_id, at, wh, 2 if ended else 1))
            self._logged += 1
            if o.event_type == "Started":
                conn.execute(_EVENT_BEGIN_READING, (o.charger_id, o.tx_id, wh))
        if ended:
            conn.execute(_EVENT_END, (o.charger_id, o.tx_id, at, o.stop_reason, wh))
        return True

    async def allocate_tx_ids(self, count: int) -> tuple[int, int]:
        if not 1 <= count <= TX_ID_MAX:
            raise ValueError(f"count must be 1..{TX_ID_MAX}")
        return await self._run(self._write, lambda conn: self._allocate(conn, count))

    @staticmethod
    def _allocate(conn: sqlite3.Connection, count: int) -> tuple[int, int]:
        first = conn.execute("SELECT next_id FROM tx_id_alloc WHERE name = 'ocpp16'").fetchone()[0]
        if first < 1 or first + count - 1 > TX_ID_MAX:
            first = 1  # wrap: ids of 2^31 transactions ago are long closed
        conn.execute("UPDATE tx_id_alloc SET next_id = ? WHERE name = 'ocpp16'", (first + count,))
        return first, first + count - 1

    # -- reads -----------------------------------------------------------------------

    async def get_charger(self, charger_id: str) -> dict | None:
        return await self._run(self._read, lambda conn: self._get_charger(conn, charger_id), charger_id)

    def _get_charger(self, conn: sqlite3.Connection, charger_id: str) -> dict | None:
        row = conn.execute("SELECT charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot "
                           "FROM chargers WHERE charger_id = ?", (charger_id,)).fetchone()
        conns = conn.execute("SELECT evse_id, connector_id, status, error_code, info, at FROM connectors "
                             "WHERE charger_id = ? ORDER BY evse_id, connector_id", (charger_id,)).fetchall()
        readings = conn.execute(_LAST_READINGS, (charger_id,)).fetchall()
        if row is None and not conns and not readings:
            return None
        d = self._charger_dict(row if row is not None else (charger_id, "", "", "", "", "", None, None))
        d["connectors"] = [{"evse_id": e, "connector_id": c, "status": s, "error_code": ec, "info": i,
                            "at": _iso(at)} for e, c, s, ec, i, at in conns]
        d["last_readings"] = [{"connector_id": c, "energy_wh": wh, "at": _iso(at), "tx_id": tx}
                              for c, wh, at, tx in readings]
        return d

    @staticmethod
    def _charger_dict(r: tuple) -> dict:
        return {"id": r[0], "protocol": r[1], "vendor": r[2], "model": r[3], "serial": r[4], "firmware": r[5],
                "last_seen": _iso(r[6]), "last_boot": _iso(r[7])}

    async def list_chargers(self) -> list[dict]:
        rows = await self._run(lambda: self._db.execute(
            "SELECT charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot "
            "FROM chargers ORDER BY charger_id").fetchall())
        return [self._charger_dict(r) for r in rows]

    async def list_transactions(self, charger_id: str | None = None, active: bool | None = None,
                                limit: int = 1000) -> list[dict]:
        where, args = [], []
        if charger_id is not None:
            where.append("charger_id = ?")
            args.append(charger_id)
        if active is not None:
            where.append("stopped_at IS NULL" if active else "stopped_at IS NOT NULL")
        page = "SELECT * FROM transactions"
        if where:
            page += " WHERE " + " AND ".join(where)
        # the page first: readings are derived for its rows only
        sql = f"WITH page AS MATERIALIZED ({page} {_TX_ORDER} LIMIT ?) {_TX_SELECT.format('page')} {_TX_ORDER}"
        args.append(max(0, int(limit)))
        if charger_id is None:
            await self._fold_in_steps()
        rows = await self._run(self._read, lambda conn: conn.execute(sql, args).fetchall(), charger_id)
        return [_tx_dict(r) for r in rows]

    async def _fold_in_steps(self) -> None:
        """Before a read across chargers: fold the log one table per transaction, so the
        batches committed meanwhile wait for one table's fold at most, not for the whole
        log's; the read itself then folds only what was logged since, in its transaction."""
        await self._run(self._move_if_pending)
        for b in range(READING_LOGS):
            await self._run(self._fold_if_pending, b)

    def _move_if_pending(self) -> None:
        if self._db.execute(_INBOX_PENDING).fetchone()[0]:
            self._write_relaxed(self._move_inbox)

    def _fold_if_pending(self, b: int) -> None:
        if self._db.execute(_LOGS[b].pending).fetchone()[0]:
            self._write_relaxed(lambda conn: self._fold_bucket(conn, b))

    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None:
        row = await self._run(self._read, lambda conn: conn.execute(_TX_GET, (charger_id, tx_id)).fetchone(),
                              charger_id)
        return None if row is None else _tx_dict(row)

    async def list_meter_samples(self, charger_id: str, tx_id: str, limit: int = 10000) -> list[dict]:
        chunks = await self._run(self._read, lambda conn: conn.execute(
            _CHUNK_ROWS, (charger_id, tx_id)).fetchall(), charger_id)
        first: dict[tuple[int, int], float] = {}  # a key's sample is its first reading
        for (data,) in chunks:
            try:
                readings = unpack_chunk(data)
            except msgspec.DecodeError as e:  # only a damaged file or a foreign writer
                raise StoreError(f"sqlite: a meter_chunks row of {charger_id!r} is unreadable: {e}") from e
            for connector, at, wh, _ in readings:
                first.setdefault((at, connector), wh)
        keys = sorted(first)[:max(0, int(limit))]
        return [{"connector_id": c, "at": _iso(at), "energy_wh": first[at, c]} for at, c in keys]

    # -- authorization list ----------------------------------------------------------

    async def get_id_tag(self, tag: str) -> str | None:
        row = await self._run(lambda: self._db.execute(
            "SELECT status, expiry FROM id_tags WHERE tag = ?", (tag,)).fetchone())
        if row is None:
            return None
        status, expiry = row
        if expiry is not None and expiry < time.time_ns() // 1000 and status == "Accepted":
            return "Expired"
        return status

    async def put_id_tag(self, tag: str, status: str, expiry: dt.datetime | None = None) -> None:
        args = (tag, status, None if expiry is None else _us(expiry))
        await self._run(self._write, lambda conn: conn.execute(
            "INSERT INTO id_tags (tag, status, expiry) VALUES (?, ?, ?) ON CONFLICT (tag) DO UPDATE SET "
            "status = excluded.status, expiry = excluded.expiry", args))

    async def delete_id_tag(self, tag: str) -> bool:
        return await self._run(self._write, lambda conn: conn.execute(
            "DELETE FROM id_tags WHERE tag = ?", (tag,)).rowcount > 0)
