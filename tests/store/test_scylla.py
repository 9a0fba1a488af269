"""ScyllaStore checks that need no cluster: the optional driver, make_store wiring, the
CQL migrations, op validation and the derived transaction view. The behaviour itself is
the contract suite (``test_contract.py``), whose scylla params run when
``CHARGEYARD_SCYLLA_HOSTS`` is set (and ``pip install scylla-driver``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import re
import sys

import pytest

from chargeyard.store import make_store
from chargeyard.store import scylla
from chargeyard.store.base import ChargerSeen, MeterSample, StartTransaction, StoreError, TransactionEvent

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

_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS ks\.(\w+) \((.*)\)(?:\s+WITH .+)?$", re.S)


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
        assert s.count("(") == s.count(")") and "{" not in s and "}" not in s, s
        assert "IF NOT EXISTS" in s, f"not idempotent: {s}"  # racing processes converge
        assert s.startswith(("CREATE TABLE IF NOT EXISTS ks.", "INSERT INTO ks.")), s
    assert scylla.migration_statements("ks", scylla.LATEST) == []
    with pytest.raises(ValueError):
        scylla.migration_statements("ks; DROP KEYSPACE x")


def test_tables_are_partitioned_by_charger_and_hold_microseconds():
    tables = _tables()
    assert set(tables) >= {"chargers", "connectors", "transactions", "tx_starts", "tx_event_seqs", "meter_samples",
                           "last_readings", "tx_id_alloc", "id_tags"}
    for name in ("chargers", "connectors", "transactions", "tx_starts", "tx_event_seqs", "last_readings"):
        body = tables[name]
        pk = re.search(r"PRIMARY KEY \(\(?(\w+)", body)
        first = pk.group(1) if pk else body.split()[0]
        assert first == "charger_id", name
    assert "PRIMARY KEY ((charger_id, tx_id), at, connector_id)" in tables["meter_samples"]
    # CQL timestamp keeps only milliseconds; the contract reports microseconds
    assert not any(re.search(r"\btimestamp\b", body) for body in tables.values())


def test_prepared_statements_use_tables_and_columns_of_the_schema():
    tables = _tables()
    for name, q in scylla._Q.items():
        q = q.format(ks="ks")
        for table in re.findall(r"\bks\.(\w+)", q):
            assert table in tables, (name, table)
            cols = set(re.findall(r"(\w+) (?:text|bigint|int|double|boolean)", tables[table]))
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
