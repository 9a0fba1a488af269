"""Store micro-benchmark: CPU and wall time of one SQLite batch commit, by batch size and
``synchronous`` level, on the real store (its executor thread included).

    taskset -c 1 .venv/bin/python -m chargeyard.bench.store_commit      (make bench-store)

Each batch holds N MeterSamples of N different chargers (of 1,000), each reading with its
own timestamp, as the worker's writer builds them; folding is off, so the figures are the
commit path alone (the fold is the writer's idle work, docs/adr/0012-deferred-work.md).
CPU is the process's user + system time (``getrusage``), so the fsync's kernel work
counts. The ``FULL - NORMAL`` line is what durability against power loss costs per
commit. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from chargeyard.store.base import MeterSample
from chargeyard.store.sqlite import SqliteStore

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(path: Path, synchronous: str, rows: int, commits: int) -> dict:
    store = SqliteStore(path, synchronous=synchronous, fold_rows=10**9, idle_fold_rows=10**9)
    await store.open()
    try:
        k = 0
        batches = []
        for _ in range(commits):
            batch = []
            for _ in range(rows):
                k += 1
                batch.append(MeterSample(f"CP{(k * 7) % 1000:05d}", "1", T0 + dt.timedelta(microseconds=k),
                                         float(k), 1))
            batches.append(batch)
        c0, t0 = _cpu(), time.perf_counter()
        for batch in batches:
            await store.apply(batch)
        cpu, wall = _cpu() - c0, time.perf_counter() - t0
    finally:
        await store.close()
    return {"synchronous": synchronous, "rows": rows, "commits": commits,
            "cpu_us_per_commit": cpu / commits * 1e6, "wall_us_per_commit": wall / commits * 1e6,
            "cpu_us_per_row": cpu / commits / rows * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,45,500", help="batch sizes (comma-separated)")
    ap.add_argument("--commits", type=int, default=1000, help="commits per measurement (batches over 45 rows: as many rows in fewer commits)")
    a = ap.parse_args()
    sizes = [int(x) for x in a.rows.split(",") if x]
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="chargeyard-store-bench-"))
    try:
        for rows in sizes:
            pair = {}
            commits = max(10, a.commits * 45 // max(rows, 45))  # past 45 rows: as many rows, fewer commits
            for sync in ("FULL", "NORMAL"):
                r = asyncio.run(measure(tmp / f"{sync}-{rows}.db", sync, rows, commits))
                pair[sync] = r
                out.append(r)
                print(f"{sync:6} {rows:4} rows/commit: {r['cpu_us_per_commit']:8.1f} us CPU/commit "
                      f"({r['cpu_us_per_row']:6.2f} us/row), {r['wall_us_per_commit']:8.1f} us wall/commit")
            print(f"FULL - NORMAL at {rows} rows: {pair['FULL']['cpu_us_per_commit'] - pair['NORMAL']['cpu_us_per_commit']:.1f}"
                  f" us CPU/commit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"store_commit": out}))


if __name__ == "__main__":
    main()
