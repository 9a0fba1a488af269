"""What the services keep, behind small interfaces, and an SQLite implementation.

Each consumed batch of events is applied in one transaction together with the ids of the
events whose replay would change something (``seen``: billing's ``transaction.ended``,
monitoring's charger events; the services say which), so an effect (a CDR, an alert, a
monitor's timers) is stored exactly once however often Kafka or the relay delivers its
event; the consumer commits its Kafka offsets only after that transaction.

Two implementations, chosen by ``--store`` like the main store (ADR 0018):
``SqliteServiceStore`` keeps everything in one small SQLite file of the service's own
(``<data-dir>/services.db``), for one machine; ``ScyllaServiceStore``
(``services/scylla_storage.py``) keeps it in the main store's ScyllaDB keyspace, so the
service processes and every API pod of a cluster share it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

import msgspec

from .billing.pricing import CDR
from .billing.tariffs import Tariff
from .monitoring.alerts import Alert

SEEN_RETENTION_S = 8 * 24 * 3600  # longer than Kafka's default retention (7 days)


class EventLog(ABC):
    @abstractmethod
    async def seen(self, group: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` this consumer group has already applied."""


class BillingStore(EventLog):
    @abstractmethod
    async def put_tariff(self, tariff: Tariff) -> None: ...

    @abstractmethod
    async def get_tariff(self, tariff_id: str) -> Tariff | None: ...

    @abstractmethod
    async def delete_tariff(self, tariff_id: str) -> bool: ...

    @abstractmethod
    async def list_tariffs(self) -> list[Tariff]: ...

    @abstractmethod
    async def get_cdr(self, charger_id: str, tx_id: str) -> CDR | None: ...

    @abstractmethod
    async def list_cdrs(self, limit: int = 1000) -> list[CDR]: ...

    @abstractmethod
    async def commit_billing(self, group: str, event_ids: list[str], cdrs: list[CDR]) -> None:
        """In one transaction: keep each CDR unless its transaction has one (the first CDR
        of a transaction is final), and record ``event_ids`` as applied."""


class MonitoringStore(EventLog):
    @abstractmethod
    async def list_alerts(self, active: bool | None = None, charger_id: str | None = None,
                          limit: int = 1000) -> list[Alert]:
        """Newest raised first."""

    @abstractmethod
    async def load_monitor(self) -> tuple[dict[str, bytes], list[Alert]]:
        """The monitor's saved per-charger state and its open alerts (for a restart)."""

    @abstractmethod
    async def commit_monitoring(self, group: str, event_ids: list[str], alerts: list[Alert],
                                states: dict[str, bytes | None]) -> None:
        """In one transaction: upsert ``alerts`` (by id), replace the states of the chargers
        in ``states`` (None deletes), record ``event_ids`` as applied."""


class ServiceStore(BillingStore, MonitoringStore):
    """Both services' state in one place, opened and closed as a unit."""

    @abstractmethod
    async def open(self) -> ServiceStore: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> ServiceStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SqliteServiceStore(ServiceStore):
    """One SQLite file; calls run in a thread so the event loop never waits on the disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._enc = msgspec.json.Encoder(decimal_format="string")
        self._tariff = msgspec.json.Decoder(Tariff)
        self._cdr = msgspec.json.Decoder(CDR)
        self._alert = msgspec.json.Decoder(Alert)
        self._pruned = 0.0

    # -- lifecycle ------------------------------------------------------------------
    async def open(self) -> SqliteServiceStore:
        await asyncio.to_thread(self._open)
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript("""
            CREATE TABLE IF NOT EXISTS tariffs (tariff_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS cdrs (charger_id TEXT NOT NULL, tx_id TEXT NOT NULL,
                doc BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (charger_id, tx_id));
            CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                charger_id TEXT NOT NULL, raised_at TEXT NOT NULL, active INTEGER NOT NULL, doc BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS alerts_charger ON alerts (charger_id, raised_at);
            CREATE TABLE IF NOT EXISTS monitor_state (charger_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS seen_events (grp TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL,
                PRIMARY KEY (grp, id)) WITHOUT ROWID;
        """)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    def _run(self, fn: Any, *args: Any) -> Any:
        assert self._db is not None, "store not open"
        with self._lock:
            return fn(self._db, *args)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._run, fn, *args)

    def _tx(self, db: sqlite3.Connection, body: Any) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            body(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- dedupe ---------------------------------------------------------------------
    async def seen(self, group: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()

        def q(db: sqlite3.Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                out.update(r[0] for r in db.execute(
                    f"SELECT id FROM seen_events WHERE grp = ? AND id IN ({marks})", (group, *chunk)))
            return out
        return await self._call(q)

    def _mark_seen(self, db: sqlite3.Connection, group: str, ids: Iterable[str]) -> None:
        now = time.time()
        db.executemany("INSERT OR IGNORE INTO seen_events (grp, id, at) VALUES (?, ?, ?)",
                       [(group, i, now) for i in ids])
        if now - self._pruned > 3600:
            self._pruned = now
            db.execute("DELETE FROM seen_events WHERE at < ?", (now - SEEN_RETENTION_S,))

    # -- billing ------------------------------------------------------------------------
    async def put_tariff(self, tariff: Tariff) -> None:
        doc = self._enc.encode(tariff)
        await self._call(lambda db: db.execute("INSERT OR REPLACE INTO tariffs VALUES (?, ?)",
                                               (tariff.tariff_id, doc)))

    async def get_tariff(self, tariff_id: str) -> Tariff | None:
        row = await self._call(lambda db: db.execute("SELECT doc FROM tariffs WHERE tariff_id = ?",
                                                     (tariff_id,)).fetchone())
        return None if row is None else self._tariff.decode(row[0])

    async def delete_tariff(self, tariff_id: str) -> bool:
        cur = await self._call(lambda db: db.execute("DELETE FROM tariffs WHERE tariff_id = ?", (tariff_id,)))
        return cur.rowcount > 0

    async def list_tariffs(self) -> list[Tariff]:
        rows = await self._call(lambda db: db.execute("SELECT doc FROM tariffs ORDER BY tariff_id").fetchall())
        return [self._tariff.decode(r[0]) for r in rows]

    async def get_cdr(self, charger_id: str, tx_id: str) -> CDR | None:
        row = await self._call(lambda db: db.execute("SELECT doc FROM cdrs WHERE charger_id = ? AND tx_id = ?",
                                                     (charger_id, tx_id)).fetchone())
        return None if row is None else self._cdr.decode(row[0])

    async def list_cdrs(self, limit: int = 1000) -> list[CDR]:
        rows = await self._call(lambda db: db.execute("SELECT doc FROM cdrs ORDER BY created, charger_id, tx_id "
                                                      "LIMIT ?", (limit,)).fetchall())
        return [self._cdr.decode(r[0]) for r in rows]

    async def commit_billing(self, group: str, event_ids: list[str], cdrs: list[CDR]) -> None:
        now = time.time()
        rows = [(c.charger_id, c.tx_id, self._enc.encode(c), now) for c in cdrs]

        def body(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO cdrs VALUES (?, ?, ?, ?)", rows)
            self._mark_seen(db, group, event_ids)
        await self._call(self._tx, body)

    # -- monitoring ---------------------------------------------------------------------
    async def list_alerts(self, active: bool | None = None, charger_id: str | None = None,
                          limit: int = 1000) -> list[Alert]:
        where, args = [], []
        if active is not None:
            where.append("active = ?")
            args.append(int(active))
        if charger_id is not None:
            where.append("charger_id = ?")
            args.append(charger_id)
        sql = "SELECT doc FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY raised_at DESC, id LIMIT ?"
        rows = await self._call(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [self._alert.decode(r[0]) for r in rows]

    async def load_monitor(self) -> tuple[dict[str, bytes], list[Alert]]:
        def q(db: sqlite3.Connection) -> tuple[dict[str, bytes], list[Alert]]:
            states = {r[0]: bytes(r[1]) for r in db.execute("SELECT charger_id, doc FROM monitor_state")}
            alerts = [self._alert.decode(r[0]) for r in db.execute("SELECT doc FROM alerts WHERE active = 1")]
            return states, alerts
        return await self._call(q)

    async def commit_monitoring(self, group: str, event_ids: list[str], alerts: list[Alert],
                                states: dict[str, bytes | None]) -> None:
        arows = [(a.id, a.kind, a.charger_id, a.raised_at, int(a.cleared_at is None), self._enc.encode(a))
                 for a in alerts]
        put = [(k, v) for k, v in states.items() if v is not None]
        drop = [(k,) for k, v in states.items() if v is None]

        def body(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?)", arows)
            db.executemany("INSERT OR REPLACE INTO monitor_state VALUES (?, ?)", put)
            db.executemany("DELETE FROM monitor_state WHERE charger_id = ?", drop)
            self._mark_seen(db, group, event_ids)
        await self._call(self._tx, body)
