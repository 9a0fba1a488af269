"""ScyllaStore: checks that need no server (the optional driver, make_store wiring, the CQL
migrations, op validation, the derived transaction view), then tests on the session's real
CQL server (a local Cassandra 5.0, ``tests/cassandra``), one per fix of issue 21's review.
The store's behaviour as a whole is the contract suite (``test_contract.py``), whose scylla
params run on the same server."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import re
import sys
import uuid

import pytest

from chargeyard.store import make_store
from chargeyard.store import scylla
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, MeterSample, StartTransaction, StopTransaction,
                                   StoreError, TransactionEvent, UpsertCharger)

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
HAVE_DRIVER = importlib.util.find_spec("cassandra") is not None


@pytest.fixture
def no_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "cassandra", None)  # import cassandra -> ImportError


@pytest.fixture
def fake_driver(monkeypatch):
    monkeypatch.setattr(scylla, "_load_driver", lambda: object())


def test_clear_import_error_without_the_driver(no_driver):
    with pytest.raises(ImportError, match=r"pip install scylla-driver"):
        scylla.ScyllaStore(["127.0.0.1"])
    with pytest.raises(ImportError, match=r"pip install scylla-driver"):
        make_store("scylla", scylla_hosts="127.0.0.1")


def test_make_store_maps_to_scylla_store(fake_driver):
    s = make_store("scylla", scylla_hosts="10.0.0.1:9043,10.0.0.2:9043", keyspace="fleet_a")
    assert isinstance(s, scylla.ScyllaStore)
    assert s.hosts == ["10.0.0.1", "10.0.0.2"] and s.port == 9043 and s.keyspace == "fleet_a"
    s = make_store("scylla", scylla_hosts=["a", "b"], max_concurrency=8)
    assert s.hosts == ["a", "b"] and s.port == 9042 and s.keyspace == "chargeyard" and s.max_concurrency == 8
    with pytest.raises(ValueError):
        make_store("scylla", scylla_hosts="")
    with pytest.raises(ValueError):
        make_store("scylla", scylla_hosts="a", keyspace="bad-name; DROP")
    with pytest.raises(ValueError):
        make_store("scylla", scylla_hosts="a:1,b:2")


def test_contract_suite_is_wired_to_scylla():
    from tests.store import test_contract as contract  # noqa: PLC0415
    params = [getattr(p, "values", (p,))[0] for p in contract.BACKENDS]
    assert params == ["sqlite", "scylla"]
    b = contract.Backend("scylla", None)
    assert b.options["keyspace"].startswith("cy_test_") and "scylla_hosts" in b.options


def test_unopened_store_refuses(fake_driver):
    async def main():
        s = scylla.ScyllaStore("127.0.0.1")
        with pytest.raises(StoreError, match="not open"):
            await s.apply([ChargerSeen("CP1", T0)])
        with pytest.raises(StoreError, match="not open"):
            await s.allocate_tx_ids(1)
        assert await s.apply([]) == []
        await s.close()  # never opened: harmless
    asyncio.run(main())


# -- migrations ---------------------------------------------------------------------------

_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS ks\.(\w+) \((.*?)\)(?:\s+WITH .+)?$", re.S)


def _tables() -> dict[str, str]:
    out = {}
    for _, stmt in scylla.migration_statements("ks"):
        m = _CREATE.match(stmt)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_migrations_are_a_versioned_list_of_cql_statements():
    versions = [v for v, _ in scylla.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1)) and scylla.LATEST == versions[-1]
    stmts = scylla.migration_statements("ks")
    assert stmts and all(isinstance(s, str) for _, s in stmts)
    for _, s in stmts:
        assert ";" not in s, "one statement per entry (the driver runs them one by one)"
        assert s.count("(") == s.count(")") and s.count("{") == s.count("}"), s
        assert "{ks}" not in s and "{{" not in s, s
        assert "IF NOT EXISTS" in s, f"not idempotent: {s}"  # racing processes converge
        assert s.startswith(("CREATE TABLE IF NOT EXISTS ks.", "INSERT INTO ks.")), s
    assert scylla.migration_statements("ks", scylla.LATEST) == []
    with pytest.raises(ValueError):
        scylla.migration_statements("ks; DROP KEYSPACE x")


def test_tables_are_keyed_by_charger_and_hold_microseconds():
    tables = _tables()
    assert set(tables) >= {"chargers", "charger_index", "connectors", "transactions", "tx_index", "tx_buckets",
                           "tx_starts", "tx_event_seqs", "tx_samples", "free_samples", "free_sample_days",
                           "last_readings", "tx_id_alloc", "id_tags"}
    for name in ("chargers", "connectors", "transactions", "tx_starts", "tx_event_seqs", "tx_samples",
                 "free_samples", "free_sample_days", "last_readings"):
        body = tables[name]
        pk = re.search(r"PRIMARY KEY \(\(*(\w+)", body)
        first = pk.group(1) if pk else body.split()[0]
        assert first == "charger_id", name
    assert "PRIMARY KEY ((charger_id, tx_id), at, connector_id)" in tables["tx_samples"]
    assert "PRIMARY KEY ((charger_id, day), at, connector_id)" in tables["free_samples"]
    # CQL timestamp keeps only milliseconds; the contract reports microseconds
    assert not any(re.search(r"\btimestamp\b", body) for body in tables.values())


def test_prepared_statements_use_tables_and_columns_of_the_schema():
    tables = _tables()
    for name, q in scylla._Q.items():
        q = q.format(ks="ks")
        for table in re.findall(r"\bks\.(\w+)", q):
            assert table in tables, (name, table)
            cols = set(re.findall(r"(\w+) (?:text|bigint|int|double|boolean|blob)", tables[table]))
            body = re.sub(r"'[^']*'", "", q.split(f"ks.{table}", 1)[1])
            used = set(re.findall(r"\b([a-z_]+)\s*(?:=|,|\)|\s+(?:AND|ASC|IF|FROM|WHERE))", body))
            used -= {"null", "true", "name", "next_id"} if table != "tx_id_alloc" else {"null"}
            assert used <= cols | {"ASC", "DESC"}, (name, used - cols)


# -- validation and the derived view ------------------------------------------------------

def test_ops_the_schema_cannot_hold_are_refused_before_sending():
    scylla._validate(MeterSample("CP1", "1", T0, 1.0, 1))
    scylla._validate(TransactionEvent("CP1", "t", 2**40, "Started", T0))
    for bad in (object(), MeterSample("CP1", "1", T0, float("nan"), 1), MeterSample("CP1", "1", T0, 1.0, 2**63),
                StartTransaction("CP1", "1", 1, "T", 0.0, dt.datetime(1969, 1, 1, tzinfo=dt.timezone.utc)),
                ChargerSeen("CP1", "yesterday")):  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            scylla._validate(bad)


def _s(at: int, wh: float, closing: bool = False) -> dict:
    return {"at": at, "connector_id": 1, "energy_wh": wh, "closing": closing}


def test_derived_transaction_view_matches_the_sqlite_rules():
    row = {"charger_id": "CP1", "tx_id": "1", "kind": 16, "start_reading_wh": 1000.0, "started_at": 0}
    newest_first = [_s(25, 1100.0), _s(20, 2200.0), _s(10, 1600.0)]
    tx = scylla._tx_dict(row, newest_first)
    assert tx["energy_wh"] == 1200.0 and tx["last_reading_wh"] == 1100.0 and tx["active"] is True
    assert scylla._tx_dict({**row, "meter_stop_wh": 2300.0, "stopped_at": 30}, newest_first)["energy_wh"] == 1300.0
    # 2.0.1 closed by an Ended whose start is unknown: energy unknown
    ended = {"charger_id": "CS", "tx_id": "b", "kind": 20, "meter_stop_wh": 500.0, "stopped_at": 30}
    assert scylla._tx_dict(ended, [_s(30, 500.0, True)])["energy_wh"] is None
    tx = scylla._tx_dict({**ended, "start_reading_wh": 100.0}, [_s(30, 500.0, True), _s(10, 300.0), _s(0, 100.0)])
    assert tx["energy_wh"] == 400.0 and tx["meter_start_wh"] == 100.0 and tx["active"] is False
    # no start: the lowest reading stands in
    tx = scylla._tx_dict({"charger_id": "CS", "tx_id": "c", "kind": 20}, [_s(6, 80.0), _s(5, 50.0)])
    assert tx["energy_wh"] == 30.0 and tx["meter_start_wh"] == 50.0
    # a stop for a transaction never seen
    tx = scylla._tx_dict({"charger_id": "CP1", "tx_id": "8", "kind": 16, "meter_stop_wh": 100.0, "stopped_at": 5}, [])
    assert tx["energy_wh"] is None and tx["started_at"] is None and tx["id_tag"] == "" and tx["last_reading_at"] is None


def test_write_timestamps_order_by_charger_time_then_apply_order(fake_driver):
    s = scylla.ScyllaStore("h")
    a, b, older = s._at_ts(1_000_000), s._at_ts(1_000_000), s._at_ts(999_999)
    assert older < a < b  # same charger time: the one applied later wins
    assert s._at_ts(scylla._us(dt.datetime(2262, 1, 1, tzinfo=dt.timezone.utc))) < 2**63
    n1, n2 = s._now_ts(), s._now_ts()
    assert n2 > n1


@pytest.mark.skipif(not HAVE_DRIVER, reason="scylla-driver not installed")
def test_unreachable_cluster_is_a_store_error():
    async def main():
        s = scylla.ScyllaStore("127.0.0.1:1", keyspace="cy_none", connect_timeout=2)
        with pytest.raises(StoreError):
            await s.open()
        await s.close()
    asyncio.run(asyncio.wait_for(main(), 30))


# -- on a real CQL server (the session's Cassandra: tests/store/conftest.py) --------------
# Each test below is the proof of one fix from issue 21's review; each failed before it.

UTC = dt.timezone.utc


def _run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def cql(cassandra):
    """(hosts, a fresh keyspace name) with the schema migrated, as `chargeyard store migrate` does."""
    ks = "cy_unit_" + uuid.uuid4().hex[:12]

    async def migrate():
        await scylla.ScyllaStore(cassandra.hosts, keyspace=ks).migrate()
    _run(migrate())
    return cassandra.hosts, ks


def _with(cql, body, **options):
    hosts, ks = cql

    async def main():
        async with scylla.ScyllaStore(hosts, keyspace=ks, **options) as s:
            return await body(s)
    return _run(main())


def test_retried_start_after_its_key_landed_gets_the_same_id_and_a_row(cql):
    """The start_key LWT landed but the call failed before the transaction row was written:
    the retry (offered a fresh id) must answer the first id, and that row must exist."""
    async def body(s):
        started = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
        await s._q("start_key", "CP1", 1, "TAG", 1000.0, scylla._us(started), "41", *s._start_key_extra())
        assert await s.apply([StartTransaction("CP1", "42", 1, "TAG", 1000.0, started)]) == ["41"]
        tx = await s.get_transaction("CP1", "41")
        assert tx is not None and tx["active"] and tx["meter_start_wh"] == 1000.0 and tx["id_tag"] == "TAG"
        assert [t["tx_id"] for t in await s.list_transactions(charger_id="CP1")] == ["41"]
        assert [t["tx_id"] for t in await s.list_transactions()] == ["41"]
        assert await s.get_transaction("CP1", "42") is None
    _with(cql, body)


def test_tx_id_allocation_is_serial_across_datacentres(cql):
    """LOCAL_SERIAL would let two data centres hand out the same block: the allocator's
    compare-and-set and its read use SERIAL, whatever the store's serial consistency."""
    async def body(s):
        from cassandra import ConsistencyLevel as CL  # noqa: PLC0415
        assert s._ps["alloc_cas"].serial_consistency_level == CL.SERIAL
        assert s._ps["alloc_read"].consistency_level == CL.SERIAL
        assert s._ps["start_key"].serial_consistency_level == CL.LOCAL_SERIAL  # per-charger keys stay local
        a, b = await s.allocate_tx_ids(3), await s.allocate_tx_ids(2)
        assert a[1] < b[0]
    _with(cql, body)


def test_keyspaces_are_created_without_tablets_unless_asked(fake_driver):
    s = scylla.ScyllaStore("h", keyspace="ks")
    assert s.tablets is False
    # ScyllaDB with tablets support: an explicit opt-out (LWT, which this store's
    # idempotency and id allocation rely on, is not available on tablet keyspaces everywhere)
    assert "AND tablets = {'enabled': false}" in s._keyspace_cql("{'class': 'X'}", server_has_tablets=True)
    on = scylla.ScyllaStore("h", keyspace="ks", tablets=True)
    assert "AND tablets = {'enabled': true}" in on._keyspace_cql("{'class': 'X'}", server_has_tablets=True)
    # Cassandra (and ScyllaDB before tablets) has no such option: nothing to say
    assert "tablets" not in s._keyspace_cql("{'class': 'X'}", server_has_tablets=False)
    with pytest.raises(StoreError, match="tablets"):
        on._keyspace_cql("{'class': 'X'}", server_has_tablets=False)


def test_tablets_requested_on_a_server_without_them_is_a_clear_error(cassandra):
    async def main():
        with pytest.raises(StoreError, match="tablets"):
            await scylla.ScyllaStore(cassandra.hosts, keyspace="cy_tab_" + uuid.uuid4().hex[:8],
                                     tablets=True).migrate()
    _run(main())


def test_a_charger_clock_in_2099_does_not_freeze_its_status(cql):
    async def body(s):
        now = dt.datetime.now(UTC)
        await s.apply([ConnectorStatus("CP1", 1, 1, "Faulted", "OtherError", dt.datetime(2099, 1, 1, tzinfo=UTC)),
                       ChargerSeen("CP1", dt.datetime(2099, 1, 1, tzinfo=UTC))])
        await asyncio.sleep(0.01)  # the clock fixed, a little later
        later = dt.datetime.now(UTC)
        await s.apply([ConnectorStatus("CP1", 1, 1, "Available", "NoError", later), ChargerSeen("CP1", later)])
        c = await s.get_charger("CP1")
        assert [x["status"] for x in c["connectors"]] == ["Available"]
        assert c["last_seen"] >= now.isoformat()[:10]
        # a backlog from before the fixed clock still loses to the newer status
        await s.apply([ConnectorStatus("CP1", 1, 1, "Charging", "NoError", now - dt.timedelta(hours=1))])
        assert [x["status"] for x in (await s.get_charger("CP1"))["connectors"]] == ["Available"]
    _with(cql, body)


def test_deletes_win_over_earlier_writes(cql):
    """A write timestamp of the charger's µs × 1000 lies centuries ahead of the server's
    clock, so no later DELETE (retention, an operator's fix) could ever remove the cell."""
    async def body(s):
        await s.apply([ConnectorStatus("CP1", 1, 1, "Available", "NoError", T0),
                       MeterSample("CP1", "", T0, 10.0, 1), ChargerSeen("CP1", T0)])
        for stmt in ("DELETE FROM {ks}.connectors WHERE charger_id = 'CP1'",
                     "DELETE FROM {ks}.last_readings WHERE charger_id = 'CP1'",
                     "DELETE last_seen FROM {ks}.chargers WHERE charger_id = 'CP1'"):
            await s._execute(stmt.format(ks=s.keyspace))
        c = await s.get_charger("CP1")
        assert c is None or (c["connectors"] == [] and c["last_readings"] == [] and c["last_seen"] is None)
    _with(cql, body)


def _partition_keys(s, table):
    t = s._cluster.metadata.keyspaces[s.keyspace].tables[table]
    return [c.name for c in t.partition_key], t


def test_unbounded_partitions_are_bucketed_or_expire(cql):
    """Per-charger histories that grow forever are split into time buckets (transaction
    lists, samples without a transaction) or expire after the retention (replay keys)."""
    async def body(s):
        # samples without a transaction: one partition per charger and day, TWCS, TTL'd
        keys, t = _partition_keys(s, "free_samples")
        assert keys == ["charger_id", "day"]
        assert "TimeWindowCompactionStrategy" in t.options["compaction"]["class"]
        # event replay keys: per transaction, TTL'd; start keys: one row each, TTL'd
        assert _partition_keys(s, "tx_event_seqs")[0] == ["charger_id", "tx_id"]
        assert len(_partition_keys(s, "tx_starts")[0]) == 5
        # transactions: one partition each; the lists are bucketed indexes
        assert _partition_keys(s, "transactions")[0] == ["charger_id", "tx_id"]
        assert _partition_keys(s, "tx_index")[0] == ["scope", "bucket"]
        await s.apply([MeterSample("CP1", "", T0, 10.0, 1), MeterSample("CP1", "", T0 + dt.timedelta(days=2), 11.0, 1),
                       TransactionEvent("CS1", "t1", 0, "Started", T0, energy_wh=1.0),
                       StartTransaction("CP1", "5", 1, "TAG", 0.0, T0)])
        ks = s.keyspace
        for q in (f"SELECT ttl(energy_wh) AS t FROM {ks}.free_samples WHERE charger_id = 'CP1' AND day = "
                  f"{scylla._day(scylla._us(T0))}",
                  f"SELECT ttl(event_type) AS t FROM {ks}.tx_event_seqs WHERE charger_id = 'CS1' AND tx_id = 't1'",
                  f"SELECT ttl(tx_id) AS t FROM {ks}.tx_starts"):
            rows = await s._execute(q)
            assert rows and all(0 < r["t"] <= 7 * 86400 for r in rows), (q, rows)
        assert [x["energy_wh"] for x in await s.list_meter_samples("CP1", "")] == [10.0, 11.0]
    _with(cql, body, retention_days=7)


def test_cluster_wide_lists_page_with_limit_and_cursor(cql):
    async def body(s):
        ops = [UpsertCharger(f"CP{i:03d}", "ocpp1.6", "A", "B") for i in range(25)]
        ops += [StartTransaction(f"CP{i % 5:03d}", str(i), 1, "T", 0.0, T0 + dt.timedelta(hours=i)) for i in range(30)]
        ops += [StopTransaction("CP009", "99", 5.0, T0)]  # start unknown: listed last
        await s.apply(ops)
        seen, cursor = [], None
        for _ in range(20):
            page, cursor = await s.list_chargers_page(limit=7, cursor=cursor)
            assert len(page) <= 7
            seen += [c["id"] for c in page]
            if cursor is None:
                break
        assert seen == [f"CP{i:03d}" for i in range(25)]
        txs, cursor = [], None
        for _ in range(20):
            page, cursor = await s.list_transactions_page(limit=4, cursor=cursor)
            txs += [t["tx_id"] for t in page]
            if cursor is None:
                break
        assert txs == [str(i) for i in reversed(range(30))] + ["99"]
        page, cursor = await s.list_transactions_page(limit=3, charger_id="CP001")
        assert [t["tx_id"] for t in page] == ["26", "21", "16"] and cursor
        page, _ = await s.list_transactions_page(limit=3, charger_id="CP001", cursor=cursor)
        assert [t["tx_id"] for t in page] == ["11", "6", "1"]
        await s.apply([StopTransaction("CP001", "26", 1.0, T0 + dt.timedelta(hours=40))])
        page, _ = await s.list_transactions_page(limit=2, active=True)
        assert [t["tx_id"] for t in page] == ["29", "28"]
        page, _ = await s.list_transactions_page(limit=2, active=False)
        assert [t["tx_id"] for t in page] == ["26", "99"]
    _with(cql, body)


def test_prepared_statements_idempotent_flags_and_no_nulls(cql):
    async def body(s):
        lwt = {n for n, q in scylla._Q.items() if " IF " in q}
        for name, ps in s._ps.items():
            assert ps.is_idempotent is (name not in lwt), name
        sent = []
        real = s._session.execute_async

        def spy(stmt, params=None, *a, **kw):
            if hasattr(stmt, "_statements_and_parameters"):
                sent.extend(p for _, _, ps in stmt._statements_and_parameters for p in ps)
            elif params:
                sent.extend(params)
            return real(stmt, params, *a, **kw)
        s._session.execute_async = spy
        await s.apply([StartTransaction("CP1", "1", 1, "T", 0.0, T0),  # no reservation id
                       TransactionEvent("CS", "x", 0, "Started", T0),  # no reading, no tag
                       TransactionEvent("CS", "x", 1, "Ended", T0),
                       UpsertCharger("CP1", "ocpp1.6", "A", "B")])
        await s.put_id_tag("T", "Accepted")  # no expiry
        assert sent and None not in sent, "a None bound writes a tombstone; UNSET writes nothing"
        assert await s.get_id_tag("T") == "Accepted"
        tx = await s.get_transaction("CP1", "1")
        assert tx["reservation_id"] is None
    _with(cql, body)


def test_statements_name_their_columns():
    for name, q in scylla._Q.items():
        assert "SELECT *" not in q, name
        if q.startswith("INSERT"):
            assert re.match(r"INSERT INTO \{ks\}\.\w+ \(", q), name


def test_pods_refuse_a_schema_they_were_not_built_for(cassandra):
    ks = "cy_ver_" + uuid.uuid4().hex[:10]

    async def main():
        s = scylla.ScyllaStore(cassandra.hosts, keyspace=ks)
        with pytest.raises(StoreError, match=r"chargeyard store migrate"):
            await s.open()  # nothing migrated: no pod creates the schema by itself
        await s.migrate()
        async with scylla.ScyllaStore(cassandra.hosts, keyspace=ks) as s2:
            assert await s2.schema_version() == scylla.LATEST
            await s2._execute(f"INSERT INTO {ks}.schema_version (scope, version, applied_at) "
                              f"VALUES ('chargeyard', {scylla.LATEST + 1}, 0)")
        with pytest.raises(StoreError, match=rf"version {scylla.LATEST + 1}.*this code.*{scylla.LATEST}"):
            await scylla.ScyllaStore(cassandra.hosts, keyspace=ks).open()
    _run(main())


def test_settings_reach_the_driver(cql):
    hosts, ks = cql

    async def main():
        from cassandra import ConsistencyLevel as CL  # noqa: PLC0415
        s = scylla.ScyllaStore(hosts, keyspace=ks, consistency="ONE", read_consistency="QUORUM",
                               serial_consistency="SERIAL", request_timeout=3.5, max_concurrency=4,
                               datacenter="datacenter1", retention_days=3)
        async with s:
            p = s._cluster.profile_manager.default
            assert p.request_timeout == 3.5 and p.consistency_level == CL.ONE
            assert s._ps["get_charger"].consistency_level == CL.QUORUM
            assert s._ps["start_key"].serial_consistency_level == CL.SERIAL
            assert s._ttl == 3 * 86400 and s.max_concurrency == 4
        with pytest.raises(ValueError, match="consistency"):
            scylla.ScyllaStore(hosts, consistency="SOMETIMES")
    _run(main())


def test_lists_follow_a_start_that_moves(cql):
    """A transaction first seen without its start (a Stop, an Ended) is listed last; when its
    start arrives the entry moves, listed once; an entry left behind by a failed move is skipped."""
    async def body(s):
        t = lambda m: T0 + dt.timedelta(minutes=m)  # noqa: E731
        await s.apply([StopTransaction("CP1", "9", 10.0, t(30)),
                       TransactionEvent("CS1", "e", 5, "Ended", t(40), energy_wh=50.0)])
        assert [x["tx_id"] for x in await s.list_transactions()] in (["9", "e"], ["e", "9"])
        await s.apply([StartTransaction("CP1", "9", 1, "T", 0.0, t(0)),
                       TransactionEvent("CS1", "e", 1, "Started", t(20), energy_wh=10.0),
                       StartTransaction("CP1", "10", 1, "T", 0.0, t(10))])
        assert [x["tx_id"] for x in await s.list_transactions()] == ["e", "10", "9"]
        assert [x["tx_id"] for x in await s.list_transactions(charger_id="CS1")] == ["e"]
        # an earlier event moves the start again
        await s.apply([TransactionEvent("CS1", "e", 0, "Updated", t(5), energy_wh=5.0)])
        assert [x["tx_id"] for x in await s.list_transactions()] == ["10", "e", "9"]
        # a stale entry (as if the delete of a move had failed) is not listed
        await s._write(s._index_writes("CP1", "10", scylla._us(t(50))))
        assert [x["tx_id"] for x in await s.list_transactions()] == ["10", "e", "9"]
        assert (await s.get_transaction("CS1", "e"))["started_at"] == iso(t(5))
    _with(cql, body)


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
