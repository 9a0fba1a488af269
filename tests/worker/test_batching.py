"""BatchWriter against a real SqliteStore: group commit, reply-after-commit, idle latency,
failures, back-pressure, flush/close. Every test runs on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time

import pytest

from chargeyard.store.base import ChargerSeen, MeterSample, StartTransaction, StopTransaction, StoreError
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.batching import BatchWriter, WriterClosed, WriterFull

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


def _loops():
    out = ["asyncio"]
    try:
        import uvloop  # noqa: F401
        out.append("uvloop")
    except ImportError:
        pass
    return out


@pytest.fixture(params=_loops())
def run(request):
    def runner(coro, timeout: float = 30.0):
        factory = None
        if request.param == "uvloop":
            import uvloop
            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))
    return runner


class Recording:
    """Wraps a real store: records which ops are committed, can fail or stall on demand."""

    def __init__(self, store) -> None:
        self.store = store
        self.committed: set[int] = set()  # id() of committed ops
        self.batches: list[int] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None

    async def apply(self, ops):
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("disk on fire")
        results = await self.store.apply(ops)
        self.committed.update(id(op) for op in ops)
        self.batches.append(len(ops))
        return results


async def _open(tmp_path, name="w.db"):
    store = SqliteStore(tmp_path / name)
    await store.open()
    return store


def test_group_commit_and_reply_after_commit(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        rec = Recording(store)
        hook_rows: list[int] = []
        w = BatchWriter(rec, batch_max=64, batch_ms=2.0, on_commit=lambda rows, s: hook_rows.append(rows))
        await w.start()
        early: list[str] = []

        def check(op):
            def cb(fut):  # runs the moment the future resolves: its COMMIT must be done
                if id(op) not in rec.committed:
                    early.append(repr(op))
            return cb

        async def charger(i: int):
            tx = await w.add(StartTransaction(f"CP{i}", str(i), 1, "T", 0.0, T0))
            assert tx == str(i)
            for k in range(9):
                op = MeterSample(f"CP{i}", tx, T0 + dt.timedelta(seconds=k + 1), float(k), 1)
                fut = w.add(op)
                fut.add_done_callback(check(op))
                await fut
            assert await w.add(StopTransaction(f"CP{i}", tx, 100.0, T0 + dt.timedelta(minutes=1))) is True

        await asyncio.gather(*(charger(i) for i in range(200)))
        await w.close()
        adds = 200 * 11
        assert early == []
        assert sum(rec.batches) == adds == sum(hook_rows) == w.rows_committed
        assert w.commits < adds / 5, f"{w.commits} commits for {adds} ops: no group commit"
        assert max(rec.batches) <= 64
        assert w.queue_depth == 0
        tx = await store.get_transaction("CP7", "7")
        assert tx["energy_wh"] == 100.0 and tx["active"] is False
        await store.close()
    run(main())


def test_idle_add_commits_at_once(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        w = BatchWriter(store, batch_max=1000, batch_ms=500.0)  # a long linger would show
        await w.start()
        lat = []
        for i in range(10):
            await asyncio.sleep(0.01)  # idle
            t = time.perf_counter()
            await w.add(ChargerSeen("CP1", T0 + dt.timedelta(seconds=i)))
            lat.append(time.perf_counter() - t)
        await w.close()
        await store.close()
        assert statistics.median(lat) < 0.05, lat  # a commit, not batch_ms
        assert max(lat) < 0.25, lat
    run(main())


def test_busy_writer_waits_at_most_batch_ms(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        w = BatchWriter(store, batch_max=1000, batch_ms=20.0)
        await w.start()
        stop = False
        worst = 0.0

        async def producer(i: int):
            nonlocal worst
            k = 0
            while not stop:
                t = time.perf_counter()
                await w.add(ChargerSeen(f"CP{i}", T0 + dt.timedelta(seconds=k)))
                worst = max(worst, time.perf_counter() - t)
                k += 1
        tasks = [asyncio.create_task(producer(i)) for i in range(20)]
        await asyncio.sleep(0.5)
        stop = True
        await asyncio.gather(*tasks)
        await w.close()
        await store.close()
        # linger (20 ms) + at most the commit in flight + its own commit; generous for a shared CI box
        assert worst < 0.5, worst
    run(main())


def test_failed_commit_fails_its_futures_and_writer_recovers(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        rec = Recording(store)
        w = BatchWriter(rec)
        await w.start()
        rec.fail_next = 1
        futs = [w.add(StartTransaction("CP1", str(i), 1, "T", float(i), T0)) for i in range(5)]
        fire_and_forget = w.add(ChargerSeen("CP1", T0))  # nobody awaits it: must not warn
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(r, StoreError) and "disk on fire" in str(r) for r in results)
        assert isinstance(fire_and_forget.exception(), StoreError)
        assert await store.get_transaction("CP1", "0") is None
        assert w.failed_commits == 1
        # the writer keeps working
        assert await w.add(StartTransaction("CP1", "0", 1, "T", 0.0, T0)) == "0"
        await w.close()
        await store.close()
    run(main())


def test_close_flushes_and_refuses_new_ops(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        w = BatchWriter(store, batch_max=100)
        await w.start()
        await w.add(StartTransaction("CP1", "1", 1, "T", 0.0, T0))
        futs = [w.add(MeterSample("CP1", "1", T0 + dt.timedelta(seconds=i), float(i), 1)) for i in range(1, 501)]
        await w.close()  # nobody awaited the futures: close commits them all
        assert all(f.done() and f.exception() is None for f in futs)
        assert (await store.get_transaction("CP1", "1"))["energy_wh"] == 500.0
        late = w.add(ChargerSeen("CP1", T0))
        with pytest.raises(WriterClosed):
            await late
        await w.close()  # idempotent
        await store.close()
    run(main())


def test_flush_waits_for_earlier_ops(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        w = BatchWriter(store, batch_max=10)
        await w.start()
        await w.flush()  # nothing added: returns
        futs = [w.add(ChargerSeen(f"CP{i}", T0)) for i in range(95)]
        await w.flush()
        assert all(f.done() for f in futs)
        assert len(await store.list_chargers()) == 95
        await w.close()
        await store.close()
    run(main())


def test_back_pressure_is_bounded(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        rec = Recording(store)
        rec.gate = asyncio.Event()  # the store stalls
        w = BatchWriter(rec, batch_max=5, batch_ms=0, max_queued=10, add_timeout=0.2)
        await w.start()
        first = [w.add(ChargerSeen("CP1", T0 + dt.timedelta(seconds=i))) for i in range(5)]
        await asyncio.sleep(0.01)  # the sender takes them and stalls in apply
        queued = [w.add(ChargerSeen("CP2", T0 + dt.timedelta(seconds=i)))
                  for i in range(10)]
        assert w.queue_depth == 15 and w.full  # the next op would wait for room
        waiting = [w.add(ChargerSeen("CP3", T0 + dt.timedelta(seconds=i))) for i in range(10)]
        assert w.full
        refused = w.add(ChargerSeen("CP4", T0))  # the admission line is full too
        with pytest.raises(WriterFull):
            await refused
        assert w.queue_depth == 25  # bounded: 5 in flight + 10 queued + 10 waiting
        done, _ = await asyncio.wait(waiting, timeout=2)
        assert len(done) == 10 and all(isinstance(f.exception(), WriterFull) for f in waiting)
        rec.gate.set()
        await asyncio.gather(*first, *queued)
        assert w.queue_depth == 0 and not w.full
        assert await w.add(ChargerSeen("CP5", T0)) is None
        await w.close()
        await store.close()
    run(main())


def test_admission_line_moves_in_order_when_room_frees(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        rec = Recording(store)
        rec.gate = asyncio.Event()
        w = BatchWriter(rec, batch_max=5, batch_ms=0, max_queued=10, add_timeout=10)
        await w.start()
        futs = [w.add(MeterSample("CP1", "", T0 + dt.timedelta(seconds=i), float(i), 1)) for i in range(18)]
        await asyncio.sleep(0.01)
        assert w.full
        rec.gate.set()
        await asyncio.gather(*futs)
        readings = (await store.get_charger("CP1"))["last_readings"]
        assert readings[0]["energy_wh"] == 17.0
        assert rec.batches == [5, 5, 5, 3]
        await w.close()
        await store.close()
    run(main())
