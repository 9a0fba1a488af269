"""ScyllaDB backend for a cluster (``docs/adr/0004-scylla-store.md``).

Needs the ``scylla-driver`` package (import name ``cassandra``), an optional extra:
``pip install scylla-driver`` or ``pip install 'chargeyard[scylla]'``. This module imports
without it; building a :class:`ScyllaStore` without it raises a clear ImportError.

Data model: every table a charger writes is partitioned by ``charger_id`` (raw samples by
``(charger_id, tx_id)`` so a partition stays bounded by one transaction). Timestamps are
``bigint`` microseconds (CQL ``timestamp`` only holds milliseconds).

* Blind, commutative writes wherever the contract allows: "keep the newest by the
  charger's clock" (connector status, last reading, last_seen/last_boot) is Scylla's own
  last-write-wins with ``USING TIMESTAMP`` = the op's time in µs * 1000 + a per-process
  tick (so equal charger times resolve to the op applied last). Energies are derived at
  read time from the transaction's sample partition (lowest/highest/newest reading), so a
  MeterSample is two inserts, never a read.
* Idempotency by LWT (``IF NOT EXISTS``, serial consistency LOCAL_SERIAL): the 1.6
  StartTransaction key -> first tx id; TransactionEvent (tx, seq_no) -> applied once (the
  seq row gets ``done = true`` once its effects are written, so a retry after a partial
  failure re-applies the effects instead of calling it a repeat); "first close wins" is
  ``IF stopped_at = null``. Cells written by LWT are never written without it.
* Writes LOCAL_QUORUM, reads LOCAL_QUORUM. ``apply`` groups ops by charger: chargers run
  concurrently (``max_concurrency``), one charger's ops in order; runs of blind writes go
  as UNLOGGED batches, one per partition. Prepared statements throughout.
* Unlike SQLite, ``apply`` is not atomic across ops (Scylla has no multi-partition
  transactions): ops are validated before anything is sent, and every op is idempotent, so
  the batch writer's retry of a failed batch (or the charger's resend) converges.
* 1.6 transaction ids: a compare-and-set (LWT) on one counter row; blocks never overlap.
* Driver calls run on the driver's own threads; its futures complete asyncio futures via
  ``call_soon_threadsafe``. Connect, prepare and shutdown run on a small thread pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import (to_us, from_us, ChargerSeen, ConnectorStatus, MeterSample, Op, StartTransaction, StopTransaction, Store,
                   StoreError, TransactionEvent, UpsertCharger)

__all__ = ["ScyllaStore", "MIGRATIONS", "LATEST", "migration_statements"]

TX_ID_MAX = 2**31 - 1
_I64 = 2**63 - 1
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_BATCH_ROWS = 64  # statements per UNLOGGED batch (far below batch_size_fail_threshold)

INSTALL_HINT = ("the ScyllaDB store needs the scylla-driver package (import name 'cassandra'): "
                "pip install scylla-driver  (or: pip install 'chargeyard[scylla]')")


def _load_driver() -> Any:
    """Import the driver lazily; a missing one is a clear ImportError, not a traceback."""
    try:
        import cassandra  # noqa: F401
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
        from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, dict_factory
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e

    class Driver:
        pass
    d = Driver()
    d.ConsistencyLevel, d.PlainTextAuthProvider = ConsistencyLevel, PlainTextAuthProvider
    d.Cluster, d.ExecutionProfile, d.EXEC_PROFILE_DEFAULT = Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
    d.DCAwareRoundRobinPolicy, d.TokenAwarePolicy = DCAwareRoundRobinPolicy, TokenAwarePolicy
    d.BatchStatement, d.BatchType, d.UNSET, d.dict_factory = BatchStatement, BatchType, UNSET_VALUE, dict_factory
    return d


# -- schema ------------------------------------------------------------------------------
# Versioned like store/migrations.py: (version, [CQL statements]); {ks} is the keyspace.
# Never edit a released version, append one. Every statement is idempotent (IF NOT EXISTS),
# so processes opening the store at once converge.

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS {ks}.chargers (
    charger_id text PRIMARY KEY,
    protocol text, vendor text, model text, serial text, firmware text,
    last_seen bigint, last_boot bigint)""",
        """CREATE TABLE IF NOT EXISTS {ks}.connectors (
    charger_id text, evse_id bigint, connector_id bigint,
    status text, error_code text, info text, at bigint,
    PRIMARY KEY (charger_id, evse_id, connector_id))""",
        # kind 16 = OCPP 1.6, 20 = 2.0.1/2.1; readings live in meter_samples
        """CREATE TABLE IF NOT EXISTS {ks}.transactions (
    charger_id text, tx_id text, kind int,
    connector_id bigint, evse_id bigint, id_tag text, stop_id_tag text, reservation_id bigint,
    start_reading_wh double, meter_stop_wh double,
    started_at bigint, stopped_at bigint, stop_reason text,
    PRIMARY KEY (charger_id, tx_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.tx_starts (
    charger_id text, connector_id bigint, id_tag text, meter_start_wh double, started_at bigint,
    tx_id text,
    PRIMARY KEY (charger_id, connector_id, id_tag, meter_start_wh, started_at))""",
        """CREATE TABLE IF NOT EXISTS {ks}.tx_event_seqs (
    charger_id text, tx_id text, seq_no bigint,
    event_type text, trigger_reason text, at bigint, done boolean,
    PRIMARY KEY (charger_id, tx_id, seq_no))""",
        # closing: the Ended event's reading (counts as highest/newest, never as a start estimate)
        """CREATE TABLE IF NOT EXISTS {ks}.meter_samples (
    charger_id text, tx_id text, at bigint, connector_id bigint,
    energy_wh double, closing boolean,
    PRIMARY KEY ((charger_id, tx_id), at, connector_id))
    WITH CLUSTERING ORDER BY (at DESC, connector_id ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.last_readings (
    charger_id text, connector_id bigint, at bigint, energy_wh double, tx_id text,
    PRIMARY KEY (charger_id, connector_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.tx_id_alloc (
    name text PRIMARY KEY, next_id bigint)""",
        "INSERT INTO {ks}.tx_id_alloc (name, next_id) VALUES ('ocpp16', 1) IF NOT EXISTS",
        """CREATE TABLE IF NOT EXISTS {ks}.id_tags (
    tag text PRIMARY KEY, status text, expiry bigint)""",
    ]),
]

LATEST = MIGRATIONS[-1][0]

_SCHEMA_VERSION = """CREATE TABLE IF NOT EXISTS {ks}.schema_version (
    scope text, version int, applied_at bigint, PRIMARY KEY (scope, version))"""


def migration_statements(keyspace: str, have: int = 0) -> list[tuple[int, str]]:
    """The CQL still to run on a keyspace at schema version ``have``, in order."""
    if not _KEYSPACE.match(keyspace):
        raise ValueError(f"invalid keyspace name {keyspace!r}")
    assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "versions must be consecutive"
    return [(v, s.format(ks=keyspace)) for v, stmts in MIGRATIONS if v > have for s in stmts]


# -- statements (prepared once per session; {ks} filled in) ------------------------------

_Q = {
    "charger_identity": "UPDATE {ks}.chargers USING TIMESTAMP ? SET protocol = ?, vendor = ?, model = ?, "
                        "serial = ?, firmware = ? WHERE charger_id = ?",
    "charger_boot": "UPDATE {ks}.chargers USING TIMESTAMP ? SET last_seen = ?, last_boot = ? WHERE charger_id = ?",
    "charger_seen": "UPDATE {ks}.chargers USING TIMESTAMP ? SET last_seen = ? WHERE charger_id = ?",
    "connector": "UPDATE {ks}.connectors USING TIMESTAMP ? SET status = ?, error_code = ?, info = ?, at = ? "
                 "WHERE charger_id = ? AND evse_id = ? AND connector_id = ?",
    "sample": "INSERT INTO {ks}.meter_samples (charger_id, tx_id, at, connector_id, energy_wh, closing) "
              "VALUES (?, ?, ?, ?, ?, ?)",
    "last_reading": "UPDATE {ks}.last_readings USING TIMESTAMP ? SET at = ?, energy_wh = ?, tx_id = ? "
                    "WHERE charger_id = ? AND connector_id = ?",
    "start_key": "INSERT INTO {ks}.tx_starts (charger_id, connector_id, id_tag, meter_start_wh, started_at, tx_id) "
                 "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "tx_ensure": "INSERT INTO {ks}.transactions (charger_id, tx_id, kind) VALUES (?, ?, ?) IF NOT EXISTS",
    "tx_start": "UPDATE {ks}.transactions SET connector_id = ?, id_tag = ?, start_reading_wh = ?, started_at = ?, "
                "reservation_id = ? WHERE charger_id = ? AND tx_id = ?",
    "tx_close": "UPDATE {ks}.transactions SET meter_stop_wh = ?, stopped_at = ?, stop_reason = ?, stop_id_tag = ? "
                "WHERE charger_id = ? AND tx_id = ? IF stopped_at = null",
    "tx_event": "UPDATE {ks}.transactions SET evse_id = ?, connector_id = ?, id_tag = ?, started_at = ?, "
                "start_reading_wh = ? WHERE charger_id = ? AND tx_id = ?",
    "seq_claim": "INSERT INTO {ks}.tx_event_seqs (charger_id, tx_id, seq_no, event_type, trigger_reason, at) "
                 "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "seq_done": "UPDATE {ks}.tx_event_seqs SET done = true WHERE charger_id = ? AND tx_id = ? AND seq_no = ?",
    "alloc_read": "SELECT next_id FROM {ks}.tx_id_alloc WHERE name = 'ocpp16'",
    "alloc_cas": "UPDATE {ks}.tx_id_alloc SET next_id = ? WHERE name = 'ocpp16' IF next_id = ?",
    "get_charger": "SELECT charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot "
                   "FROM {ks}.chargers WHERE charger_id = ?",
    "list_chargers": "SELECT charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot "
                     "FROM {ks}.chargers",
    "get_connectors": "SELECT evse_id, connector_id, status, error_code, info, at FROM {ks}.connectors "
                      "WHERE charger_id = ?",
    "get_readings": "SELECT connector_id, energy_wh, at, tx_id FROM {ks}.last_readings WHERE charger_id = ?",
    "get_tx": "SELECT * FROM {ks}.transactions WHERE charger_id = ? AND tx_id = ?",
    "charger_txs": "SELECT * FROM {ks}.transactions WHERE charger_id = ?",
    "all_txs": "SELECT * FROM {ks}.transactions",
    "tx_samples": "SELECT at, connector_id, energy_wh, closing FROM {ks}.meter_samples "
                  "WHERE charger_id = ? AND tx_id = ?",
    "list_samples": "SELECT connector_id, at, energy_wh FROM {ks}.meter_samples WHERE charger_id = ? AND tx_id = ? "
                    "ORDER BY at ASC LIMIT ?",
    "get_tag": "SELECT status, expiry FROM {ks}.id_tags WHERE tag = ?",
    "put_tag": "UPDATE {ks}.id_tags SET status = ?, expiry = ? WHERE tag = ?",
    "delete_tag": "DELETE FROM {ks}.id_tags WHERE tag = ?",
}


# -- values ------------------------------------------------------------------------------

_us, _iso = to_us, from_us


def _check_int(name: str, v: Any) -> None:
    if v is not None and (type(v) is not int or not -_I64 - 1 <= v <= _I64):
        raise StoreError(f"scylla: bad operation: {name}={v!r} is not a 64-bit integer")


def _check_float(name: str, v: Any) -> None:
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v)):
        raise StoreError(f"scylla: bad operation: {name}={v!r} is not a number")


def _check_time(name: str, v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, dt.datetime):
        raise StoreError(f"scylla: bad operation: {name} is not a datetime")
    if not 0 <= _us(v) < _I64 // 1000 - 1000:
        raise StoreError(f"scylla: bad operation: {name}={v.isoformat()} out of range (1970..2262)")


_OPS = (UpsertCharger, ChargerSeen, ConnectorStatus, StartTransaction, StopTransaction, MeterSample, TransactionEvent)
_INTS = ("evse_id", "connector_id", "seq_no", "reservation_id")
_FLOATS = ("meter_start_wh", "meter_stop_wh", "energy_wh")
_TIMES = ("at", "started_at", "stopped_at")
_STRS = ("charger_id", "tx_id", "protocol", "vendor", "model", "serial", "firmware", "status", "error_code",
         "info", "id_tag", "reason", "event_type", "trigger_reason", "stop_reason")


def _validate(op: Any) -> None:
    """Everything the schema cannot hold is refused before anything of the batch is sent."""
    if type(op) not in _OPS:
        raise StoreError(f"not a store operation: {type(op).__name__}")
    fields = op.__struct_fields__
    for f in fields:
        v = getattr(op, f)
        if f in _INTS:
            _check_int(f, v)
        elif f in _FLOATS:
            _check_float(f, v)
        elif f in _TIMES:
            _check_time(f, v)
        elif f in _STRS and not isinstance(v, str):
            raise StoreError(f"scylla: bad operation: {f} is not a string")


def _tx_dict(row: dict, samples: list[dict]) -> dict:
    """The derived view of a transaction, same rules as the SQLite store's generated columns."""
    lows = [s["energy_wh"] for s in samples if not s["closing"]]
    min_r = min(lows) if lows else None
    max_r = max((s["energy_wh"] for s in samples), default=None)
    newest = samples[0] if samples else None  # partition order: at DESC
    start, stop = row.get("start_reading_wh"), row.get("meter_stop_wh")

    def co(*xs):
        return next((x for x in xs if x is not None), None)
    meter_start = co(start, min_r)
    if meter_start is None:
        energy = None
    elif row.get("kind") == 16 and stop is not None and start is not None:
        energy = stop - start
    else:
        energy = max(co(max_r, min_r, start), co(stop, start, min_r), meter_start) - meter_start
    stopped = row.get("stopped_at")
    return {"charger_id": row["charger_id"], "tx_id": row["tx_id"], "connector_id": row.get("connector_id") or 0,
            "evse_id": row.get("evse_id") or 0, "id_tag": row.get("id_tag") or "", "meter_start_wh": meter_start,
            "meter_stop_wh": stop, "energy_wh": energy, "started_at": _iso(row.get("started_at")),
            "stopped_at": _iso(stopped), "stop_reason": row.get("stop_reason") or "", "active": stopped is None,
            "stop_id_tag": row.get("stop_id_tag") or "", "reservation_id": row.get("reservation_id"),
            "last_reading_wh": newest["energy_wh"] if newest else None,
            "last_reading_at": _iso(newest["at"]) if newest else None}


class ScyllaStore(Store):
    """``ScyllaStore(hosts, keyspace="chargeyard", *, port=9042, datacenter=None,
    replication_factor=None, tablets=None, username=None, password=None, request_timeout=10.0,
    connect_timeout=10.0, max_concurrency=128, **cluster_options)``.

    ``hosts``: list or comma-separated ``host[:port]``. The keyspace is created if missing
    with NetworkTopologyStrategy, ``replication_factor`` per data centre (default
    min(3, nodes in it)); ``tablets=False`` adds ``AND tablets = {'enabled': false}`` (for
    Scylla versions without LWT on tablets). ``cluster_options`` go to ``cassandra.cluster.Cluster``.
    """

    def __init__(self, hosts: str | list[str] | None, keyspace: str = "chargeyard", *, port: int = 9042,
                 datacenter: str | None = None, replication_factor: int | None = None, tablets: bool | None = None,
                 username: str | None = None, password: str | None = None, request_timeout: float = 10.0,
                 connect_timeout: float = 10.0, max_concurrency: int = 128, **cluster_options: Any) -> None:
        self._d = _load_driver()
        if isinstance(hosts, str):
            hosts = [h for h in hosts.split(",")]
        hosts = [h.strip() for h in (hosts or []) if h and h.strip()]
        if not hosts:
            raise ValueError("ScyllaStore needs at least one host (--scylla-hosts)")
        if not _KEYSPACE.match(keyspace):
            raise ValueError(f"invalid keyspace name {keyspace!r}")
        ports = set()
        self.hosts = []
        for h in hosts:
            host, sep, p = h.rpartition(":") if h.count(":") == 1 else ("", "", "")
            if sep:
                self.hosts.append(host)
                ports.add(int(p))
            else:
                self.hosts.append(h)
        if len(ports) > 1:
            raise ValueError("all scylla hosts must use the same port")
        self.port = ports.pop() if ports else port
        self.keyspace = keyspace
        self.datacenter = datacenter
        self.replication_factor = replication_factor
        self.tablets = tablets
        self.username, self.password = username, password
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_concurrency = max(1, max_concurrency)
        self.cluster_options = cluster_options
        self._cluster: Any = None
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ps: dict[str, Any] = {}
        self._sem: asyncio.Semaphore | None = None
        self._tick = 0
        self._now_last = 0

    # -- plumbing ----------------------------------------------------------------------

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        assert self._pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"scylla: {e!r}") from e

    def _execute(self, stmt: Any, params: Any = None) -> asyncio.Future:
        """Run one statement on the driver's threads; all pages of rows (dicts) as the result."""
        if self._session is None:
            raise StoreError("store is not open")
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future = loop.create_future()
        rows: list = []

        def settle(result: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc if isinstance(exc, StoreError) else StoreError(f"scylla: {exc!r}"))
            else:
                fut.set_result(result)

        try:
            rf = self._session.execute_async(stmt, params)
        except Exception as e:
            settle(None, e)
            return fut

        def on_page(page: Any) -> None:
            try:
                if page:
                    rows.extend(page)
                if rf.has_more_pages:
                    rf.start_fetching_next_page()  # the callbacks fire again for the next page
                    return
            except Exception as e:  # noqa: BLE001
                post(None, e)
                return
            post(rows, None)

        def post(result: Any, exc: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(settle, result, exc)
            except RuntimeError:  # loop closed: nobody waits any more
                pass

        def on_error(exc: BaseException) -> None:
            post(None, exc)

        rf.add_callbacks(on_page, on_error)
        return fut

    async def _q(self, name: str, *params: Any) -> list[dict]:
        return await self._execute(self._ps[name], params)

    @staticmethod
    def _applied(rows: list[dict]) -> tuple[bool, dict]:
        row = rows[0] if rows else {}
        return bool(row.get("[applied]", True)), row

    def _at_ts(self, at_us: int) -> int:
        """Write timestamp for "newest by the charger's clock wins": ties go to the op
        applied last (a per-process tick; it wraps every 1000 writes)."""
        self._tick = (self._tick + 1) % 1000
        return max(0, at_us) * 1000 + self._tick

    def _now_ts(self) -> int:
        """Strictly increasing wall-clock µs for "the op applied last wins" writes."""
        self._now_last = max(self._now_last + 1, time.time_ns() // 1000)
        return self._now_last

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._session is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chargeyard-scylla")
        self._sem = asyncio.Semaphore(self.max_concurrency)
        try:
            self._session = await self._blocking(self._connect_sync)
            await self._migrate()
            self._ps = await self._blocking(self._prepare_sync)
        except BaseException:
            await self._shutdown()
            raise

    def _connect_sync(self) -> Any:
        d = self._d
        profile = d.ExecutionProfile(
            load_balancing_policy=d.TokenAwarePolicy(d.DCAwareRoundRobinPolicy(local_dc=self.datacenter)),
            consistency_level=d.ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=d.ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=self.request_timeout, row_factory=d.dict_factory)
        kw = dict(self.cluster_options)
        if self.username is not None:
            kw["auth_provider"] = d.PlainTextAuthProvider(self.username, self.password or "")
        self._cluster = d.Cluster(self.hosts, port=self.port, execution_profiles={d.EXEC_PROFILE_DEFAULT: profile},
                                  connect_timeout=self.connect_timeout, **kw)
        return self._cluster.connect()

    def _replication(self) -> str:
        per_dc: dict[str, int] = {}
        for host in self._cluster.metadata.all_hosts():
            dc = host.datacenter or "datacenter1"
            per_dc[dc] = per_dc.get(dc, 0) + 1
        if not per_dc:
            per_dc = {self.datacenter or "datacenter1": 1}
        rf = {dc: self.replication_factor or min(3, n) for dc, n in sorted(per_dc.items())}
        spec = ", ".join(f"'{dc}': {n}" for dc, n in rf.items())
        return f"{{'class': 'NetworkTopologyStrategy', {spec}}}"

    async def _migrate(self) -> None:
        ks = self.keyspace
        create = f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self._replication()}"
        if self.tablets is not None:
            create += f" AND tablets = {{'enabled': {'true' if self.tablets else 'false'}}}"
        await self._execute(create)
        await self._execute(_SCHEMA_VERSION.format(ks=ks))
        rows = await self._execute(f"SELECT version FROM {ks}.schema_version WHERE scope = 'chargeyard'")
        have = max((r["version"] for r in rows), default=0)
        if have > LATEST:
            raise StoreError(f"keyspace {ks} schema version {have} is newer than this code ({LATEST})")
        for version, stmts in MIGRATIONS:
            if version <= have:
                continue
            for stmt in stmts:  # each idempotent: a process racing us converges on the same schema
                await self._execute(stmt.format(ks=ks))
            await self._record(version)

    async def _record(self, version: int) -> None:
        await self._execute(f"INSERT INTO {self.keyspace}.schema_version (scope, version, applied_at) "
                            f"VALUES ('chargeyard', {version}, {time.time_ns() // 1000}) IF NOT EXISTS")

    async def schema_version(self) -> int:
        rows = await self._execute(f"SELECT version FROM {self.keyspace}.schema_version WHERE scope = 'chargeyard'")
        return max((r["version"] for r in rows), default=0)

    def _prepare_sync(self) -> dict[str, Any]:
        return {name: self._session.prepare(q.format(ks=self.keyspace)) for name, q in _Q.items()}

    async def close(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            if cluster is not None:
                await asyncio.get_running_loop().run_in_executor(pool, cluster.shutdown)
        except Exception as e:
            raise StoreError(f"scylla: {e!r}") from e
        finally:
            pool.shutdown(wait=True)

    # -- writes ------------------------------------------------------------------------

    async def apply(self, ops: list[Op]) -> list[Any]:
        if not ops:
            return []
        if self._session is None:
            raise StoreError("store is not open")
        for op in ops:
            _validate(op)
        results: list[Any] = [None] * len(ops)
        groups: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            groups.setdefault(op.charger_id, []).append(i)
        sem = self._sem
        assert sem is not None

        async def one(idx: list[int]) -> None:
            async with sem:
                await self._apply_charger(ops, idx, results)
        done = await asyncio.gather(*(one(idx) for idx in groups.values()), return_exceptions=True)
        for r in done:  # every charger's writes have settled before we report
            if isinstance(r, BaseException):
                if isinstance(r, StoreError):
                    raise r
                raise StoreError(f"scylla: {r!r}") from r
        return results

    async def _apply_charger(self, ops: list[Op], idx: list[int], results: list[Any]) -> None:
        """One charger's ops, in order: blind writes collect into batches, flushed before
        any op that reads."""
        pending: list[tuple[tuple, str, tuple]] = []
        for i in idx:
            op = ops[i]
            t = type(op)
            if t is MeterSample:
                pending.extend(self._sample_writes(op.charger_id, op.tx_id, op.connector_id, _us(op.at),
                                                   float(op.energy_wh), False))
            elif t is ChargerSeen:
                pending.append(((op.charger_id,), "charger_seen", (self._at_ts(_us(op.at)), _us(op.at), op.charger_id)))
            elif t is ConnectorStatus:
                at = _us(op.at)
                pending.append(((op.charger_id,), "connector", (self._at_ts(at), op.status, op.error_code, op.info, at,
                                                                 op.charger_id, op.evse_id, op.connector_id)))
            elif t is UpsertCharger:
                at = _us(op.at) if op.at is not None else time.time_ns() // 1000
                pending.append(((op.charger_id,), "charger_identity", (
                    self._now_ts(), op.protocol, op.vendor, op.model, op.serial, op.firmware, op.charger_id)))
                pending.append(((op.charger_id,), "charger_boot", (self._at_ts(at), at, at, op.charger_id)))
            else:
                if pending:
                    await self._write(pending)
                    pending = []
                if t is StartTransaction:
                    results[i] = await self._start(op)
                elif t is StopTransaction:
                    results[i] = await self._stop(op)
                else:
                    results[i] = await self._event(op)
        if pending:
            await self._write(pending)

    def _sample_writes(self, charger_id: str, tx_id: str, connector_id: int, at: int, wh: float,
                       closing: bool) -> list[tuple[tuple, str, tuple]]:
        return [((charger_id, tx_id), "sample", (charger_id, tx_id, at, connector_id, wh, closing)),
                ((charger_id,), "last_reading", (self._at_ts(at), at, wh, tx_id, charger_id, connector_id))]

    async def _write(self, writes: list[tuple[tuple, str, tuple]]) -> None:
        """Blind writes, one UNLOGGED batch per partition (chunked), all partitions at once.
        They commute (last-write-wins by explicit timestamps, inserts keyed by time)."""
        d = self._d
        parts: dict[tuple, list[tuple[str, tuple]]] = {}
        for key, name, params in writes:
            parts.setdefault(key, []).append((name, params))
        futs = []
        for stmts in parts.values():
            for k in range(0, len(stmts), _BATCH_ROWS):
                chunk = stmts[k:k + _BATCH_ROWS]
                if len(chunk) == 1:
                    futs.append(self._execute(self._ps[chunk[0][0]], chunk[0][1]))
                    continue
                batch = d.BatchStatement(batch_type=d.BatchType.UNLOGGED)
                for name, params in chunk:
                    batch.add(self._ps[name], params)
                futs.append(self._execute(batch))
        done = await asyncio.gather(*futs, return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                raise r

    async def _ensure_tx(self, charger_id: str, tx_id: str, kind: int) -> tuple[bool, dict]:
        """Create the transaction row if missing; (created, the existing row otherwise)."""
        created, row = self._applied(await self._q("tx_ensure", charger_id, tx_id, kind))
        return created, ({} if created else row)

    async def _start(self, o: StartTransaction) -> str:
        started = _us(o.started_at)
        applied, row = self._applied(await self._q(
            "start_key", o.charger_id, o.connector_id, o.id_tag, float(o.meter_start_wh), started, o.tx_id))
        tx = o.tx_id if applied else row["tx_id"]
        if tx == o.tx_id:  # new, or a retry of a start whose writes may not all have landed
            await self._ensure_tx(o.charger_id, tx, 16)
            await self._q("tx_start", o.connector_id, o.id_tag, float(o.meter_start_wh), started, o.reservation_id,
                          o.charger_id, tx)
        return tx

    async def _stop(self, o: StopTransaction) -> bool:
        created, _ = await self._ensure_tx(o.charger_id, o.tx_id, 16)  # unknown: recorded closed
        closed, _ = self._applied(await self._q("tx_close", float(o.meter_stop_wh), _us(o.stopped_at), o.reason,
                                                o.id_tag, o.charger_id, o.tx_id))
        return closed and not created

    async def _event(self, o: TransactionEvent) -> bool:
        unset = self._d.UNSET
        at = _us(o.at)
        claimed, seq = self._applied(await self._q("seq_claim", o.charger_id, o.tx_id, o.seq_no, o.event_type,
                                                   o.trigger_reason, at))
        if not claimed and seq.get("done"):
            return False  # a repeat (a claimed but unfinished one is finished now)
        ended = o.event_type == "Ended"
        _, cur = await self._ensure_tx(o.charger_id, o.tx_id, 20)
        wh = None if o.energy_wh is None else float(o.energy_wh)
        id_tag = o.id_tag if o.id_tag and (not ended or not cur.get("id_tag")) else unset
        started = cur.get("started_at")
        started_at = (at if started is None else min(started, at)) if not ended else unset
        await self._q("tx_event", o.evse_id if o.evse_id else unset, o.connector_id if o.connector_id else unset,
                      id_tag, started_at, wh if (wh is not None and o.event_type == "Started") else unset,
                      o.charger_id, o.tx_id)
        writes = []
        if wh is not None:
            writes += self._sample_writes(o.charger_id, o.tx_id, o.connector_id, at, wh, ended)
        if writes:
            await self._write(writes)
        if ended:
            await self._q("tx_close", wh, at, o.stop_reason, o.id_tag if o.id_tag else "", o.charger_id, o.tx_id)
        await self._q("seq_done", o.charger_id, o.tx_id, o.seq_no)
        return True

    async def allocate_tx_ids(self, count: int) -> tuple[int, int]:
        if not 1 <= count <= TX_ID_MAX:
            raise ValueError(f"count must be 1..{TX_ID_MAX}")
        if self._session is None:
            raise StoreError("store is not open")
        for attempt in range(200):  # compare-and-set; contention only between allocating processes
            rows = await self._q("alloc_read")
            have = rows[0]["next_id"] if rows else 1
            first = have if 1 <= have and have + count - 1 <= TX_ID_MAX else 1  # wrap like SQLite
            ok, _ = self._applied(await self._q("alloc_cas", first + count, have))
            if ok:
                return first, first + count - 1
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise StoreError("scylla: tx id allocation kept losing the compare-and-set")

    # -- reads -------------------------------------------------------------------------

    @staticmethod
    def _charger_dict(r: dict) -> dict:
        return {"id": r["charger_id"], "protocol": r.get("protocol") or "", "vendor": r.get("vendor") or "",
                "model": r.get("model") or "", "serial": r.get("serial") or "", "firmware": r.get("firmware") or "",
                "last_seen": _iso(r.get("last_seen")), "last_boot": _iso(r.get("last_boot"))}

    async def get_charger(self, charger_id: str) -> dict | None:
        rows, conns, readings = await asyncio.gather(self._q("get_charger", charger_id),
                                                     self._q("get_connectors", charger_id),
                                                     self._q("get_readings", charger_id))
        if not rows and not conns and not readings:
            return None
        d = self._charger_dict(rows[0] if rows else {"charger_id": charger_id})
        d["connectors"] = [{"evse_id": c["evse_id"], "connector_id": c["connector_id"], "status": c["status"],
                            "error_code": c["error_code"] or "", "info": c["info"] or "", "at": _iso(c["at"])}
                           for c in conns if c.get("status") is not None]
        d["last_readings"] = [{"connector_id": r["connector_id"], "energy_wh": r["energy_wh"], "at": _iso(r["at"]),
                               "tx_id": r["tx_id"] or ""} for r in readings if r.get("at") is not None]
        return d

    async def list_chargers(self) -> list[dict]:
        rows = await self._q("list_chargers")
        return sorted((self._charger_dict(r) for r in rows), key=lambda c: c["id"])

    async def _with_samples(self, rows: list[dict]) -> list[dict]:
        samples = await asyncio.gather(*(self._q("tx_samples", r["charger_id"], r["tx_id"]) for r in rows))
        return [_tx_dict(r, s) for r, s in zip(rows, samples)]

    async def list_transactions(self, charger_id: str | None = None, active: bool | None = None,
                                limit: int = 1000) -> list[dict]:
        rows = await (self._q("charger_txs", charger_id) if charger_id is not None else self._q("all_txs"))
        if active is not None:
            rows = [r for r in rows if (r.get("stopped_at") is None) == active]
        rows.sort(key=lambda r: (r.get("started_at") is None, -(r.get("started_at") or 0), r["charger_id"],
                                 r["tx_id"]))
        return await self._with_samples(rows[:max(0, int(limit))])

    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None:
        rows = await self._q("get_tx", charger_id, tx_id)
        if not rows:
            return None
        return (await self._with_samples(rows[:1]))[0]

    async def list_meter_samples(self, charger_id: str, tx_id: str, limit: int = 10000) -> list[dict]:
        rows = await self._q("list_samples", charger_id, tx_id, max(1, int(limit)))
        return [{"connector_id": r["connector_id"], "at": _iso(r["at"]), "energy_wh": r["energy_wh"]}
                for r in rows][:max(0, int(limit))]

    # -- authorization list ------------------------------------------------------------

    async def get_id_tag(self, tag: str) -> str | None:
        rows = await self._q("get_tag", tag)
        if not rows or rows[0].get("status") is None:
            return None
        status, expiry = rows[0]["status"], rows[0].get("expiry")
        if expiry is not None and expiry < time.time_ns() // 1000 and status == "Accepted":
            return "Expired"
        return status

    async def put_id_tag(self, tag: str, status: str, expiry: dt.datetime | None = None) -> None:
        await self._q("put_tag", status, None if expiry is None else _us(expiry), tag)

    async def delete_id_tag(self, tag: str) -> bool:
        existed = await self.get_id_tag(tag) is not None  # no LWT: these cells are never written by one
        await self._q("delete_tag", tag)
        return existed
