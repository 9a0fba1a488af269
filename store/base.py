"""One storage interface, shaped for batching.

Writers never call the store per message: the worker's batching writer collects
*operations* (the Structs below) and hands a whole batch to ``Store.apply``, which
commits it as one transaction (SQLite) or one batch of statements (ScyllaDB) and
returns one result per operation, in order. Reads serve the operator API.

All timestamps are timezone-aware UTC ``datetime``; energies are Wh as float.
Transaction ids are strings: OCPP 1.6 ids are the decimal of the 32-bit integer
allocated from :meth:`Store.allocate_tx_ids`; 2.0.1/2.1 ids are the charger's own.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from typing import Any

import msgspec

# -- time values, as every backend stores them (integer microseconds since the epoch) ----

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = dt.timedelta(microseconds=1)


def to_us(t: dt.datetime) -> int:
    """Aware (or naive = UTC) datetime -> integer microseconds since the epoch."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=_UTC)
    return (t - _EPOCH) // _US


def from_us(us: int | None) -> str | None:
    """Microseconds -> ISO 8601 UTC with ``Z``; milliseconds, or microseconds when present."""
    if us is None:
        return None
    t = _EPOCH + dt.timedelta(microseconds=us)
    spec = "milliseconds" if t.microsecond % 1000 == 0 else "microseconds"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# -- operations (what a batch is made of) -------------------------------------------


class UpsertCharger(msgspec.Struct, tag=True, frozen=True):
    """BootNotification: identity of a charger (insert or update); ``at`` (default: the
    commit time) raises last_seen and last_boot. Result: None."""
    charger_id: str
    protocol: str
    vendor: str
    model: str
    serial: str = ""
    firmware: str = ""
    at: dt.datetime | None = None


class ChargerSeen(msgspec.Struct, tag=True, frozen=True):
    """Heartbeat or any message: last_seen = max(last_seen, at); creates the charger if
    it never booted here. Result: None."""
    charger_id: str
    at: dt.datetime


class ConnectorStatus(msgspec.Struct, tag=True, frozen=True):
    """StatusNotification: last status of a connector (evse_id 0 for 1.6).
    Kept only if ``at`` is not older than the stored one (offline backlogs arrive late).
    Result: None."""
    charger_id: str
    evse_id: int
    connector_id: int
    status: str
    error_code: str
    at: dt.datetime
    info: str = ""


class StartTransaction(msgspec.Struct, tag=True, frozen=True):
    """1.6 StartTransaction. Idempotent on (charger_id, connector_id, id_tag,
    meter_start_wh, started_at): a retry returns the first transaction's id.
    ``tx_id`` is the id to use if this is a new transaction. Result: the tx id in force (str)."""
    charger_id: str
    tx_id: str
    connector_id: int
    id_tag: str
    meter_start_wh: float
    started_at: dt.datetime
    reservation_id: int | None = None


class StopTransaction(msgspec.Struct, tag=True, frozen=True):
    """1.6 StopTransaction. An unknown or already-closed transaction is recorded,
    never an error (chargers resend forever). Result: True if it closed an open tx."""
    charger_id: str
    tx_id: str
    meter_stop_wh: float
    stopped_at: dt.datetime
    reason: str = ""
    id_tag: str = ""


class MeterSample(msgspec.Struct, tag=True, frozen=True):
    """An energy register reading for a transaction (MeterValues, or in a
    TransactionEvent). Raises the transaction's ``energy_wh`` to the reading minus
    the start (never lowers it, whatever the arrival order); samples without a
    transaction (tx_id "") are only kept as last reading. Every sample is also kept raw,
    by the charger's timestamp (a replayed backlog is stored, not dropped); the newest one
    by ``at`` per (charger, connector) is the last reading. A sample for a transaction the
    store does not know yet is folded in when that transaction appears. Result: None.

    Energy of a transaction: 1.6 stopped -> meter_stop - meter_start; otherwise
    max(highest reading, meter_stop) - meter_start, where meter_start is meterStart (1.6)
    or the Started event's reading (2.0.1), else the lowest reading seen."""
    charger_id: str
    tx_id: str
    at: dt.datetime
    energy_wh: float
    connector_id: int = 0


class TransactionEvent(msgspec.Struct, tag=True, frozen=True):
    """2.0.1/2.1 TransactionEvent, applied once per (charger_id, tx_id, seq_no).
    Started creates, Updated updates, Ended closes; out-of-order or unknown ones are
    recorded (an Ended for an unknown transaction creates it closed; an Updated after
    Ended never reopens it; the first Ended wins). ``energy_wh`` is also stored as a
    MeterSample. Result: True if applied, False if it was a repeat."""
    charger_id: str
    tx_id: str
    seq_no: int
    event_type: str  # Started | Updated | Ended
    at: dt.datetime
    trigger_reason: str = ""
    id_tag: str = ""
    evse_id: int = 0
    connector_id: int = 0
    energy_wh: float | None = None  # energy register reading in this event, if any
    stop_reason: str = ""


class Fence(msgspec.Struct, tag=True, frozen=True):
    """A connection's ownership epoch for a charger (the registry's fencing epoch, given at
    claim; ADR 0016). Written once per connect, never per message.

    ``epoch > 0``: the store records it as the charger's highest epoch if it is, and this
    store object holds it for the charger: from then on its writes for that charger fail
    with :class:`StaleEpoch` once any process recorded a higher one. Result: True, or False
    when a higher epoch was recorded already (this one is stale from the start).
    ``epoch == 0``: a new connection whose claim is under way; the store forgets the epoch it
    held for the charger (the new connection's writes are not fenced until its Fence).
    ``release``: the connection of ``epoch`` closed; forgotten only if it is still the one
    held. Both: result True, and nothing is written.

    One store object stands for one worker: the epochs it holds are that worker's."""
    charger_id: str
    epoch: int
    release: bool = False


Op = (UpsertCharger | ChargerSeen | ConnectorStatus | StartTransaction | StopTransaction | MeterSample
      | TransactionEvent | Fence)


class StoreError(Exception):
    """Every backend failure surfaces as this (backend exception types never leak)."""


class StaleEpoch(StoreError):
    """Writes for chargers whose epoch held by this store is no longer the highest: another
    worker took them over (:class:`Fence`). Nothing of the batch is applied (SQLite), or the
    others' ops may have been (ScyllaDB; idempotent, so a retry converges).

    ``indices``: the positions, in the applied list, of the ops refused; ``stale``: charger
    -> the epoch this store held for it. A writer fails those ops alone and retries the rest."""

    def __init__(self, indices: list[int], stale: dict[str, int]) -> None:
        super().__init__(f"stale ownership epoch for {len(stale)} charger(s): "
                         + ", ".join(f"{c}@{e}" for c, e in list(stale.items())[:5]))
        self.indices = indices
        self.stale = stale

    def __reduce__(self) -> Any:
        return (StaleEpoch, (self.indices, self.stale))


class Store(ABC):
    """The storage contract. ``tests/store/test_contract.py`` runs on every backend."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and run migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> None:
        """Bring the schema to this code's version: ``chargeyard store migrate``. Backends
        whose :meth:`open` migrates (SQLite: one process owns the file) need no more than
        this; ScyllaDB's migrates only here, and its pods refuse another version."""
        await self.open()
        await self.close()

    async def __aenter__(self) -> "Store":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def apply(self, ops: list[Op]) -> list[Any]:
        """Commit all ``ops`` in order; one result per op (see each op). SQLite commits the
        batch atomically; backends that cannot (ScyllaDB) rely on every op being idempotent,
        so a retried batch converges to the same state.
        Returns only once the batch is durable; on any failure nothing of it is applied
        and :class:`StoreError` is raised. Ops for a charger whose :class:`Fence` epoch held
        by this store is stale are refused: :class:`StaleEpoch` names them."""

    @property
    def deferred_rows(self) -> int:
        """Rows held for deferred work (for the ``chargeyard_db_deferred_rows`` gauge)."""
        return 0

    def maintenance_due(self) -> bool:
        """True while the backend has deferred work (SQLite: a sample log to fold) that the
        writer should hand it through :meth:`maintain` when no batch is waiting. Cheap: called
        on the event loop each time the writer runs out of work."""
        return False

    async def apply_then(self, ops: list[Op]) -> tuple[list[Any], Any]:
        """:meth:`apply`, split: (its results, None), or (its results, an awaitable done once
        the batch is durable) when the backend commits first and syncs after, so that the
        writer can commit the next batch meanwhile. Nothing may be acknowledged before that
        awaitable is done; if it fails, the batch is not durable. The writer
        (``BatchWriter``) calls only this; a backend that splits makes ``apply`` await it."""
        return await self.apply(ops), None

    def maintenance_overlaps(self) -> bool:
        """True when the next :meth:`maintain` slice lets batches commit while it runs, so
        the writer need not wait for it (SQLite: while batches commit on the event loop's
        thread, a slice reads and packs apart from the write lock). :meth:`apply` may then
        run while :meth:`maintain` does."""
        return False

    async def maintain(self) -> int:
        """Do one short, bounded slice of the deferred work; returns how much was done (rows).
        Never makes anything durable that was not, and never undoes anything: a backend
        without deferred work does nothing."""
        return 0

    @abstractmethod
    async def allocate_tx_ids(self, count: int) -> tuple[int, int]:
        """Reserve ``count`` consecutive 1.6 transaction ids, unique across every
        process sharing this store; returns ``(first, last)`` inclusive; ids are
        positive 32-bit integers."""

    # -- reads for the API ---------------------------------------------------------
    # Plain dicts; datetimes as ISO 8601 UTC strings ending in "Z" (milliseconds, or
    # microseconds when present), None when unknown.
    @abstractmethod
    async def get_charger(self, charger_id: str) -> dict | None:
        """{"id","protocol","vendor","model","serial","firmware","last_seen","last_boot",
        "connectors":[{"evse_id","connector_id","status","error_code","info","at"}],
        "last_readings":[{"connector_id","energy_wh","at","tx_id"}]}"""

    @abstractmethod
    async def list_chargers(self) -> list[dict]:
        """Every charger, by id: the keys of :meth:`get_charger` without "connectors"
        and "last_readings"."""

    @abstractmethod
    async def list_transactions(self, charger_id: str | None = None, active: bool | None = None,
                                limit: int = 1000) -> list[dict]:
        """Newest ``started_at`` first (unknown starts last); items as :meth:`get_transaction`."""

    @abstractmethod
    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None:
        """{"charger_id","tx_id","connector_id","evse_id","id_tag","meter_start_wh",
        "meter_stop_wh","energy_wh","started_at","stopped_at","stop_reason","active",
        "stop_id_tag","reservation_id","last_reading_wh","last_reading_at"}
        ``meter_start_wh``/``energy_wh`` are None when no start reading is known (e.g. a
        StopTransaction for a transaction this store never saw)."""

    @abstractmethod
    async def list_meter_samples(self, charger_id: str, tx_id: str, limit: int = 10000) -> list[dict]:
        """The raw readings kept for the record, oldest first:
        [{"connector_id","at","energy_wh"}]; tx_id "" for samples without a transaction."""

    # -- authorization list --------------------------------------------------------
    @abstractmethod
    async def get_id_tag(self, tag: str) -> str | None:
        """The stored status; "Expired" for an Accepted tag past its expiry; None if unknown."""

    @abstractmethod
    async def list_id_tags(self, after: str | None = None, limit: int = 1000) -> list[dict]:
        """Tags in ascending order, strictly after ``after``, at most ``limit``:
        [{"id_tag","status","expiry"}], status as :meth:`get_id_tag` reports it, expiry an
        ISO string or None."""

    @abstractmethod
    async def put_id_tag(self, tag: str, status: str, expiry: dt.datetime | None = None) -> None: ...

    @abstractmethod
    async def delete_id_tag(self, tag: str) -> bool: ...

    # -- the events outbox (store/events.py: Outbox) ---------------------------------
    # A backend with an outbox writes each batch's events in the batch's commit and
    # serves them to the relay here; without one there is nothing to relay.
    async def outbox_read(self, after_seq: int, limit: int) -> list:
        """Unpublished ``store.events.OutboxRow`` with ``seq > after_seq``, in order."""
        return []

    async def outbox_mark_published(self, upto_seq: int) -> None:
        """Every row with ``seq <= upto_seq`` is published."""

    async def outbox_spooled(self) -> int:
        """Rows not yet published."""
        return 0
