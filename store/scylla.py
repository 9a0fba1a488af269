"""ScyllaDB backend for a cluster (``docs/adr/0004-scylla-store.md``).

Needs the ``scylla-driver`` package (import name ``cassandra``), an optional extra:
``pip install scylla-driver`` or ``pip install 'chargeyard[scylla]'``. This module imports
without it; building a :class:`ScyllaStore` without it raises a clear ImportError.

Proven on a real CQL server: the contract suite and ``tests/store/test_scylla.py`` run on
Apache Cassandra 5.0 in ``make test`` (same protocol and CQL). ScyllaDB-only parts (tablets,
the shard-aware port) are settings, exercised only against a ScyllaDB cluster.

Data model. Timestamps are ``bigint`` microseconds (CQL ``timestamp`` holds milliseconds).
No partition grows without bound:

* A transaction is its own partition (``transactions``), its readings another
  (``tx_samples``, bounded by the transaction's length).
* Lists are time-bucketed indexes: ``tx_index`` partitions are (scope, bucket) with
  scope ``all:<shard>`` (cluster-wide, one day per bucket, 16 shards so no day is one hot
  partition) or ``c:<charger>`` (one charger, 32 days per bucket); ``tx_buckets`` lists the
  buckets in use, newest first. ``charger_index`` holds charger ids in 16 sorted shards.
  Both are paged with ``limit``/``cursor``: a page reads only what it returns (plus one
  slice per shard), never the whole table.
* Readings without a transaction (``tx_id=""``) go to ``free_samples`` partitioned by
  (charger, day) with TWCS and a TTL of ``retention_days``; 2.0.1 replay keys
  (``tx_event_seqs``, per transaction) and 1.6 start keys (``tx_starts``, one row each)
  expire after the same retention. Transactions and their readings never expire.

Writes:

* Blind, commutative writes wherever the contract allows: "keep the newest by the
  charger's clock" (connector status, last reading, last_seen/last_boot) is last-write-wins
  with ``USING TIMESTAMP`` = the charger's time (ms, plus a sub-ms tie-breaker so the op
  applied last wins among equal times) but never later than this process's clock: a
  charger whose clock says 2099 is clamped to now, so it cannot freeze its status, and a
  later DELETE (server time) always wins. Energies are derived at read time from the
  transaction's sample partition, so a MeterSample is two inserts, never a read.
* Idempotency by LWT (``IF NOT EXISTS``, ``serial_consistency``, default LOCAL_SERIAL):
  the 1.6 StartTransaction key -> first tx id; TransactionEvent (tx, seq_no) -> applied
  once (the seq row gets ``done = true`` once its effects are written, so a retry after a
  partial failure re-applies the effects instead of calling it a repeat); "first close
  wins" is ``IF stopped_at = null``. Every step after a key LWT is idempotent and always
  runs again on a retry. Cells written by LWT are never written without it.
* 1.6 transaction ids: a compare-and-set on one counter row with SERIAL (not
  LOCAL_SERIAL) consistency, so two data centres never hand out the same block.
* Unset values are ``UNSET`` (never ``None``, which would write a tombstone); prepared
  statements are marked idempotent unless they are LWTs; every column list is explicit.
* ``apply`` groups ops by charger: chargers run concurrently (``max_concurrency``), one
  charger's ops in order; runs of blind writes go as UNLOGGED batches, one per partition.
  Unlike SQLite, ``apply`` is not atomic across ops (no multi-partition transactions):
  ops are validated before anything is sent, and every op is idempotent, so the batch
  writer's retry of a failed batch (or the charger's resend) converges.
  ``apply`` returns when every charger's ops are written, so the writer bounds each
  charger's ops per batch (``charger_ops_per_batch``): a charger replaying a backlog is
  spread over batches instead of holding the others' replies until all of it is written.

Schema changes run only in :meth:`ScyllaStore.migrate` (``chargeyard store migrate``, a k8s
Job); :meth:`ScyllaStore.open` checks the keyspace's version and refuses any other with a
message saying what to do, so pods never race each other over DDL.

Driver calls run on the driver's own threads; its futures complete asyncio futures via
``call_soon_threadsafe``. Connect, prepare and shutdown run on a small thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import heapq
import json
import math
import random
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from .base import (ChargerSeen, ConnectorStatus, Fence, MeterSample, Op, StaleEpoch, StartTransaction,
                   StopTransaction, Store, StoreError, TransactionEvent, UpsertCharger, from_us, to_us)
from .chargers import ChargerCredentials, ChargerCredentialStore, SecurityEvent
from .events import EVENT_OPS, OutboxRow
from .outbox_encoding import encoded

__all__ = ["ScyllaStore", "MIGRATIONS", "LATEST", "migration_statements"]

TX_ID_MAX = 2**31 - 1
_I64 = 2**63 - 1
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_BATCH_ROWS = 64  # statements per UNLOGGED batch (far below batch_size_fail_threshold)
_DAY_US = 86_400_000_000
_SHARDS = 16  # charger_index and cluster-wide tx_index shards; changing it needs a reindex
_CHARGER_BUCKET_DAYS = 32  # per-charger tx_index bucket: ~300 rows for a busy charger
_UNKNOWN = -1  # tx_index bucket of transactions whose start is unknown (listed last)
_PAGE_MAX = 10_000
_CONSISTENCIES = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
_SERIALS = ("SERIAL", "LOCAL_SERIAL")
_CACHE_MAX = 100_000  # entries of the "already written" caches before they start over

INSTALL_HINT = ("the ScyllaDB store needs the scylla-driver package (import name 'cassandra'): "
                "pip install scylla-driver  (or: pip install 'chargeyard[scylla]')")
MIGRATE_HINT = ("run `chargeyard store migrate --store scylla` with the same --scylla-hosts, --keyspace and "
                "--scylla-* settings before starting pods (in k8s: the store-migrate Job)")


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
# Versioned like store/migrations.py: (version, [CQL statements]); {ks} is the keyspace
# (literal braces doubled). Never edit a released version, append one. (Version 1 was
# rewritten once, by issue 21, before this store had ever run against a server.) Every
# statement is idempotent (IF NOT EXISTS), so a migration interrupted halfway can rerun.

_TWCS = ("compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', "
         "'compaction_window_size': 1}}")

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS {ks}.chargers (
    charger_id text PRIMARY KEY,
    protocol text, vendor text, model text, serial text, firmware text,
    last_seen bigint, last_boot bigint)""",
        # every charger id, in _SHARDS sorted partitions (shard = crc32(id) % _SHARDS): paged by id
        """CREATE TABLE IF NOT EXISTS {ks}.charger_index (
    shard int, charger_id text,
    PRIMARY KEY (shard, charger_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.connectors (
    charger_id text, evse_id bigint, connector_id bigint,
    status text, error_code text, info text, at bigint,
    PRIMARY KEY (charger_id, evse_id, connector_id))""",
        # one partition per transaction; kind 16 = OCPP 1.6, 20 = 2.0.1/2.1; readings in tx_samples
        """CREATE TABLE IF NOT EXISTS {ks}.transactions (
    charger_id text, tx_id text, kind int,
    connector_id bigint, evse_id bigint, id_tag text, stop_id_tag text, reservation_id bigint,
    start_reading_wh double, meter_stop_wh double,
    started_at bigint, stopped_at bigint, stop_reason text,
    PRIMARY KEY ((charger_id, tx_id)))""",
        # the lists: scope 'all:<shard>' (bucket = day) or 'c:<charger>' (bucket = 32 days);
        # bucket -1 / started_at 0 = start unknown. Newest first.
        """CREATE TABLE IF NOT EXISTS {ks}.tx_index (
    scope text, bucket int, started_at bigint, charger_id text, tx_id text,
    PRIMARY KEY ((scope, bucket), started_at, charger_id, tx_id))
    WITH CLUSTERING ORDER BY (started_at DESC, charger_id DESC, tx_id DESC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.tx_buckets (
    scope text, bucket int,
    PRIMARY KEY (scope, bucket))
    WITH CLUSTERING ORDER BY (bucket DESC)""",
        # 1.6 retry key -> the first tx id; one row per partition, TTL = retention
        """CREATE TABLE IF NOT EXISTS {ks}.tx_starts (
    charger_id text, connector_id bigint, id_tag text, meter_start_wh double, started_at bigint,
    tx_id text,
    PRIMARY KEY ((charger_id, connector_id, id_tag, meter_start_wh, started_at)))
    WITH """ + _TWCS,
        # 2.0.1 replay keys, per transaction, TTL = retention
        """CREATE TABLE IF NOT EXISTS {ks}.tx_event_seqs (
    charger_id text, tx_id text, seq_no bigint,
    event_type text, trigger_reason text, at bigint, done boolean,
    PRIMARY KEY ((charger_id, tx_id), seq_no))
    WITH """ + _TWCS,
        # closing: the Ended event's reading (counts as highest/newest, never as a start estimate)
        """CREATE TABLE IF NOT EXISTS {ks}.tx_samples (
    charger_id text, tx_id text, at bigint, connector_id bigint,
    energy_wh double, closing boolean,
    PRIMARY KEY ((charger_id, tx_id), at, connector_id))
    WITH CLUSTERING ORDER BY (at DESC, connector_id ASC)""",
        # readings outside a transaction: a partition per charger and day (of the reading), TTL'd
        """CREATE TABLE IF NOT EXISTS {ks}.free_samples (
    charger_id text, day int, at bigint, connector_id bigint, energy_wh double,
    PRIMARY KEY ((charger_id, day), at, connector_id))
    WITH """ + _TWCS,
        """CREATE TABLE IF NOT EXISTS {ks}.free_sample_days (
    charger_id text, day int,
    PRIMARY KEY (charger_id, day))""",
        """CREATE TABLE IF NOT EXISTS {ks}.last_readings (
    charger_id text, connector_id bigint, at bigint, energy_wh double, tx_id text,
    PRIMARY KEY (charger_id, connector_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.tx_id_alloc (
    name text PRIMARY KEY, next_id bigint)""",
        "INSERT INTO {ks}.tx_id_alloc (name, next_id) VALUES ('ocpp16', 1) IF NOT EXISTS",
        # expiry 0 = none (a null would be a tombstone on every put)
        """CREATE TABLE IF NOT EXISTS {ks}.id_tags (
    tag text PRIMARY KEY, status text, expiry bigint)""",
        # every tag, in _SHARDS sorted partitions like charger_index: listed in pages by tag
        """CREATE TABLE IF NOT EXISTS {ks}.id_tag_index (
    shard int, tag text,
    PRIMARY KEY (shard, tag))""",
    ]),
    # fenced writes (ADR 0016): the highest ownership epoch recorded per charger (an LWT per
    # connect raises it; every batch reads it once per charger it writes for)
    (2, [
        """CREATE TABLE IF NOT EXISTS {ks}.charger_epochs (
    charger_id text PRIMARY KEY, epoch bigint)""",
    ]),
    (3, [
        # the events outbox (store/events.py): one partition per worker id, one row per
        # batch (events first .. first+n-1, a msgpack list of (charger id, envelope))
        """CREATE TABLE IF NOT EXISTS {ks}.event_outbox (
    worker text, first bigint, n int, data blob,
    PRIMARY KEY (worker, first))""",
        """CREATE TABLE IF NOT EXISTS {ks}.event_outbox_state (
    worker text PRIMARY KEY, published bigint)""",
    ]),
    (4, [
        # registered chargers (store/chargers.py): hashes only, '' when none
        """CREATE TABLE IF NOT EXISTS {ks}.charger_credentials (
    charger_id text PRIMARY KEY, security_profile int, password_hash text,
    pending_password_hash text, previous_password_hash text, updated_at bigint)""",
        # SecurityEventNotifications, newest first per charger; seq: the receipt time in
        # microseconds x 1000 + a random 0-999 (two events of one microsecond both stay)
        """CREATE TABLE IF NOT EXISTS {ks}.security_events (
    charger_id text, seq bigint, type text, at text, tech_info text, received_at bigint,
    PRIMARY KEY (charger_id, seq)) WITH CLUSTERING ORDER BY (seq DESC)""",
    ]),
    (5, [
        # the last successful password check per charger (store/chargers.py, ADR 0019): an
        # HMAC under a key kept outside the store, bound to the hash it matched; its own
        # table so that writing it never touches (or resurrects) the credentials row
        """CREATE TABLE IF NOT EXISTS {ks}.charger_verifiers (
    charger_id text PRIMARY KEY, verifier text)""",
    ]),
    # the services' state (billing, monitoring: services/scylla_storage.py, which holds their
    # statements and explains the model), so every pod of a cluster reads what the service
    # processes wrote. Documents are msgspec JSON; seen_events rows carry a TTL.
    (6, [
        """CREATE TABLE IF NOT EXISTS {ks}.tariffs (
    part text, tariff_id text, doc blob,
    PRIMARY KEY (part, tariff_id))""",
        # written only by LWT (IF NOT EXISTS): the first CDR of a transaction is final
        """CREATE TABLE IF NOT EXISTS {ks}.cdrs (
    charger_id text, tx_id text, doc blob, created bigint,
    PRIMARY KEY ((charger_id, tx_id)))""",
        """CREATE TABLE IF NOT EXISTS {ks}.cdr_index (
    day int, created bigint, charger_id text, tx_id text,
    PRIMARY KEY (day, created, charger_id, tx_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.cdr_days (
    part text, day int,
    PRIMARY KEY (part, day))""",
        # an alert in three places (its charger's list, its day's list, the open set while open)
        """CREATE TABLE IF NOT EXISTS {ks}.alerts_by_charger (
    charger_id text, raised_at text, id text, active boolean, doc blob,
    PRIMARY KEY (charger_id, raised_at, id))
    WITH CLUSTERING ORDER BY (raised_at DESC, id ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.alerts_by_day (
    day int, raised_at text, id text, active boolean, doc blob,
    PRIMARY KEY (day, raised_at, id))
    WITH CLUSTERING ORDER BY (raised_at DESC, id ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.alert_days (
    part text, day int,
    PRIMARY KEY (part, day))
    WITH CLUSTERING ORDER BY (day DESC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.open_alerts (
    shard int, charger_id text, id text, doc blob,
    PRIMARY KEY (shard, charger_id, id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.monitor_state (
    shard int, charger_id text, doc blob,
    PRIMARY KEY (shard, charger_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.seen_events (
    grp text, id text, at bigint,
    PRIMARY KEY ((grp, id)))
    WITH """ + _TWCS,
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

_TX_COLS = ("charger_id, tx_id, kind, connector_id, evse_id, id_tag, stop_id_tag, reservation_id, start_reading_wh, "
            "meter_stop_wh, started_at, stopped_at, stop_reason")
_CHARGER_COLS = "charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot"

_Q = {
    "charger_identity": "UPDATE {ks}.chargers USING TIMESTAMP ? SET protocol = ?, vendor = ?, model = ?, "
                        "serial = ?, firmware = ? WHERE charger_id = ?",
    "charger_boot": "UPDATE {ks}.chargers USING TIMESTAMP ? SET last_seen = ?, last_boot = ? WHERE charger_id = ?",
    "charger_seen": "UPDATE {ks}.chargers USING TIMESTAMP ? SET last_seen = ? WHERE charger_id = ?",
    "charger_index": "INSERT INTO {ks}.charger_index (shard, charger_id) VALUES (?, ?)",
    "connector": "UPDATE {ks}.connectors USING TIMESTAMP ? SET status = ?, error_code = ?, info = ?, at = ? "
                 "WHERE charger_id = ? AND evse_id = ? AND connector_id = ?",
    "tx_sample": "INSERT INTO {ks}.tx_samples (charger_id, tx_id, at, connector_id, energy_wh, closing) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
    "free_sample": "INSERT INTO {ks}.free_samples (charger_id, day, at, connector_id, energy_wh) "
                   "VALUES (?, ?, ?, ?, ?) USING TTL ?",
    "free_day": "INSERT INTO {ks}.free_sample_days (charger_id, day) VALUES (?, ?) USING TTL ?",
    "last_reading": "UPDATE {ks}.last_readings USING TIMESTAMP ? SET at = ?, energy_wh = ?, tx_id = ? "
                    "WHERE charger_id = ? AND connector_id = ?",
    "start_key": "INSERT INTO {ks}.tx_starts (charger_id, connector_id, id_tag, meter_start_wh, started_at, tx_id) "
                 "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
    "tx_ensure": "INSERT INTO {ks}.transactions (charger_id, tx_id, kind) VALUES (?, ?, ?) IF NOT EXISTS",
    "tx_start": "UPDATE {ks}.transactions SET connector_id = ?, id_tag = ?, start_reading_wh = ?, started_at = ?, "
                "reservation_id = ? WHERE charger_id = ? AND tx_id = ?",
    "tx_close": "UPDATE {ks}.transactions SET meter_stop_wh = ?, stopped_at = ?, stop_reason = ?, stop_id_tag = ? "
                "WHERE charger_id = ? AND tx_id = ? IF stopped_at = null",
    "tx_event": "UPDATE {ks}.transactions SET evse_id = ?, connector_id = ?, id_tag = ?, started_at = ?, "
                "start_reading_wh = ? WHERE charger_id = ? AND tx_id = ?",
    "index_put": "INSERT INTO {ks}.tx_index (scope, bucket, started_at, charger_id, tx_id) VALUES (?, ?, ?, ?, ?)",
    "index_del": "DELETE FROM {ks}.tx_index WHERE scope = ? AND bucket = ? AND started_at = ? AND charger_id = ? "
                 "AND tx_id = ?",
    "bucket_put": "INSERT INTO {ks}.tx_buckets (scope, bucket) VALUES (?, ?)",
    "seq_claim": "INSERT INTO {ks}.tx_event_seqs (charger_id, tx_id, seq_no, event_type, trigger_reason, at) "
                 "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
    "seq_done": "UPDATE {ks}.tx_event_seqs USING TTL ? SET done = true "
                "WHERE charger_id = ? AND tx_id = ? AND seq_no = ?",
    "epoch_get": "SELECT epoch FROM {ks}.charger_epochs WHERE charger_id = ?",
    "epoch_init": "INSERT INTO {ks}.charger_epochs (charger_id, epoch) VALUES (?, ?) IF NOT EXISTS",
    "epoch_raise": "UPDATE {ks}.charger_epochs SET epoch = ? WHERE charger_id = ? IF epoch < ?",
    "alloc_read": "SELECT next_id FROM {ks}.tx_id_alloc WHERE name = 'ocpp16'",
    "alloc_cas": "UPDATE {ks}.tx_id_alloc SET next_id = ? WHERE name = 'ocpp16' IF next_id = ?",
    "get_charger": "SELECT " + _CHARGER_COLS + " FROM {ks}.chargers WHERE charger_id = ?",
    "charger_ids": "SELECT charger_id FROM {ks}.charger_index WHERE shard = ? AND charger_id > ? LIMIT ?",
    "get_connectors": "SELECT evse_id, connector_id, status, error_code, info, at FROM {ks}.connectors "
                      "WHERE charger_id = ?",
    "get_readings": "SELECT connector_id, energy_wh, at, tx_id FROM {ks}.last_readings WHERE charger_id = ?",
    "get_tx": "SELECT " + _TX_COLS + " FROM {ks}.transactions WHERE charger_id = ? AND tx_id = ?",
    "buckets": "SELECT bucket FROM {ks}.tx_buckets WHERE scope = ? AND bucket <= ? LIMIT ?",
    "index_first": "SELECT started_at, charger_id, tx_id FROM {ks}.tx_index WHERE scope = ? AND bucket = ? LIMIT ?",
    "index_after": "SELECT started_at, charger_id, tx_id FROM {ks}.tx_index WHERE scope = ? AND bucket = ? "
                   "AND (started_at, charger_id, tx_id) < (?, ?, ?) LIMIT ?",
    "tx_samples": "SELECT at, connector_id, energy_wh, closing FROM {ks}.tx_samples "
                  "WHERE charger_id = ? AND tx_id = ?",
    "list_tx_samples": "SELECT connector_id, at, energy_wh FROM {ks}.tx_samples WHERE charger_id = ? AND tx_id = ? "
                       "ORDER BY at ASC LIMIT ?",
    "free_days": "SELECT day FROM {ks}.free_sample_days WHERE charger_id = ?",
    "list_free_samples": "SELECT connector_id, at, energy_wh FROM {ks}.free_samples WHERE charger_id = ? AND day = ? "
                         "LIMIT ?",
    "get_tag": "SELECT status, expiry FROM {ks}.id_tags WHERE tag = ?",
    "put_tag": "UPDATE {ks}.id_tags SET status = ?, expiry = ? WHERE tag = ?",
    "delete_tag": "DELETE FROM {ks}.id_tags WHERE tag = ?",
    "tag_index": "INSERT INTO {ks}.id_tag_index (shard, tag) VALUES (?, ?)",
    "tag_unindex": "DELETE FROM {ks}.id_tag_index WHERE shard = ? AND tag = ?",
    "tag_ids": "SELECT tag FROM {ks}.id_tag_index WHERE shard = ? AND tag > ? LIMIT ?",
    "outbox_add": "INSERT INTO {ks}.event_outbox (worker, first, n, data) VALUES (?, ?, ?, ?)",
    "outbox_last": "SELECT first, n FROM {ks}.event_outbox WHERE worker = ? ORDER BY first DESC LIMIT 1",
    "outbox_floor": "SELECT first, n FROM {ks}.event_outbox WHERE worker = ? AND first <= ? "
                    "ORDER BY first DESC LIMIT 1",
    "outbox_read": "SELECT first, n, data FROM {ks}.event_outbox WHERE worker = ? AND first >= ? LIMIT ?",
    "outbox_trim": "DELETE FROM {ks}.event_outbox WHERE worker = ? AND first <= ?",
    "outbox_published": "SELECT published FROM {ks}.event_outbox_state WHERE worker = ?",
    "outbox_mark": "UPDATE {ks}.event_outbox_state SET published = ? WHERE worker = ?",
    "creds_get": "SELECT charger_id, security_profile, password_hash, pending_password_hash, previous_password_hash "
                 "FROM {ks}.charger_credentials WHERE charger_id = ?",
    "creds_put": "INSERT INTO {ks}.charger_credentials (charger_id, security_profile, password_hash, "
                 "pending_password_hash, previous_password_hash, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
    "creds_delete": "DELETE FROM {ks}.charger_credentials WHERE charger_id = ? IF EXISTS",
    "creds_ids": "SELECT charger_id FROM {ks}.charger_credentials LIMIT ?",
    "verifier_get": "SELECT verifier FROM {ks}.charger_verifiers WHERE charger_id = ?",
    "verifier_put": "INSERT INTO {ks}.charger_verifiers (charger_id, verifier) VALUES (?, ?)",
    "verifier_delete": "DELETE FROM {ks}.charger_verifiers WHERE charger_id = ?",
    "sec_event_add": "INSERT INTO {ks}.security_events (charger_id, seq, type, at, tech_info, received_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
    "sec_events": "SELECT charger_id, type, at, tech_info, received_at FROM {ks}.security_events "
                  "WHERE charger_id = ? LIMIT ?",
}
_ALLOC = ("alloc_read", "alloc_cas")  # SERIAL whatever serial_consistency says: ids are global


def _day(at_us: int) -> int:
    return at_us // _DAY_US


def _shard(key: str) -> int:
    return zlib.crc32(key.encode()) % _SHARDS


def _encode_cursor(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None, shape: tuple[type, ...]) -> list | None:
    if cursor is None or cursor == "":
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(key, list) or len(key) != len(shape) or not all(
                type(v) is t for v, t in zip(key, shape)):
            raise ValueError(cursor)
        return key
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid cursor {cursor!r}") from e


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


_EVENT_ONLY = frozenset(EVENT_OPS)
_pack_events = msgspec.msgpack.Encoder().encode
_unpack_events = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode

_OPS = (UpsertCharger, ChargerSeen, ConnectorStatus, StartTransaction, StopTransaction, MeterSample, TransactionEvent,
        Fence, *EVENT_OPS)
_INTS = ("evse_id", "connector_id", "seq_no", "reservation_id", "epoch")
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


class ScyllaStore(Store, ChargerCredentialStore):
    """``ScyllaStore(hosts, keyspace="chargeyard", *, port=9042, datacenter=None,
    replication_factor=None, tablets=False, username=None, password=None,
    consistency="LOCAL_QUORUM", read_consistency=None, serial_consistency="LOCAL_SERIAL",
    request_timeout=10.0, connect_timeout=10.0, max_concurrency=128, retention_days=90,
    charger_ops_per_batch=2, **cluster_options)``.

    ``hosts``: list or comma-separated ``host[:port]``. :meth:`migrate` creates the
    keyspace if missing with NetworkTopologyStrategy, ``replication_factor`` per data centre
    (default min(3, nodes in it)). ``tablets``: on a ScyllaDB with tablets the keyspace is
    created with ``tablets = {'enabled': false}`` unless ``tablets=True``, because this
    store depends on LWT (start keys, event replay keys, first close, id allocation) and
    ScyllaDB does not support LWT on tablet keyspaces before 2025.1; Cassandra has no
    tablets (``tablets=True`` there is an error). ``consistency``: writes and, unless
    ``read_consistency`` is given, reads; ``serial_consistency``: the per-charger LWTs
    (1.6 ids always use SERIAL). ``retention_days``: TTL of readings outside a transaction,
    replay and start keys (0 = keep forever). ``request_timeout`` (s, per statement),
    ``max_concurrency`` (chargers of one batch written at once), ``datacenter`` (the local
    one: routing, LOCAL_* levels). ``charger_ops_per_batch``: the writer puts at most this
    many ops of one charger in a batch (``Store.charger_ops_per_batch``): a charger's ops
    run in sequence, so a charger replaying a backlog would otherwise hold every other
    charger's reply in its batch until the whole backlog is written; the rest of it goes
    into the next batches, each of which takes the other chargers' new ops too. Only ops
    with round trips of their own count (transactions: LWTs and reads); the blind writes
    (readings, status, heartbeats) go out together and do not (``charger_free_ops``).
    ``cluster_options`` go to ``cassandra.cluster.Cluster``.
    """

    # blind writes, collected into UNLOGGED batches by _apply_charger: a run costs one round trip
    charger_free_ops = frozenset({MeterSample, ChargerSeen, ConnectorStatus, UpsertCharger})

    def __init__(self, hosts: str | list[str] | None, keyspace: str = "chargeyard", *, port: int = 9042,
                 datacenter: str | None = None, replication_factor: int | None = None, tablets: bool = False,
                 username: str | None = None, password: str | None = None, consistency: str = "LOCAL_QUORUM",
                 read_consistency: str | None = None, serial_consistency: str = "LOCAL_SERIAL",
                 request_timeout: float = 10.0, connect_timeout: float = 10.0, max_concurrency: int = 128,
                 retention_days: float = 90, charger_ops_per_batch: int = 2, outbox: str | None = None,
                 **cluster_options: Any) -> None:
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
        for name, level, allowed in (("consistency", consistency, _CONSISTENCIES),
                                     ("read_consistency", read_consistency or consistency, _CONSISTENCIES),
                                     ("serial_consistency", serial_consistency, _SERIALS)):
            if level.upper() not in allowed:
                raise ValueError(f"unknown {name} level {level!r} (one of {', '.join(allowed)})")
        if not retention_days >= 0 or retention_days * 86400 > 20 * 365 * 86400:
            raise ValueError(f"retention_days must be 0 (forever) .. 7300, not {retention_days!r}")
        if not request_timeout > 0 or not connect_timeout > 0:
            raise ValueError("scylla timeouts must be positive seconds")
        self.port = ports.pop() if ports else port
        self.keyspace = keyspace
        self.datacenter = datacenter or None
        self.replication_factor = replication_factor
        self.tablets = bool(tablets)
        self.username, self.password = username, password
        self.consistency = consistency.upper()
        self.read_consistency = (read_consistency or consistency).upper()
        self.serial_consistency = serial_consistency.upper()
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_concurrency = max(1, int(max_concurrency))
        self.charger_ops_per_batch = max(1, int(charger_ops_per_batch))
        self.retention_days = retention_days
        self._ttl = int(retention_days * 86400)
        self.cluster_options = cluster_options
        self._cluster: Any = None
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ps: dict[str, Any] = {}
        self._sem: asyncio.Semaphore | None = None
        self._ticks: dict[int, int] = {}
        self._now_last = 0
        # Writes this process knows have landed and need not be repeated per message: the
        # charger index entries, and (charger, day) rows of free_sample_days (-> when, so a
        # TTL'd row is rewritten before it expires).
        self._indexed: set[str] = set()
        self._epochs: dict[str, int] = {}  # fencing (ADR 0016): charger -> the epoch this store holds
        self._days: dict[tuple[str, int], float] = {}
        # the worker id whose events outbox this store writes (None: no events); the next
        # seq is kept here, read back at open (one writer per worker id)
        self.outbox = outbox
        self._outbox_next = 1

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
        """Run one statement on the driver's threads; all pages of rows (dicts) as the result.
        Reads that could be large carry a LIMIT, so "all pages" stays bounded."""
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

    def _start_key_extra(self) -> tuple:
        """The start_key parameters after its columns (the TTL); for tests that land a key."""
        return (self._ttl,)

    @staticmethod
    def _applied(rows: list[dict]) -> tuple[bool, dict]:
        row = rows[0] if rows else {}
        return bool(row.get("[applied]", True)), row

    def _at_ts(self, at_us: int) -> int:
        """Write timestamp (µs, the CQL convention) for "newest by the charger's clock wins":
        the charger's millisecond, plus a sub-millisecond tick so that among equal times the
        op applied last wins; never later than this process's clock, so a charger whose
        clock runs ahead cannot outvote every later write (or a DELETE) until that date."""
        ms = max(0, at_us) // 1000
        ticks = self._ticks
        tick = ticks.get(ms, -1) + 1
        if tick > 999:
            tick = 999
        if len(ticks) >= 4096:
            ticks.clear()
        ticks[ms] = tick
        ts = ms * 1000 + tick
        return ts if ts < time.time_ns() // 1000 else self._now_ts()

    def _now_ts(self) -> int:
        """Strictly increasing wall-clock µs for "the op applied last wins" writes."""
        self._now_last = max(self._now_last + 1, time.time_ns() // 1000)
        return self._now_last

    # -- lifecycle ---------------------------------------------------------------------

    async def _connect(self, schema_metadata: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chargeyard-scylla")
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._session = await self._blocking(self._connect_sync, schema_metadata)

    async def open(self) -> None:
        """Connect, check the schema version (never change it: see :meth:`migrate`), prepare."""
        if self._session is not None:
            return
        try:
            await self._connect()
            await self._check_schema()
            self._ps = await self._blocking(self._prepare_sync)
            if self.outbox is not None:
                self._outbox_next = await self._outbox_resume()
        except BaseException:
            await self._shutdown()
            raise

    async def migrate(self) -> int:
        """Create the keyspace and bring its schema to this code's version; returns it.
        Run once per deploy (``chargeyard store migrate``, a k8s Job), never by pods."""
        opened_here = self._session is None
        if opened_here:
            try:
                # No schema metadata on a connection that only migrates: the driver would
                # re-read it after every DDL statement (3x the migration's time), and only
                # token-aware routing of the store's own statements needs it.
                await self._connect(schema_metadata=False)
            except BaseException:
                await self._shutdown()
                raise
        try:
            await self._migrate()
            return LATEST
        finally:
            if opened_here:
                await self._shutdown()

    def _level(self, name: str) -> Any:
        return getattr(self._d.ConsistencyLevel, name)

    def _connect_sync(self, schema_metadata: bool = True) -> Any:
        d = self._d
        profile = d.ExecutionProfile(
            load_balancing_policy=d.TokenAwarePolicy(d.DCAwareRoundRobinPolicy(local_dc=self.datacenter)),
            consistency_level=self._level(self.consistency),
            serial_consistency_level=self._level(self.serial_consistency),
            request_timeout=self.request_timeout, row_factory=d.dict_factory)
        kw = dict(self.cluster_options)
        if not schema_metadata:
            kw["schema_metadata_enabled"] = False
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

    def _keyspace_cql(self, replication: str, server_has_tablets: bool) -> str:
        """CREATE KEYSPACE; tablets off unless asked for (LWT, see the class doc), and only
        mentioned to a server that knows the option (Cassandra rejects it)."""
        create = f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = {replication}"
        if server_has_tablets:
            return create + f" AND tablets = {{'enabled': {'true' if self.tablets else 'false'}}}"
        if self.tablets:
            raise StoreError("scylla: --scylla-tablets needs a ScyllaDB with tablets; this server has none")
        return create

    async def _server_has_tablets(self) -> bool:
        rows = await self._execute("SELECT column_name FROM system_schema.columns WHERE keyspace_name = "
                                   "'system_schema' AND table_name = 'scylla_keyspaces'")
        return any(r["column_name"] == "initial_tablets" for r in rows)

    async def _migrate(self) -> None:
        ks = self.keyspace
        await self._execute(self._keyspace_cql(self._replication(), await self._server_has_tablets()))
        await self._execute(_SCHEMA_VERSION.format(ks=ks))
        have = await self.schema_version()
        if have > LATEST:
            raise StoreError(f"scylla: keyspace {ks} is at schema version {have}, newer than this code "
                             f"({LATEST}): migrate with the newer release")
        for version, stmts in MIGRATIONS:
            if version <= have:
                continue
            for stmt in stmts:  # each idempotent: an interrupted migration reruns cleanly
                await self._execute(stmt.format(ks=ks))
            await self._record(version)

    async def _check_schema(self) -> None:
        ks = self.keyspace
        try:
            have = await self.schema_version()
        except StoreError as e:
            text = str(e).lower()
            if "does not exist" in text or "unconfigured table" in text or "keyspace" in text and "not" in text:
                raise StoreError(f"scylla: keyspace {ks} has no Chargeyard schema: {MIGRATE_HINT}") from None
            raise
        if have < LATEST:
            raise StoreError(f"scylla: keyspace {ks} is at schema version {have}, this code needs {LATEST}: "
                             f"{MIGRATE_HINT}")
        if have > LATEST:
            raise StoreError(f"scylla: keyspace {ks} is at schema version {have}, newer than this code "
                             f"({LATEST}): run the release that migrated it")

    async def _record(self, version: int) -> None:
        await self._execute(f"INSERT INTO {self.keyspace}.schema_version (scope, version, applied_at) "
                            f"VALUES ('chargeyard', {version}, {time.time_ns() // 1000}) IF NOT EXISTS")

    async def schema_version(self) -> int:
        rows = await self._execute(f"SELECT version FROM {self.keyspace}.schema_version WHERE scope = 'chargeyard'")
        return max((r["version"] for r in rows), default=0)

    def _prepare_sync(self) -> dict[str, Any]:
        ps = self._prepare_many(_Q)
        SERIAL = self._level("SERIAL")
        ps["alloc_read"].consistency_level = SERIAL  # a Paxos read: sees every committed CAS
        ps["alloc_cas"].serial_consistency_level = SERIAL
        return ps

    def _prepare_many(self, queries: dict[str, str]) -> dict[str, Any]:
        ps = {name: self._session.prepare(q.format(ks=self.keyspace)) for name, q in queries.items()}
        read, serial = self._level(self.read_consistency), self._level(self.serial_consistency)
        for name, p in ps.items():
            lwt = " IF " in queries[name]
            # A driver retries (or speculatively re-sends) only idempotent statements; an
            # LWT re-sent after it landed reports "not applied", so LWTs are not marked.
            p.is_idempotent = not lwt
            if queries[name].startswith("SELECT"):
                p.consistency_level = read
            if lwt:
                p.serial_consistency_level = serial
        return ps

    # -- for other parts' tables in this keyspace (the services': services/scylla_storage.py)

    async def prepare(self, queries: dict[str, str]) -> dict[str, Any]:
        """Prepared statements for ``queries`` (``{ks}`` filled in) with this store's rules:
        SELECTs at the read level; ``IF`` statements are LWTs at the serial level and not
        idempotent; everything else idempotent."""
        return await self._blocking(self._prepare_many, queries)

    async def execute(self, stmt: Any, params: Any = None) -> list[dict]:
        """One statement (prepared, or a batch of them) on this store's session; its rows."""
        return await self._execute(stmt, params)

    def batch(self, logged: bool) -> Any:
        """An empty batch: LOGGED (all or nothing, through the batch log) or UNLOGGED."""
        d = self._d
        return d.BatchStatement(batch_type=d.BatchType.LOGGED if logged else d.BatchType.UNLOGGED)

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
        refused: dict[int, str] = {}
        stale: dict[str, int] = {}

        async def one(idx: list[int]) -> None:
            async with sem:
                await self._apply_charger(ops, idx, results, refused, stale)
        done = await asyncio.gather(*(one(idx) for idx in groups.values()), return_exceptions=True)
        for r in done:  # every charger's writes have settled before we report
            if isinstance(r, BaseException):
                if isinstance(r, StoreError):
                    raise r
                raise StoreError(f"scylla: {r!r}") from r
        if self.outbox is not None:
            # the events of what landed (with refused ops, the others' landed: their retry
            # may report nothing new, e.g. a stop already closed, so they are written now;
            # the retry's repeats carry the same ids)
            if refused:
                keep = [i for i in range(len(ops)) if i not in refused]
                await self._outbox_write(encoded([ops[i] for i in keep], [results[i] for i in keep]))
            else:
                await self._outbox_write(encoded(ops, results))
        if refused:  # the other chargers' ops landed; idempotent, so the writer's retry converges
            raise StaleEpoch(sorted(refused), stale)
        return results

    # -- the events outbox (store/events.py) -----------------------------------------
    # Not in one logged batch with the facts: a batch's facts span partitions and include
    # LWTs (start keys, replay keys, first close), which a multi-partition logged batch
    # cannot carry. Instead the batch's events are one row written after all its facts
    # landed and before the batch is acknowledged (``apply`` returns): an acknowledged
    # fact always has its event; a batch that fails is not acknowledged, and its retry (the
    # writer's, or the charger's resend) writes the same events with the same ids, which
    # consumers deduplicate. The seq counter is this process's (one writer per worker
    # id), read back from the partition at open.

    async def _outbox_write(self, rows: list[tuple[str, bytes]]) -> None:
        if not rows:
            return
        first = self._outbox_next
        self._outbox_next += len(rows)
        try:
            await self._execute(self._ps["outbox_add"], (self.outbox, first, len(rows), _pack_events(rows)))
        except Exception as e:
            raise StoreError(f"scylla: events outbox: {e!r}") from e

    async def _outbox_resume(self) -> int:
        last = await self._q("outbox_last", self.outbox)
        if last:
            return last[0]["first"] + last[0]["n"]
        return await self._outbox_published() + 1

    async def _outbox_published(self) -> int:
        rows = await self._q("outbox_published", self.outbox)
        return (rows[0]["published"] or 0) if rows else 0

    async def outbox_read(self, after_seq: int, limit: int) -> list:
        if self.outbox is None:
            return []
        after_seq = max(after_seq, await self._outbox_published())
        floor = await self._q("outbox_floor", self.outbox, after_seq)
        start = floor[0]["first"] if floor else 0
        out: list[OutboxRow] = []
        while True:
            rows = await self._q("outbox_read", self.outbox, start, 64)
            for r in rows:
                for i, (key, payload) in enumerate(_unpack_events(r["data"])):
                    seq = r["first"] + i
                    if seq > after_seq:
                        out.append(OutboxRow(seq, key, payload))
                        if len(out) >= limit:
                            return out
            if len(rows) < 64:
                return out
            start = rows[-1]["first"] + 1

    async def outbox_mark_published(self, upto_seq: int) -> None:
        if self.outbox is None:
            return
        await self._q("outbox_mark", max(upto_seq, await self._outbox_published()), self.outbox)
        # drop the rows wholly published (a row published in part stays until all of it is)
        floor = await self._q("outbox_floor", self.outbox, upto_seq)
        if floor:
            first, n = floor[0]["first"], floor[0]["n"]
            bound = first if first + n - 1 <= upto_seq else first - 1
            if bound >= 1:
                await self._q("outbox_trim", self.outbox, bound)

    async def outbox_spooled(self) -> int:
        if self.outbox is None:
            return 0
        return max(0, self._outbox_next - 1 - await self._outbox_published())


    async def _stale(self, charger_id: str) -> bool:
        """Fencing (ADR 0016): is the epoch this store holds for the charger no longer the
        highest recorded? One read per charger and batch, only for chargers it holds one for.
        A check before the batch's writes, not a condition on them: a claim that lands while
        they are in flight is honoured from the next batch on."""
        mine = self._epochs.get(charger_id)
        if mine is None:
            return False
        rows = await self._q("epoch_get", charger_id)
        return bool(rows) and (rows[0]["epoch"] or 0) > mine

    async def _fence(self, o: Fence) -> bool:
        """Record the epoch as the charger's highest unless a higher one is (an LWT per
        connect); hold it, or forget the one held (``epoch`` 0, ``release``)."""
        cid, epoch = o.charger_id, o.epoch
        if o.release or epoch <= 0:
            if not o.release or self._epochs.get(cid) == epoch:
                self._epochs.pop(cid, None)
            return True
        self._epochs[cid] = epoch
        for _ in range(8):  # raise it, or create it; another writer between the two: again
            applied, row = self._applied(await self._q("epoch_raise", epoch, cid, epoch))
            if applied:
                return True
            if row.get("epoch") is not None:
                return row["epoch"] <= epoch
            applied, row = self._applied(await self._q("epoch_init", cid, epoch))
            if applied:
                return True
            if row.get("epoch") is not None and row["epoch"] >= epoch:
                return row["epoch"] == epoch
        raise StoreError(f"scylla: could not record the epoch of {cid!r} (contention)")

    async def _apply_charger(self, ops: list[Op], idx: list[int], results: list[Any],
                             refused: dict[int, str], stale: dict[str, int]) -> None:
        """One charger's ops, in order: blind writes collect into batches, flushed before
        any op that reads. Ops of a charger whose held epoch is stale go into ``refused``."""
        pending: list[tuple[tuple, str, tuple]] = []
        landed: list[Any] = []  # cache entries to record once `pending` has landed
        cid = ops[idx[0]].charger_id
        fenced = await self._stale(cid)
        for i in idx:
            op = ops[i]
            t = type(op)
            if t is Fence:
                if pending:
                    await self._write(pending, landed)
                    pending, landed = [], []
                results[i] = await self._fence(op)
                fenced = not results[i]
                continue
            if fenced:
                refused[i] = cid
                stale[cid] = self._epochs.get(cid, 0)
                continue
            if t is MeterSample:
                pending.extend(self._sample_writes(op.charger_id, op.tx_id, op.connector_id, _us(op.at),
                                                   float(op.energy_wh), False, landed))
            elif t is ChargerSeen:
                at = _us(op.at)
                pending.append(((op.charger_id,), "charger_seen", (self._at_ts(at), at, op.charger_id)))
                self._index_charger(op.charger_id, pending, landed)
            elif t is ConnectorStatus:
                at = _us(op.at)
                pending.append(((op.charger_id,), "connector", (self._at_ts(at), op.status, op.error_code, op.info, at,
                                                                 op.charger_id, op.evse_id, op.connector_id)))
            elif t is UpsertCharger:
                at = _us(op.at) if op.at is not None else time.time_ns() // 1000
                pending.append(((op.charger_id,), "charger_identity", (
                    self._now_ts(), op.protocol, op.vendor, op.model, op.serial, op.firmware, op.charger_id)))
                pending.append(((op.charger_id,), "charger_boot", (self._at_ts(at), at, at, op.charger_id)))
                self._index_charger(op.charger_id, pending, landed)
            else:
                if pending:
                    await self._write(pending, landed)
                    pending, landed = [], []
                if t in _EVENT_ONLY:
                    continue  # its only effect is its event (outbox)
                if t is StartTransaction:
                    results[i] = await self._start(op)
                elif t is StopTransaction:
                    results[i] = await self._stop(op)
                else:
                    results[i] = await self._event(op)
        if pending:
            await self._write(pending, landed)

    def _index_charger(self, charger_id: str, pending: list, landed: list) -> None:
        if charger_id not in self._indexed:
            pending.append(((_shard(charger_id), "ci"), "charger_index", (_shard(charger_id), charger_id)))
            landed.append(charger_id)

    def _sample_writes(self, charger_id: str, tx_id: str, connector_id: int, at: int, wh: float,
                       closing: bool, landed: list) -> list[tuple[tuple, str, tuple]]:
        last = ((charger_id,), "last_reading", (self._at_ts(at), at, wh, tx_id, charger_id, connector_id))
        if tx_id:
            return [((charger_id, tx_id), "tx_sample", (charger_id, tx_id, at, connector_id, wh, closing)), last]
        day = _day(at)
        out = [((charger_id, day), "free_sample", (charger_id, day, at, connector_id, wh, self._ttl)), last]
        written = self._days.get((charger_id, day))
        if written is None or (self._ttl and time.monotonic() - written > self._ttl / 2):
            out.append(((charger_id, "days"), "free_day", (charger_id, day, self._ttl)))
            landed.append((charger_id, day))
        return out

    async def _write(self, writes: list[tuple[tuple, str, tuple]], landed: list | None = None) -> None:
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
                batch.is_idempotent = True
                for name, params in chunk:
                    batch.add(self._ps[name], params)
                futs.append(self._execute(batch))
        done = await asyncio.gather(*futs, return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                raise r
        if landed:
            if len(self._indexed) >= _CACHE_MAX:
                self._indexed.clear()
            if len(self._days) >= _CACHE_MAX:
                self._days.clear()
            now = time.monotonic()
            for item in landed:
                if type(item) is str:
                    self._indexed.add(item)
                else:
                    self._days[item] = now

    async def _ensure_tx(self, charger_id: str, tx_id: str, kind: int) -> tuple[bool, dict]:
        """Create the transaction row if missing; (created, the existing row otherwise)."""
        created, row = self._applied(await self._q("tx_ensure", charger_id, tx_id, kind))
        return created, ({} if created else row)

    _NO_ENTRY = object()

    def _index_writes(self, charger_id: str, tx_id: str, started: int | None, old: Any = _NO_ENTRY) -> list:
        """The list entries of a transaction that starts at ``started`` (None: unknown), and
        the removal of those at ``old`` when it moved. Blind and idempotent: a retry rewrites
        them all. A stale entry left by a failure in between is skipped at read time."""
        out = []
        for key_started, put in ((started, True), (old, False)):
            if not put and (old is self._NO_ENTRY or old == started):
                continue
            if key_started is None:
                b_all = b_one = _UNKNOWN
                at = 0
            else:
                at = key_started
                b_all, b_one = _day(at), _day(at) // _CHARGER_BUCKET_DAYS
            for scope, bucket, bscope in ((f"all:{_shard(charger_id)}", b_all, "all"),
                                          (f"c:{charger_id}", b_one, f"c:{charger_id}")):
                if put:
                    out.append(((scope, bucket), "index_put", (scope, bucket, at, charger_id, tx_id)))
                    out.append(((bscope, "b"), "bucket_put", (bscope, bucket)))
                else:
                    out.append(((scope, bucket), "index_del", (scope, bucket, at, charger_id, tx_id)))
        return out

    async def _start(self, o: StartTransaction) -> str:
        unset = self._d.UNSET
        started = _us(o.started_at)
        applied, row = self._applied(await self._q(
            "start_key", o.charger_id, o.connector_id, o.id_tag, float(o.meter_start_wh), started, o.tx_id,
            self._ttl))
        tx = o.tx_id if applied else row["tx_id"]
        # Always, also on a retry whose key had landed: the steps after the key may not have.
        created, cur = await self._ensure_tx(o.charger_id, tx, 16)
        await self._q("tx_start", o.connector_id, o.id_tag, float(o.meter_start_wh), started,
                      unset if o.reservation_id is None else o.reservation_id, o.charger_id, tx)
        await self._write(self._index_writes(o.charger_id, tx, started,
                                             self._NO_ENTRY if created else cur.get("started_at")))
        return tx

    async def _stop(self, o: StopTransaction) -> bool:
        created, cur = await self._ensure_tx(o.charger_id, o.tx_id, 16)  # unknown: recorded closed
        closed, _ = self._applied(await self._q("tx_close", float(o.meter_stop_wh), _us(o.stopped_at), o.reason,
                                                o.id_tag, o.charger_id, o.tx_id))
        # listed even if this is a retry whose first attempt failed before the index writes
        await self._write(self._index_writes(o.charger_id, o.tx_id, None if created else cur.get("started_at")))
        return closed and not created

    async def _event(self, o: TransactionEvent) -> bool:
        unset = self._d.UNSET
        at = _us(o.at)
        claimed, seq = self._applied(await self._q("seq_claim", o.charger_id, o.tx_id, o.seq_no, o.event_type,
                                                   o.trigger_reason, at, self._ttl))
        if not claimed and seq.get("done"):
            return False  # a repeat (a claimed but unfinished one is finished now)
        ended = o.event_type == "Ended"
        created, cur = await self._ensure_tx(o.charger_id, o.tx_id, 20)
        old = None if created else cur.get("started_at")
        started = old if ended else (at if old is None else min(old, at))
        wh = None if o.energy_wh is None else float(o.energy_wh)
        id_tag = o.id_tag if o.id_tag and (not ended or not cur.get("id_tag")) else unset
        await self._q("tx_event", o.evse_id if o.evse_id else unset, o.connector_id if o.connector_id else unset,
                      id_tag, unset if ended or started == old else started,
                      wh if (wh is not None and o.event_type == "Started") else unset, o.charger_id, o.tx_id)
        writes: list = []
        if wh is not None:
            writes += self._sample_writes(o.charger_id, o.tx_id, o.connector_id, at, wh, ended, [])
        if created or started != old or not claimed:  # new or moved entry, or a retry: (re)write the index
            writes += self._index_writes(o.charger_id, o.tx_id, started, self._NO_ENTRY if created else old)
        if writes:
            await self._write(writes)
        if ended:
            await self._q("tx_close", unset if wh is None else wh, at, o.stop_reason, o.id_tag, o.charger_id, o.tx_id)
        await self._q("seq_done", self._ttl, o.charger_id, o.tx_id, o.seq_no)
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
        out: list[dict] = []
        cursor = None
        while True:  # the contract's whole list, fetched a page at a time
            page, cursor = await self.list_chargers_page(limit=1000, cursor=cursor)
            out += page
            if cursor is None:
                return out

    async def list_chargers_page(self, limit: int = 100, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Chargers by id, ``limit`` at a time: (page, cursor of the next page or None).
        Reads at most ``limit`` ids from each of the index's shards, then those chargers."""
        limit = max(1, min(int(limit), _PAGE_MAX))
        key = _decode_cursor(cursor, (str,))
        ids = await self._sharded_keys("charger_ids", "charger_id", key[0] if key else "", limit)
        rows = await asyncio.gather(*(self._q("get_charger", cid) for cid in ids))
        page = [self._charger_dict(r[0] if r else {"charger_id": cid}) for cid, r in zip(ids, rows)]
        return page, (_encode_cursor([ids[-1]]) if len(ids) == limit else None)

    async def _sharded_keys(self, stmt: str, column: str, after: str, limit: int) -> list[str]:
        """The first ``limit`` keys above ``after`` of a sharded sorted index: one slice per
        shard, merged (a shard never needs more than ``limit`` of its own)."""
        slices = await asyncio.gather(*(self._q(stmt, shard, after, limit) for shard in range(_SHARDS)))
        return list(heapq.merge(*([r[column] for r in rows] for rows in slices)))[:limit]

    async def _with_samples(self, rows: list[dict]) -> list[dict]:
        samples = await asyncio.gather(*(self._q("tx_samples", r["charger_id"], r["tx_id"]) for r in rows))
        return [_tx_dict(r, s) for r, s in zip(rows, samples)]

    async def list_transactions(self, charger_id: str | None = None, active: bool | None = None,
                                limit: int = 1000) -> list[dict]:
        if int(limit) <= 0:
            return []
        return (await self.list_transactions_page(charger_id, active, limit))[0]

    async def _buckets(self, scope: str, upto: int) -> Any:
        """The buckets of a list, newest first, from ``upto`` down, 64 at a time."""
        while True:
            rows = await self._q("buckets", scope, upto, 64)
            for r in rows:
                yield r["bucket"]
            if len(rows) < 64:
                return
            upto = rows[-1]["bucket"] - 1

    async def list_transactions_page(self, charger_id: str | None = None, active: bool | None = None,
                                     limit: int = 100, cursor: str | None = None
                                     ) -> tuple[list[dict], str | None]:
        """Newest start first (unknown starts last), ``limit`` at a time: (page, cursor of the
        next page or None). Walks the time buckets of one charger's list, or of the whole
        cluster's (merging its shards), reading about ``limit`` index entries per shard per
        step; ``active`` filters as it goes (a sparse filter reads further, never all)."""
        limit = max(1, min(int(limit), _PAGE_MAX))
        key = _decode_cursor(cursor, (int, int, str, str))
        if charger_id is None:
            bscope, scopes = "all", [f"all:{i}" for i in range(_SHARDS)]
        else:
            bscope = f"c:{charger_id}"
            scopes = [bscope]
        out: list[dict] = []
        upto = key[0] if key else 2**31 - 1
        async for bucket in self._buckets(bscope, upto):
            after = tuple(key[1:]) if key and key[0] == bucket else None
            while True:
                want = limit - len(out)
                slices = await asyncio.gather(*(
                    self._q("index_first", s, bucket, want) if after is None else
                    self._q("index_after", s, bucket, *after, want) for s in scopes))
                entries = sorted(((r["started_at"], r["charger_id"], r["tx_id"]) for rows in slices for r in rows),
                                 reverse=True)[:want]
                if not entries:
                    break
                rows = await asyncio.gather(*(self._q("get_tx", c, t) for _, c, t in entries))
                for (started, c, t), found in zip(entries, rows):
                    if not found:
                        continue
                    row = found[0]
                    real = row.get("started_at")
                    if (bucket == _UNKNOWN) != (real is None) or (real is not None and real != started):
                        continue  # an entry left behind when the start moved
                    if active is not None and (row.get("stopped_at") is None) != active:
                        continue
                    out.append(row)
                after = entries[-1]
                if len(out) >= limit:
                    page = await self._with_samples(out)
                    return page, _encode_cursor([bucket, *after])
                if len(entries) < want:
                    break
        return await self._with_samples(out), None

    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None:
        rows = await self._q("get_tx", charger_id, tx_id)
        if not rows:
            return None
        return (await self._with_samples(rows[:1]))[0]

    async def list_meter_samples(self, charger_id: str, tx_id: str, limit: int = 10000) -> list[dict]:
        limit = int(limit)
        if limit <= 0:
            return []
        if tx_id:
            rows = await self._q("list_tx_samples", charger_id, tx_id, limit)
        else:  # day by day, oldest first, until the limit
            rows = []
            for d in await self._q("free_days", charger_id):
                rows += await self._q("list_free_samples", charger_id, d["day"], limit - len(rows))
                if len(rows) >= limit:
                    break
        return [{"connector_id": r["connector_id"], "at": _iso(r["at"]), "energy_wh": r["energy_wh"]}
                for r in rows][:limit]

    # -- authorization list ------------------------------------------------------------

    @staticmethod
    def _tag_status(row: dict) -> str:
        status, expiry = row["status"], row.get("expiry")
        if expiry and expiry < time.time_ns() // 1000 and status == "Accepted":
            return "Expired"
        return status

    async def get_id_tag(self, tag: str) -> str | None:
        rows = await self._q("get_tag", tag)
        if not rows or rows[0].get("status") is None:
            return None
        return self._tag_status(rows[0])

    async def list_id_tags(self, after: str | None = None, limit: int = 1000) -> list[dict]:
        limit = min(int(limit), _PAGE_MAX)
        out: list[dict] = []
        after = after or ""
        while len(out) < limit:
            tags = await self._sharded_keys("tag_ids", "tag", after, limit - len(out))
            if not tags:
                break
            rows = await asyncio.gather(*(self._q("get_tag", t) for t in tags))
            for t, r in zip(tags, rows):
                if r and r[0].get("status") is not None:  # else: a delete whose unindex failed
                    out.append({"id_tag": t, "status": self._tag_status(r[0]),
                                "expiry": _iso(r[0]["expiry"]) if r[0].get("expiry") else None})
            after = tags[-1]
        return out

    async def put_id_tag(self, tag: str, status: str, expiry: dt.datetime | None = None) -> None:
        await asyncio.gather(self._q("put_tag", status, 0 if expiry is None else _us(expiry), tag),  # 0: no expiry
                             self._q("tag_index", _shard(tag), tag))

    async def delete_id_tag(self, tag: str) -> bool:
        existed = await self.get_id_tag(tag) is not None  # no LWT: these cells are never written by one
        await self._q("delete_tag", tag)
        await self._q("tag_unindex", _shard(tag), tag)  # after the row: a failure leaves an entry reads skip
        return existed

    # -- charger credentials and security events (store/chargers.py) -----------------

    async def get_charger_credentials(self, charger_id: str) -> ChargerCredentials | None:
        rows, vrows = await asyncio.gather(self._q("creds_get", charger_id), self._q("verifier_get", charger_id))
        if not rows or rows[0].get("security_profile") is None:
            return None
        r = rows[0]
        return ChargerCredentials(charger_id=r["charger_id"], security_profile=r["security_profile"],
                                  password_hash=r.get("password_hash") or "",
                                  pending_password_hash=r.get("pending_password_hash") or "",
                                  previous_password_hash=r.get("previous_password_hash") or "",
                                  verifier=(vrows[0].get("verifier") or "") if vrows else "")

    async def put_charger_credentials(self, creds: ChargerCredentials) -> None:
        await asyncio.gather(
            self._q("creds_put", creds.charger_id, creds.security_profile, creds.password_hash,
                    creds.pending_password_hash, creds.previous_password_hash, time.time_ns() // 1000),
            self._q("verifier_put", creds.charger_id, creds.verifier))

    async def put_charger_verifier(self, charger_id: str, verifier: str) -> None:
        # no read first: a verifier row without credentials is never returned (get needs
        # both), and the next registration's put replaces it
        await self._q("verifier_put", charger_id, verifier)

    async def delete_charger_credentials(self, charger_id: str) -> bool:
        applied, _ = self._applied(await self._q("creds_delete", charger_id))
        await self._q("verifier_delete", charger_id)
        return applied

    async def registered_charger_ids(self, limit: int = 10_000) -> list[str]:
        return sorted(r["charger_id"] for r in await self._q("creds_ids", int(limit)))

    async def add_security_event(self, event: SecurityEvent) -> None:
        now_us = time.time_ns() // 1000
        await self._q("sec_event_add", event.charger_id, now_us * 1000 + random.randrange(1000), event.type,
                      event.at, event.tech_info, now_us)

    async def list_security_events(self, charger_id: str, limit: int = 100) -> list[SecurityEvent]:
        rows = await self._q("sec_events", charger_id, int(limit))
        return [SecurityEvent(charger_id=r["charger_id"], type=r["type"], at=r["at"], tech_info=r.get("tech_info") or "",
                              received_at=_iso(r.get("received_at")) or "") for r in rows]
