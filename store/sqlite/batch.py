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
* With an outbox (``outbox`` = the worker id), the events the batch's ops report
  (``store/events.py``'s ``from_op``, encoded by ``store/outbox_encoding.py``: compiled, ADR 0021) are
  written in the same transaction (``outbox.py``): none for a batch that fails, all of
  those that committed.
* Several processes may share the file: ``busy_timeout`` waits for the write lock, and
  1.6 transaction ids come from a counter row bumped inside ``BEGIN IMMEDIATE``.
* Fenced writes (ADR 0016): a ``Fence`` op records a connection's ownership epoch in
  ``charger_epochs`` and bumps ``fence_gen``; every batch of a store that holds epochs reads
  ``fence_gen`` first, inside its transaction, and only when it moved reads the rows raised
  since, marking the chargers another process fenced as stale. Only while some charger is
  stale does a batch look at its ops one by one, refusing that charger's (``StaleEpoch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any, Awaitable, Callable, Iterator

from ..base import (ChargerSeen, ConnectorStatus, Fence, MeterSample, Op, StaleEpoch, StartTransaction,
                    StopTransaction, StoreError, TransactionEvent, UpsertCharger, to_us)
from ..events import EVENT_OPS
from ..outbox_encoding import encoded
from . import outbox, sql
from .readings import ROWS, Readings, packed
from .wal import Wal

__all__ = ["Batches", "LOCK_TAKEN", "TX_ID_MAX", "not_open", "store_errors"]

TX_ID_MAX = 2**31 - 1  # positive signed 32-bit: what every 1.6 charger can hold
LOCK_TAKEN = object()  # on_loop: the write lock was taken, nothing done
_MISSING = object()  # an undo entry's "the key was absent"
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
            StartTransaction: self._start, StopTransaction: self._stop, TransactionEvent: self._event,
            Fence: self._fence, **dict.fromkeys(EVENT_OPS, _no_effect)}
        # fencing (ADR 0016): charger -> the epoch this store holds; the subset found stale;
        # the fence_gen whose raises are loaded (-1: none yet); the batch's undo log for them
        self.epochs: dict[str, int] = {}
        self.stale: dict[str, int] = {}
        self.fence_gen = -1
        self._undo: list[tuple[Any, Any, Any]] = []
        self._turned_stale: list[tuple[Fence, str]] = []
        # the worker id whose outbox this store writes the batches' events to (None: no
        # events; store/events.py, outbox.py)
        self.outbox: str | None = None
        # the batch's events as outbox rows: outbox_encoding.encoded, the compiled twin's unless pure
        # (a benchmark sets one twin's ``Rows.outbox_rows`` per store to compare them)
        self.encode_events: Callable[[list, list], list[tuple[str, bytes]]] = encoded
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
        try:
            done = await self._apply_then(apply, len(ops))
        except BaseException:
            self.revert_fences()  # a failed COMMIT (apply_ops restores what it raised in)
            raise
        self._undo = []
        return done

    async def _apply_then(self, apply: Callable[[sqlite3.Connection], list[Any]],
                          n: int) -> tuple[list[Any], asyncio.Future | None]:
        wal = self.wal
        if self.loop_conn is not None and n <= self.LOOP_BATCH_MAX:
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
        """The batch's statements, inside its transaction; one result per op. If it raises,
        the fencing state it changed is restored (``revert_fences``; the caller does it too
        when the COMMIT fails)."""
        self._undo = []
        try:
            return self._apply_ops(conn, ops)
        except BaseException:
            self.revert_fences()
            raise

    def _apply_ops(self, conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
        self._tx_conn = conn
        if self.epochs:  # one read per batch: did any process fence a charger since?
            self._refresh(conn)
            if self.stale:  # a takeover under way: this batch's ops are looked at one by one
                self._refuse_stale(ops)
        results: list[Any] = [None] * len(ops)
        self._log_rows = log_rows = []
        self._turned_stale = []
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
        if self._turned_stale:  # a Fence of this batch was stale at once: refuse what follows it
            self._refuse_after_fences(ops)
        if self.outbox is not None:  # in this transaction: the events are exactly the committed facts
            outbox.write(conn, self.outbox, self.encode_events(ops, results))
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

    # -- fencing (ADR 0016) ------------------------------------------------------------

    def _set(self, d: dict, key: str, value: Any) -> None:
        """``d[key] = value`` (``_MISSING``: delete), undone if the batch fails."""
        self._undo.append((d, key, d.get(key, _MISSING)))
        if value is _MISSING:
            d.pop(key, None)
        else:
            d[key] = value

    def revert_fences(self) -> None:
        """Restore the fencing state the last batch changed (it rolled back)."""
        undo, self._undo = self._undo, []
        for d, key, old in reversed(undo):
            if d is None:
                self.fence_gen = old
            elif old is _MISSING:
                d.pop(key, None)
            else:
                d[key] = old

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Load the epochs raised by any process since ``fence_gen``: chargers whose epoch here
        is lower become stale. One indexed read, and only when the generation moved."""
        gen = conn.execute(sql.FENCE_GEN).fetchone()[0]
        if gen == self.fence_gen:
            return
        if self.epochs and self.fence_gen >= 0:
            epochs = self.epochs
            for cid, epoch in conn.execute(sql.FENCED_SINCE, (self.fence_gen,)).fetchall():
                mine = epochs.get(cid)
                if mine is not None and epoch > mine and cid not in self.stale:
                    self._set(self.stale, cid, mine)
        self._undo.append((None, None, self.fence_gen))
        self.fence_gen = gen

    def _refuse_stale(self, ops: list[Op]) -> None:
        """Raise StaleEpoch naming the batch's ops for stale chargers, if any; a Fence in the
        batch ends its charger's staleness for the ops after it (a new connection here)."""
        stale = dict(self.stale)
        refused: list[int] = []
        names: dict[str, int] = {}
        for i, o in enumerate(ops):
            cid = getattr(o, "charger_id", None)
            if cid not in stale:
                continue
            if type(o) is Fence:
                if not o.release or o.epoch == stale[cid]:
                    del stale[cid]
                continue
            refused.append(i)
            names[cid] = stale[cid]
        if refused:
            raise StaleEpoch(refused, names)

    def _refuse_after_fences(self, ops: list[Op]) -> None:
        refused: list[int] = []
        names: dict[str, int] = {}
        for fence, cid in self._turned_stale:
            at = next(j for j, x in enumerate(ops) if x is fence)
            for j in range(at + 1, len(ops)):
                o = ops[j]
                if type(o) is Fence and o.charger_id == cid:
                    break
                if getattr(o, "charger_id", None) == cid:
                    refused.append(j)
                    names[cid] = self.stale[cid]
        if refused:
            raise StaleEpoch(sorted(refused), names)

    def _fence(self, o: Fence) -> bool:
        cid, epoch = o.charger_id, o.epoch
        if o.release or epoch <= 0:
            if not o.release or self.epochs.get(cid) == epoch:
                self._set(self.epochs, cid, _MISSING)
                self._set(self.stale, cid, _MISSING)
            return True
        conn = self._tx_conn
        self._refresh(conn)  # every raise before ours is loaded: fence_gen may then move to ours
        row = conn.execute(sql.EPOCH_GET, (cid,)).fetchone()
        highest = 0 if row is None else row[0]
        self._set(self.epochs, cid, epoch)
        if highest > epoch:  # claimed again elsewhere before this Fence landed
            self._set(self.stale, cid, epoch)
            self._turned_stale.append((o, cid))
            return False
        if highest < epoch:
            gen = conn.execute(sql.FENCE_BUMP).fetchone()[0]
            conn.execute(sql.EPOCH_PUT, (cid, epoch, gen))
            self._undo.append((None, None, self.fence_gen))
            self.fence_gen = gen
        self._set(self.stale, cid, _MISSING)
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


def _no_effect(op: Any) -> None:
    """An op whose only effect is its event (``store.events.EVENT_OPS``)."""
    return None


async def not_open(*args: Any) -> Any:
    """``Batches.run`` while the store is not open."""
    raise StoreError("store is not open")
