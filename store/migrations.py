"""Versioned schema of the SQLite store: its migrations, and nothing else.

Each migration is ``(version, sql)``, or ``(version, function)`` for one that needs Python
(it gets the connection, inside the transaction); versions are consecutive from 1 and never
edited once released (add a new one instead). :func:`migrate` applies the missing ones inside
one ``BEGIN IMMEDIATE`` transaction and records each in ``schema_version``, so several
processes opening the same file at once serialise on the write lock and the later ones
find nothing to do.

Storage conventions: timestamps are INTEGER microseconds since the Unix epoch (UTC),
which sort and compare exactly; energies are REAL Wh.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

from .base import StoreError
from .logrows import READING_LOGS, chunk_summary, pack, reading_log

LOG_BUCKETS = 64  # tables the sample log was split into (migrations 3 and 4; gone in 5)


# version 5's chunk insert, kept as it was (the store's own is sqlite/sql.py's)
_CHUNK_INSERT_V5 = """
INSERT INTO meter_chunks (charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, last_wh, rows, data)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"""


def _chunks(conn: sqlite3.Connection) -> None:
    """Version 5: readings are stored in chunks (see the SQL below). Every stored sample of a
    transaction becomes its chunk 0, in key order, each stored key's repeats after it (the
    highest and the last as closing readings, the lowest as a plain one: the same lowest,
    highest and newest); readings still in the version 3 log's buckets go to the new log
    tables, in arrival order (each bucket's rows by rowid); the inbox (version 4) stays: its
    rows are newer, and their format is the new log's."""
    for statement in _statements(_CHUNKS_SQL):
        conn.execute(statement)
    repeats: dict[tuple, list] = {}
    for charger, tx, at, connector, low, high, last in conn.execute(
            "SELECT charger_id, tx_id, at, connector_id, low_wh, high_wh, last_wh FROM sample_repeats"):
        repeats.setdefault((charger, tx), []).append((connector, at, low, high, last))
    rows: list[tuple] = []
    key = None

    def flush() -> None:
        if rows:
            for connector, at, low, high, last in repeats.pop(key, ()):
                rows.append((connector, at, high, 2))
                if low is not None:
                    rows.append((connector, at, low, 0))
                rows.append((connector, at, last, 2))
            conn.execute(_CHUNK_INSERT_V5, (*key, 0, *chunk_summary(rows), len(rows), pack(rows)))
            rows.clear()
    for charger, tx, at, connector, wh, closing in conn.execute(
            "SELECT charger_id, tx_id, at, connector_id, energy_wh, closing FROM meter_samples "
            "ORDER BY charger_id, tx_id, at, connector_id"):
        if (charger, tx) != key:
            flush()
            key = (charger, tx)
        rows.append((connector, at, wh, 2 if closing else 0))
    flush()
    logged: list[list] = [[] for _ in range(READING_LOGS)]
    for b in range(LOG_BUCKETS):
        for r in conn.execute(f"SELECT charger_id, tx_id, connector_id, at, energy_wh, kind FROM sample_log_{b} "
                              "ORDER BY rowid"):
            logged[reading_log(r[0])].append(r)
        conn.execute(f"DROP TABLE sample_log_{b}")
    for b, part in enumerate(logged):
        if part:
            conn.execute(f"INSERT INTO reading_log_{b} (rows, data) VALUES (?1, ?2)", (len(part), pack(part)))
    for table in ("sample_repeats", "meter_samples"):
        conn.execute(f"DROP TABLE {table}")


_CHUNKS_SQL = """
-- A reading is stored in a chunk: the readings of one transaction (or of a charger without
-- one, tx_id '') that one fold took from the log, packed (msgpack [connector_id, at,
-- energy_wh, kind] in arrival order), with their lowest not closing, their highest and their
-- newest (by at, then the lowest connector; of a repeated key, the last), so a transaction's
-- readings are derived from its chunks' columns. A fold writes one row per transaction in it,
-- instead of one per reading: the per-row work of the B-tree is paid per chunk. A read of a
-- transaction's samples unpacks its chunks (the first reading of each key is its sample).
-- chunk: the fold's number (fold_seq), increasing, so chunks keep arrival order.
CREATE TABLE meter_chunks (
    charger_id     TEXT NOT NULL,
    tx_id          TEXT NOT NULL,
    chunk          INTEGER NOT NULL,
    low_wh         REAL,
    high_wh        REAL NOT NULL,
    last_at        INTEGER NOT NULL,
    last_connector INTEGER NOT NULL,
    last_wh        REAL NOT NULL,
    rows           INTEGER NOT NULL,
    data           BLOB NOT NULL,
    PRIMARY KEY (charger_id, tx_id, chunk)
) WITHOUT ROWID;
CREATE TABLE fold_seq (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    n  INTEGER NOT NULL
);
INSERT INTO fold_seq (id, n) VALUES (0, 0);
-- The log: a batch appends one row per table its readings' chargers fall in (CRC-32 of the
-- id), their log rows packed (msgpack [charger_id, tx_id, connector_id, at, energy_wh, kind]
-- in arrival order; kind 0 a MeterSample, 1 a TransactionEvent's reading, 2 an Ended
-- event's, closing). A fold takes a table's oldest rows.
""" + "".join(f"""
CREATE TABLE reading_log_{b} (
    rows INTEGER NOT NULL,
    data BLOB NOT NULL
);""" for b in range(READING_LOGS))

MIGRATIONS: list[tuple[int, str | Callable[[sqlite3.Connection], None]]] = [
    (1, """
CREATE TABLE chargers (
    charger_id  TEXT PRIMARY KEY,
    protocol    TEXT NOT NULL DEFAULT '',
    vendor      TEXT NOT NULL DEFAULT '',
    model       TEXT NOT NULL DEFAULT '',
    serial      TEXT NOT NULL DEFAULT '',
    firmware    TEXT NOT NULL DEFAULT '',
    last_seen   INTEGER,
    last_boot   INTEGER
) WITHOUT ROWID;

CREATE TABLE connectors (
    charger_id   TEXT NOT NULL,
    evse_id      INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    status       TEXT NOT NULL,
    error_code   TEXT NOT NULL DEFAULT '',
    info         TEXT NOT NULL DEFAULT '',
    at           INTEGER NOT NULL,
    PRIMARY KEY (charger_id, evse_id, connector_id)
) WITHOUT ROWID;

-- kind: 16 = OCPP 1.6 (Start/StopTransaction), 20 = 2.0.1/2.1 (TransactionEvent).
-- start_reading_wh: meterStart (1.6) or the Started event's reading (2.0.1); without it the
-- lowest reading seen stands in (energy registers only grow). The Stop/Ended reading is
-- meter_stop_wh. meter_start_wh and energy_wh are derived, so they never disagree with
-- the readings:  1.6 stopped: meter_stop - meter_start (the charger's own account);
-- otherwise max(highest reading, meter_stop, meter_start) - meter_start.
CREATE TABLE transactions (
    charger_id       TEXT NOT NULL,
    tx_id            TEXT NOT NULL,
    kind             INTEGER NOT NULL,
    connector_id     INTEGER NOT NULL DEFAULT 0,
    evse_id          INTEGER NOT NULL DEFAULT 0,
    id_tag           TEXT NOT NULL DEFAULT '',
    stop_id_tag      TEXT NOT NULL DEFAULT '',
    reservation_id   INTEGER,
    start_reading_wh REAL,
    min_reading_wh   REAL,
    max_reading_wh   REAL,
    meter_stop_wh    REAL,
    last_reading_wh  REAL,
    last_reading_at  INTEGER,
    started_at       INTEGER,
    stopped_at       INTEGER,
    stop_reason      TEXT NOT NULL DEFAULT '',
    meter_start_wh   REAL GENERATED ALWAYS AS (coalesce(start_reading_wh, min_reading_wh)) VIRTUAL,
    energy_wh        REAL GENERATED ALWAYS AS (
        CASE
            WHEN coalesce(start_reading_wh, min_reading_wh) IS NULL THEN NULL
            WHEN kind = 16 AND meter_stop_wh IS NOT NULL AND start_reading_wh IS NOT NULL
                THEN meter_stop_wh - start_reading_wh
            ELSE max(coalesce(max_reading_wh, min_reading_wh, start_reading_wh),
                     coalesce(meter_stop_wh, start_reading_wh, min_reading_wh),
                     coalesce(start_reading_wh, min_reading_wh))
                 - coalesce(start_reading_wh, min_reading_wh)
        END) VIRTUAL,
    PRIMARY KEY (charger_id, tx_id)
) WITHOUT ROWID;
CREATE INDEX transactions_started ON transactions (started_at);
CREATE INDEX transactions_charger_started ON transactions (charger_id, started_at);
CREATE INDEX transactions_open ON transactions (charger_id) WHERE stopped_at IS NULL;

-- 1.6 StartTransaction idempotency key -> the transaction id first given for it.
CREATE TABLE tx_starts (
    charger_id     TEXT NOT NULL,
    connector_id   INTEGER NOT NULL,
    id_tag         TEXT NOT NULL,
    meter_start_wh REAL NOT NULL,
    started_at     INTEGER NOT NULL,
    tx_id          TEXT NOT NULL,
    PRIMARY KEY (charger_id, connector_id, id_tag, meter_start_wh, started_at)
) WITHOUT ROWID;

-- 2.0.1 TransactionEvent sequence numbers already applied.
CREATE TABLE tx_event_seqs (
    charger_id TEXT NOT NULL,
    tx_id      TEXT NOT NULL,
    seq_no     INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    trigger_reason TEXT NOT NULL DEFAULT '',
    at         INTEGER NOT NULL,
    PRIMARY KEY (charger_id, tx_id, seq_no)
) WITHOUT ROWID;

-- Every energy reading, by the charger's timestamp (backlogs included), for the record.
CREATE TABLE meter_samples (
    charger_id   TEXT NOT NULL,
    tx_id        TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    energy_wh    REAL NOT NULL,
    PRIMARY KEY (charger_id, tx_id, connector_id, at)
) WITHOUT ROWID;

-- Newest reading per connector of samples without a transaction (a transaction keeps its
-- own last reading; reads merge both).
CREATE TABLE last_readings (
    charger_id   TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    energy_wh    REAL NOT NULL,
    tx_id        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (charger_id, connector_id)
) WITHOUT ROWID;

-- 1.6 transaction id blocks: next_id is the first id not yet handed out.
CREATE TABLE tx_id_alloc (
    name    TEXT PRIMARY KEY,
    next_id INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO tx_id_alloc (name, next_id) VALUES ('ocpp16', 1);

CREATE TABLE id_tags (
    tag    TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    expiry INTEGER
) WITHOUT ROWID;
"""),
    (2, """
-- A transaction's readings are derived from its samples when read, so a sample is one
-- INSERT: the lowest (the start estimate when start_reading_wh is unknown) skips closing
-- readings, the highest and the newest (by at) take them all; meter_start_wh and energy_wh
-- keep the rule of version 1, computed by the reads.
-- Samples are keyed by time within a transaction (its newest is one index step); closing
-- marks a 2.0.1 Ended event's reading, recognised in existing data by the Ended event
-- recorded at its time.
ALTER TABLE meter_samples RENAME TO meter_samples_v1;
CREATE TABLE meter_samples (
    charger_id   TEXT NOT NULL,
    tx_id        TEXT NOT NULL,
    at           INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    energy_wh    REAL NOT NULL,
    closing      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (charger_id, tx_id, at, connector_id)
) WITHOUT ROWID;
INSERT INTO meter_samples (charger_id, tx_id, at, connector_id, energy_wh, closing)
SELECT charger_id, tx_id, at, connector_id, energy_wh,
       EXISTS (SELECT 1 FROM tx_event_seqs e WHERE e.charger_id = s.charger_id AND e.tx_id = s.tx_id
               AND e.at = s.at AND e.event_type = 'Ended')
FROM meter_samples_v1 s;
DROP TABLE meter_samples_v1;

-- Readings that came for a sample's key after it was stored (the raw record keeps the
-- first): per key, the lowest not closing, the highest and the last of them.
CREATE TABLE sample_repeats (
    charger_id   TEXT NOT NULL,
    tx_id        TEXT NOT NULL,
    at           INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    low_wh       REAL,
    high_wh      REAL NOT NULL,
    last_wh      REAL NOT NULL,
    PRIMARY KEY (charger_id, tx_id, at, connector_id)
) WITHOUT ROWID;
-- Version 1 folded such repeats into the transaction row only: where its readings differ
-- from the stored samples', they become repeats of the newest sample (same results).
INSERT INTO sample_repeats (charger_id, tx_id, at, connector_id, low_wh, high_wh, last_wh)
SELECT t.charger_id, t.tx_id, n.at, n.connector_id, t.min_reading_wh, t.max_reading_wh, t.last_reading_wh
FROM transactions t JOIN meter_samples n ON n.charger_id = t.charger_id AND n.tx_id = t.tx_id
    AND (n.at, n.connector_id) = (SELECT at, connector_id FROM meter_samples s
                                   WHERE s.charger_id = t.charger_id AND s.tx_id = t.tx_id
                                   ORDER BY at DESC, connector_id LIMIT 1)
WHERE t.max_reading_wh IS NOT NULL AND (
    t.last_reading_wh IS NOT n.energy_wh
    OR t.max_reading_wh IS NOT (SELECT max(energy_wh) FROM meter_samples s
                                WHERE s.charger_id = t.charger_id AND s.tx_id = t.tx_id)
    OR t.min_reading_wh IS NOT (SELECT min(energy_wh) FROM meter_samples s
                                WHERE s.charger_id = t.charger_id AND s.tx_id = t.tx_id AND NOT s.closing));

ALTER TABLE transactions DROP COLUMN energy_wh;
ALTER TABLE transactions DROP COLUMN meter_start_wh;
ALTER TABLE transactions DROP COLUMN min_reading_wh;
ALTER TABLE transactions DROP COLUMN max_reading_wh;
ALTER TABLE transactions DROP COLUMN last_reading_wh;
ALTER TABLE transactions DROP COLUMN last_reading_at;
"""),
    (3, """
-- Readings are appended to a log as they come and folded in bulk, in arrival (rowid) order,
-- into meter_samples, sample_repeats and last_readings: consecutive rows share pages, so a
-- commit writes a few log pages instead of one meter_samples leaf per charger, and a fold
-- writes each charger's leaf once for many commits. The log is split into LOG_BUCKETS
-- tables by charger (CRC-32 of the id), folded one at a time: a fold touches the leaves of
-- a 64th of the chargers, a short pause. Reads fold the log first.
-- kind: 0 a MeterSample, 1 a TransactionEvent's reading, 2 an Ended event's (closing).
""" + "".join(f"""
CREATE TABLE sample_log_{b} (
    charger_id   TEXT NOT NULL,
    tx_id        TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    energy_wh    REAL NOT NULL,
    kind         INTEGER NOT NULL DEFAULT 0
);""" for b in range(LOG_BUCKETS))),
    (4, """
-- A small batch spreads its readings over as many log buckets as it has chargers: one page
-- per reading in the WAL. Its readings are appended instead as one packed row here (the
-- log rows, msgpack, in arrival order), moved into the buckets in bulk later, oldest first,
-- before any fold or read that needs them.
CREATE TABLE sample_inbox (
    seq  INTEGER PRIMARY KEY,
    rows INTEGER NOT NULL,
    data BLOB NOT NULL
);"""),
    (5, _chunks),
    (6, """
-- meter_chunks becomes a rowid table with its key in a unique index. A chunk (a kilobyte
-- or two) is too big for a WITHOUT ROWID table: its key's B-tree keeps it in leaf cells
-- that spill into overflow pages, and a fold's inserts land all over the tree and move those
-- cells around. Here a fold appends its chunks at the table's end and only the small key goes
-- into the index, so a fold writes far fewer pages and spends less CPU per chunk
-- (docs/adr/0011-readings-log-inbox-chunks.md). Chunks are copied in key order; reads use
-- the index.
CREATE TABLE meter_chunks_v6 (
    id             INTEGER PRIMARY KEY,
    charger_id     TEXT NOT NULL,
    tx_id          TEXT NOT NULL,
    chunk          INTEGER NOT NULL,
    low_wh         REAL,
    high_wh        REAL NOT NULL,
    last_at        INTEGER NOT NULL,
    last_connector INTEGER NOT NULL,
    last_wh        REAL NOT NULL,
    rows           INTEGER NOT NULL,
    data           BLOB NOT NULL
);
INSERT INTO meter_chunks_v6 (charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, last_wh, rows, data)
SELECT charger_id, tx_id, chunk, low_wh, high_wh, last_at, last_connector, last_wh, rows, data
FROM meter_chunks ORDER BY charger_id, tx_id, chunk;
DROP TABLE meter_chunks;
ALTER TABLE meter_chunks_v6 RENAME TO meter_chunks;
CREATE UNIQUE INDEX meter_chunks_key ON meter_chunks (charger_id, tx_id, chunk);"""),
    # 7: the events outbox (store/events.py, store/sqlite/outbox.py): one row per committed
    # batch that reported events, its events packed, numbered per writing worker
    (7, """
CREATE TABLE event_outbox (
    worker TEXT NOT NULL,
    first  INTEGER NOT NULL,
    n      INTEGER NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (worker, first)
);
CREATE TABLE event_outbox_state (
    worker    TEXT PRIMARY KEY,
    next      INTEGER NOT NULL,
    published INTEGER NOT NULL
);"""),
    # 8: fenced writes (ADR 0016): the highest ownership epoch recorded per charger, and a
    # generation bumped by every raise, so that a batch learns in one read whether any
    # charger was fenced since it last looked (and then reads only those rows).
    (8, """
CREATE TABLE charger_epochs (
    charger_id TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    gen        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX charger_epochs_gen ON charger_epochs (gen);
CREATE TABLE fence_gen (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    gen INTEGER NOT NULL
);
INSERT INTO fence_gen (id, gen) VALUES (0, 0);"""),
    (9, """
-- Registered chargers (store/chargers.py): the security profile a charger must meet and its
-- password, only ever as salted scrypt hashes (store/passwords.py). pending_password_hash:
-- sent to the charger, not yet accepted; previous_password_hash: the one before a rotation
-- the charger accepted, valid until it connects with the new one. '' when none.
CREATE TABLE charger_credentials (
    charger_id             TEXT PRIMARY KEY,
    security_profile       INTEGER NOT NULL,
    password_hash          TEXT NOT NULL DEFAULT '',
    pending_password_hash  TEXT NOT NULL DEFAULT '',
    previous_password_hash TEXT NOT NULL DEFAULT '',
    updated_at             INTEGER NOT NULL
) WITHOUT ROWID;
-- SecurityEventNotification as received: at is the charger's timestamp as sent (text),
-- received_at our clock (microseconds).
CREATE TABLE security_events (
    id          INTEGER PRIMARY KEY,
    charger_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    at          TEXT NOT NULL,
    tech_info   TEXT NOT NULL DEFAULT '',
    received_at INTEGER NOT NULL
);
CREATE INDEX security_events_charger ON security_events (charger_id, id);"""),
    (10, """
-- The last successful password check of a charger (store/chargers.py, ADR 0019): an HMAC
-- under a key kept outside the store, bound to the hash it matched. '' when none.
ALTER TABLE charger_credentials ADD COLUMN verifier TEXT NOT NULL DEFAULT '';"""),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if row is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply missing migrations atomically; returns the versions applied (often none).
    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "versions must be consecutive"
    applied: list[int] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                     "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        have = current_version(conn)
        if have > LATEST:
            raise StoreError(f"database schema version {have} is newer than this code ({LATEST})")
        for version, sql in MIGRATIONS:
            if version <= have:
                continue
            if callable(sql):
                sql(conn)
            else:
                for statement in _statements(sql):
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                         (version, time.time_ns() // 1000))
            applied.append(version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration on statement boundaries (``executescript`` would COMMIT our
    transaction, so each statement is executed on its own)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
