"""The events outbox contract on both backends (SQLite, and ScyllaDB's store on the
session's real CQL server): a batch's acknowledged facts have their events, in commit
order; the event-only ops are accepted; repeats report nothing new; reading resumes after
the published mark, also in a new store object of the same worker id (a restart); each
worker reads only its own rows."""

from __future__ import annotations

import datetime as dt

import pytest

from chargeyard.store import events as ev
from chargeyard.store import make_store
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction, StopTransaction,
                                   UpsertCharger)
from tests.store.test_contract import BACKENDS, Backend, run

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    hosts = request.getfixturevalue("cassandra").hosts if request.param == "scylla" else ""
    b = Backend(request.param, tmp_path, hosts)
    if b.kind == "scylla":
        run(b.make().migrate())
    return b


def _store(b: Backend, worker: str):
    return make_store(b.kind, outbox=worker, **b.options)


async def _types(store, after: int = 0) -> list[str]:
    return [ev.decode(r.payload).type for r in await store.outbox_read(after, 100_000)]


def test_outbox_contract(backend):
    async def main():
        async with _store(backend, "w1") as s:
            await s.apply([ev.ConnectionOpened("cp", "ocpp1.6", 3, "w1", at(0)),
                           UpsertCharger("cp", "ocpp1.6", "V", "M", at=at(0)),
                           ConnectorStatus("cp", 0, 1, "Preparing", "NoError", at(1)),
                           StartTransaction("cp", "7", 1, "TAG", 100.0, at(2))])
            await s.apply([MeterSample("cp", "7", at(3), 150.0, 1), ChargerSeen("cp", at(4)),
                           StopTransaction("cp", "7", 200.0, at(5), "Local"),
                           ev.SecurityEventReported("cp", "IdTagRejected", at(6), "idTag X: Invalid")])
            # repeats: the same start again (a retry) and the same stop again report nothing
            await s.apply([StartTransaction("cp", "8", 1, "TAG", 100.0, at(2)),
                           StopTransaction("cp", "7", 200.0, at(5), "Local"),
                           ev.ConnectionClosed("cp", 3, "takeover", "w1", at(7))])
            types = await _types(s)
            assert types == ["charger.connected", "charger.booted", "charger.status", "transaction.started",
                             "transaction.meter", "charger.heartbeat", "transaction.ended",
                             "charger.security_event", "charger.disconnected"]
            rows = await s.outbox_read(0, 100)
            assert [r.seq for r in rows] == sorted(r.seq for r in rows) and len({r.seq for r in rows}) == len(rows)
            assert all(r.key == "cp" for r in rows)
            assert await s.outbox_spooled() == len(rows)
            closed = ev.data_of(ev.decode(rows[-1].payload))
            assert closed.takeover and closed.epoch == 3
            # limits, and the mark: reading resumes after it (also in the middle of a batch)
            assert [r.seq for r in await s.outbox_read(0, 3)] == [r.seq for r in rows[:3]]
            await s.outbox_mark_published(rows[4].seq)
            assert await s.outbox_spooled() == len(rows) - 5
            assert [r.seq for r in await s.outbox_read(0, 100)] == [r.seq for r in rows[5:]]
            # another worker's outbox is its own
            async with _store(backend, "w2") as other:
                await other.apply([ChargerSeen("cp2", at(8))])
                assert await _types(other) == ["charger.heartbeat"]
            assert [r.seq for r in await s.outbox_read(0, 100)] == [r.seq for r in rows[5:]]
            last = rows[-1].seq
        # a restart of the same worker id: the unpublished rows are still there, and the
        # numbering goes on after them
        async with _store(backend, "w1") as s:
            assert [r.seq for r in await s.outbox_read(0, 100)] == [r.seq for r in rows[5:]]
            await s.apply([ChargerSeen("cp", at(9))])
            again = await s.outbox_read(0, 100)
            assert again[-1].seq == last + 1 and ev.decode(again[-1].payload).type == "charger.heartbeat"
            await s.outbox_mark_published(again[-1].seq)
            assert await s.outbox_spooled() == 0 and await s.outbox_read(0, 100) == []
    run(main(), timeout=60)
