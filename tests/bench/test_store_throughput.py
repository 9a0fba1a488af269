"""`make bench-store`'s throughput check at toy size: it runs and reports well-formed
figures. No time budget is judged here (that is the benchmark's job on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_store_throughput_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "chargeyard.bench.store_throughput", "--chargers", "20", "--batches", "3",
         "--budget-ms", "1e9"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["ok"] is True
    assert [r["synchronous"] for r in doc["store_throughput"]] == ["FULL", "NORMAL"]
    assert all(r["rows_per_commit"] == 20 and r["commits"] == 3 and r["median_ms"] > 0 and r["rows_per_s"] > 0
               for r in doc["store_throughput"])


def test_store_throughput_fails_over_budget():
    proc = subprocess.run(
        [sys.executable, "-m", "chargeyard.bench.store_throughput", "--chargers", "5", "--batches", "2",
         "--budget-ms", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "over budget" in proc.stderr, proc.stderr[-3000:]
