"""The outbox's encoding of a committed batch (``store.outbox_encoding.encoded``: ``Rows.outbox_rows``
of ``store/logrows.py`` and its compiled twin, ADR 0021): both twins write the same bytes,
those of ``encode`` of ``from_op``'s events, whatever the ops hold; and the store writes
them to its outbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random

import msgspec
import pytest
from chargeyard.core import twins
from chargeyard.core.messages import v16
from chargeyard.store import events as ev
from chargeyard.store import outbox_encoding
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction,
                                   StopTransaction, TransactionEvent, UpsertCharger)
from chargeyard.store.outbox_encoding import encoded
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.handlers.ocpp16 import samples_16

from tests.support import twin_modules

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def reference(ops: list, results: list) -> list[tuple[str, bytes]]:
    """What the outbox must hold: each event of ``from_op``, encoded by msgspec."""
    return [(e.charger_id, ev.encode(e)) for op, r in zip(ops, results) for e in ev.from_op(op, r)]


def meter_values(charger: str, tx: int, connector: int, start: dt.datetime, wh: float) -> list[MeterSample]:
    """The MeterSamples of a 1.6 MeterValues as a charger sends them: several MeterValues of
    several measurands and phases, the register in kWh or Wh, as the handler reads them."""
    sampled = [
        {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
        {"value": "229.8", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
        {"value": "231.0", "measurand": "Voltage", "phase": "L3-N", "unit": "V"},
        {"value": "15.9", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "16.0", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "16.1", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
        {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"},
    ]
    req = {"connectorId": connector, "transactionId": tx, "meterValue": [
        {"timestamp": (start + dt.timedelta(seconds=60 * i, milliseconds=i * 7)).isoformat(),
         "sampledValue": sampled + [
             {"value": f"{(wh + 183.3 * i) / 1000:.4f}", "measurand": "Energy.Active.Import.Register",
              "unit": "kWh"} if i % 2 else
             {"value": f"{wh + 183.3 * i:.1f}", "measurand": "Energy.Active.Import.Register"}]}
        for i in range(3)]}
    decoded = msgspec.json.decode(msgspec.json.encode(req), type=v16.MeterValuesRequest)
    return samples_16(charger, str(tx), connector, decoded.meter_value)


def representative_batch() -> tuple[list, list]:
    """A busy batch of several chargers: boots, statuses, heartbeats, transactions started
    (one a retry) and stopped (one a resend), MeterValues, a 2.0.1 TransactionEvent."""
    ops: list = []
    results: list = []

    def add(op, result=None):
        ops.append(op)
        results.append(result)

    for i, cid in enumerate(("CP-001", "CP-002", "ACME/garage-7", "CP-004")):
        at = T0 + dt.timedelta(seconds=i)
        add(ev.ConnectionOpened(cid, "ocpp1.6", 3 + i, "w1", at))
        add(UpsertCharger(cid, "ocpp1.6", "ACME", "Wallbox", "SN1", "1.2.3", at=at))
        add(ConnectorStatus(cid, 0, 1, "Preparing", "NoError", at))
        add(StartTransaction(cid, str(100 + i), 1, "TAG-1", 1000.0 * i, at), str(100 + i))
        for op in meter_values(cid, 100 + i, 1, at + dt.timedelta(seconds=5), 1000.0 * i + 12.5):
            add(op)
        add(ChargerSeen(cid, at + dt.timedelta(seconds=9)))
    add(StartTransaction("CP-001", "900", 1, "TAG-1", 0.0, T0), "100")  # a retry: tx 100 is in force
    add(MeterSample("CP-002", "", T0, 5.0, 2))  # no transaction: no event
    add(StopTransaction("CP-001", "100", 4321.5, T0 + dt.timedelta(minutes=30), "Local", "TAG-1"), True)
    add(StopTransaction("CP-001", "100", 4321.5, T0 + dt.timedelta(minutes=30), "Local", "TAG-1"), False)
    add(ConnectorStatus("CP-002", 0, 1, "Faulted", "GroundFailure", T0, "relay"))
    add(TransactionEvent("CP-201", "tx-abc", 0, "Started", T0, energy_wh=0.0, connector_id=1, evse_id=1), True)
    add(TransactionEvent("CP-201", "tx-abc", 1, "Ended", T0 + dt.timedelta(hours=1), energy_wh=7400.25,
                         connector_id=1, evse_id=1, stop_reason="EVDisconnected"), True)
    add(ev.ConnectionClosed("CP-004", 6, "takeover", "w1", T0))
    return ops, results


def test_the_twins_write_the_same_bytes_for_a_representative_batch(twin):
    ops, results = representative_batch()
    got = twin("chargeyard.store.logrows").Rows.outbox_rows(ops, results)
    want = reference(ops, results)
    assert got == want
    assert twin("chargeyard.store.logrows").Rows.outbox_rows(tuple(ops), iter(results)) == want  # any sequences
    assert sum(1 for op in ops if type(op) is MeterSample) == 4 * 3 + 1  # one without a transaction
    types = [msgspec.json.decode(p)["type"] for _, p in got]
    assert types.count("transaction.meter") == 4 * 3 + 2  # and the two TransactionEvents' readings
    assert types.count("transaction.started") == 5 and types.count("transaction.ended") == 2


def _compiled():
    """The compiled twin (a build without it skips, unless CHARGEYARD_REQUIRE_EXT)."""
    modules = twin_modules("chargeyard.store.logrows")
    if len(modules) < 2:
        pytest.skip("chargeyard.store._logrows is not built")
    return modules[1]


def test_the_compiled_and_pure_encoders_agree():
    ops, results = representative_batch()
    pure = twins.load("chargeyard.store.logrows", pure=True).Rows.outbox_rows
    got = _compiled().Rows.outbox_rows(ops, results)
    assert got == pure(ops, results) == ev.encoded_python(ops, results) and len(got) == 39


# the forms the compiled twin leaves to the pure code, and the edges of the one it writes
ODD = [
    MeterSample("CP", "1", T0, 1.0, 1),
    MeterSample("CP", "1", dt.datetime(2026, 3, 1, 8, 0, 0, 1), 1.5, 1),  # naive: UTC
    MeterSample("CP", "1", dt.datetime(1, 1, 1, tzinfo=UTC), 0.0, 0),
    MeterSample("CP", "1", dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), -0.0, 0),
    MeterSample("CP", "1", dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), 2.0, 1),  # before 1970
    MeterSample("CP", "1", T0.replace(tzinfo=dt.timezone(dt.timedelta(hours=2))), 3.0, 1),  # an offset
    MeterSample("CP", "1", T0.replace(tzinfo=dt.timezone(dt.timedelta(0))), 3.0, 1),  # UTC, not the singleton
    MeterSample("CP", "1", T0, 1e20, 1), MeterSample("CP", "1", T0, 1e-7, 1),  # exponents
    MeterSample("CP", "1", T0, 1e16, 1), MeterSample("CP", "1", T0, 9999999999999998.0, 1),
    MeterSample("CP", "1", T0, 5e-324, 1), MeterSample("CP", "1", T0, 0.1 + 0.2, 1),
    *(MeterSample("CP", "1", T0, wh, 1) for wh in (  # thousandths, and near them
        0.001, 0.5, 1000.05, 1000.005, 1000.0005, 999999999999.999, 1e12, 12.3456 * 1000, 2.675, 1e-4)),
    MeterSample("CP", "1", T0, float("nan"), 1), MeterSample("CP", "1", T0, float("inf"), 1),
    MeterSample("CP", "1", T0, 1234, 1),  # an int reading (msgspec writes 1234)
    MeterSample("CP", "1", T0, 1.0, 2**63 - 1), MeterSample("CP", "1", T0, 1.0, -2**63),
    MeterSample("CP", "1", T0, 1.0, 2**64), MeterSample("CP", "1", T0, 1.0, True),  # type: ignore[arg-type]
    MeterSample("Zähler-1", "1", T0, 1.0, 1), MeterSample("CP", 'a"b\\c', T0, 1.0, 1),
    MeterSample("CP\x7f", "1\t2", T0, 1.0, 1), MeterSample("CP", "€", T0, 1.0, 1),
    MeterSample("C" * 48, "t" * 200, T0, 1.0, 1),  # a key of two BLAKE2b blocks
    MeterSample("C" * 48, "t" * 700, T0, 1.0, 1),  # past the stack buffer
    MeterSample("CP", "", T0, 1.0, 1), MeterSample("CP", None, T0, 1.0, 1),  # type: ignore[arg-type]
    MeterSample("", "1", T0, 1.0, 1),
]


@pytest.mark.parametrize("op", ODD, ids=range(len(ODD)))
def test_every_form_of_a_reading_gets_the_bytes_msgspec_writes(twin, op):
    outbox_rows = twin("chargeyard.store.logrows").Rows.outbox_rows
    assert outbox_rows([op], [None]) == reference([op], [None])


def test_random_readings_get_the_bytes_msgspec_writes(twin):
    outbox_rows = twin("chargeyard.store.logrows").Rows.outbox_rows
    rng = random.Random(2026)
    ops = []
    for _ in range(5000):
        at = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=rng.randrange(-2**55, 2**57))
        if rng.random() < 0.3:
            at = at.replace(microsecond=0)
        wh = rng.choice([rng.uniform(0, 1e9), round(rng.uniform(0, 1e6), rng.randrange(4)),
                         float(rng.randrange(10**7)), rng.uniform(-1, 1) * 10 ** rng.randrange(-9, 22),
                         rng.randrange(-10**16, 10**16) / 1000, rng.randrange(10**7) / 1000 * 1000])
        cid = "".join(rng.choice("AZaz09-_./:\u00e9\"") for _ in range(rng.randrange(1, 49)))
        tx = str(rng.randrange(1, 2**31)) if rng.random() < 0.8 else "".join(
            rng.choice("abcdef0123456789-") for _ in range(36))
        ops.append(MeterSample(cid, tx, at, wh, rng.choice([0, 1, 2, rng.randrange(-2**63, 2**63)])))
    assert outbox_rows(ops, [None] * len(ops)) == reference(ops, [None] * len(ops)), "seed 2026"


def test_the_compiled_hash_is_blake2b_128():
    blake = _compiled()._blake2b_128_hex
    rng = random.Random(7)
    for n in [*range(0, 300), 511, 512, 513, 4096]:  # every length around the 128-byte blocks
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert blake(data) == hashlib.blake2b(data, digest_size=16).hexdigest(), n


def test_encoded_follows_the_twin_the_environment_picks(monkeypatch):
    monkeypatch.setattr(outbox_encoding, "_outbox_rows", None)
    ops, results = representative_batch()
    assert encoded(ops, results) == reference(ops, results)
    assert outbox_encoding._outbox_rows is twins.load("chargeyard.store.logrows").Rows.outbox_rows


def test_the_store_writes_the_encoded_envelopes(tmp_path, twin):
    """The SQLite outbox holds, in op order, the bytes of either twin."""
    ops, results = representative_batch()
    ops = [op for op in ops if not isinstance(op, (StopTransaction, TransactionEvent))]  # one apply, fresh facts

    async def main():
        async with SqliteStore(tmp_path / "s.db", outbox="w1") as s:
            s.batches.encode_events = twin("chargeyard.store.logrows").Rows.outbox_rows
            results = await s.apply(ops)
            rows = await s.outbox_read(0, 10_000)
        return results, rows

    results, rows = asyncio.run(main())
    assert [(r.key, r.payload) for r in rows] == reference(ops, results)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))


def test_the_compiled_twin_writes_plain_readings_itself(monkeypatch):
    """Its point is speed: a plain reading must not take the pure code (same bytes, slower)."""
    compiled = _compiled()
    plain = [MeterSample("CP-1", "17", T0 + dt.timedelta(milliseconds=i), 1000.0 + i / 8, 1) for i in range(50)]
    taken: list = []

    def from_op(op, result):
        taken.append(op)
        return ev.from_op(op, result)
    monkeypatch.setattr(compiled, "_from_op", from_op)
    assert compiled.Rows.outbox_rows(plain, [None] * 50) == reference(plain, [None] * 50) and taken == []
    odd = MeterSample("CP-1", "17", T0, 1e20, 1)
    assert compiled.Rows.outbox_rows([odd], [None]) == reference([odd], [None]) and taken == [odd]
