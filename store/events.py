"""Events: the envelope, the types, their stable ids, and the outbox interface.

Every event is written by the store in the same commit as the fact it reports (an outbox
row), so the events are exactly the acknowledged facts. A relay (``worker/relay.py``)
reads the unpublished rows in commit order, publishes them (Kafka topic
``chargeyard.events``, key = charger id; or in-process on one node) and marks them
published.

The envelope uses CloudEvents attribute names (structured JSON mode):

    {"id","type","source","time","charger_id","data"}

``id`` is derived from what the event reports (the charger and a per-fact key, e.g. the
transaction id for ``transaction.ended``), never from a counter: a retried write, a
batch replayed by a backend that retries (ScyllaDB) or a row relayed twice after a crash
all carry the same id, so consumers deduplicate by it. ``time`` is when the fact
happened (the charger's timestamp where OCPP gives one, else the server's at receipt).

This module imports nothing of ours but ``store.base`` (the operations it derives events
from): the worker, the services and the API all depend on it, never the reverse.
"""

from __future__ import annotations

import datetime as dt
from hashlib import blake2b as _blake2b
import itertools
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Callable, ClassVar

import msgspec

from .base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction, StopTransaction,
                   TransactionEvent, UpsertCharger, to_us)

TOPIC = "chargeyard.events"
SOURCE = "/chargeyard"  # CloudEvents source: one context for the whole CSMS (see the module doc)
CONTENT_TYPE = "application/cloudevents+json"

# -- data of each type -----------------------------------------------------------------


class Data(msgspec.Struct, frozen=True, omit_defaults=False):
    TYPE: ClassVar[str] = ""


class ChargerConnected(Data, frozen=True):
    """A charger's WebSocket session opened on ``worker_id`` with the registry's fencing
    ``epoch`` (a later connection anywhere has a larger one)."""
    TYPE: ClassVar[str] = "charger.connected"
    protocol: str
    epoch: int
    worker_id: str = ""


class ChargerDisconnected(Data, frozen=True):
    """The session of ``epoch`` closed. ``reason`` is the close reason of
    ``chargeyard_ws_connections_closed_total``; ``takeover`` (a new connection of the same
    charger replaced this one) is not an outage."""
    TYPE: ClassVar[str] = "charger.disconnected"
    epoch: int
    reason: str
    worker_id: str = ""

    @property
    def takeover(self) -> bool:
        return self.reason == "takeover"


class ChargerBooted(Data, frozen=True):
    TYPE: ClassVar[str] = "charger.booted"
    protocol: str
    vendor: str
    model: str
    serial: str = ""
    firmware: str = ""


class ChargerHeartbeat(Data, frozen=True):
    TYPE: ClassVar[str] = "charger.heartbeat"


class ChargerStatus(Data, frozen=True):
    """A connector's status (StatusNotification; evse_id 0 for OCPP 1.6)."""
    TYPE: ClassVar[str] = "charger.status"
    evse_id: int
    connector_id: int
    status: str
    error_code: str = ""
    info: str = ""


class ChargerSecurityEvent(Data, frozen=True):
    """A security event: the charger's own (SecurityEventNotification's ``type`` and
    ``techInfo``) or one the CSMS observed about it: ``IdTagRejected`` (an id tag answered
    other than Accepted) and ``LoginFailed`` (a refused handshake) feed the
    ``auth_failures`` alert."""
    TYPE: ClassVar[str] = "charger.security_event"
    type: str
    tech_info: str = ""


class TransactionStarted(Data, frozen=True):
    TYPE: ClassVar[str] = "transaction.started"
    transaction_id: str
    connector_id: int
    id_tag: str = ""
    meter_start_wh: float | None = None
    evse_id: int = 0


class TransactionMeter(Data, frozen=True):
    """An energy register reading of a transaction (Wh, as the charger reports it)."""
    TYPE: ClassVar[str] = "transaction.meter"
    transaction_id: str
    connector_id: int
    energy_wh: float


class TransactionEnded(Data, frozen=True):
    """The transaction closed. Billing prices the store's transaction, not this."""
    TYPE: ClassVar[str] = "transaction.ended"
    transaction_id: str
    meter_stop_wh: float | None = None
    reason: str = ""
    id_tag: str = ""


DATA_TYPES: dict[str, type[Data]] = {t.TYPE: t for t in (
    ChargerConnected, ChargerDisconnected, ChargerBooted, ChargerHeartbeat, ChargerStatus,
    ChargerSecurityEvent, TransactionStarted, TransactionMeter, TransactionEnded)}
TYPES = tuple(DATA_TYPES)

# -- the envelope ----------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True):
    """The CloudEvents envelope. ``data`` is a :class:`Data` when built here, a
    ``msgspec.Raw`` when decoded (:func:`data_of` types it)."""
    id: str
    type: str
    source: str
    time: dt.datetime
    charger_id: str
    data: Any


_encoder = msgspec.json.Encoder()


class _RawEvent(msgspec.Struct, frozen=True):
    id: str
    type: str
    source: str
    time: dt.datetime
    charger_id: str
    data: msgspec.Raw


_decoder = msgspec.json.Decoder(_RawEvent)
_data_decoders = {name: msgspec.json.Decoder(t) for name, t in DATA_TYPES.items()}


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(payload: bytes | bytearray | memoryview) -> Event:
    """The envelope; ``data`` stays raw JSON until :func:`data_of` (so a type this version
    does not know is skipped by a consumer, not an error)."""
    r = _decoder.decode(payload)
    return Event(r.id, r.type, r.source, r.time, r.charger_id, r.data)


def data_of(event: Event) -> Data | None:
    """The typed data of an event (None for a type this version does not know)."""
    if isinstance(event.data, Data):
        return event.data
    dec = _data_decoders.get(event.type)
    if dec is None:
        return None
    return dec.decode(event.data)


def event_id(charger_id: str, *key: object) -> str:
    """A stable id: 128 bits of BLAKE2b over the charger and the fact's key, as 32 hex
    digits (the same fact always gets the same id, whoever writes or relays it). The
    parts are joined by U+001F, which no OCPP identifier contains."""
    return _blake2b("\x1f".join((charger_id, *map(str, key))).encode(), digest_size=16).hexdigest()


def make(charger_id: str, at: dt.datetime, data: Data, *key: object, source: str = SOURCE) -> Event:
    """An event of ``data``'s type whose id is ``event_id(charger_id, type, *key)``."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    return Event(event_id(charger_id, data.TYPE, *key), data.TYPE, source, at, charger_id, data)


# -- the fact -> event key of every type ------------------------------------------------
# A fact is identified by what OCPP makes unique about it; see each builder.


def connected(charger_id: str, at: dt.datetime, protocol: str, epoch: int, worker_id: str = "") -> Event:
    return make(charger_id, at, ChargerConnected(protocol, epoch, worker_id), epoch, to_us(at))


def disconnected(charger_id: str, at: dt.datetime, epoch: int, reason: str, worker_id: str = "") -> Event:
    return make(charger_id, at, ChargerDisconnected(epoch, reason, worker_id), epoch, to_us(at))


def booted(charger_id: str, at: dt.datetime, protocol: str, vendor: str, model: str,
           serial: str = "", firmware: str = "") -> Event:
    return make(charger_id, at, ChargerBooted(protocol, vendor, model, serial, firmware), to_us(at))


def heartbeat(charger_id: str, at: dt.datetime) -> Event:
    return make(charger_id, at, ChargerHeartbeat(), to_us(at))


def status(charger_id: str, at: dt.datetime, evse_id: int, connector_id: int, status: str,
           error_code: str = "", info: str = "") -> Event:
    return make(charger_id, at, ChargerStatus(evse_id, connector_id, status, error_code, info),
                evse_id, connector_id, to_us(at), status)


def security_event(charger_id: str, at: dt.datetime, type: str, tech_info: str = "") -> Event:  # noqa: A002
    return make(charger_id, at, ChargerSecurityEvent(type, tech_info), type, to_us(at))


def tx_started(charger_id: str, at: dt.datetime, transaction_id: str, connector_id: int, id_tag: str = "",
               meter_start_wh: float | None = None, evse_id: int = 0) -> Event:
    return make(charger_id, at, TransactionStarted(transaction_id, connector_id, id_tag, meter_start_wh, evse_id),
                transaction_id)


def tx_meter(charger_id: str, at: dt.datetime, transaction_id: str, connector_id: int, energy_wh: float) -> Event:
    return make(charger_id, at, TransactionMeter(transaction_id, connector_id, energy_wh),
                transaction_id, connector_id, to_us(at))


def tx_ended(charger_id: str, at: dt.datetime, transaction_id: str, meter_stop_wh: float | None = None,
             reason: str = "", id_tag: str = "") -> Event:
    return make(charger_id, at, TransactionEnded(transaction_id, meter_stop_wh, reason, id_tag), transaction_id)


# -- operations whose only effect is their event ----------------------------------------
# The writer queues these like any store operation, so that they commit (and are
# published) in order with the charger's other facts. A backend applies them as no-ops
# (or raises last_seen); ``from_op`` turns them into their events.


class ConnectionOpened(msgspec.Struct, tag=True, frozen=True):
    """A charger's session opened (after the registry claim gave it ``epoch``)."""
    charger_id: str
    protocol: str
    epoch: int
    worker_id: str
    at: dt.datetime


class ConnectionClosed(msgspec.Struct, tag=True, frozen=True):
    """A charger's session of ``epoch`` closed with ``reason`` (``takeover``: replaced)."""
    charger_id: str
    epoch: int
    reason: str
    worker_id: str
    at: dt.datetime


class SecurityEventReported(msgspec.Struct, tag=True, frozen=True):
    """A security event: SecurityEventNotification, or one the CSMS saw (``IdTagRejected``,
    ``LoginFailed``); ``kind`` is the event's ``type`` (the op's tag field is ``type``)."""
    charger_id: str
    kind: str
    at: dt.datetime
    tech_info: str = ""


EVENT_OPS = (ConnectionOpened, ConnectionClosed, SecurityEventReported)


def from_op(op: Any, result: Any, protocol: str = "") -> list[Event]:
    """The events a committed store operation reports (``result`` = its result from
    ``Store.apply``). Called by a backend per committed batch, inside the commit that
    writes the outbox rows. Repeats report nothing new: a StartTransaction retried (its
    result is an earlier transaction's id), a StopTransaction that closed nothing, a
    TransactionEvent seen before (result False)."""
    t = type(op)
    if t is MeterSample:
        if not op.tx_id:
            return []
        return [tx_meter(op.charger_id, op.at, op.tx_id, op.connector_id, op.energy_wh)]
    if t is ConnectorStatus:
        return [status(op.charger_id, op.at, op.evse_id, op.connector_id, op.status, op.error_code, op.info)]
    if t is ChargerSeen:
        return [heartbeat(op.charger_id, op.at)]
    if t is UpsertCharger:
        return [booted(op.charger_id, op.at or dt.datetime.now(dt.timezone.utc), op.protocol, op.vendor,
                       op.model, op.serial, op.firmware)]
    if t is StartTransaction:
        if result is not None and result != op.tx_id:
            return []  # a retry: the transaction in force was reported when it started
        return [tx_started(op.charger_id, op.started_at, op.tx_id, op.connector_id, op.id_tag, op.meter_start_wh)]
    if t is StopTransaction:
        if result is not True:
            return []
        return [tx_ended(op.charger_id, op.stopped_at, op.tx_id, op.meter_stop_wh, op.reason, op.id_tag)]
    if t is ConnectionOpened:
        return [connected(op.charger_id, op.at, op.protocol, op.epoch, op.worker_id)]
    if t is ConnectionClosed:
        return [disconnected(op.charger_id, op.at, op.epoch, op.reason, op.worker_id)]
    if t is SecurityEventReported:
        return [security_event(op.charger_id, op.at, op.kind, op.tech_info)]
    if t is TransactionEvent:
        if result is False:
            return []
        out: list[Event] = []
        if op.event_type == "Started":
            out.append(tx_started(op.charger_id, op.at, op.tx_id, op.connector_id, op.id_tag, op.energy_wh,
                                  op.evse_id))
        if op.energy_wh is not None:
            out.append(tx_meter(op.charger_id, op.at, op.tx_id, op.connector_id, op.energy_wh))
        if op.event_type == "Ended":
            out.append(tx_ended(op.charger_id, op.at, op.tx_id, op.energy_wh, op.stop_reason, op.id_tag))
        return out
    return []


def encoded_python(ops: list[Any], results: list[Any]) -> list[tuple[str, bytes]]:
    """``store.outbox_encoding.encoded`` in Python. The MeterSample (most of a busy batch) takes a shorter
    path to the same bytes: the id's hash of (charger, type, transaction, connector) is
    computed once per batch and copied for each reading's time."""
    out: list[tuple[str, bytes]] = []
    append = out.append
    enc = _encoder.encode
    prefixes: dict[tuple[str, str, int], Any] = {}
    utc = dt.timezone.utc
    for op, result in zip(ops, results):
        if type(op) is MeterSample:
            tx = op.tx_id
            if tx:
                cid = op.charger_id
                at = op.at
                if at.tzinfo is None:
                    at = at.replace(tzinfo=utc)
                key = (cid, tx, op.connector_id)
                h = prefixes.get(key)
                if h is None:
                    h = prefixes[key] = _blake2b(f"{cid}\x1ftransaction.meter\x1f{tx}\x1f{op.connector_id}\x1f".encode(),
                                                 digest_size=16)
                h = h.copy()
                h.update(str((at - _EPOCH) // _US).encode())
                append((cid, enc(Event(h.hexdigest(), "transaction.meter", SOURCE, at, cid,
                                       TransactionMeter(tx, op.connector_id, op.energy_wh)))))
            continue
        for e in from_op(op, result):
            append((e.charger_id, enc(e)))
    return out


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US = dt.timedelta(microseconds=1)


# -- the outbox --------------------------------------------------------------------------


class OutboxRow(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One committed event: ``seq`` orders the outbox (commit order; per charger, the order
    of that charger's facts), ``key`` is the charger id, ``payload`` the encoded envelope."""
    seq: int
    key: str
    payload: bytes


def row(seq: int, event: Event) -> OutboxRow:
    return OutboxRow(seq, event.charger_id, encode(event))


class Outbox(ABC):
    """What the relay needs of a store. A backend writes the rows in the commit of their
    facts; these three read and trim them. ``seq`` increases with commit order."""

    @abstractmethod
    async def outbox_read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Unpublished rows with ``seq > after_seq``, in ``seq`` order, at most ``limit``."""

    @abstractmethod
    async def outbox_mark_published(self, upto_seq: int) -> None:
        """Every row with ``seq <= upto_seq`` is published (a backend may delete them)."""

    @abstractmethod
    async def outbox_spooled(self) -> int:
        """How many rows are not yet published (the ``chargeyard_events_spooled`` gauge)."""


class MemoryOutbox(Outbox):
    """An outbox in memory: for tests, and for feeding the in-process services on one node
    from events that something else already made durable. ``append`` stands for a commit."""

    def __init__(self) -> None:
        self.rows: deque[OutboxRow] = deque()
        self.published = 0
        self._seq = 0
        self.on_append: Callable[[], None] | None = None  # e.g. a relay's wake-up

    def append(self, *events: Event) -> list[OutboxRow]:
        out = []
        for ev in events:
            self._seq += 1
            out.append(row(self._seq, ev))
        self.rows.extend(out)
        if self.on_append is not None:
            self.on_append()
        return out

    async def outbox_read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        rows = self.rows
        if not rows:
            return []
        # seqs are dense from rows[0].seq on
        i = max(0, after_seq + 1 - rows[0].seq)
        return list(itertools.islice(rows, i, i + limit))

    async def outbox_mark_published(self, upto_seq: int) -> None:
        self.published = max(self.published, upto_seq)
        rows = self.rows
        while rows and rows[0].seq <= upto_seq:
            rows.popleft()

    async def outbox_spooled(self) -> int:
        return len(self.rows)


__all__ = ["ConnectionOpened", "ConnectionClosed", "SecurityEventReported", "EVENT_OPS", "TOPIC", "SOURCE", "CONTENT_TYPE", "Data", "Event", "DATA_TYPES", "TYPES", "OutboxRow", "Outbox",
           "MemoryOutbox", "encode", "encoded_python", "decode", "data_of", "event_id", "make", "from_op", "row",
           "ChargerConnected", "ChargerDisconnected", "ChargerBooted", "ChargerHeartbeat", "ChargerStatus",
           "ChargerSecurityEvent", "TransactionStarted", "TransactionMeter", "TransactionEnded"]
