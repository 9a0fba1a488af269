"""``chargeyard-bench compare --store scylla``: the worker on SQLite and on the ScyllaDB store
in the same run, on the session's Cassandra; the report's "Stores" table. Toy size, never
a speed threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cassandra.fixtures import cassandra  # noqa: F401  (the session's CQL server)

pytest.importorskip("picows")


def test_smoke_with_the_scylla_store(tmp_path, cassandra):  # noqa: F811
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "chargeyard.bench.cli", "smoke", "--out", str(out), "--targets", "chargeyard",
         "--store", "scylla", "--scylla-hosts", cassandra.hosts, "--memory-levels", "", "--conn-levels", "",
         "--no-storm", "--rounds", "0", "--no-plots"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "latest" / "results.json").read_text())
    assert list(results["servers"]) == ["chargeyard", "chargeyard-scylla"]
    scylla = results["servers"]["chargeyard-scylla"]
    assert scylla["available"], scylla.get("unavailable")
    assert scylla["closed"]["msgs"] > 0 and scylla["closed"]["db_batch_rows"]["count"] > 0
    stores = {r["store"]: r for r in results["stores"]}
    assert set(stores) == {"sqlite", "scylla"}
    for r in stores.values():
        assert r["cpu_us_per_msg"] > 0 and r["rows_per_batch"] > 0 and r["p99_ms_half_load"] is not None
    assert stores["sqlite"]["db_cpu_note"] == "in the worker process"
    assert stores["scylla"]["db_cpu_us_per_msg"] is None  # an external server: its CPU is not ours to read
    report = (out / "latest" / "report.md").read_text()
    assert "## Stores (the same run" in report and "| scylla |" in report
    # the capacity table (and an HPA written from it) says which store its figures are from
    assert results["capacity"]["inputs"]["store"] == "sqlite" and "sqlite store)" in report
    from chargeyard.bench import capacity

    assert "(the worker on the sqlite store)" in capacity.hpa_yaml(results["capacity"], "x/results.json")
