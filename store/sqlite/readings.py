"""The readings' path: inbox -> log tables -> chunks.

* Readings (MeterSamples, and the reading a TransactionEvent carries) are *stored in
  chunks* (``meter_chunks``): one row per transaction (or charger without one) per fold,
  holding its readings packed (``logrows.pack``, arrival order) and their lowest not
  closing, highest and newest, so a transaction's ``meter_start_wh``/``energy_wh`` and last
  reading are derived from its chunks' columns, and a read of its samples unpacks its chunks
  (a key's sample is its first reading; later ones for the same key, e.g. a clock standing
  still, count as readings only). A row per chunk instead of one per reading pays the
  B-tree's per-row work and a charger's leaf write once for many readings.
* On the way there readings wait in a log. A batch appends them packed as one row of
  ``sample_inbox`` (``batch.py``; its bytes in the WAL, not a page per log table it
  touches). The inbox is moved in bulk, oldest first (its rows are newer than theirs), into
  the ``reading_log_<n>`` tables, one packed row per table its readings' chargers fall in
  (``store/logrows.py``: ``READING_LOGS`` tables by CRC-32 of the id, the same in every process): by
  ``maintain()`` once ``move_rows`` wait (``INBOX_MOVE_BATCHES`` batches' worth, so a move
  takes many readings per table under load), before a read, and by a batch once
  ``INBOX_MAX`` wait, which then logs into the tables itself (as does a batch of
  ``INBOX_BATCH`` readings). The moves and folds read the packed rows in C (``store/_logrows.pyx``).
* A table is *folded*: its oldest rows become one chunk per transaction in them (numbered
  by ``fold_seq``, so chunks keep arrival order) and the newest reading per connector of
  samples without a transaction (``last_readings``), and are deleted, in one write
  transaction. Folding is deferred work done between batches: while ``idle_fold_rows``
  readings are logged and not folded, ``maintain()`` (the writer calls it when no batch
  waits, and under load as the deferred work's share) folds the oldest ``IDLE_FOLD_SLICE``
  readings of the next non-empty table (round robin), a short pause. The threshold sets the
  chunks' size: a fold takes what a charger logged since its last one. A writer that calls
  ``maintain()`` too rarely lets the log grow to ``fold_rows``; from there each batch folds
  one whole table inside its transaction.
* Before a read of samples or readings, the charger's table (every table, for a read across
  chargers) is folded while it holds rows (rows other processes logged included: the fold
  reads the tables, under the write lock), so reads see every committed reading; every table
  on close. A read across chargers first folds the tables one transaction each, so batches
  commit in between. A charger's readings are all in one table, so tables fold in any order.
  Log rows commit with their batch and a fold is all or nothing: kill -9 loses nothing, and
  a log left at open is folded by the next read or threshold.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Callable

import msgspec

from ...core import twins
from ..base import StoreError
from .. import logrows
from ..logrows import READING_LOGS, pack, reading_log, unpack_log
from . import sql

__all__ = ["FoldPlan", "MovePlan", "Readings", "ROWS", "packed"]

ROWS = twins.load("chargeyard.store.logrows").Rows  # the per-reading steps, compiled unless pure


class Taken:
    """The oldest packed rows of the inbox or a log table (``take``)."""

    __slots__ = ("rows", "readings", "last", "more", "span")

    def __init__(self, rows: list, readings: int, last: int | None, more: bool, span: tuple) -> None:
        self.rows = rows  # their (key, data) as stored
        self.readings = readings  # how many readings they hold
        self.last = last  # the last key taken, None when nothing was
        self.more = more  # rows stay after them
        # (packed rows, first key, bytes): a transaction that drops rows taken outside it
        # first compares this with what the table holds up to ``last``
        self.span = span


class MovePlan:
    """A move's reads and packing, done before its writes (``apply_move``)."""

    __slots__ = ("taken", "parts")

    def __init__(self, taken: Taken, parts: list) -> None:
        self.taken = taken
        self.parts = parts  # [(table, readings, packed), ...] by table


class FoldPlan:
    """A fold's reads and packing, done before its writes (``apply_fold``)."""

    __slots__ = ("table", "taken", "chunks", "lasts")

    def __init__(self, table: int, taken: Taken, chunks: list, lasts: list) -> None:
        self.table = table
        self.taken = taken
        self.chunks = chunks  # [(charger, tx, summary, readings, packed), ...]: logrows.Rows.fold
        self.lasts = lasts  # [(charger, connector, at, wh), ...]


def take(conn: sqlite3.Connection, statement: str, limit: int | None) -> Taken:
    """The oldest packed rows of the inbox or a log table (``statement`` selects key,
    readings, data in order), holding ``limit`` readings or more (all, without a limit)."""
    rows: list = []
    taken, last, first, count, size = 0, None, None, 0, 0
    cur = conn.execute(statement)
    try:
        for key, n, data in cur:
            if limit is not None and taken >= limit:
                return Taken(rows, taken, last, True, (count, first, size))
            rows.append((key, data))
            taken += n
            last = key
            if first is None:
                first = key
            count += 1
            size += len(data)
    finally:
        cur.close()
    return Taken(rows, taken, last, False, (count, first, size))


def packed(rows: list) -> bytes:
    """Log rows packed, as one inbox or log table row."""
    try:
        return pack(rows)
    except ValueError as e:  # e.g. a lone surrogate in an id
        raise StoreError(f"sqlite: bad operation: a reading cannot be stored: {e}") from e


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
        out = getattr(ROWS, step)(datas, *args)
        return getattr(logrows.Rows, step)(datas, *args) if out is None else out
    except (msgspec.DecodeError, UnicodeDecodeError):
        for key, data in rows:
            _unpacked(table, key, data)  # raises for the first unreadable row
        raise


class Readings:
    """The reading log of one store: its counters (triggers only; the tables are the truth,
    shared by every process) and its moves and folds. Every method that writes runs inside
    the caller's write transaction, whose rollback restores ``logged`` and ``inboxed``."""

    FOLD_ROWS = 192_000
    IDLE_FOLD_ROWS = 64_000
    IDLE_FOLD_SLICE = 1024  # readings (at least: whole log rows) a maintain() fold takes, a table's oldest
    INBOX_BATCH = 1 << 30  # a batch logging fewer readings (every batch) packs them into one inbox row
    INBOX_MOVE_ROWS = 512  # the least inbox readings a move by maintain() takes, oldest first; its trigger
    INBOX_MOVE_BATCHES = 64  # ... or this many batches' worth (their mean), whichever is more,
    INBOX_MOVE_MAX = 16384  # up to this many
    INBOX_MAX = 65536  # with this many in the inbox, a batch moves it and logs into the tables

    def __init__(self, fold_rows: int, idle_fold_rows: int | None) -> None:
        if fold_rows < 1 or (idle_fold_rows is not None and idle_fold_rows < 1):
            raise ValueError("fold_rows and idle_fold_rows must be at least 1")
        self.fold_rows = fold_rows
        self.idle_fold_rows = min(fold_rows, self.IDLE_FOLD_ROWS if idle_fold_rows is None else idle_fold_rows)
        self.logged = 0  # readings this store logged and has not folded
        self.inboxed = 0  # of those, readings in the inbox
        self.batch_readings = 0.0  # readings a batch logs, a moving mean (the size of a move)
        self.next_fold = 0  # the log table the threshold folds next
        self.tables: dict[str, int] = {}  # charger id -> its log table

    def count(self, conn: sqlite3.Connection) -> None:
        """At open: what the log holds (other processes' rows included)."""
        self.logged = conn.execute(sql.LOG_COUNT).fetchone()[0]
        self.inboxed = conn.execute(sql.INBOX_COUNT).fetchone()[0]

    def table_of(self, charger_id: str) -> int:
        return logrows.table(charger_id, self.tables, reading_log)

    @property
    def move_rows(self) -> int:
        """The readings a move by ``maintain()`` takes (at least: whole inbox rows), and its
        trigger: ``INBOX_MOVE_BATCHES`` batches' worth, within ``INBOX_MOVE_ROWS`` and
        ``INBOX_MOVE_MAX``. Under heavy load a move then takes about as many inbox rows as
        under light load, and each log table gets a row of many readings instead of a few,
        which is what makes a move's writes cheap per reading."""
        return int(min(self.INBOX_MOVE_MAX, max(self.INBOX_MOVE_ROWS,
                                                self.INBOX_MOVE_BATCHES * self.batch_readings)))

    def due(self) -> bool:
        """A ``maintain()`` slice has work: an inbox to move, or a log to fold."""
        return self.inboxed >= self.move_rows or self.logged >= self.idle_fold_rows

    # -- into the log tables ---------------------------------------------------------

    def append(self, conn: sqlite3.Connection, rows: list) -> None:
        """Log rows into their tables, one packed row per table, in order."""
        parts = ROWS.split(rows, self.tables, READING_LOGS, reading_log)
        for b, part in enumerate(parts):
            if part:
                conn.execute(sql.LOGS[b].add, (len(part), packed(part)))

    def move_inbox(self, conn: sqlite3.Connection, limit: int | None = None) -> int:
        """Move the inbox's packed rows (the oldest, up to at least ``limit`` readings, when
        given) into the log tables, in order; returns how many readings moved. Inbox rows are
        newer than every log table row, so the tables keep arrival order."""
        plan = self.plan_move(conn, limit)
        if plan is None:
            self.inboxed = 0
            return 0
        return self.apply_move(conn, plan, False)

    def plan_move(self, conn: sqlite3.Connection, limit: int | None) -> MovePlan | None:
        """A move's reads and packing (no write): None with an empty inbox."""
        taken = take(conn, sql.INBOX_TAKE, limit)
        if taken.last is None:
            return None
        return MovePlan(taken, _packed_rows("split_packed", "sample_inbox", taken.rows, READING_LOGS, reading_log))

    def apply_move(self, conn: sqlite3.Connection, plan: MovePlan, planned_apart: bool) -> int:
        """A move's writes, in the caller's write transaction. ``planned_apart``: the plan
        was read outside it, so the inbox may have changed since (a batch or a read moved it,
        another process): nothing is done, 0 returned, unless its rows are still there."""
        taken = plan.taken
        if planned_apart and tuple(conn.execute(sql.INBOX_SPAN, (taken.last,)).fetchone()) != taken.span:
            return 0
        for b, n, data in plan.parts:
            conn.execute(sql.LOGS[b].add, (n, data))
        conn.execute(sql.INBOX_DROP, (taken.last,))
        # batches may have added to the inbox since a plan read apart from this transaction
        moved = taken.readings
        self.inboxed = max(0, self.inboxed - moved) if taken.more or planned_apart else 0
        return moved

    # -- into chunks -----------------------------------------------------------------

    def fold_all(self, conn: sqlite3.Connection) -> None:
        """Fold the whole log (the inbox moved first)."""
        self.move_inbox(conn)
        for b in range(READING_LOGS):
            self.fold_table(conn, b)
        self.logged = 0

    def fold_table(self, conn: sqlite3.Connection, b: int, limit: int | None = None) -> tuple[int, bool]:
        """Store one log table's readings (its oldest rows holding ``limit`` readings or more,
        when given) as chunks, one per transaction (or charger without one), and the newest
        reading per connector of samples without a transaction; delete them from the log.
        Returns how many readings were folded (and counts them off ``logged``) and whether
        log rows stay. A charger's readings are all in one table and a fold takes the oldest,
        so folding tables in any order, whole or a prefix at a time, keeps every charger's
        order; chunks are numbered by fold (``fold_seq``), so they keep it too."""
        plan = self.plan_fold(conn, b, limit)
        if plan is None:
            return 0, False
        return self.apply_fold(conn, plan, False), plan.taken.more

    def plan_fold(self, conn: sqlite3.Connection, b: int, limit: int | None) -> FoldPlan | None:
        """A fold's reads and packing (no write): None with an empty table."""
        taken = take(conn, sql.LOGS[b].take, limit)
        if taken.last is None:
            return None
        chunks, lasts = _packed_rows("fold", sql.LOGS[b].table, taken.rows)
        return FoldPlan(b, taken, chunks, lasts)

    def apply_fold(self, conn: sqlite3.Connection, plan: FoldPlan, planned_apart: bool) -> int:
        """A fold's writes, in the caller's write transaction; returns the readings folded.
        ``planned_apart``: as for ``apply_move`` (another fold, or a batch's, took the rows:
        0)."""
        statements, taken = sql.LOGS[plan.table], plan.taken
        if planned_apart and tuple(conn.execute(statements.span, (taken.last,)).fetchone()) != taken.span:
            return 0
        seq = conn.execute(sql.FOLD_SEQ).fetchone()[0]
        conn.executemany(sql.CHUNK_INSERT, [
            (charger, tx, seq, *summary, readings, data) for charger, tx, summary, readings, data in plan.chunks])
        if plan.lasts:
            conn.executemany(sql.LAST_READING, plan.lasts)
        if taken.more or planned_apart:  # rows logged since a plan read apart are kept
            conn.execute(statements.drop_prefix, (taken.last,))
        else:
            conn.execute(statements.empty)
        self.logged = max(0, self.logged - taken.readings)
        return taken.readings

    def fold_some(self, conn: sqlite3.Connection, limit: int | None = None) -> int:
        """Fold the next non-empty log table (round robin), or its oldest ``limit`` readings
        (at least; whole log rows: the table stays next until it is empty); returns how many
        readings were folded."""
        plan = self.plan_next_fold(conn, limit)
        if plan is not None:
            return self.apply_fold(conn, plan, False)
        if self.inboxed:  # every logged reading waits in the inbox
            self.move_inbox(conn)
            return self.fold_some(conn, limit)
        self.logged = 0
        return 0

    def plan_next_fold(self, conn: sqlite3.Connection, limit: int | None) -> FoldPlan | None:
        """The fold plan of the next non-empty log table, round robin (a table stays next
        until a plan takes its last rows); None when every table is empty."""
        for _ in range(READING_LOGS):
            b = self.next_fold
            plan = self.plan_fold(conn, b, limit)
            if plan is None or not plan.taken.more:
                self.next_fold = (b + 1) % READING_LOGS
            if plan is not None:
                return plan
        return None

    # -- maintain() slices -----------------------------------------------------------

    def plan_slice(self, conn: sqlite3.Connection) -> Callable[[sqlite3.Connection], int]:
        """The reads and the CPU work of a ``maintain()`` slice, outside any write
        transaction, so that batches commit meanwhile: returns its writes, to make in a
        transaction. With nothing in the tables to fold (only the inbox, or a counter to
        reset), the whole slice is left to the transaction."""
        move = self.move_rows
        if self.inboxed >= move:
            plan = self.plan_move(conn, move)
            if plan is not None:
                return functools.partial(self.apply_move, plan=plan, planned_apart=True)
        else:
            fold = self.plan_next_fold(conn, self.IDLE_FOLD_SLICE)
            if fold is not None:
                return functools.partial(self.apply_fold, plan=fold, planned_apart=True)
        return self.slice_in_place

    def slice_in_place(self, conn: sqlite3.Connection) -> int:
        """A ``maintain()`` slice planned and written in one transaction."""
        move = self.move_rows
        if self.inboxed >= move:
            return self.move_inbox(conn, move)
        return self.fold_some(conn, self.IDLE_FOLD_SLICE)

    # -- before reads ----------------------------------------------------------------

    def pending(self, conn: sqlite3.Connection, charger_id: str | None) -> bool:
        """The log holds rows a read of ``charger_id`` (None: of every charger) must see."""
        statement = sql.LOG_PENDING if charger_id is None else sql.LOGS[self.table_of(charger_id)].read_pending
        return bool(conn.execute(statement).fetchone()[0])

    def fold_for(self, conn: sqlite3.Connection, charger_id: str | None) -> None:
        """Fold what a read of ``charger_id`` (None: of every charger) must see."""
        if charger_id is None:
            self.fold_all(conn)
        else:
            self.move_inbox(conn)
            self.fold_table(conn, self.table_of(charger_id))
