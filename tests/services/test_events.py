"""store/events.py: the envelope, stable ids, the op -> event mapping, the memory outbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import msgspec
from chargeyard.store import events as ev
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction,
                                   StopTransaction, TransactionEvent, UpsertCharger)
from chargeyard.store.outbox_encoding import encoded

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def test_envelope_has_the_cloudevents_names():
    e = ev.status("cp-1", T0, 0, 1, "Faulted", "GroundFailure")
    doc = json.loads(ev.encode(e))
    assert list(doc) == ["id", "type", "source", "time", "charger_id", "data"]
    assert doc["type"] == "charger.status" and doc["charger_id"] == "cp-1"
    assert doc["time"] == "2025-03-01T08:00:00Z"
    assert doc["data"] == {"evse_id": 0, "connector_id": 1, "status": "Faulted", "error_code": "GroundFailure",
                           "info": ""}


def test_decode_then_data_of_round_trips_every_type():
    samples = [
        ev.connected("a", T0, "ocpp1.6", 3, "w1"), ev.disconnected("a", T0, 3, "takeover", "w1"),
        ev.booted("a", T0, "ocpp2.0.1", "V", "M", "S", "F"), ev.heartbeat("a", T0),
        ev.status("a", T0, 1, 2, "Available"), ev.security_event("a", T0, "LoginFailed", "bad password"),
        ev.tx_started("a", T0, "42", 1, "TAG", 100.0), ev.tx_meter("a", T0, "42", 1, 250.5),
        ev.tx_ended("a", T0, "42", 400.0, "Local", "TAG"),
    ]
    assert sorted(e.type for e in samples) == sorted(ev.TYPES)
    for e in samples:
        back = ev.decode(ev.encode(e))
        assert isinstance(back.data, msgspec.Raw)
        assert (back.id, back.type, back.source, back.time, back.charger_id) == (
            e.id, e.type, e.source, e.time, e.charger_id)
        assert ev.data_of(back) == e.data


def test_unknown_type_has_no_data():
    raw = json.dumps({"id": "x", "type": "charger.future", "source": "/x", "time": "2025-03-01T08:00:00Z",
                      "charger_id": "a", "data": {"z": 1}}).encode()
    assert ev.data_of(ev.decode(raw)) is None


def test_ids_are_stable_per_fact_and_distinct_between_facts():
    assert ev.tx_ended("a", T0, "42").id == ev.tx_ended("a", T0 + dt.timedelta(seconds=5), "42", 9.0).id
    assert ev.tx_ended("a", T0, "42").id != ev.tx_ended("b", T0, "42").id
    assert ev.tx_ended("a", T0, "42").id != ev.tx_started("a", T0, "42", 1).id
    assert ev.tx_meter("a", T0, "42", 1, 5.0).id == ev.tx_meter("a", T0, "42", 1, 5.0).id
    assert ev.tx_meter("a", T0, "42", 1, 5.0).id != ev.tx_meter("a", T0 + dt.timedelta(microseconds=1),
                                                                 "42", 1, 5.0).id
    assert ev.heartbeat("a", T0).id != ev.heartbeat("a", T0 + dt.timedelta(seconds=1)).id
    assert len(ev.heartbeat("a", T0).id) == 32


def test_from_op_reports_facts_once():
    assert [e.type for e in ev.from_op(UpsertCharger("a", "ocpp1.6", "V", "M", at=T0), None)] == ["charger.booted"]
    assert [e.type for e in ev.from_op(ChargerSeen("a", T0), None)] == ["charger.heartbeat"]
    assert [e.type for e in ev.from_op(ConnectorStatus("a", 0, 1, "Faulted", "X", T0), None)] == ["charger.status"]
    start = StartTransaction("a", "7", 1, "TAG", 10.0, T0)
    assert [e.type for e in ev.from_op(start, "7")] == ["transaction.started"]
    assert ev.from_op(start, "5") == []  # a retry answered with the earlier transaction
    stop = StopTransaction("a", "7", 20.0, T0)
    assert [e.type for e in ev.from_op(stop, True)] == ["transaction.ended"]
    assert ev.from_op(stop, False) == []  # a resend
    assert [e.type for e in ev.from_op(MeterSample("a", "7", T0, 15.0, 1), None)] == ["transaction.meter"]
    assert ev.from_op(MeterSample("a", "", T0, 15.0, 1), None) == []
    ended = TransactionEvent("a", "t", 3, "Ended", T0, energy_wh=30.0, stop_reason="EVDisconnected")
    assert [e.type for e in ev.from_op(ended, True)] == ["transaction.meter", "transaction.ended"]
    assert ev.from_op(ended, False) == []
    opened = ev.ConnectionOpened("a", "ocpp1.6", 4, "w1", T0)
    (e,) = ev.from_op(opened, None)
    assert (e.type, ev.data_of(e).epoch) == ("charger.connected", 4)
    (e,) = ev.from_op(ev.ConnectionClosed("a", 4, "takeover", "w1", T0), None)
    assert e.type == "charger.disconnected" and ev.data_of(e).takeover
    (e,) = ev.from_op(ev.SecurityEventReported("a", "LoginFailed", T0), None)
    assert e.type == "charger.security_event" and ev.data_of(e).type == "LoginFailed"
    started = TransactionEvent("a", "t", 0, "Started", T0, id_tag="TAG", connector_id=1)
    (e,) = ev.from_op(started, True)
    assert e.type == "transaction.started" and ev.data_of(e).id_tag == "TAG"


def test_memory_outbox_reads_after_a_seq_and_trims():
    async def main():
        box = ev.MemoryOutbox()
        box.append(*(ev.heartbeat("a", T0 + dt.timedelta(seconds=i)) for i in range(5)))
        assert [r.seq for r in await box.outbox_read(0, 10)] == [1, 2, 3, 4, 5]
        assert [r.seq for r in await box.outbox_read(2, 2)] == [3, 4]
        await box.outbox_mark_published(3)
        assert await box.outbox_spooled() == 2
        assert [r.seq for r in await box.outbox_read(0, 10)] == [4, 5]
        assert [r.seq for r in await box.outbox_read(4, 10)] == [5]
        assert (await box.outbox_read(0, 1))[0].key == "a"
    asyncio.run(main())


def test_encoded_is_from_op_encoded():
    ops = [MeterSample("a", "7", T0, 15.0, 1), MeterSample("a", "", T0, 1.0, 1),
           MeterSample("b", "7", dt.datetime(2025, 3, 1, 8, 0, 0, 123456), 16.5, 2),  # naive = UTC
           ConnectorStatus("a", 0, 1, "Faulted", "X", T0), StopTransaction("a", "7", 20.0, T0)]
    results = [None, None, None, None, True]
    want = [(e.charger_id, ev.encode(e)) for op, r in zip(ops, results) for e in ev.from_op(op, r)]
    assert encoded(ops, results) == want and len(want) == 4
