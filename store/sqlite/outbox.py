"""The SQLite outbox: events written in the commit of their facts, read by the relay.

The batch transaction (``batch.py``) calls :func:`write` with the batch's events, so they commit (and sync) with
the facts, in the same ``BEGIN IMMEDIATE ... COMMIT``; a failed batch rolls them back
with everything else. One row per committed batch, not per event: the events of a batch
are packed into one msgpack blob (one B-tree insert and one WAL page or so per batch,
like the readings inbox), numbered by a counter kept in the same transaction.

Several processes may share the file (``chargeyard cluster`` on SQLite): rows carry the
writing ``worker`` id and each worker's relay reads and trims only its own, so one
charger's events (always written by its current owner) are published in commit order.

A committed row is not yet a durable one: a batch committed on the event loop at
``synchronous=NORMAL`` is synced by the WAL's sync thread afterwards. The relay reads only
up to its synced watermark (``read(..., upto=)``), which the writer raises to the
:func:`head` it read right after each batch's COMMIT, once that batch's sync is done.

    CREATE TABLE event_outbox (worker, first, n, data)   -- events first .. first+n-1
    CREATE TABLE event_outbox_state (worker, next, published)

:class:`SqliteOutbox` implements :class:`store.events.Outbox` on its own connection; its
``outbox_mark_published`` is a short write transaction of its own (:func:`mark` can
instead run inside the next batch's transaction, saving that commit).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import msgspec

from ..events import Event, Outbox, OutboxRow, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS event_outbox (
    worker TEXT NOT NULL,
    first INTEGER NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (worker, first)
);
CREATE TABLE IF NOT EXISTS event_outbox_state (
    worker TEXT PRIMARY KEY,
    next INTEGER NOT NULL,
    published INTEGER NOT NULL
);
"""

_NEXT = "SELECT next FROM event_outbox_state WHERE worker = ?"
_INIT = "INSERT OR IGNORE INTO event_outbox_state VALUES (?, 1, 0)"
_ADD = "INSERT INTO event_outbox VALUES (?, ?, ?, ?)"
_BUMP = "UPDATE event_outbox_state SET next = next + ? WHERE worker = ?"
_FLOOR = "SELECT first FROM event_outbox WHERE worker = ? AND first <= ? ORDER BY first DESC LIMIT 1"
_READ = "SELECT first, n, data FROM event_outbox WHERE worker = ? AND first >= ? ORDER BY first LIMIT ?"
_READ_UPTO = ("SELECT first, n, data FROM event_outbox WHERE worker = ? AND first >= ? AND first <= ? "
              "ORDER BY first LIMIT ?")
_HEAD = "SELECT next - 1 FROM event_outbox_state WHERE worker = ?"
_TRIM = "DELETE FROM event_outbox WHERE worker = ? AND first + n - 1 <= ?"
_PUBLISHED = "UPDATE event_outbox_state SET published = max(published, ?) WHERE worker = ?"
_SPOOLED = "SELECT next - 1 - published FROM event_outbox_state WHERE worker = ?"

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode


def create(conn: sqlite3.Connection) -> None:
    """The tables, idempotent (the store creates them in its migration 7)."""
    conn.executescript(SCHEMA)


def write(conn: sqlite3.Connection, worker: str, rows: Sequence[tuple[str, bytes]]) -> int:
    """Append ``(charger id, encoded event)`` rows (``store.outbox_encoding.encoded``, in commit
    order) inside the caller's write transaction; returns the seq of the last one (0 when
    there are none)."""
    if not rows:
        return 0
    row = conn.execute(_NEXT, (worker,)).fetchone()
    if row is None:
        conn.execute(_INIT, (worker,))
        first = 1
    else:
        first = row[0]
    n = len(rows)
    conn.execute(_ADD, (worker, first, n, _pack(rows)))
    conn.execute(_BUMP, (n, worker))
    return first + n - 1


def write_events(conn: sqlite3.Connection, worker: str, events: Sequence[Event]) -> int:
    return write(conn, worker, [(e.charger_id, encode(e)) for e in events])


def read(conn: sqlite3.Connection, worker: str, after_seq: int, limit: int,
         upto: int | None = None) -> list[OutboxRow]:
    """Rows with ``after_seq < seq``, in order, at most ``limit``; with ``upto`` only those
    with ``seq <= upto`` (the relay's synced watermark: a batch's rows are one blob and a
    watermark always ends a batch, so the bound is on the blobs' first seq)."""
    floor = conn.execute(_FLOOR, (worker, after_seq)).fetchone()
    start = floor[0] if floor is not None else 0
    out: list[OutboxRow] = []
    rows_limit = 64
    while True:
        if upto is None:
            rows = conn.execute(_READ, (worker, start, rows_limit)).fetchall()
        else:
            rows = conn.execute(_READ_UPTO, (worker, start, upto, rows_limit)).fetchall()
        for first, _n, data in rows:
            for i, (key, payload) in enumerate(_unpack(data)):
                seq = first + i
                if upto is not None and seq > upto:
                    return out
                if seq > after_seq:
                    out.append(OutboxRow(seq, key, payload))
                    if len(out) >= limit:
                        return out
        if len(rows) < rows_limit:
            return out
        start = rows[-1][0] + 1


def head(conn: sqlite3.Connection, worker: str) -> int:
    """The last seq committed to the worker's outbox (0: none yet). ``fetchall``: the read
    transaction ends here, not at the connection's next statement (an open read would hold
    the WAL back from restarting)."""
    rows = conn.execute(_HEAD, (worker,)).fetchall()
    return rows[0][0] if rows else 0


def mark(conn: sqlite3.Connection, worker: str, upto_seq: int) -> None:
    """Drop the rows published up to ``upto_seq`` (inside a write transaction). A row
    published in part stays until all of it is; ``published`` says where reading resumes."""
    conn.execute(_TRIM, (worker, upto_seq))
    conn.execute(_PUBLISHED, (upto_seq, worker))


def spooled(conn: sqlite3.Connection, worker: str) -> int:
    row = conn.execute(_SPOOLED, (worker,)).fetchone()
    return 0 if row is None else max(0, row[0])


def published(conn: sqlite3.Connection, worker: str) -> int:
    row = conn.execute("SELECT published FROM event_outbox_state WHERE worker = ?", (worker,)).fetchone()
    return 0 if row is None else row[0]


class SqliteOutbox(Outbox):
    """The relay's side, on a connection of its own (WAL: reads never wait for the writer).
    Calls run in a thread: the event loop never waits on the file."""

    def __init__(self, path: str | Path, worker: str = "") -> None:
        self.path = Path(path)
        self.worker = worker
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> SqliteOutbox:
        def op() -> None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            create(conn)
            self._conn = conn
        await asyncio.to_thread(op)
        return self

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        assert self._conn is not None, "outbox not open"
        with self._lock:
            return fn(self._conn, self.worker, *args)

    async def outbox_read(self, after_seq: int, limit: int, upto: int | None = None) -> list[OutboxRow]:
        def op(conn: sqlite3.Connection, worker: str) -> list[OutboxRow]:
            return read(conn, worker, max(after_seq, published(conn, worker)), limit, upto)
        return await asyncio.to_thread(self._run, op)

    async def outbox_mark_published(self, upto_seq: int) -> None:
        def tx(conn: sqlite3.Connection, worker: str) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                mark(conn, worker, upto_seq)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        await asyncio.to_thread(self._run, tx)

    async def outbox_spooled(self) -> int:
        return await asyncio.to_thread(self._run, spooled)


__all__ = ["SCHEMA", "SqliteOutbox", "create", "head", "mark", "read", "spooled", "write", "write_events"]
