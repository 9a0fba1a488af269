"""One batch's transaction: the write path a batch of ops takes, and the write transaction
every writer of the store uses.

* A batch is one ``BEGIN IMMEDIATE … COMMIT``; runs of consecutive ops of the same bulk type
  (MeterSample, ChargerSeen, ConnectorStatus, UpsertCharger) go through ``executemany`` on
  cached prepared statements. Its readings become log rows (``store/logrows.py``), checked, and
  packed into one row of the readings' inbox (``readings.py`` moves and folds them later).
* A batch of up to ``LOOP_BATCH_MAX`` ops commits right on the event loop's thread, on a
  connection of its own, instead of going to the store thread and back (two thread
  switches, more CPU and latency at partial load). With the WAL's sync thread running it
  commits at NORMAL, and its durability future is done once a sync covered it
  (``wal.Wal.durable``). If the file's write lock is taken (a fold for a read, another
  process) it does not wait: the batch goes to the store thread, as larger ones do.
* Several processes may share the file: ``busy_timeout`` waits for the write lock, and
  1.6 transaction ids come from a counter row bumped inside ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any, Awaitable, Callable, Iterator

from ..base import (ChargerSeen, ConnectorStatus, MeterSample, Op, StartTransaction, StopTransaction, StoreError,
                    TransactionEvent, UpsertCharger, to_us)
from . import sql
from .readings import ROWS, Readings, packed
from .wal import Wal

__all__ = ["Batches", "LOCK_TAKEN", "TX_ID_MAX", "not_open", "store_errors"]

TX_ID_MAX = 2**31 - 1  # positive signed 32-bit: what every 1.6 charger can hold
LOCK_TAKEN = object()  # on_loop: the write lock was taken, nothing done
_checked = ROWS.checked
_sample_rows = ROWS.sample_rows
_run_end = ROWS.run_end


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """SQLite's exceptions, and those of an op the schema cannot hold, as StoreError."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.Error as e:
        raise StoreError(f"sqlite: {e}") from e
    except (TypeError, ValueError, OverflowError) as e:  # an op the schema cannot hold
        raise StoreError(f"sqlite: bad operation: {e!r}") from e


class Batches:
    """The write path of one store. ``conn`` (the store thread's connection), ``loop_conn``
    (the event loop's, or None) and ``run`` (runs a function on the store thread) are set
    when the store opens."""

    LOOP_BATCH_MAX = 128  # ops: a batch this small commits on the event loop's thread

    def __init__(self, synchronous: str, readings: Readings, wal: Wal) -> None:
        self.synchronous = synchronous
        self.readings = readings
        self.wal = wal
        self.conn: sqlite3.Connection | None = None
        self.loop_conn: sqlite3.Connection | None = None
        self.run: Callable[..., Awaitable[Any]] = not_open
        self._tx_conn: Any = None  # the connection of the batch being applied (its ops' statements)
        self._log_rows: list[tuple] = []  # the log rows of the batch being applied, in order
        self._single: dict[type, Callable[[Any], Any]] = {
            StartTransaction: self._start, StopTransaction: self._stop, TransactionEvent: self._event}
        self._bulk: dict[type, Callable[[list], None]] = {
            MeterSample: self._samples, ChargerSeen: self._seen, ConnectorStatus: self._statuses,
            UpsertCharger: self._chargers}

    @property
    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError("store is not open")
        return self.conn

    # -- a batch ---------------------------------------------------------------------

    async def apply_then(self, ops: list[Op]) -> tuple[list[Any], asyncio.Future | None]:
        """``Store.apply_then``: the batch committed, and a future done once a sync of the WAL
        covered it (None: durable already)."""
        if not ops:
            return [], None

        def apply(c: sqlite3.Connection) -> list[Any]:
            return self.apply_ops(c, ops)
        wal = self.wal
        if self.loop_conn is not None and len(ops) <= self.LOOP_BATCH_MAX:
            if wal.restarts():  # it syncs the WAL's new header: not on the loop
                if wal.walsync is None:
                    return await self.run(self.write, apply), None
                result = await self.run(self.write_relaxed, apply)
                return result, wal.durable()  # synced like the loop's, by the sync thread
            result = self.on_loop(self.write, apply)
            if result is not LOCK_TAKEN:
                wal.batches_on_loop = True
                return result, (None if wal.walsync is None else wal.durable())
        wal.batches_on_loop = False
        return await self.run(self.write, apply), None

    def apply_ops(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        """The batch's statements, inside its transaction; one result per op."""
        self._tx_conn = conn
        results: list[Any] = [None] * len(ops)
        self._log_rows = log_rows = []
        i, n = 0, len(ops)
        while i < n:
            t = type(ops[i])
            bulk = self._bulk.get(t)
            if bulk is not None:
                j = _run_end(ops, i)
                bulk(ops[i:j])
                i = j
                continue
            single = self._single.get(t)
            if single is None:
                raise StoreError(f"not a store operation: {t.__name__}")
            results[i] = single(ops[i])
            i += 1
        readings = self.readings
        if log_rows:
            self._log(conn, log_rows)
        if readings.logged >= readings.fold_rows:  # fold one log table: a short pause, not one for the whole log
            readings.fold_some(conn)
        return results

    def _log(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """Append a batch's log rows: as one inbox row (its bytes in the WAL, instead of a page
        per log table it touches); with ``INBOX_MAX`` readings in the inbox (or
        ``INBOX_BATCH`` in the batch), as one packed row per log table they fall in, in
        order, after moving the inbox (older rows) there."""
        _checked(rows)
        readings = self.readings
        n = len(rows)
        readings.logged += n
        readings.batch_readings += (n - readings.batch_readings) * 0.125
        if n < readings.INBOX_BATCH and readings.inboxed < readings.INBOX_MAX:
            conn.execute(sql.INBOX_ADD, (n, packed(rows)))
            readings.inboxed += n
            return
        readings.move_inbox(conn)  # one query when the inbox is empty (other processes' rows included)
        readings.append(conn, rows)

    # -- the ops' statements ---------------------------------------------------------

    def _chargers(self, run: list[UpsertCharger]) -> None:
        now = time.time_ns() // 1000
        self._tx_conn.executemany(sql.UPSERT_CHARGER, [
            (o.charger_id, o.protocol, o.vendor, o.model, o.serial, o.firmware,
             to_us(o.at) if o.at is not None else now) for o in run])

    def _seen(self, run: list[ChargerSeen]) -> None:
        self._tx_conn.executemany(sql.CHARGER_SEEN, [(o.charger_id, to_us(o.at)) for o in run])

    def _statuses(self, run: list[ConnectorStatus]) -> None:
        self._tx_conn.executemany(sql.CONNECTOR_STATUS, [
            (o.charger_id, o.evse_id, o.connector_id, o.status, o.error_code, o.info, to_us(o.at)) for o in run])

    def _samples(self, run: list[MeterSample]) -> None:
        _sample_rows(run, self._log_rows)

    def _ensure_tx(self, charger_id: str, tx_id: str, kind: int) -> bool:
        return self._tx_conn.execute(sql.TX_ENSURE, (charger_id, tx_id, kind)).rowcount == 1

    def _start(self, o: StartTransaction) -> str:
        conn = self._tx_conn
        started = to_us(o.started_at)
        tx = conn.execute(sql.START_KEY, (o.charger_id, o.connector_id, o.id_tag, float(o.meter_start_wh),
                                          started, o.tx_id)).fetchall()[0][0]
        if tx == o.tx_id:
            self._ensure_tx(o.charger_id, tx, 16)
            conn.execute(sql.START_TX, (o.charger_id, tx, o.connector_id, o.id_tag, float(o.meter_start_wh),
                                        started, o.reservation_id))
        return tx

    def _stop(self, o: StopTransaction) -> bool:
        conn = self._tx_conn
        args = (o.charger_id, o.tx_id, float(o.meter_stop_wh), to_us(o.stopped_at), o.reason, o.id_tag)
        if conn.execute(sql.STOP_OPEN, args).rowcount == 1:
            return True
        if self._ensure_tx(o.charger_id, o.tx_id, 16):  # unknown: recorded as a closed transaction
            conn.execute(sql.STOP_OPEN, args)
        return False

    def _event(self, o: TransactionEvent) -> bool:
        conn = self._tx_conn
        at = to_us(o.at)
        if conn.execute(sql.EVENT_SEQ, (o.charger_id, o.tx_id, o.seq_no, o.event_type, o.trigger_reason,
                                        at)).rowcount == 0:
            return False
        ended = o.event_type == "Ended"
        self._ensure_tx(o.charger_id, o.tx_id, 20)
        conn.execute(sql.EVENT_COMMON, (o.charger_id, o.tx_id, at, o.evse_id, o.connector_id, o.id_tag,
                                        1 if ended else 0))
        wh = None if o.energy_wh is None else float(o.energy_wh)
        if wh is not None:
            self._log_rows.append((o.charger_id, o.tx_id, o.connector_id, at, wh, 2 if ended else 1))
            if o.event_type == "Started":
                conn.execute(sql.EVENT_BEGIN_READING, (o.charger_id, o.tx_id, wh))
        if ended:
            conn.execute(sql.EVENT_END, (o.charger_id, o.tx_id, at, o.stop_reason, wh))
        return True

    @staticmethod
    def allocate(conn: sqlite3.Connection, count: int) -> tuple[int, int]:
        """``count`` 1.6 transaction ids, inside a write transaction."""
        first = conn.execute(sql.TX_ID_NEXT).fetchone()[0]
        if first < 1 or first + count - 1 > TX_ID_MAX:
            first = 1  # wrap: ids of 2^31 transactions ago are long closed
        conn.execute(sql.TX_ID_TAKE, (first + count,))
        return first, first + count - 1

    # -- the write transaction -------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection | None = None) -> Any:
        """``fn(conn)`` in one write transaction of ``conn`` (the store thread's by default)."""
        conn = self.db if conn is None else conn
        self.wal.writing(conn)
        conn.execute("BEGIN IMMEDIATE")
        readings = self.readings
        counters = readings.logged, readings.inboxed  # they follow the transaction: restored on rollback
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            readings.logged, readings.inboxed = counters
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def write_relaxed(self, fn: Callable[[sqlite3.Connection], Any], conn: sqlite3.Connection | None = None) -> Any:
        """``write`` committed at ``synchronous=NORMAL``, without waiting for the disk: for a
        transaction that only moves durable rows (a fold), which the next synced COMMIT
        covers and losing which loses nothing; or for a batch the WAL's sync thread then
        syncs (``wal.Wal.durable``)."""
        conn = self.db if conn is None else conn
        relaxed = self.synchronous != "NORMAL" and not (conn is self.loop_conn and self.wal.walsync is not None)
        if relaxed:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            return self.write(fn, conn)
        finally:
            if relaxed:
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def on_loop(self, write: Callable[..., Any], fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``write(fn, conn)`` (``write`` or ``write_relaxed``) on the loop's connection,
        right here; ``LOCK_TAKEN`` when BEGIN IMMEDIATE found the file's write lock taken
        (nothing was done: the store thread, which waits for the lock, is the caller's
        fallback)."""
        conn = self.loop_conn
        with store_errors():
            try:
                return write(fn, conn)
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or conn.in_transaction:
                    raise
        return LOCK_TAKEN


async def not_open(*args: Any) -> Any:
    """``Batches.run`` while the store is not open."""
    raise StoreError("store is not open")
