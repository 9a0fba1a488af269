"""The services' state on ScyllaDB: tariffs, CDRs, alerts, the monitor's timers and the
consumed event ids, in the main store's keyspace (ADR 0018).

The tables are version 6 of ``store/scylla.py``'s schema, so ``chargeyard store migrate``
(the k8s Job) creates them with the rest; :meth:`ScyllaServiceStore.open` finds them there
because the main store refuses to open on any other version. The store works on an open
:class:`~chargeyard.store.scylla.ScyllaStore` and shares its session (one connection pool
per process); it closes that store only when it was handed it to own.

What SQLite does in one transaction is done here with the same guarantees by order and
idempotence:

* Billing: each CDR is an LWT (``INSERT ... IF NOT EXISTS``): the first CDR of a
  transaction is final, whichever billing replica or redelivery wrote it. Its list entry
  (``cdr_index``: day and time of the attempt) is written *before* the claim, so no CDR
  is ever without one: a replay finds the CDR and prices nothing, so an entry written
  after the claim and lost to a crash would never come back. An entry whose claim lost
  (or never ran) names a time that is not its CDR's ``created``: it is deleted when the
  claim reports so, and skipped by :meth:`list_cdrs` if a crash left it. The events' ids
  go last; a crash before them makes Kafka deliver the events again.
* Monitoring: the alerts, the chargers' states and the events' ids go in LOGGED batches
  (the batch log applies a batch entirely or not at all), effects first and the ids last;
  each batch is kept under ``BATCH_BYTES`` (Cassandra refuses a batch above 50 KiB by
  default, ScyllaDB above 1 MiB). A commit that fits in one batch (a few hundred events)
  is atomic like SQLite's; a larger one is atomic per batch, and a crash between its
  batches replays its events onto the states already stored.
* ``seen_events``: one partition per (group, event id), written with a TTL of
  ``SEEN_RETENTION_S`` (longer than Kafka keeps the events) and read by key.

Lists never scan a table: tariffs are one partition (a handful of rows); an alert is
written to its charger's partition, to its day's partition (``alert_days`` lists the days)
and, while open, to ``open_alerts`` (16 shards by charger, read whole by a restart);
``monitor_state`` is sharded the same way. Alerts are listed newest raised first, as in
SQLite (``raised_at`` is fixed-width ISO text, so text order is time order).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zlib
from typing import Any, Awaitable, Iterable

import msgspec

from .billing.pricing import CDR
from .billing.tariffs import Tariff
from .monitoring.alerts import Alert
from .storage import SEEN_RETENTION_S, ServiceStore

SCHEMA_VERSION = 6  # store/scylla.py's schema version that brought these tables
SHARDS = 16  # open_alerts and monitor_state partitions; changing it needs a rewrite of both
BATCH_BYTES = 32 * 1024  # payload per LOGGED batch, below Cassandra's default 50 KiB refusal
_STATEMENT_BYTES = 64  # what a statement adds to a batch besides its values (estimate)
_DAY_US = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)
_TARIFFS = "tariffs"  # the one partition of tariffs
_DAYS = "days"  # the one partition of cdr_days and alert_days

_Q = {
    "tariff_put": "INSERT INTO {ks}.tariffs (part, tariff_id, doc) VALUES (?, ?, ?)",
    "tariff_get": "SELECT doc FROM {ks}.tariffs WHERE part = ? AND tariff_id = ?",
    "tariff_delete": "DELETE FROM {ks}.tariffs WHERE part = ? AND tariff_id = ?",
    "tariff_list": "SELECT doc FROM {ks}.tariffs WHERE part = ?",
    "cdr_claim": "INSERT INTO {ks}.cdrs (charger_id, tx_id, doc, created) VALUES (?, ?, ?, ?) IF NOT EXISTS",
    "cdr_get": "SELECT doc, created FROM {ks}.cdrs WHERE charger_id = ? AND tx_id = ?",
    "cdr_index": "INSERT INTO {ks}.cdr_index (day, created, charger_id, tx_id) VALUES (?, ?, ?, ?)",
    "cdr_unindex": "DELETE FROM {ks}.cdr_index WHERE day = ? AND created = ? AND charger_id = ? AND tx_id = ?",
    "cdr_day": "INSERT INTO {ks}.cdr_days (part, day) VALUES (?, ?)",
    "cdr_days": "SELECT day FROM {ks}.cdr_days WHERE part = ?",
    "cdr_list": "SELECT created, charger_id, tx_id FROM {ks}.cdr_index WHERE day = ? LIMIT ?",
    "cdr_list_after": "SELECT created, charger_id, tx_id FROM {ks}.cdr_index WHERE day = ? "
                      "AND (created, charger_id, tx_id) > (?, ?, ?) LIMIT ?",
    "alert_charger": "INSERT INTO {ks}.alerts_by_charger (charger_id, raised_at, id, active, doc) "
                     "VALUES (?, ?, ?, ?, ?)",
    "alert_day": "INSERT INTO {ks}.alerts_by_day (day, raised_at, id, active, doc) VALUES (?, ?, ?, ?, ?)",
    "alert_days_put": "INSERT INTO {ks}.alert_days (part, day) VALUES (?, ?)",
    "alert_open": "INSERT INTO {ks}.open_alerts (shard, charger_id, id, doc) VALUES (?, ?, ?, ?)",
    "alert_close": "DELETE FROM {ks}.open_alerts WHERE shard = ? AND charger_id = ? AND id = ?",
    "alerts_of_charger": "SELECT doc FROM {ks}.alerts_by_charger WHERE charger_id = ? LIMIT ?",
    "cleared_of_charger": "SELECT doc FROM {ks}.alerts_by_charger WHERE charger_id = ? AND active = false "
                          "LIMIT ? ALLOW FILTERING",
    "alert_days": "SELECT day FROM {ks}.alert_days WHERE part = ?",
    "alerts_of_day": "SELECT doc FROM {ks}.alerts_by_day WHERE day = ? LIMIT ?",
    "cleared_of_day": "SELECT doc FROM {ks}.alerts_by_day WHERE day = ? AND active = false LIMIT ? ALLOW FILTERING",
    "open_shard": "SELECT doc FROM {ks}.open_alerts WHERE shard = ?",
    "open_of_charger": "SELECT doc FROM {ks}.open_alerts WHERE shard = ? AND charger_id = ?",
    "state_put": "INSERT INTO {ks}.monitor_state (shard, charger_id, doc) VALUES (?, ?, ?)",
    "state_delete": "DELETE FROM {ks}.monitor_state WHERE shard = ? AND charger_id = ?",
    "state_shard": "SELECT charger_id, doc FROM {ks}.monitor_state WHERE shard = ?",
    "seen_get": "SELECT id FROM {ks}.seen_events WHERE grp = ? AND id = ?",
    "seen_put": "INSERT INTO {ks}.seen_events (grp, id, at) VALUES (?, ?, ?) USING TTL ?",
}


def _shard(charger_id: str) -> int:
    return zlib.crc32(charger_id.encode()) % SHARDS


def _alert_day(raised_at: str) -> int:
    """Days since the epoch of an alert's ``raised_at`` (ISO text); 0 if unreadable."""
    try:
        return (dt.date.fromisoformat(raised_at[:10]) - _EPOCH).days
    except ValueError:
        return 0


def _newest_first(alerts: Iterable[Alert]) -> list[Alert]:
    """SQLite's ``ORDER BY raised_at DESC, id``."""
    by_id = sorted(alerts, key=lambda a: a.id)
    return sorted(by_id, key=lambda a: a.raised_at, reverse=True)


class ScyllaServiceStore(ServiceStore):
    """``ScyllaServiceStore(db, own=False, concurrency=64)``: ``db`` a ScyllaStore whose
    keyspace is migrated; ``own``: open and close ``db`` with this store (a process that
    has no other use for it); ``concurrency``: statements in flight for one call."""

    def __init__(self, db: Any, *, own: bool = False, concurrency: int = 64) -> None:
        self.db = db
        self.own = own
        self.concurrency = max(1, int(concurrency))
        self._ps: dict[str, Any] = {}
        self._enc = msgspec.json.Encoder(decimal_format="string")
        self._tariff = msgspec.json.Decoder(Tariff)
        self._cdr = msgspec.json.Decoder(CDR)
        self._alert = msgspec.json.Decoder(Alert)
        # days this process has listed in cdr_days / alert_days (no rewrite per row)
        self._cdr_days: set[int] = set()
        self._alert_days: set[int] = set()

    # -- lifecycle ------------------------------------------------------------------
    async def open(self) -> ScyllaServiceStore:
        if self._ps:
            return self
        if self.own:
            await self.db.open()  # refuses a keyspace not at this code's version (migrate first)
        try:
            self._ps = await self.db.prepare(_Q)
        except BaseException:
            if self.own:
                await self.db.close()
            raise
        return self

    async def close(self) -> None:
        self._ps = {}
        if self.own:
            await self.db.close()

    # -- plumbing -------------------------------------------------------------------
    def _q(self, name: str, *params: Any) -> Awaitable[list[dict]]:
        if not self._ps:
            raise RuntimeError("services store not open")
        return self.db.execute(self._ps[name], params)

    async def _all(self, calls: list[tuple[str, tuple]]) -> list[list[dict]]:
        """Run statements concurrently, at most ``concurrency`` at a time; results in order."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(name: str, params: tuple) -> list[dict]:
            async with sem:
                return await self._q(name, *params)
        return list(await asyncio.gather(*(one(n, p) for n, p in calls)))

    async def _logged(self, writes: list[tuple[str, tuple]]) -> None:
        """``writes`` in LOGGED batches of at most ``BATCH_BYTES``, one after the other."""
        batch, size = None, 0
        for name, params in writes:
            cost = _STATEMENT_BYTES + sum(len(p) for p in params if isinstance(p, (str, bytes)))
            if batch is not None and size + cost > BATCH_BYTES:
                await self.db.execute(batch)
                batch = None
            if batch is None:
                batch, size = self.db.batch(logged=True), 0
            batch.add(self._ps[name], params)
            size += cost
        if batch is not None:
            await self.db.execute(batch)

    def _seen_writes(self, group: str, ids: Iterable[str]) -> list[tuple[str, tuple]]:
        now = time.time_ns() // 1000
        return [("seen_put", (group, i, now, SEEN_RETENTION_S)) for i in dict.fromkeys(ids)]

    # -- dedupe ---------------------------------------------------------------------
    async def seen(self, group: str, ids: list[str]) -> set[str]:
        unique = list(dict.fromkeys(ids))
        rows = await self._all([("seen_get", (group, i)) for i in unique])
        return {i for i, r in zip(unique, rows) if r}

    # -- billing ------------------------------------------------------------------------
    async def put_tariff(self, tariff: Tariff) -> None:
        await self._q("tariff_put", _TARIFFS, tariff.tariff_id, self._enc.encode(tariff))

    async def get_tariff(self, tariff_id: str) -> Tariff | None:
        rows = await self._q("tariff_get", _TARIFFS, tariff_id)
        return self._tariff.decode(rows[0]["doc"]) if rows else None

    async def delete_tariff(self, tariff_id: str) -> bool:
        # read, then delete: two concurrent deletes of one tariff may both say they deleted it
        if not await self._q("tariff_get", _TARIFFS, tariff_id):
            return False
        await self._q("tariff_delete", _TARIFFS, tariff_id)
        return True

    async def list_tariffs(self) -> list[Tariff]:
        return [self._tariff.decode(r["doc"]) for r in await self._q("tariff_list", _TARIFFS)]

    async def get_cdr(self, charger_id: str, tx_id: str) -> CDR | None:
        rows = await self._q("cdr_get", charger_id, tx_id)
        return self._cdr.decode(rows[0]["doc"]) if rows else None

    async def list_cdrs(self, limit: int = 1000) -> list[CDR]:
        """Oldest first, like SQLite (by the time each CDR was first written)."""
        out: list[CDR] = []
        for day in [r["day"] for r in await self._q("cdr_days", _DAYS)]:
            after: tuple | None = None
            while len(out) < limit:
                want = limit - len(out)
                entries = await (self._q("cdr_list", day, want) if after is None else
                                 self._q("cdr_list_after", day, *after, want))
                found = await self._all([("cdr_get", (e["charger_id"], e["tx_id"])) for e in entries])
                # an entry of a claim that lost, or of one a crash cut short, is not its CDR's
                out += [self._cdr.decode(f[0]["doc"]) for e, f in zip(entries, found)
                        if f and f[0]["created"] == e["created"]]
                if len(entries) < want:
                    break
                after = (entries[-1]["created"], entries[-1]["charger_id"], entries[-1]["tx_id"])
            if len(out) >= limit:
                break
        return out

    async def commit_billing(self, group: str, event_ids: list[str], cdrs: list[CDR]) -> None:
        now = time.time_ns() // 1000
        day = now // _DAY_US
        index = [("cdr_index", (day, now, c.charger_id, c.tx_id)) for c in cdrs]
        if cdrs and day not in self._cdr_days:
            index.append(("cdr_day", (_DAYS, day)))
        await self._all(index)  # first: a CDR never exists without its list entry
        if cdrs:
            self._cdr_days.add(day)
        claims = await self._all([("cdr_claim", (c.charger_id, c.tx_id, self._enc.encode(c), now)) for c in cdrs])
        lost = [("cdr_unindex", (day, now, c.charger_id, c.tx_id)) for c, rows in zip(cdrs, claims)
                if rows and not rows[0].get("[applied]", True) and rows[0]["created"] != now]
        await self._all(lost)  # the first CDR of the transaction stays, with its own entry
        await self._all(self._seen_writes(group, event_ids))  # last: a crash before it replays

    # -- monitoring ---------------------------------------------------------------------
    async def list_alerts(self, active: bool | None = None, charger_id: str | None = None,
                          limit: int = 1000) -> list[Alert]:
        if limit <= 0:
            return []
        if active:
            if charger_id is not None:
                rows = await self._q("open_of_charger", _shard(charger_id), charger_id)
            else:
                rows = [r for part in await self._all([("open_shard", (s,)) for s in range(SHARDS)]) for r in part]
            return _newest_first(self._alert.decode(r["doc"]) for r in rows)[:limit]
        if charger_id is not None:
            name = "alerts_of_charger" if active is None else "cleared_of_charger"
            return [self._alert.decode(r["doc"]) for r in await self._q(name, charger_id, limit)]
        out: list[Alert] = []
        name = "alerts_of_day" if active is None else "cleared_of_day"
        for row in await self._q("alert_days", _DAYS):  # newest day first
            if len(out) >= limit:
                break
            out += [self._alert.decode(r["doc"]) for r in await self._q(name, row["day"], limit - len(out))]
        return out

    async def load_monitor(self) -> tuple[dict[str, bytes], list[Alert]]:
        parts = await self._all([("state_shard", (s,)) for s in range(SHARDS)]
                                + [("open_shard", (s,)) for s in range(SHARDS)])
        states = {r["charger_id"]: bytes(r["doc"]) for part in parts[:SHARDS] for r in part}
        alerts = [self._alert.decode(r["doc"]) for part in parts[SHARDS:] for r in part]
        return states, alerts

    async def commit_monitoring(self, group: str, event_ids: list[str], alerts: list[Alert],
                                states: dict[str, bytes | None]) -> None:
        writes: list[tuple[str, tuple]] = []
        days: set[int] = set()
        # one write per alert id (the last wins, as SQLite's INSERT OR REPLACE in order): a
        # batch's statements share one timestamp, where a delete would beat an insert
        for a in {a.id: a for a in alerts}.values():
            doc, active, day, shard = self._enc.encode(a), a.cleared_at is None, _alert_day(a.raised_at), \
                _shard(a.charger_id)
            writes.append(("alert_charger", (a.charger_id, a.raised_at, a.id, active, doc)))
            writes.append(("alert_day", (day, a.raised_at, a.id, active, doc)))
            if day not in self._alert_days:
                days.add(day)
                writes.append(("alert_days_put", (_DAYS, day)))
            if active:
                writes.append(("alert_open", (shard, a.charger_id, a.id, doc)))
            else:
                writes.append(("alert_close", (shard, a.charger_id, a.id)))
        for charger_id, state in states.items():
            if state is None:
                writes.append(("state_delete", (_shard(charger_id), charger_id)))
            else:
                writes.append(("state_put", (_shard(charger_id), charger_id, state)))
        await self._logged(writes + self._seen_writes(group, event_ids))
        self._alert_days |= days
