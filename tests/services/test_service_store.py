"""The services store's contract, on SQLite and on ScyllaDB (the session's Cassandra):
what billing and monitoring rely on beyond their own tests (tests/services/test_billing.py,
test_monitoring.py, test_api.py, test_consumers.py run on both backends too), and the
ScyllaDB-only parts (event-id TTL, batches above the size limit, the schema)."""

from __future__ import annotations

import asyncio
import re
import time
import types
import uuid

import pytest

from chargeyard.services import scylla_storage
from chargeyard.services.billing.pricing import CDR
from chargeyard.services.monitoring.alerts import Alert
from chargeyard.services.storage import SEEN_RETENTION_S, SqliteServiceStore


def _run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def cdr(charger: str, tx: str, total: str) -> CDR:
    return CDR(charger_id=charger, tx_id=tx, tariff_id="t", currency="EUR", energy_wh=1.0, duration_s=1,
               energy_cost=total, time_cost="0.00", session_fee="0.00", net=total, vat="0.00", total=total)


def alert(aid: str, charger: str, raised_at: str, cleared_at: str | None = None, kind: str = "connector_faulted"):
    return Alert(id=aid, kind=kind, charger_id=charger, connector_id=1, raised_at=raised_at, cleared_at=cleared_at)


def test_first_cdr_of_a_transaction_is_final_across_replicas(services_store):
    """Two billing replicas (two stores, two connections) price one transaction differently
    (a tariff changed between them): the first CDR stays, once."""
    async def main():
        async with services_store() as a, services_store() as b:
            await a.commit_billing("g", ["e1"], [cdr("cp", "1", "1.90")])
            await b.commit_billing("g", ["e2"], [cdr("cp", "1", "9.99"), cdr("cp", "2", "2.00")])
            await a.commit_billing("g", ["e1"], [cdr("cp", "1", "1.90")])  # a replay
            assert (await b.get_cdr("cp", "1")).total == "1.90"
            assert [(c.tx_id, c.total) for c in await a.list_cdrs()] == [("1", "1.90"), ("2", "2.00")]
            assert [c.tx_id for c in await a.list_cdrs(limit=1)] == ["1"]
            assert await a.seen("g", ["e1", "e2", "e3", "e1"]) == {"e1", "e2"}
            assert await a.seen("other-group", ["e1"]) == set()
            assert await a.get_cdr("cp", "3") is None
    _run(main())


def test_alert_lists_newest_first_with_filters(services_store):
    async def main():
        async with services_store() as s:
            await s.commit_monitoring("m", [], [
                alert("a1", "cp1", "2025-03-01T08:00:00.000Z"),
                alert("a2", "cp2", "2025-03-02T08:00:00.000Z", "2025-03-02T09:00:00.000Z"),
                alert("a3", "cp1", "2025-03-03T08:00:00.000Z"),
                alert("a4", "cp1", "2025-03-03T08:00:00.000Z", kind="no_heartbeat")], {})
            # a4 raised, then cleared in a later commit; a3 raised and cleared in one (the last wins)
            await s.commit_monitoring("m", [], [
                alert("a4", "cp1", "2025-03-03T08:00:00.000Z", "2025-03-04T00:00:00.000Z", kind="no_heartbeat"),
                alert("a3", "cp1", "2025-03-03T08:00:00.000Z", "2025-03-03T08:01:00.000Z"),
                alert("a3", "cp1", "2025-03-03T08:00:00.000Z")], {})

            async def ids(**kw):
                return [a.id for a in await s.list_alerts(**kw)]
            assert await ids() == ["a3", "a4", "a2", "a1"]
            assert await ids(limit=2) == ["a3", "a4"]
            assert await ids(active=True) == ["a3", "a1"]
            assert await ids(active=True, limit=1) == ["a3"]
            assert await ids(active=False) == ["a4", "a2"]
            assert await ids(charger_id="cp1") == ["a3", "a4", "a1"]
            assert await ids(charger_id="cp1", active=True) == ["a3", "a1"]
            assert await ids(charger_id="cp1", active=False) == ["a4"]
            assert await ids(charger_id="cp2", active=True) == []
            assert await ids(charger_id="nobody") == []
            states, open_ = await s.load_monitor()
            assert states == {} and sorted(a.id for a in open_) == ["a1", "a3"]
            assert (await s.list_alerts(active=False))[0].cleared_at == "2025-03-04T00:00:00.000Z"
    _run(main())


def test_monitor_state_put_replace_delete(services_store):
    async def main():
        async with services_store() as s:
            await s.commit_monitoring("m", ["e1"], [], {"a": b'{"v":1}', "b": b'{"v":1}', "c": b"x"})
            await s.commit_monitoring("m", ["e2"], [], {"a": b'{"v":2}', "c": None})
        async with services_store() as s:  # restarted
            states, open_ = await s.load_monitor()
            assert states == {"a": b'{"v":2}', "b": b'{"v":1}'} and open_ == []
            assert await s.seen("m", ["e1", "e2"]) == {"e1", "e2"}
    _run(main())


def test_a_commit_larger_than_one_batch_is_stored_whole(services_store):
    """3,000 event ids and 600 chargers' states: many LOGGED batches on ScyllaDB."""
    ids = [f"event-{i:05d}-{'x' * 24}" for i in range(3000)]
    states = {f"charger-{i}": b'{"state":"' + b"s" * 100 + b'"}' for i in range(600)}

    async def main():
        async with services_store() as s:
            await s.commit_monitoring("m", ids, [alert(f"a{i}", f"charger-{i}", "2025-03-01T08:00:00.000Z")
                                                 for i in range(50)], states)
            assert await s.seen("m", ids) == set(ids)
            got, open_ = await s.load_monitor()
            assert got == states and len(open_) == 50
    _run(main(), 120)


def test_tariffs_listed_by_id(services_store):
    from chargeyard.services.billing.tariffs import Tariff

    async def main():
        async with services_store() as s:
            for tid in ("b", "a", "c"):
                await s.put_tariff(Tariff(tariff_id=tid, currency="EUR"))
            await s.put_tariff(Tariff(tariff_id="b", currency="CHF"))
            assert [(t.tariff_id, t.currency) for t in await s.list_tariffs()] == [("a", "EUR"), ("b", "CHF"),
                                                                                  ("c", "EUR")]
            assert await s.delete_tariff("a") and not await s.delete_tariff("a")
            assert await s.get_tariff("a") is None and (await s.get_tariff("c")).currency == "EUR"
    _run(main())


# -- ScyllaDB only ------------------------------------------------------------------------

def test_seen_event_ids_expire_after_the_retention(cassandra):
    from chargeyard.store.scylla import ScyllaStore

    async def main():
        keyspace = "cy_svc_" + uuid.uuid4().hex[:12]
        db = ScyllaStore(cassandra.hosts, keyspace=keyspace)
        await db.migrate()
        async with scylla_storage.ScyllaServiceStore(db, own=True) as s:
            await s.commit_billing("g", ["e1"], [])
            (row,) = await db.execute(f"SELECT TTL(at) AS ttl FROM {keyspace}.seen_events "
                                      "WHERE grp = %s AND id = %s", ("g", "e1"))
            assert SEEN_RETENTION_S - 600 < row["ttl"] <= SEEN_RETENTION_S
    _run(main(), 120)


def test_cdr_list_entries_are_written_before_the_claim(cassandra):
    """A billing pod killed between a CDR's list entry and its claim leaves an entry
    without a CDR (or naming another attempt's time): the list skips it, and still
    fills ``limit``. (Written after the claim, an entry lost to a crash never came
    back: a replay finds the CDR and prices nothing.)"""
    from chargeyard.store.scylla import ScyllaStore

    async def main():
        keyspace = "cy_svc_" + uuid.uuid4().hex[:12]
        db = ScyllaStore(cassandra.hosts, keyspace=keyspace)
        await db.migrate()
        async with scylla_storage.ScyllaServiceStore(db, own=True) as s:
            now = time.time_ns() // 1000
            day = now // 86_400_000_000
            orphans = [(day, now - 2_000_000, "cp", "never-claimed"), (day, now - 1_000_000, "cp", "1")]
            for entry in orphans:
                await db.execute(f"INSERT INTO {keyspace}.cdr_index (day, created, charger_id, tx_id) "
                                 "VALUES (%s, %s, %s, %s)", entry)
            await s.commit_billing("g", ["e1"], [cdr("cp", "1", "1.90"), cdr("cp", "2", "2.00")])
            await s.commit_billing("g", ["e2"], [cdr("cp", "1", "9.99")])  # lost its claim: entry removed
            assert [c.tx_id for c in await s.list_cdrs(limit=1)] == ["1"]
            assert [(c.tx_id, c.total) for c in await s.list_cdrs()] == [("1", "1.90"), ("2", "2.00")]
            rows = await db.execute(f"SELECT tx_id FROM {keyspace}.cdr_index WHERE day = %s", (day,))
            assert sorted(r["tx_id"] for r in rows) == ["1", "1", "2", "never-claimed"]  # the orphans stay
    _run(main(), 120)


def test_an_unmigrated_keyspace_is_refused_with_what_to_do(cassandra):
    from chargeyard.store import StoreError
    from chargeyard.store.scylla import ScyllaStore

    async def main():
        s = scylla_storage.ScyllaServiceStore(ScyllaStore(cassandra.hosts, keyspace="cy_svc_none"), own=True)
        with pytest.raises(StoreError, match="chargeyard store migrate"):
            await s.open()
    _run(main())


def test_statements_use_tables_and_columns_of_the_schema():
    from chargeyard.store import scylla

    create = re.compile(r"^CREATE TABLE IF NOT EXISTS ks\.(\w+) \((.*?)\)(?:\s+WITH .+)?$", re.S)
    version5 = {m.group(1): m.group(2) for v, stmt in scylla.migration_statements("ks")
                if v == scylla_storage.SCHEMA_VERSION and (m := create.match(stmt))}
    assert set(version5) == {"tariffs", "cdrs", "cdr_index", "cdr_days", "alerts_by_charger", "alerts_by_day",
                             "alert_days", "open_alerts", "monitor_state", "seen_events"}
    for name, q in scylla_storage._Q.items():
        q = q.format(ks="ks")
        (table,) = re.findall(r"\bks\.(\w+)", q)
        assert table in version5, (name, table)
        cols = set(re.findall(r"(\w+) (?:text|bigint|int|boolean|blob)", version5[table]))
        body = q.split(f"ks.{table}", 1)[1]
        used = set(re.findall(r"\b([a-z_]+)\s*(?:=|,|\)|\s+(?:AND|LIMIT|IF|FROM|WHERE))", body))
        assert used - {"false", "null"} <= cols, (name, used - cols)
    # only the CDR claim is an LWT: "first CDR is final"; every other write is a blind upsert
    assert [n for n, q in scylla_storage._Q.items() if " IF " in q] == ["cdr_claim"]


def test_the_services_store_follows_store(monkeypatch, tmp_path):
    from chargeyard import node
    from chargeyard.config import Settings
    from chargeyard.store import scylla

    s = Settings(data_dir=str(tmp_path))
    assert isinstance(node.make_services_store(s), SqliteServiceStore)
    assert node.make_services_store(s).path == tmp_path / "services.db"
    monkeypatch.setattr(scylla, "_load_driver", lambda: types.SimpleNamespace())
    s = Settings(data_dir=str(tmp_path), store="scylla", scylla_hosts="10.0.0.1", keyspace="fleet")
    own = node.make_services_store(s)
    assert isinstance(own, scylla_storage.ScyllaServiceStore) and own.own and own.db.keyspace == "fleet"
    main = node.make_store(s)
    shared = node.make_services_store(s, main)
    assert shared.db is main and not shared.own


def test_api_nodes_share_the_services_state_on_scylla(cassandra, tmp_path):
    """Issue 20's last gap: two `chargeyard api --store scylla` processes (two pods) serve
    the same tariffs, CDRs and alerts, the ones the billing and monitoring processes wrote,
    not a file of their own."""
    from chargeyard.store.scylla import ScyllaStore
    from tests.support import NodeProc

    keyspace = "cy_svc_" + uuid.uuid4().hex[:12]

    async def write() -> None:
        db = ScyllaStore(cassandra.hosts, keyspace=keyspace)
        await db.migrate()
        async with scylla_storage.ScyllaServiceStore(db, own=True) as s:  # as billing and monitoring would
            await s.commit_billing("chargeyard-billing", ["e1"], [cdr("cp", "1", "1.90")])
            await s.commit_monitoring("chargeyard-monitoring", ["e2"],
                                      [alert("a1", "cp", "2025-03-01T08:00:00.000Z")], {})
    _run(write(), 120)
    args = ["--store", "scylla", "--scylla-hosts", cassandra.hosts, "--keyspace", keyspace]
    nodes = [NodeProc(tmp_path / name, *args, cmd="api") for name in ("a", "b")]
    try:
        a, b = (n.start(timeout=60) for n in nodes)
        status, body = b.request("GET", "/api/v1/chargers/cp/transactions/1/cdr")
        assert status == 200 and body["total"] == "1.90", body
        status, body = a.request("GET", "/api/v1/alerts?active=true")
        assert status == 200 and [x["id"] for x in body["items"]] == ["a1"], body
        tariff = {"currency": "EUR", "per_kwh": "0.30", "per_minute": "0", "session_fee": "1.00",
                  "vat_percent": "19", "chargers": ["*"], "valid_from": None, "valid_to": None}
        assert a.request("PUT", "/api/v1/tariffs/std", tariff)[0] == 200
        status, body = b.request("GET", "/api/v1/tariffs")
        assert status == 200 and [t["tariff_id"] for t in body["items"]] == ["std"], body
        assert not list(tmp_path.rglob("services.db"))  # nothing node-local
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.parametrize("service", ["billing", "monitoring"])
def test_a_service_on_an_unmigrated_keyspace_exits_in_one_line(cassandra, tmp_path, service):
    """In k8s the pods may start before the store-migrate Job is done: exit 1 with what to
    run (the pod restarts until it is), no traceback."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "chargeyard.cli", service, "--kafka-bootstrap", "127.0.0.1:1", "--http-port", "0",
            "--data-dir", str(tmp_path), "--store", "scylla", "--scylla-hosts", cassandra.hosts,
            "--keyspace", "cy_none_" + uuid.uuid4().hex[:12]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith(f"chargeyard {service}:")]
    assert "--store scylla" in line and "chargeyard store migrate" in line, line
