"""Store throughput check: batches of 1,000 MeterSamples (one per charger, each charger
with an open transaction) committed one after another on the real SQLite store, folding
on as in production, at ``synchronous=FULL`` and ``NORMAL``.

    taskset -c 1 .venv/bin/python -m chargeyard.bench.store_throughput    (make bench-store)

Prints the median commit latency and rows/s per level, then one JSON object with every
figure. Exits 1 when a median exceeds ``--budget-ms`` (default 100 ms: a few ms on a quiet
machine, so only a regression trips it). This used to be a test (tests/store/test_perf.py);
a time budget belongs on a quiet machine, not in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chargeyard.store.base import MeterSample, StartTransaction
from chargeyard.store.sqlite import SqliteStore

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


async def measure(path: Path, synchronous: str, chargers: int, batches: int) -> dict:
    async with SqliteStore(path, synchronous=synchronous) as s:
        await s.apply([StartTransaction(f"CP{i}", str(i), 1, "T", 0.0, T0) for i in range(chargers)])
        work = [[MeterSample(f"CP{i}", str(i), T0 + dt.timedelta(seconds=b + 1), float(b + i), 1)
                 for i in range(chargers)] for b in range(batches)]
        lat = []
        start = time.perf_counter()
        for ops in work:
            t = time.perf_counter()
            await s.apply(ops)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    return {"synchronous": synchronous, "rows_per_commit": chargers, "commits": batches,
            "median_ms": statistics.median(lat) * 1e3, "max_ms": max(lat) * 1e3,
            "rows_per_s": chargers * batches / total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chargers", type=int, default=1000, help="rows per commit (one per charger)")
    ap.add_argument("--batches", type=int, default=30, help="commits per level")
    ap.add_argument("--budget-ms", type=float, default=100.0, help="fail above this median")
    a = ap.parse_args(argv)
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="chargeyard-store-throughput-"))
    try:
        for sync in ("FULL", "NORMAL"):
            r = asyncio.run(measure(tmp / f"{sync}.db", sync, a.chargers, a.batches))
            out.append(r)
            print(f"sqlite synchronous={sync}: {a.chargers} MeterSample/commit, median "
                  f"{r['median_ms']:.2f} ms, {r['rows_per_s']:,.0f} rows/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    over = [r for r in out if r["median_ms"] > a.budget_ms]
    print(json.dumps({"store_throughput": out, "budget_ms": a.budget_ms, "ok": not over}))
    for r in over:
        print(f"over budget: synchronous={r['synchronous']} median {r['median_ms']:.1f} ms "
              f"> {a.budget_ms:g} ms", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
