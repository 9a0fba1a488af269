"""The store contract: every backend runs this suite (``store/base.py`` docstrings are
the semantics). SQLite, and ScyllaDB's store on the session's CQL server (the ``cassandra``
fixture of ``tests/store/conftest.py``: a local Cassandra, or ``CHARGEYARD_SCYLLA_HOSTS``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest

from chargeyard.store import make_store
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, Fence, MeterSample, StaleEpoch, StartTransaction,
                                   StopTransaction, Store, StoreError, TransactionEvent, UpsertCharger)

BACKENDS = ["sqlite", "scylla"]

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
UTC = dt.timezone.utc


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Backend:
    """Builds stores of one kind on one location (so a test can reopen the same data)."""

    def __init__(self, kind: str, tmp_path, hosts: str = "") -> None:
        self.kind = kind
        if kind == "sqlite":
            self.options = {"path": str(tmp_path / "chargeyard.db")}
        else:
            self.options = {"scylla_hosts": hosts, "keyspace": "cy_test_" + uuid.uuid4().hex[:12]}

    def make(self) -> Store:
        return make_store(self.kind, **self.options)

    def with_store(self, body) -> object:
        async def main():
            async with self.make() as store:
                return await body(store)
        return run(main())


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    hosts = request.getfixturevalue("cassandra").hosts if request.param == "scylla" else ""
    b = Backend(request.param, tmp_path, hosts)
    if b.kind == "scylla":  # its schema exists before any process opens it: `chargeyard store migrate`
        run(b.make().migrate())
    return b


# -- chargers and connectors -----------------------------------------------------------

def test_charger_upsert_seen_and_list(backend):
    async def body(s: Store):
        assert await s.get_charger("CP1") is None
        assert await s.apply([UpsertCharger("CP1", "ocpp1.6", "Acme", "X1", "S1", "1.0", at(0))]) == [None]
        await s.apply([UpsertCharger("CP1", "ocpp1.6", "Acme", "X2", "S1", "1.1", at(1)),
                       ChargerSeen("CP1", at(5)), ChargerSeen("CP1", at(3))])  # late heartbeat: no step back
        c = await s.get_charger("CP1")
        assert c["id"] == "CP1" and c["model"] == "X2" and c["firmware"] == "1.1" and c["protocol"] == "ocpp1.6"
        assert c["last_seen"] == iso(at(5)) and c["last_boot"] == iso(at(1))
        assert c["connectors"] == []
        await s.apply([ChargerSeen("CP0", at(2))])  # never booted here: still listed
        ids = [x["id"] for x in await s.list_chargers()]
        assert ids == ["CP0", "CP1"]
        assert "connectors" not in (await s.list_chargers())[1]
    backend.with_store(body)


def test_connector_status_keeps_newest(backend):
    async def body(s: Store):
        await s.apply([UpsertCharger("CP1", "ocpp2.0.1", "Acme", "X1"),
                       ConnectorStatus("CP1", 1, 1, "Available", "NoError", at(10)),
                       ConnectorStatus("CP1", 1, 1, "Charging", "NoError", at(5)),   # backlog: older
                       ConnectorStatus("CP1", 1, 2, "Faulted", "GroundFailure", at(1), info="x")])
        await s.apply([ConnectorStatus("CP1", 1, 2, "Available", "NoError", at(0))])  # older again
        conns = (await s.get_charger("CP1"))["connectors"]
        assert [(c["evse_id"], c["connector_id"], c["status"], c["error_code"], c["at"]) for c in conns] == [
            (1, 1, "Available", "NoError", iso(at(10))), (1, 2, "Faulted", "GroundFailure", iso(at(1)))]
        await s.apply([ConnectorStatus("CP1", 1, 1, "Occupied", "NoError", at(10))])  # same time: newest wins
        assert (await s.get_charger("CP1"))["connectors"][0]["status"] == "Occupied"
    backend.with_store(body)


# -- 1.6 transactions --------------------------------------------------------------------

def test_start_transaction_is_idempotent(backend):
    async def body(s: Store):
        start = StartTransaction("CP1", "101", 1, "TAG", 1000.0, at(0))
        assert await s.apply([start]) == ["101"]
        retry = StartTransaction("CP1", "102", 1, "TAG", 1000.0, at(0))  # same key, fresh id offered
        assert await s.apply([retry, retry]) == ["101", "101"]
        assert await s.get_transaction("CP1", "102") is None
        other = StartTransaction("CP1", "103", 1, "TAG", 1000.0, at(1))  # another start
        assert await s.apply([other]) == ["103"]
        tx = await s.get_transaction("CP1", "101")
        assert tx["active"] is True and tx["meter_start_wh"] == 1000.0 and tx["energy_wh"] == 0.0
        assert tx["started_at"] == iso(at(0)) and tx["id_tag"] == "TAG" and tx["connector_id"] == 1
        assert tx["stopped_at"] is None and tx["meter_stop_wh"] is None
    backend.with_store(body)


def test_stop_transaction_closes_once_and_records_unknown(backend):
    async def body(s: Store):
        await s.apply([StartTransaction("CP1", "7", 2, "TAG", 500.0, at(0), reservation_id=3)])
        stop = StopTransaction("CP1", "7", 2750.0, at(60), "Local", "TAG")
        assert await s.apply([stop]) == [True]
        assert await s.apply([stop]) == [False]  # charger resends: recorded, no error
        late = StopTransaction("CP1", "7", 9999.0, at(90), "Other")
        assert await s.apply([late]) == [False]
        tx = await s.get_transaction("CP1", "7")
        assert tx["active"] is False and tx["energy_wh"] == 2250.0
        assert tx["meter_stop_wh"] == 2750.0 and tx["stopped_at"] == iso(at(60)) and tx["stop_reason"] == "Local"
        assert tx["reservation_id"] == 3
        # unknown transaction: a closed row, energy unknown
        assert await s.apply([StopTransaction("CP1", "8", 100.0, at(5), "PowerLoss")]) == [False]
        tx = await s.get_transaction("CP1", "8")
        assert tx["active"] is False and tx["meter_stop_wh"] == 100.0 and tx["energy_wh"] is None
        assert tx["stop_reason"] == "PowerLoss" and tx["started_at"] is None
    backend.with_store(body)


def test_start_arriving_after_its_stop_completes_the_row(backend):
    async def body(s: Store):
        await s.apply([StopTransaction("CP1", "9", 1800.0, at(30), "Local")])
        assert await s.apply([StartTransaction("CP1", "9", 1, "TAG", 1000.0, at(0))]) == ["9"]
        tx = await s.get_transaction("CP1", "9")
        assert tx["active"] is False and tx["energy_wh"] == 800.0 and tx["started_at"] == iso(at(0))
    backend.with_store(body)


def test_meter_samples_raise_energy_and_keep_backlog(backend):
    async def body(s: Store):
        await s.apply([StartTransaction("CP1", "1", 1, "TAG", 1000.0, at(0))])
        await s.apply([MeterSample("CP1", "1", at(10), 1600.0, 1), MeterSample("CP1", "1", at(20), 2200.0, 1)])
        tx = await s.get_transaction("CP1", "1")
        assert tx["energy_wh"] == 1200.0 and tx["last_reading_wh"] == 2200.0
        assert tx["last_reading_at"] == iso(at(20))
        # a replayed backlog (older timestamps) is stored but is not the last reading
        await s.apply([MeterSample("CP1", "1", at(5), 1300.0, 1), MeterSample("CP1", "1", at(15), 1900.0, 1)])
        # a glitchy lower reading never lowers energy
        await s.apply([MeterSample("CP1", "1", at(25), 1100.0, 1)])
        tx = await s.get_transaction("CP1", "1")
        assert tx["energy_wh"] == 1200.0
        assert tx["last_reading_wh"] == 1100.0 and tx["last_reading_at"] == iso(at(25))
        samples = await s.list_meter_samples("CP1", "1")
        assert [(x["at"], x["energy_wh"]) for x in samples] == [
            (iso(at(5)), 1300.0), (iso(at(10)), 1600.0), (iso(at(15)), 1900.0), (iso(at(20)), 2200.0),
            (iso(at(25)), 1100.0)]
        await s.apply([MeterSample("CP1", "1", at(10), 1600.0, 1)])  # replayed twice: stored once
        assert len(await s.list_meter_samples("CP1", "1")) == 5
        await s.apply([StopTransaction("CP1", "1", 2300.0, at(30))])
        assert (await s.get_transaction("CP1", "1"))["energy_wh"] == 1300.0  # meter_stop - meter_start
    backend.with_store(body)


def test_meter_sample_without_transaction_is_last_reading(backend):
    async def body(s: Store):
        await s.apply([UpsertCharger("CP1", "ocpp1.6", "Acme", "X1"),
                       MeterSample("CP1", "", at(10), 5000.0, 1), MeterSample("CP1", "", at(2), 4000.0, 1),
                       MeterSample("CP1", "", at(1), 10.0, 2)])
        readings = (await s.get_charger("CP1"))["last_readings"]
        assert [(r["connector_id"], r["energy_wh"], r["at"]) for r in readings] == [
            (1, 5000.0, iso(at(10))), (2, 10.0, iso(at(1)))]
        assert await s.list_transactions() == []
        assert len(await s.list_meter_samples("CP1", "")) == 3
    backend.with_store(body)


def test_samples_before_their_transaction_are_folded_in(backend):
    async def body(s: Store):
        await s.apply([MeterSample("CP1", "5", at(10), 1500.0, 1)])
        assert await s.get_transaction("CP1", "5") is None
        await s.apply([StartTransaction("CP1", "5", 1, "TAG", 1000.0, at(0))])
        tx = await s.get_transaction("CP1", "5")
        assert tx["energy_wh"] == 500.0 and tx["last_reading_wh"] == 1500.0
    backend.with_store(body)


# -- 2.0.1 transactions ----------------------------------------------------------------

def test_transaction_event_lifecycle_and_repeats(backend):
    async def body(s: Store):
        started = TransactionEvent("CS1", "tx-a", 0, "Started", at(0), "CablePluggedIn", "", 1, 1, 10000.0)
        assert await s.apply([started]) == [True]
        assert await s.apply([started]) == [False]
        tx = await s.get_transaction("CS1", "tx-a")
        assert tx["active"] and tx["evse_id"] == 1 and tx["connector_id"] == 1 and tx["meter_start_wh"] == 10000.0
        assert tx["id_tag"] == "" and tx["energy_wh"] == 0.0 and tx["started_at"] == iso(at(0))
        upd = TransactionEvent("CS1", "tx-a", 1, "Updated", at(1), "Authorized", "TOKEN", energy_wh=10100.0)
        upd2 = TransactionEvent("CS1", "tx-a", 2, "Updated", at(10), "MeterValuePeriodic", energy_wh=11000.0)
        assert await s.apply([upd, upd2, upd]) == [True, True, False]
        tx = await s.get_transaction("CS1", "tx-a")
        assert tx["id_tag"] == "TOKEN" and tx["energy_wh"] == 1000.0 and tx["last_reading_wh"] == 11000.0
        # a repeat with a different payload is still a repeat: applied once per seq_no
        assert await s.apply([TransactionEvent("CS1", "tx-a", 2, "Updated", at(11), "X", energy_wh=99999.0)]) == [
            False]
        assert (await s.get_transaction("CS1", "tx-a"))["energy_wh"] == 1000.0
        end = TransactionEvent("CS1", "tx-a", 3, "Ended", at(20), "EVDeparted", energy_wh=11500.0,
                               stop_reason="EVDisconnected")
        assert await s.apply([end]) == [True]
        # a late Updated (out of order) does not reopen it
        assert await s.apply([TransactionEvent("CS1", "tx-a", 4, "Updated", at(15), "X", energy_wh=11200.0)]) == [
            True]
        tx = await s.get_transaction("CS1", "tx-a")
        assert tx["active"] is False and tx["stopped_at"] == iso(at(20)) and tx["stop_reason"] == "EVDisconnected"
        assert tx["meter_stop_wh"] == 11500.0 and tx["energy_wh"] == 1500.0 and tx["started_at"] == iso(at(0))
        assert tx["last_reading_wh"] == 11500.0  # newest by the charger's clock
        assert len(await s.list_meter_samples("CS1", "tx-a")) == 5
    backend.with_store(body)


def test_transaction_event_unknown_and_out_of_order(backend):
    async def body(s: Store):
        # Ended for a transaction never seen: created closed
        end = TransactionEvent("CS1", "tx-b", 7, "Ended", at(30), "StopAuthorized", "TOK", energy_wh=500.0,
                               stop_reason="Local")
        assert await s.apply([end]) == [True]
        tx = await s.get_transaction("CS1", "tx-b")
        assert tx["active"] is False and tx["stop_reason"] == "Local" and tx["meter_stop_wh"] == 500.0
        assert tx["energy_wh"] is None  # start unknown
        # the earlier events arrive afterwards (offline backlog)
        await s.apply([TransactionEvent("CS1", "tx-b", 5, "Started", at(0), "Authorized", "TOK", 2, 1, 100.0),
                       TransactionEvent("CS1", "tx-b", 6, "Updated", at(10), "MeterValuePeriodic",
                                        energy_wh=300.0)])
        tx = await s.get_transaction("CS1", "tx-b")
        assert tx["active"] is False and tx["energy_wh"] == 400.0 and tx["started_at"] == iso(at(0))
        assert tx["id_tag"] == "TOK" and tx["evse_id"] == 2 and tx["stopped_at"] == iso(at(30))
        # Updated without Started: active, start estimated from the lowest reading seen
        await s.apply([TransactionEvent("CS1", "tx-c", 3, "Updated", at(5), "MeterValuePeriodic", energy_wh=50.0),
                       TransactionEvent("CS1", "tx-c", 4, "Updated", at(6), "MeterValuePeriodic", energy_wh=80.0)])
        tx = await s.get_transaction("CS1", "tx-c")
        assert tx["active"] is True and tx["energy_wh"] == 30.0 and tx["started_at"] == iso(at(5))
    backend.with_store(body)


# -- batches ---------------------------------------------------------------------------

def test_batch_results_in_order_and_atomic(backend):
    async def body(s: Store):
        ops = [UpsertCharger("CP1", "ocpp1.6", "A", "B"), ChargerSeen("CP1", at(0)),
               StartTransaction("CP1", "1", 1, "T", 0.0, at(0)), MeterSample("CP1", "1", at(1), 10.0, 1),
               MeterSample("CP1", "1", at(2), 20.0, 1), StopTransaction("CP1", "1", 30.0, at(3)),
               StopTransaction("CP1", "1", 30.0, at(3)), TransactionEvent("CS", "x", 0, "Started", at(0)),
               ConnectorStatus("CP1", 0, 1, "Available", "NoError", at(4))]
        assert await s.apply(ops) == [None, None, "1", None, None, True, False, True, None]
        assert await s.apply([]) == []
        with pytest.raises(StoreError):  # one bad op: nothing of the batch is applied
            await s.apply([StartTransaction("CP2", "2", 1, "T", 0.0, at(0)), object()])  # type: ignore[list-item]
        assert await s.get_transaction("CP2", "2") is None
        # and the store keeps working
        assert await s.apply([StartTransaction("CP2", "2", 1, "T", 0.0, at(0))]) == ["2"]
    backend.with_store(body)


def test_large_sample_batch(backend):
    async def body(s: Store):
        await s.apply([StartTransaction(f"CP{i}", str(i), 1, "T", 0.0, at(0)) for i in range(50)])
        ops = [MeterSample(f"CP{i % 50}", str(i % 50), at(1 + i // 50), float(i), 1) for i in range(1000)]
        assert await s.apply(ops) == [None] * 1000
        tx = await s.get_transaction("CP7", "7")
        assert tx["energy_wh"] == 957.0 and tx["last_reading_at"] == iso(at(20))
        assert len(await s.list_meter_samples("CP7", "7")) == 20
    backend.with_store(body)


def test_list_transactions_filters(backend):
    async def body(s: Store):
        await s.apply([StartTransaction("A", "1", 1, "T", 0.0, at(0)), StartTransaction("A", "2", 1, "T", 0.0, at(5)),
                       StartTransaction("B", "3", 1, "T", 0.0, at(3)), StopTransaction("A", "1", 5.0, at(4)),
                       StopTransaction("B", "4", 5.0, at(9))])
        assert [t["tx_id"] for t in await s.list_transactions()] == ["2", "3", "1", "4"]
        assert [t["tx_id"] for t in await s.list_transactions(charger_id="A")] == ["2", "1"]
        assert [t["tx_id"] for t in await s.list_transactions(active=True)] == ["2", "3"]
        assert [t["tx_id"] for t in await s.list_transactions(charger_id="A", active=False)] == ["1"]
        assert [t["tx_id"] for t in await s.list_transactions(limit=1)] == ["2"]
    backend.with_store(body)


def test_timestamps_are_utc_iso(backend):
    async def body(s: Store):
        plus2 = dt.timezone(dt.timedelta(hours=2))
        local = dt.datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=plus2)
        await s.apply([StartTransaction("CP1", "1", 1, "T", 0.0, local)])
        tx = await s.get_transaction("CP1", "1")
        assert tx["started_at"] == "2025-03-01T08:00:00.123456Z"
        json.dumps(tx)  # plain JSON-able dict
    backend.with_store(body)


# -- fenced writes (ADR 0016): two store objects on one database stand for two workers --------

def two_stores(backend, body):
    async def main():
        async with backend.make() as a, backend.make() as b:
            return await body(a, b)
    return run(main(), timeout=60.0)


async def last_reading_wh(s: Store, charger_id: str) -> list[float]:
    return [r["energy_wh"] for r in (await s.get_charger(charger_id) or {}).get("last_readings", [])]


def test_fence_refuses_the_stale_workers_writes(backend):
    async def body(a: Store, b: Store):
        assert await a.apply([Fence("CP1", 5), StartTransaction("CP1", "1", 1, "T", 0.0, at(0))]) == [True, "1"]
        assert await b.apply([Fence("CP1", 6)]) == [True]  # a takeover: b's claim landed
        late = [ChargerSeen("CP2", at(1)), MeterSample("CP1", "1", at(2), 500.0, 1),
                StopTransaction("CP1", "1", 600.0, at(3)), ChargerSeen("CP2", at(1))]
        with pytest.raises(StaleEpoch) as e:
            await a.apply(late)
        assert e.value.indices == [1, 2] and e.value.stale == {"CP1": 5}
        assert isinstance(e.value, StoreError)
        assert await a.apply([late[0], late[3]]) == [None, None]  # the rest, without them
        # the new owner writes, its writes stand; the old one's never landed
        assert await b.apply([MeterSample("CP1", "1", at(4), 100.0, 1)]) == [None]
        with pytest.raises(StaleEpoch):
            await a.apply([StopTransaction("CP1", "1", 600.0, at(3))])
        tx = await b.get_transaction("CP1", "1")
        assert tx["active"] and tx["energy_wh"] == 100.0 and tx["meter_stop_wh"] is None
        assert await last_reading_wh(b, "CP1") == [100.0]
        # other chargers, and chargers a store holds no epoch for, are not fenced
        assert await a.apply([ChargerSeen("CP3", at(5))]) == [None]
    two_stores(backend, body)


def test_fence_stale_at_claim_and_a_new_claim(backend):
    async def body(a: Store, b: Store):
        assert await b.apply([Fence("CP1", 7)]) == [True]
        # a's claim (epoch 6) lands after b's (7): stale at once, and so is what follows it
        with pytest.raises(StaleEpoch) as e:
            await a.apply([Fence("CP1", 6), ChargerSeen("CP1", at(0)), ChargerSeen("CP2", at(0))])
        assert e.value.indices == [1]
        assert await a.apply([Fence("CP1", 6), ChargerSeen("CP2", at(0))]) == [False, None]
        # the charger comes back to a: a new connection (epoch 0 first), then its claim
        assert await a.apply([Fence("CP1", 0), ChargerSeen("CP1", at(1)), Fence("CP1", 8),
                              ChargerSeen("CP1", at(2))]) == [True, None, True, None]
        with pytest.raises(StaleEpoch):
            await b.apply([ChargerSeen("CP1", at(3))])
        # a repeated Fence of the epoch in force is fine (a retried batch)
        assert await a.apply([Fence("CP1", 8), ChargerSeen("CP1", at(3))]) == [True, None]
    two_stores(backend, body)


def test_fence_release_and_order_in_a_batch(backend):
    async def body(a: Store, b: Store):
        await a.apply([Fence("CP1", 1)])
        await b.apply([Fence("CP1", 2)])
        # in one batch: the stale connection's op, its release, a new claim here, the new one's op
        with pytest.raises(StaleEpoch) as e:
            await a.apply([ChargerSeen("CP1", at(0)), Fence("CP1", 1, release=True), Fence("CP1", 3),
                           ChargerSeen("CP1", at(1))])
        assert e.value.indices == [0]
        assert await a.apply([Fence("CP1", 1, release=True), Fence("CP1", 3),
                              ChargerSeen("CP1", at(1))]) == [True, True, None]
        # a release of an epoch no longer held changes nothing
        assert await b.apply([Fence("CP1", 1, release=True)]) == [True]
        with pytest.raises(StaleEpoch):
            await b.apply([ChargerSeen("CP1", at(2))])
        assert await b.apply([Fence("CP1", 2, release=True), ChargerSeen("CP9", at(2))]) == [True, None]
    two_stores(backend, body)


# -- ids, tags, lifecycle ----------------------------------------------------------------

def test_allocate_tx_ids(backend):
    async def body(s: Store):
        a = await s.allocate_tx_ids(10)
        b = await s.allocate_tx_ids(1)
        c = await s.allocate_tx_ids(100)
        assert a[1] - a[0] == 9 and b[0] == b[1] and c[1] - c[0] == 99
        ranges = sorted([a, b, c])
        assert all(r[0] >= 1 and r[1] <= 2**31 - 1 for r in ranges)
        assert all(x[1] < y[0] for x, y in zip(ranges, ranges[1:]))
        with pytest.raises(ValueError):
            await s.allocate_tx_ids(0)
    backend.with_store(body)


_ALLOCATOR = """
import asyncio, json, sys
from chargeyard.store import make_store
kind, options, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
async def main():
    async with make_store(kind, **options) as s:
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        blocks = [await s.allocate_tx_ids(1 + i % 7) for i in range(rounds)]
    print(json.dumps(blocks), flush=True)
asyncio.run(main())
"""


def test_allocate_tx_ids_across_processes(backend):
    async def prime(s: Store):
        await s.allocate_tx_ids(1)  # schema exists before the race
    backend.with_store(prime)
    procs = [subprocess.Popen([sys.executable, "-c", _ALLOCATOR, backend.kind, json.dumps(backend.options), "150"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    blocks = sorted(tuple(b) for out in outs for b in json.loads(out.strip().splitlines()[-1]))
    assert len(blocks) == 450
    assert all(1 <= lo <= hi <= 2**31 - 1 for lo, hi in blocks)
    assert all(x[1] < y[0] for x, y in zip(blocks, blocks[1:])), "blocks overlap"


def test_id_tags(backend):
    async def body(s: Store):
        assert await s.get_id_tag("T1") is None
        await s.put_id_tag("T1", "Accepted")
        await s.put_id_tag("T2", "Blocked")
        await s.put_id_tag("T3", "Accepted", dt.datetime.now(UTC) - dt.timedelta(days=1))
        await s.put_id_tag("T4", "Accepted", dt.datetime.now(UTC) + dt.timedelta(days=1))
        assert [await s.get_id_tag(t) for t in ("T1", "T2", "T3", "T4")] == [
            "Accepted", "Blocked", "Expired", "Accepted"]
        await s.put_id_tag("T1", "Blocked")
        assert await s.get_id_tag("T1") == "Blocked"
        assert await s.delete_id_tag("T1") is True
        assert await s.delete_id_tag("T1") is False
        assert await s.get_id_tag("T1") is None
    backend.with_store(body)


def test_id_tags_list_in_pages(backend):
    async def body(s: Store):
        assert await s.list_id_tags() == []
        for i in range(7):
            await s.put_id_tag(f"T{i}", "Blocked" if i == 3 else "Accepted")
        await s.put_id_tag("T5", "Accepted", dt.datetime.now(UTC) - dt.timedelta(days=1))
        seen, after = [], None
        while True:
            page = await s.list_id_tags(after=after, limit=3)
            assert len(page) <= 3
            seen += page
            if len(page) < 3:
                break
            after = page[-1]["id_tag"]
        assert [r["id_tag"] for r in seen] == [f"T{i}" for i in range(7)]
        assert {r["id_tag"]: r["status"] for r in seen}["T3"] == "Blocked"
        assert {r["id_tag"]: r["status"] for r in seen}["T5"] == "Expired"
        assert {r["id_tag"]: r["expiry"] for r in seen}["T0"] is None
        assert await s.list_id_tags(after="T6") == []
    backend.with_store(body)


def test_reopen_keeps_data_and_migrations_are_idempotent(backend):
    async def first(s: Store):
        await s.apply([UpsertCharger("CP1", "ocpp1.6", "A", "B"), StartTransaction("CP1", "1", 1, "T", 0.0, at(0))])
        await s.put_id_tag("T", "Accepted")
        return await s.allocate_tx_ids(5)
    a = backend.with_store(first)

    async def again(s: Store):
        assert (await s.get_charger("CP1"))["vendor"] == "A"
        assert (await s.get_transaction("CP1", "1"))["active"] is True
        assert await s.get_id_tag("T") == "Accepted"
        b = await s.allocate_tx_ids(5)
        assert b[0] > a[1]  # the counter survives
        await s.open()  # opening twice is harmless
        assert await s.apply([StartTransaction("CP1", "99", 1, "T", 0.0, at(0))]) == ["1"]
    for _ in range(2):  # migrations run again on every open: nothing to do, nothing lost
        backend.with_store(again)


def test_closed_store_refuses(backend):
    async def main():
        s = backend.make()
        await s.open()
        await s.close()
        await s.close()
        with pytest.raises(StoreError):
            await s.apply([ChargerSeen("CP1", at(0))])
    run(main())
