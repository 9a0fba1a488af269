"""The SQLite store: the embedded default, one file shared by every process of a node.

``SqliteStore`` is the facade the rest of Chargeyard sees (``base.Store``); its parts are
the modules beside it:

* ``batch.py``: one batch's transaction, the write path of every message that writes;
* ``wal.py``: the WAL's settings, its checkpoints, and the sync that makes a batch durable;
* ``readings.py``: readings from the inbox to the log tables to chunks (``store/logrows.py``
  and its compiled twin ``store/_logrows.pyx`` do the per-reading work, and hold the rows'
  packed format);
* ``reads.py``: the operator API's reads;
* ``outbox.py``: the events outbox each batch writes (with ``outbox=<worker id>``) and the
  relay reads;
* ``sql.py``: the statements (the schema: ``store/migrations.py``).

Four threads: the event loop commits small batches on a connection of its own; the store
thread (a single-thread executor that owns the main connection) commits large batches and
runs the reads and the folds; the WAL's sync thread (``store/walsync.py``,
compiled ``store/_walsync.pyx``) syncs for the loop's batches; the checkpoint thread copies the WAL into the database file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Coroutine

from ..base import Op, Store, StoreError, from_us, to_us
from ..chargers import ChargerCredentialStore, ChargerCredentials, SecurityEvent
from .. import migrations
from . import outbox, reads, sql
from .batch import LOCK_TAKEN, TX_ID_MAX, Batches, not_open, store_errors
from ..logrows import READING_LOGS
from .readings import Readings
from .wal import Wal, configure, use_wal

__all__ = ["SqliteStore"]

log = logging.getLogger("chargeyard.store.sqlite")


class SqliteStore(Store, ChargerCredentialStore):
    """``SqliteStore(path, *, synchronous="FULL", busy_timeout=10.0, fold_rows=FOLD_ROWS,
    idle_fold_rows=IDLE_FOLD_ROWS, outbox=None)``: :meth:`maintain` (the writer calls it when it has no
    batch waiting, and every few milliseconds under load), with ``idle_fold_rows`` readings
    logged by this store, moves or folds a slice of the reading log in a transaction of its
    own. With ``fold_rows`` (a writer that never calls it), each batch folds one whole log
    table inside its transaction (``readings.py``)."""

    FOLD_ROWS = Readings.FOLD_ROWS
    IDLE_FOLD_ROWS = Readings.IDLE_FOLD_ROWS
    CLOSE_BUSY_S = 1.0  # at close, the longest wait for another connection's write lock

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 10.0, fold_rows: int = FOLD_ROWS,
                 idle_fold_rows: int | None = None, outbox: str | None = None) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA (OFF would lose commits)")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.readings = Readings(fold_rows, idle_fold_rows)
        self.wal = Wal(self.path, self.synchronous, busy_timeout)
        self.batches = Batches(self.synchronous, self.readings, self.wal)
        self.batches.outbox = outbox
        self._executor: ThreadPoolExecutor | None = None

    # Two knobs of the parts, settable on the store (the writer's tests shrink them).
    @property
    def IDLE_FOLD_SLICE(self) -> int:  # noqa: N802
        return self.readings.IDLE_FOLD_SLICE

    @IDLE_FOLD_SLICE.setter
    def IDLE_FOLD_SLICE(self, rows: int) -> None:  # noqa: N802
        self.readings.IDLE_FOLD_SLICE = rows

    @property
    def LOOP_BATCH_MAX(self) -> int:  # noqa: N802
        return self.batches.LOOP_BATCH_MAX

    @LOOP_BATCH_MAX.setter
    def LOOP_BATCH_MAX(self, ops: int) -> None:  # noqa: N802
        self.batches.LOOP_BATCH_MAX = ops

    # -- lifecycle -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the store thread."""
        if self._executor is None:
            raise StoreError("store is not open")
        with store_errors():
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
        self.batches.run = self._run
        self.wal.start(self.batches.loop_conn)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            use_wal(conn, self.path, self.busy_timeout)
            configure(conn, self.synchronous)
            migrations.migrate(conn)
            self.readings.count(conn)
            # the event loop's: it never waits for the write lock (busy timeout 0: the batch
            # then goes to the store thread), the rest as above
            loop_conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                        check_same_thread=False, cached_statements=256)
            try:
                configure(loop_conn, self.synchronous)
            except BaseException:
                loop_conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        self.batches.conn, self.batches.loop_conn = conn, loop_conn

    async def close(self) -> None:
        if self._executor is None:
            return
        await self.wal.stop()
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None
            self.batches.run = not_open
            self.wal.close_files()  # after the connections

    def _close_sync(self) -> None:
        """Fold what is logged and let SQLite optimize, both only if the write lock comes
        within ``CLOSE_BUSY_S``: another process may hold it (a cluster's workers stop
        together). Either left undone loses nothing (the log is folded by the next open's
        reads); a close never fails for it."""
        batches = self.batches
        if batches.loop_conn is not None:
            loop_conn, batches.loop_conn = batches.loop_conn, None
            loop_conn.close()
        conn = batches.conn
        if conn is None:
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(min(self.busy_timeout, self.CLOSE_BUSY_S) * 1000)}")
            try:
                if self.readings.pending(conn, None):
                    batches.write(self.readings.fold_all)
            except (sqlite3.Error, StoreError) as e:
                log.warning("sqlite: the reading log is left for the next open to fold (%s)", e)
            try:
                conn.execute("PRAGMA optimize")
            except sqlite3.Error as e:
                log.warning("sqlite: PRAGMA optimize skipped at close (%s)", e)
        finally:
            batches.conn = None
            conn.close()

    async def schema_version(self) -> int:
        return await self._run(lambda: migrations.current_version(self.batches.db))

    # -- writes ----------------------------------------------------------------------

    async def apply(self, ops: list[Op]) -> list[Any]:
        """One transaction, durable when this returns (``batch.py``)."""
        results, durable = await self.apply_then(ops)
        if durable is not None:
            await durable
        return results

    def apply_then(self, ops: list[Op]) -> Coroutine[Any, Any, tuple[list[Any], asyncio.Future | None]]:
        """``apply``, returning as soon as the batch is committed, with a future done once a
        sync of the WAL covered it (None: durable already), so that the writer commits the
        next batch while the disk syncs this one: ``batch.Batches.apply_then``'s coroutine,
        handed over as it is (no coroutine of its own here)."""
        return self.batches.apply_then(ops)

    @property
    def deferred_rows(self) -> int:
        return self.readings.logged

    def maintenance_due(self) -> bool:
        return self._executor is not None and self.readings.due()

    def maintenance_overlaps(self) -> bool:
        return self.batches.loop_conn is not None and self.wal.batches_on_loop

    async def maintain(self) -> int:
        """Move the inbox's oldest readings into the log tables, or fold a log table's
        oldest ``IDLE_FOLD_SLICE``, in a transaction of its own committed without waiting for
        the disk: both only move readings that are already durable, so losing one to a power
        cut loses nothing (the rows are back where they were), and the next batch's COMMIT
        syncs the WAL up to and including it. While batches commit on the loop, the slice's
        reads and packing run on the store thread apart from the write lock, and only its
        writes take a transaction. Returns the readings moved or folded."""
        if not self.maintenance_due():
            return 0
        batches = self.batches
        if not self.maintenance_overlaps():
            return await self._run(batches.write_relaxed, self.readings.slice_in_place)
        apply = await self._run(self._plan_slice)
        result = LOCK_TAKEN if self.wal.restarts() else batches.on_loop(batches.write_relaxed, apply)
        if result is LOCK_TAKEN:  # a batch on the store thread, a read, another process
            result = await self._run(batches.write_relaxed, apply)
        return result

    def _plan_slice(self) -> Callable[[sqlite3.Connection], int]:
        return self.readings.plan_slice(self.batches.db)

    async def allocate_tx_ids(self, count: int) -> tuple[int, int]:
        if not 1 <= count <= TX_ID_MAX:
            raise ValueError(f"count must be 1..{TX_ID_MAX}")
        return await self._run(self.batches.write, lambda conn: Batches.allocate(conn, count))

    # -- the events outbox (store/events.py) -----------------------------------------
    # The relay's side; each batch writes its events in its own transaction (batch.py).

    async def outbox_read(self, after_seq: int, limit: int, upto: int | None = None) -> list:
        """``upto``: only rows with ``seq <= upto`` (the relay's synced watermark)."""
        worker = self.batches.outbox
        if worker is None:
            return []

        def read(conn: sqlite3.Connection) -> list:
            return outbox.read(conn, worker, max(after_seq, outbox.published(conn, worker)), limit, upto)
        return await self._run(lambda: read(self.batches.db))

    def outbox_head(self) -> int | None:
        """The last outbox seq committed, read on the loop's connection: the writer calls it
        right after a batch's COMMIT, so once that batch is synced every row up to it is
        (a sync of the WAL covers every earlier frame). None without an outbox."""
        worker, conn = self.batches.outbox, self.batches.loop_conn
        if worker is None or conn is None:
            return None
        return outbox.head(conn, worker)

    async def outbox_durable_head(self) -> int | None:
        """The relay's first watermark: the last outbox seq committed, made durable by one
        fdatasync of the WAL (rows left by an earlier process may be in the page cache
        only). None without an outbox."""
        worker = self.batches.outbox
        if worker is None or self.batches.loop_conn is None:
            return None

        def op() -> int:
            seq = outbox.head(self.batches.db, worker)
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # no WAL: everything is in the database file
                return seq
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return seq
        return await self._run(op)

    async def outbox_mark_published(self, upto_seq: int) -> None:
        worker = self.batches.outbox
        if worker is not None:
            await self._run(self.batches.write, lambda conn: outbox.mark(conn, worker, upto_seq))

    async def outbox_spooled(self) -> int:
        worker = self.batches.outbox
        if worker is None:
            return 0
        return await self._run(lambda: outbox.spooled(self.batches.db, worker))

    # -- reads -----------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any], charger_id: str | None = None) -> Any:
        """A read that looks at samples or readings (of one charger, or of all): when the log
        holds rows for them (this or another process's), their log table (or every table) is
        folded first, and the read runs in the fold's transaction."""
        conn, readings = self.batches.db, self.readings
        if not readings.pending(conn, charger_id):
            return fn(conn)

        def fold_then_read(conn: sqlite3.Connection) -> Any:
            readings.fold_for(conn, charger_id)
            return fn(conn)
        return self.batches.write(fold_then_read)

    async def get_charger(self, charger_id: str) -> dict | None:
        return await self._run(self._read, lambda conn: reads.charger(conn, charger_id), charger_id)

    async def list_chargers(self) -> list[dict]:
        return await self._run(lambda: reads.chargers(self.batches.db))

    async def list_transactions(self, charger_id: str | None = None, active: bool | None = None,
                                limit: int = 1000) -> list[dict]:
        if charger_id is None:
            await self._fold_in_steps()
        return await self._run(self._read, lambda conn: reads.transactions(conn, charger_id, active, limit),
                               charger_id)

    async def list_chargers_page(self, limit: int = 100, cursor: str | None = None) -> tuple[list[dict], str | None]:
        key = reads.decode_cursor(cursor, reads.CHARGER_CURSOR)  # ValueError here, not as a StoreError
        return await self._run(lambda: reads.chargers_page(self.batches.db, limit, key))

    async def list_transactions_page(self, charger_id: str | None = None, active: bool | None = None,
                                     limit: int = 100, cursor: str | None = None
                                     ) -> tuple[list[dict], str | None]:
        key = reads.tx_cursor(charger_id, cursor)
        if charger_id is None:
            await self._fold_in_steps()
        return await self._run(self._read, lambda conn: reads.transactions_page(conn, charger_id, active, limit, key),
                               charger_id)

    async def _fold_in_steps(self) -> None:
        """Before a read across chargers: fold the log one table per transaction, so the
        batches committed meanwhile wait for one table's fold at most, not for the whole
        log's; the read itself then folds only what was logged since, in its transaction."""
        await self._run(self._move_if_pending)
        for b in range(READING_LOGS):
            await self._run(self._fold_if_pending, b)

    def _move_if_pending(self) -> None:
        if self.batches.db.execute(sql.INBOX_PENDING).fetchone()[0]:
            self.batches.write_relaxed(self.readings.move_inbox)

    def _fold_if_pending(self, b: int) -> None:
        if self.batches.db.execute(sql.LOGS[b].pending).fetchone()[0]:
            self.batches.write_relaxed(lambda conn: self.readings.fold_table(conn, b))

    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None:
        return await self._run(self._read, lambda conn: reads.transaction(conn, charger_id, tx_id), charger_id)

    async def list_meter_samples(self, charger_id: str, tx_id: str, limit: int = 10000) -> list[dict]:
        chunks = await self._run(self._read, lambda conn: reads.chunks(conn, charger_id, tx_id), charger_id)
        return reads.meter_samples(chunks, charger_id, limit)

    # -- authorization list ----------------------------------------------------------

    async def get_id_tag(self, tag: str) -> str | None:
        return await self._run(lambda: reads.id_tag_status(self.batches.db, tag))

    async def list_id_tags(self, after: str | None = None, limit: int = 1000) -> list[dict]:
        if int(limit) <= 0:
            return []
        return await self._run(lambda: reads.id_tags(self.batches.db, after, limit))

    async def put_id_tag(self, tag: str, status: str, expiry: dt.datetime | None = None) -> None:
        args = (tag, status, None if expiry is None else to_us(expiry))
        await self._run(self.batches.write, lambda conn: conn.execute(sql.ID_TAG_PUT, args))

    async def delete_id_tag(self, tag: str) -> bool:
        return await self._run(self.batches.write, lambda conn: conn.execute(sql.ID_TAG_DELETE, (tag,)).rowcount > 0)

    # -- charger credentials and security events (store/chargers.py) -----------------

    async def get_charger_credentials(self, charger_id: str) -> ChargerCredentials | None:
        row = await self._run(lambda: self.batches.db.execute(sql.CREDS_GET, (charger_id,)).fetchone())
        if row is None:
            return None
        return ChargerCredentials(charger_id=row[0], security_profile=row[1], password_hash=row[2],
                                  pending_password_hash=row[3], previous_password_hash=row[4], verifier=row[5])

    async def put_charger_credentials(self, creds: ChargerCredentials) -> None:
        args = (creds.charger_id, creds.security_profile, creds.password_hash, creds.pending_password_hash,
                creds.previous_password_hash, creds.verifier, to_us(dt.datetime.now(dt.timezone.utc)))
        await self._run(self.batches.write, lambda conn: conn.execute(sql.CREDS_PUT, args))

    async def put_charger_verifier(self, charger_id: str, verifier: str) -> None:
        await self._run(self.batches.write,
                        lambda conn: conn.execute(sql.CREDS_VERIFIER_PUT, (verifier, charger_id)))

    async def delete_charger_credentials(self, charger_id: str) -> bool:
        return await self._run(self.batches.write,
                               lambda conn: conn.execute(sql.CREDS_DELETE, (charger_id,)).rowcount > 0)

    async def registered_charger_ids(self, limit: int = 10_000) -> list[str]:
        rows = await self._run(lambda: self.batches.db.execute(sql.CREDS_IDS, (limit,)).fetchall())
        return [r[0] for r in rows]

    async def add_security_event(self, event: SecurityEvent) -> None:
        args = (event.charger_id, event.type, event.at, event.tech_info, to_us(dt.datetime.now(dt.timezone.utc)))
        await self._run(self.batches.write, lambda conn: conn.execute(sql.SECURITY_EVENT_ADD, args))

    async def list_security_events(self, charger_id: str, limit: int = 100) -> list[SecurityEvent]:
        rows = await self._run(lambda: self.batches.db.execute(sql.SECURITY_EVENTS, (charger_id, limit)).fetchall())
        return [SecurityEvent(charger_id=r[0], type=r[1], at=r[2], tech_info=r[3], received_at=from_us(r[4]) or "")
                for r in rows]
