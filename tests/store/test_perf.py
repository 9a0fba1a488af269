"""Commit throughput of the SQLite store (prints the figure; loose bound for shared boxes).

    .venv/bin/python -m pytest tests/store/test_perf.py -q -s
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time

import pytest

from chargeyard.store.base import MeterSample, StartTransaction
from chargeyard.store.sqlite import SqliteStore

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


@pytest.mark.slow
@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_batch_of_1000_meter_samples(tmp_path, synchronous):
    chargers, batches = 1000, 30

    async def main():
        async with SqliteStore(tmp_path / "p.db", synchronous=synchronous) as s:
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
        return statistics.median(lat), chargers * batches / total

    median, rate = asyncio.run(main())
    print(f"\nsqlite synchronous={synchronous}: 1000 MeterSample/commit, median {median * 1000:.2f} ms, "
          f"{rate:,.0f} rows/s")
    assert median < 0.1  # a few ms on a quiet box; 100 ms only flags a regression
