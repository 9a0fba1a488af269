"""BatchWriter against a real SqliteStore: group commit, reply-after-commit, idle latency,
failures and their isolation, back-pressure, flush/close. Every test runs on asyncio and on uvloop.
The per-message part (``Pending``, ``Lane``, ``reply_all``) runs on both twins
(worker/writer.py, worker/_writer.pyx)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import statistics
import time

import pytest

from chargeyard.core import twins
from chargeyard.store.base import (ChargerSeen, ConnectorStatus, Fence, MeterSample, StaleEpoch, StartTransaction,
                                   StopTransaction, StoreError)
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.writer import BatchWriter, WriterClosed, WriterFull
from tests.support import twin_modules

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)
WRITER = "chargeyard.worker.writer"  # the per-message twins: writer.py, _writer.pyx


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

    async def apply_then(self, ops):  # what the writer calls (Store.apply_then)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("disk on fire")
        results, durable = await self.store.apply_then(ops)
        self.committed.update(id(op) for op in ops)
        self.batches.append(len(ops))
        return results, durable

    def maintenance_due(self) -> bool:  # the writer's maintenance is tested on the real store
        return False


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
        w = BatchWriter(rec, isolate_s=0)  # no isolation: a failed commit fails its whole batch
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


def test_transient_commit_failure_is_retried_in_parts(tmp_path, run):
    async def main():
        store = await _open(tmp_path)
        rec = Recording(store)
        w = BatchWriter(rec)
        await w.start()
        rec.fail_next = 1  # the batch fails once; its halves commit
        futs = [w.add(StartTransaction("CP1", str(i), 1, "T", float(i), T0)) for i in range(6)]
        assert await asyncio.gather(*futs) == [str(i) for i in range(6)]
        assert rec.batches == [3, 3] and w.failed_commits == 1 and w.rejected_ops == 0
        await w.close()
        await store.close()
    run(main())


# -- failure isolation: one bad op must not fail the other chargers' messages ----------

MAGIC = 666.25  # never one of the ordinary readings (integers)


class RejectingStore(SqliteStore):
    """The real SqliteStore, which also refuses (all-or-nothing, like a constraint) any
    batch holding a MeterSample whose reading is MAGIC; records what it committed."""

    def __init__(self, path, **kw) -> None:
        super().__init__(path, **kw)
        self.calls = 0
        self.applied: list = []

    async def apply_then(self, ops):  # apply and the writer both come here
        self.calls += 1
        if any(type(o) is MeterSample and o.energy_wh == MAGIC for o in ops):
            raise StoreError("sqlite: CHECK constraint failed: magic reading")
        results, durable = await super().apply_then(ops)
        self.applied.extend(ops)
        return results, durable


def _ops(n: int, bad: set[int]) -> list:
    """n ops over 7 chargers: readings, plus a status per op with the same timestamp so
    the last one applied wins (shows the order the store saw)."""
    ops = []
    for i in range(n):
        if i in bad:
            ops.append(MeterSample(f"CP{i % 7}", "", T0 + dt.timedelta(seconds=i), MAGIC, 1))
        elif i % 2:
            ops.append(ConnectorStatus(f"CP{i % 7}", 0, 1, f"S{i}", "NoError", T0))
        else:
            ops.append(MeterSample(f"CP{i % 7}", "", T0 + dt.timedelta(seconds=i), float(i), 1))
    return ops


@pytest.mark.parametrize("bad", [{0}, {537}, {999}, {0, 1, 2}, {100, 101, 700}, set(range(0, 1000, 50))],
                         ids=["first", "middle", "last", "adjacent", "spread", "twenty"])
def test_rejected_op_fails_alone_and_the_rest_commit_in_order(tmp_path, run, bad):
    async def main():
        store = RejectingStore(tmp_path / "r.db")
        await store.open()
        w = BatchWriter(store, batch_max=1000)
        await w.start()
        ops = _ops(1000, bad)
        futs = [w.add(op) for op in ops]  # all queued before the sender runs: one batch
        results = await asyncio.gather(*futs, return_exceptions=True)
        failed = {i for i, r in enumerate(results) if isinstance(r, Exception)}
        assert failed == bad
        assert all(isinstance(results[i], StoreError) and "magic" in str(results[i]) for i in bad)
        assert all(results[i] is None for i in range(1000) if i not in bad)
        # everything else was committed, in add order
        assert store.applied == [op for i, op in enumerate(ops) if i not in bad]
        assert w.rejected_ops == len(bad) and w.rows_committed == 1000 - len(bad)
        # cost: about log2(n) commits per bad op, not n
        assert store.calls <= 1 + len(bad) * 2 * 10 + 2, store.calls
        for c in range(7):
            charger = await store.get_charger(f"CP{c}")
            last = max(i for i in range(c, 1000, 7) if i % 2 and i not in bad)
            assert charger["connectors"][0]["status"] == f"S{last}"
        # ops added during the isolation commit after it, and the writer carries on
        assert await w.add(ChargerSeen("CP1", T0)) is None
        await w.close()
        await store.close()
    run(main())


def test_op_the_schema_cannot_hold_fails_alone(tmp_path, run):
    async def main():  # no wrapper at all: SQLite itself refuses these
        store = await _open(tmp_path)
        w = BatchWriter(store)
        await w.start()
        await w.add(StartTransaction("CP1", "1", 1, "T", 0.0, T0))
        ops = [MeterSample("CP1", "1", T0 + dt.timedelta(seconds=i), float(i), 1) for i in range(1, 201)]
        ops[50] = MeterSample("CP1", "1", T0 + dt.timedelta(seconds=51), float("nan"), 1)  # NOT NULL
        ops[120] = MeterSample("CP2", "", T0, 1.0, 2**63)  # beyond INTEGER
        results = await asyncio.gather(*(w.add(op) for op in ops), return_exceptions=True)
        assert [i for i, r in enumerate(results) if isinstance(r, StoreError)] == [50, 120]
        assert len(await store.list_meter_samples("CP1", "1")) == 198  # 200 less the two bad ones
        assert (await store.get_transaction("CP1", "1"))["energy_wh"] == 200.0
        await w.close()
        await store.close()
    run(main())


def test_closed_store_fails_the_whole_batch_promptly(tmp_path, run):
    async def main():
        store = RejectingStore(tmp_path / "c.db")
        await store.open()
        await store.close()  # every commit now fails: "store is not open"
        w = BatchWriter(store, batch_max=1000)
        await w.start()
        t = time.perf_counter()
        results = await asyncio.gather(*(w.add(op) for op in _ops(1000, set())), return_exceptions=True)
        took = time.perf_counter() - t
        assert all(isinstance(r, StoreError) and "not open" in str(r) for r in results)
        assert store.calls <= 10 + 5 + 1, store.calls  # ceil(log2 1000) + 4 failures, then give up
        assert took < 0.5, took
        # the next batch is not retried forever either
        more = await asyncio.gather(*(w.add(op) for op in _ops(300, set())), return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in more)
        await w.close()
    run(main())


class SlowFailingStore(RejectingStore):
    """Every commit fails after ``delay`` seconds (a cluster timing out)."""

    delay = 0.05

    async def apply_then(self, ops):
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise StoreError("timed out")


def test_slow_failing_store_is_bounded_by_isolate_s(tmp_path, run):
    async def main():
        store = SlowFailingStore(tmp_path / "s.db")
        w = BatchWriter(store, batch_max=1000, isolate_s=0.2)
        await w.start()
        t = time.perf_counter()
        results = await asyncio.gather(*(w.add(op) for op in _ops(1000, set())), return_exceptions=True)
        took = time.perf_counter() - t
        assert all(isinstance(r, StoreError) for r in results)
        assert took < 0.2 + 0.05 * 3 + 0.3, took  # the budget, the batch, one probe, slack
        assert store.calls <= 6, store.calls
        # a batch whose own commit took longer than isolate_s is not retried at all
        store.delay = 0.25
        store.calls = 0
        results = await asyncio.gather(*(w.add(op) for op in _ops(100, set())), return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results) and store.calls == 1
        await w.close()
    run(main())


@pytest.mark.slow
def test_isolation_cost_on_1000_meter_samples(tmp_path, run):
    """What one bad op (a NaN reading SQLite refuses mid-transaction) costs a batch of
    1000 MeterSample, against a clean batch (-s to see the figures)."""
    rounds = 5

    async def main():
        store = await _open(tmp_path, "p.db")
        calls = 0
        real_apply = store.apply_then

        async def counting(ops):
            nonlocal calls
            calls += 1
            return await real_apply(ops)
        store.apply_then = counting  # type: ignore[method-assign]
        # isolation gives up on a store that looks down after isolate_s; a loaded machine
        # must not make a slow isolation look like an outage here
        w = BatchWriter(store, batch_max=1000, isolate_s=60.0)
        await w.start()
        await w.add(StartTransaction("CP0", "1", 1, "T", 0.0, T0))
        out: dict[str, list[tuple[float, int]]] = {"clean": [], "one bad op": []}
        k = 0
        for _ in range(rounds):
            for label, bad in (("clean", -1), ("one bad op", 500)):
                k += 1
                ops = [MeterSample(f"CP{i % 50}", "1" if i % 50 == 0 else "", T0 + dt.timedelta(seconds=k * 2000 + i),
                                   float("nan") if i == bad else float(i), 1) for i in range(1000)]
                before = calls
                t = time.perf_counter()
                results = await asyncio.gather(*(w.add(op) for op in ops), return_exceptions=True)
                out[label].append((time.perf_counter() - t, calls - before))
                assert sum(isinstance(r, Exception) for r in results) == (bad >= 0)
        await w.close()
        await store.close()
        return out
    out = run(main())
    for label, rows in out.items():
        print(f"\n1000 MeterSample, {label}: median {statistics.median(r[0] for r in rows) * 1000:.1f} ms "
              f"(max {max(r[0] for r in rows) * 1000:.1f}), {rows[0][1]} store commits")
    assert all(r[1] == 1 for r in out["clean"])
    assert all(r[1] <= 2 * 10 + 1 for r in out["one bad op"])


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


class ReplyTarget:
    """What a Session is to ``add_reply``: records the calls the writer makes."""

    def __init__(self, store=None) -> None:
        self.store = store
        self.calls: list[tuple] = []

    def committed(self, message_id, action, response, t0):
        if self.store is not None:  # the reply is sent only once the op is committed
            assert any(op.energy_wh == float(message_id) for op in self.store.applied)
        self.calls.append(("ok", message_id, action, response, t0))

    def commit_failed(self, message_id, action, exc):
        self.calls.append(("failed", message_id, action, type(exc).__name__))


def test_add_reply_calls_its_target_after_commit_and_isolates_like_add(tmp_path, run):
    async def main():
        store = RejectingStore(tmp_path / "r.db")
        await store.open()
        w = BatchWriter(store, batch_max=1000)
        await w.start()
        target = ReplyTarget(store)
        futs = []
        for i in range(1, 301):
            op = MeterSample("CP1", "", T0 + dt.timedelta(seconds=i), MAGIC if i == 151 else float(i), 1)
            if i % 3:
                w.add_reply(op, target, str(i) if i != 151 else str(MAGIC), "MeterValues", "resp", 0.5)
            else:
                futs.append(w.add(op))
        assert target.calls == []  # nothing answered before its commit
        await asyncio.gather(*futs)
        await w.flush()
        ok = [c for c in target.calls if c[0] == "ok"]
        assert [c[1] for c in ok] == [str(i) for i in range(1, 301) if i % 3 and i != 151]  # add order
        assert all(c[2:] == ("MeterValues", "resp", 0.5) for c in ok)
        assert [c for c in target.calls if c[0] == "failed"] == [("failed", str(MAGIC), "MeterValues",
                                                                 "StoreError")]
        await w.close()
        late = ReplyTarget()
        w.add_reply(ChargerSeen("CP1", T0), late, "x", "Heartbeat", None, 0.0)
        assert late.calls == [("failed", "x", "Heartbeat", "WriterClosed")]
        await store.close()
    run(main())


@pytest.mark.parametrize("pure", [True, False])
def test_ops_refused_for_a_stale_epoch_fail_alone_without_bisection(tmp_path, run, pure):
    """Fenced writes (ADR 0016): another store object (another worker) claims CP1; the
    stale worker's ops for CP1 fail with StaleEpoch at once, its other chargers' ops of the same
    batch commit in one retry (no bisection, however many stale ops are adjacent), and
    ``on_stale`` names the charger and the stale epoch."""
    mod = twins.load(WRITER, pure=pure)

    async def main():
        store = await _open(tmp_path)
        other = await _open(tmp_path)
        rec = Recording(store)
        w = BatchWriter(rec, batch_max=1000, reply_all=mod.reply_all, lane=mod.Lane)
        stale_seen: list[dict] = []
        w.on_stale = stale_seen.append
        await w.start()
        assert await w.add(Fence("CP1", 5)) is True
        assert await other.apply([Fence("CP1", 6)]) == [True]
        rec.gate = asyncio.Event()  # one batch of everything below
        target = ReplyTarget()
        futs = []
        for i in range(1, 41):
            cid = "CP1" if 10 <= i < 30 else "CP2"  # 20 adjacent stale ops
            op = MeterSample(cid, "", T0 + dt.timedelta(seconds=i), float(i), 1)
            if i % 2:
                w.add_reply(op, target, str(i), "MeterValues", "resp", 0.0)
            else:
                futs.append((cid, w.add(op)))
        rec.gate.set()
        await w.flush()
        for cid, fut in futs:
            if cid == "CP1":
                assert isinstance(fut.exception(), StaleEpoch)
            else:
                assert fut.result() is None
        failed = [c for c in target.calls if c[0] == "failed"]
        assert [c[1] for c in failed] == [str(i) for i in range(11, 30, 2)]
        assert {c[3] for c in failed} == {"StaleEpoch"}
        assert [c[1] for c in target.calls if c[0] == "ok"] == [str(i) for i in range(1, 41, 2)
                                                                if not 10 <= i < 30]
        assert w.fenced_ops == 20 and w.isolations == 0 and w.rejected_ops == 0
        assert stale_seen == [{"CP1": 5}]
        assert rec.batches[-1] == 20  # the rest, in one commit
        await w.close()
        await other.close()
        await store.close()
    run(main())


# -- the store's deferred work runs in the writer's idle time ------------------------------

def test_a_writer_never_idle_still_gives_the_deferred_work_its_share(tmp_path, run):
    """Under steady load the queue is never empty when a commit ends, so the writer is never
    idle; it still runs a maintenance slice at least every ``maintain_every_ms`` (before the
    next batch), so the deferred work keeps up instead of growing until batches must fold.
    With the share switched off (0) the same load leaves the slices to idle time only."""
    async def main(every_ms: float) -> tuple[int, int]:
        store = SqliteStore(tmp_path / f"share{every_ms}.db", idle_fold_rows=50)
        store.IDLE_FOLD_SLICE = 10
        store.LOOP_BATCH_MAX = 0  # every commit on the store thread: ops queue during each one
        await store.open()
        w = BatchWriter(store, maintain_every_ms=every_ms)
        await w.start()
        await asyncio.gather(*(w.add(MeterSample(f"CP{i % 5}", "", T0 + dt.timedelta(seconds=i), float(i), 1))
                               for i in range(300)))  # 300 rows logged: maintenance is due
        w.maintenance_runs = 0
        first_commit = w.commits
        futs, i, start = [], 0, time.monotonic()
        # one op per loop turn, so a commit always finds more queued; at least 0.5 s and 20
        # commits (a loaded CI machine commits slower), never more than 10 s; the queue kept
        # well below the writer's bound, so a slow commit never makes it refuse an op
        while (time.monotonic() - start < 0.5 or w.commits - first_commit < 20) \
                and time.monotonic() - start < 10:
            if w.queue_depth < 2000:
                i += 1
                futs.append(w.add(ChargerSeen(f"CP{i % 5}", T0 + dt.timedelta(seconds=i))))
            await asyncio.sleep(0)
        await asyncio.gather(*futs)
        runs = w.maintenance_runs
        await w.close()
        await store.close()
        return runs, w.commits
    shared, commits = run(main(4.0))
    assert commits >= 20 and shared >= 5, (shared, commits)
    unshared, commits = run(main(0.0))
    assert commits >= 20 and unshared <= 2, (unshared, commits)


def test_idle_writer_folds_the_log_and_survives_a_failing_fold(tmp_path, run):
    """With nothing queued, the writer hands the store its deferred work one slice at a time
    (SQLite: the reading log past ``idle_fold_rows``) until none is due; a failing slice is
    logged, paused for a second, and never touches the ops."""
    async def main():
        store = SqliteStore(tmp_path / "m.db", idle_fold_rows=50)
        store.IDLE_FOLD_SLICE = 10
        await store.open()
        w = BatchWriter(store)
        await w.start()
        ops = [MeterSample(f"CP{i % 5}", "", T0 + dt.timedelta(seconds=i), float(i), 1) for i in range(300)]
        await asyncio.gather(*(w.add(op) for op in ops))
        for _ in range(200):  # idle now: slices until the log is below the threshold
            if not store.maintenance_due():
                break
            await asyncio.sleep(0.01)
        assert not store.maintenance_due() and store.deferred_rows < 50
        # slices of whole log rows (a batch's readings of a table), 10 readings at least each
        assert w.maintenance_runs >= 2 and w.maintained_rows == 300 - store.deferred_rows

        real = store.maintain
        failures = 0

        async def failing() -> int:
            nonlocal failures
            failures += 1
            raise RuntimeError("disk trouble")
        store.maintain = failing  # type: ignore[method-assign]
        more = [MeterSample("CP9", "", T0 + dt.timedelta(seconds=1000 + i), float(i), 1) for i in range(100)]
        assert await asyncio.gather(*(w.add(op) for op in more)) == [None] * 100
        await asyncio.sleep(0.3)
        assert failures == 1  # once, then a pause: no busy loop
        assert await w.add(ChargerSeen("CP1", T0)) is None  # the writer carries on
        store.maintain = real  # type: ignore[method-assign]
        await w.close()
        samples = await store.list_meter_samples("CP9", "")
        assert [s["energy_wh"] for s in samples] == [float(i) for i in range(100)]
        await store.close()
    run(main())


class HeldSync(Recording):
    """The first batch commits with a sync the test releases; the later ones are durable at
    once (as a batch committed by a synced COMMIT on the store thread is)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.sync: asyncio.Future | None = None

    async def apply_then(self, ops):
        results, _ = await super().apply_then(ops)
        if self.sync is None:
            self.sync = asyncio.get_running_loop().create_future()
            return results, self.sync
        return results, None


def test_a_batch_durable_at_once_waits_behind_an_earlier_batch_still_syncing(tmp_path, run):
    """One charger's replies keep its order: a later batch that needs no sync is answered
    only after the earlier batch's sync (a pipelined backlog got its replies out of order)."""
    async def main():
        store = await _open(tmp_path)
        rec = HeldSync(store)
        w = BatchWriter(rec, batch_max=4, batch_ms=0.0)
        await w.start()
        done: list[int] = []
        futs = []
        for k in range(12):
            fut = w.add(MeterSample("CP1", "1", T0 + dt.timedelta(seconds=k), float(k), 1))
            fut.add_done_callback(lambda f, k=k: done.append(k))
            futs.append(fut)
        for _ in range(200):  # every batch committed: the first still waits for its sync
            if sum(rec.batches) == 12:
                break
            await asyncio.sleep(0.005)
        assert sum(rec.batches) == 12 and len(rec.batches) >= 2
        await asyncio.sleep(0.01)
        assert done == [] and w.queue_depth == 12
        rec.sync.set_result(None)
        assert await asyncio.gather(*futs) == [None] * 12
        assert done == list(range(12)) and w.queue_depth == 0
        await w.close()
        await store.close()
    run(main())


def _twins():
    """Both writer twins (the compiled one when built), for the tests that compare them."""
    return twin_modules(WRITER)


def test_the_worker_takes_the_compiled_twin_unless_pure(monkeypatch):
    monkeypatch.setenv("CHARGEYARD_PURE", "1")
    assert twins.load(WRITER) is _twins()[0]
    monkeypatch.delenv("CHARGEYARD_PURE")
    assert twins.load(WRITER) is _twins()[-1]


def test_the_twins_share_their_names_and_fields():
    pure = _twins()[0]
    fields = pure.Pending.__struct_fields__
    assert fields == ("op", "future", "added_at", "seq", "target", "message_id", "action", "response", "t0")
    for twin in _twins():
        assert twin.Lane.pending is twin.Pending
        item = twin.Pending("op", None, 1.5, 7)
        assert [getattr(item, f) for f in fields] == ["op", None, 1.5, 7, None, None, None, None, 0.0]
        item = twin.Pending("op", None, 1.5, 7, "target", "m1", "MeterValues", "resp", 2.5)
        assert [getattr(item, f) for f in fields] == ["op", None, 1.5, 7, "target", "m1", "MeterValues",
                                                      "resp", 2.5]
        for name in ("add_reply", "take", "ops"):
            assert callable(getattr(twin.Lane, name))


def test_reply_all_twins(twin, caplog):
    """Replies in order, a failing target logged and skipped, futures resolved unless done,
    and zip's length (the shorter of items and results)."""
    twin = twin(WRITER)
    class Target:
        def __init__(self, fail=False):
            self.got, self.fail = [], fail

        def committed(self, message_id, action, response, t0):
            if self.fail:
                raise RuntimeError("boom")
            self.got.append((message_id, action, response, t0))

    async def main():
        loop = asyncio.get_running_loop()
        a, bad = Target(), Target(fail=True)
        f1, f2 = loop.create_future(), loop.create_future()
        f2.set_result("already")
        cancelled = loop.create_future()
        cancelled.cancel()
        P = twin.Pending
        items = [P(None, None, 0.0, 1, a, "m1", "MeterValues", "r1", 1.5),
                 P("op", f1, 0.0, 2),
                 P(None, None, 0.0, 3, bad, "m2", "MeterValues", "r2", 2.5),
                 P("op", f2, 0.0, 4),
                 P("op", cancelled, 0.0, 5),
                 P(None, None, 0.0, 6, a, "m3", "Heartbeat", "r3", 3.5),
                 P(None, None, 0.0, 7, a, "m4", "Heartbeat", "r4", 4.5)]  # no result: not answered
        twin.reply_all(items, [None, "one", None, "two", "three", None])
        assert a.got == [("m1", "MeterValues", "r1", 1.5), ("m3", "Heartbeat", "r3", 3.5)]
        assert f1.result() == "one" and f2.result() == "already" and cancelled.cancelled()
    with caplog.at_level("ERROR", logger="chargeyard.worker.writer"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["reply after commit failed"]


def test_the_compiled_reply_loop_calls_a_compiled_session_in_c():
    """``_writer.reply_all`` sends a compiled listener's reply through its C-level
    ``_committed`` (a Python override of ``committed`` is not called; here the listener has
    no transport, so nothing is sent); the pure loop calls ``committed``."""
    impls = _twins()
    if len(impls) == 1:
        pytest.skip("the compiled writer is not built")
    CListener = twins.load("chargeyard.worker.listener", pure=False).Listener
    calls = []

    class Spy(CListener):
        def committed(self, *args):
            calls.append(args)

    for twin in impls:
        twin.reply_all([twin.Pending(None, None, 0.0, 1, Spy(), "m1", "MeterValues", "r", 0.5)], [None])
    assert calls == [("m1", "MeterValues", "r", 0.5)]  # the pure loop's call only


def test_the_lane_twins_behave_alike():
    """The same calls on both lanes queue the same records, number them alike, wake the
    idle sender and report a full batch alike, and send the same items the slow way (the
    writer's ``_add_reply``) when the lane is closed or the queue is full."""
    def drive(twin):
        events = []

        class Writer:
            def _add_reply(self, *args):
                events.append(("slow",) + args)

        queue = collections.deque()
        lane = twin.Lane(Writer(), queue, 3, 4)
        clock = iter(range(100))
        lane.time = lambda: float(next(clock))
        lane.wake, lane.filled = (lambda: events.append("wake")), (lambda: events.append("filled"))
        lane.add_reply("op0", "t", "m0", "A", "r", 0.5)  # closed: the slow way
        lane.open = lane.idle = True
        for k in range(1, 6):
            lane.add_reply(f"op{k}", "t", f"m{k}", "A", "r", k + 0.5)
        assert lane.seq == 4 and not lane.idle
        taken = lane.take(3)
        assert len(queue) == 1 and all(type(x) is twin.Pending for x in taken)
        fields = ("op", "future", "added_at", "seq", "target", "message_id", "action", "response", "t0")
        return (events, [[getattr(x, f) for f in fields] for x in taken + list(queue)],
                twin.Lane.ops(taken))
    results = [drive(twin) for twin in _twins()]
    assert results[0] == results[-1]
    events, items, ops = results[0]
    assert events == [("slow", "op0", "t", "m0", "A", "r", 0.5), "wake", "filled", "filled",
                      ("slow", "op5", "t", "m5", "A", "r", 5.5)]
    assert [i[3] for i in items] == [1, 2, 3, 4] and ops == ["op1", "op2", "op3"]
    assert items[0] == ["op1", None, 0.0, 1, "t", "m1", "A", "r", 1.5]


def test_both_lanes_queue_replies_in_order_through_the_admission_line(tmp_path, run, twin):
    """``add_reply`` through either lane: the first starts the writer (the slow path); a
    burst past ``max_queued`` waits in the admission line (the lane closed meanwhile) and is
    answered in add order; items are numbered like ``add``'s; after close, a refusal."""
    twin = twin(WRITER)
    async def main():
        store = SqliteStore(tmp_path / "lane.db")
        await store.open()
        w = BatchWriter(store, batch_max=4, max_queued=8, lane=twin.Lane, reply_all=twin.reply_all)
        assert type(w._lane) is twin.Lane and not w._lane.open
        target = ReplyTarget()
        ops = [MeterSample("CP1", "", T0 + dt.timedelta(seconds=i), float(i), 1) for i in range(30)]
        w.add_reply(ops[0], target, "0", "MeterValues", "r", 0.0)
        assert w._lane.open and w._seq == 1
        for i in range(1, 14):
            w.add_reply(ops[i], target, str(i), "MeterValues", "r", 0.0)
        assert len(w._waiting) > 0 and not w._lane.open  # the queue held 8: the rest wait
        fut = w.add(ops[14])
        await fut
        await w.flush()
        assert w._lane.open and w._seq == 15
        assert [c[1] for c in target.calls] == [str(i) for i in range(14)]
        for _ in range(400):  # the sender goes idle; the next item wakes it
            if w._idle:
                break
            await asyncio.sleep(0.005)
        assert w._idle
        w.add_reply(ops[21], target, "21", "MeterValues", "r", 0.0)
        await w.flush()
        assert target.calls[-1][:2] == ("ok", "21")
        await w.close()
        assert not w._lane.open
        w.add_reply(ops[22], target, "x", "MeterValues", "r", 0.0)
        assert target.calls[-1] == ("failed", "x", "MeterValues", "WriterClosed")
        await store.close()
    run(main())


class SpreadingStore(Recording):
    """A store that asks the writer for at most ``cap`` counted ops per charger per batch
    (``Store.charger_ops_per_batch``, as ScyllaStore does); records each batch's ops."""

    charger_free_ops = frozenset({MeterSample})

    def __init__(self, store, cap) -> None:
        super().__init__(store)
        self.charger_ops_per_batch = cap
        self.seen: list[list] = []

    async def apply_then(self, ops):
        self.seen.append(list(ops))
        return await super().apply_then(ops)


@pytest.mark.parametrize("cap", [None, 2])
def test_a_backlog_is_spread_over_batches_when_the_store_asks(tmp_path, run, cap):
    """Head-of-line blocking: charger A queues a backlog of transactions, then B one; with
    a cap (ScyllaDB), B's op goes into the first batch, A's ops in order over the next,
    readings free; without one (SQLite), batches are as queued (A's backlog then B)."""
    async def main():
        store = await _open(tmp_path)
        rec = SpreadingStore(store, cap)
        rec.gate = asyncio.Event()  # hold the first commit until everything is queued
        w = BatchWriter(rec, batch_max=100, batch_ms=0.0)
        first = w.add(ChargerSeen("Z", T0))  # the writer is busy with it while the rest queues
        await asyncio.sleep(0)
        a = []
        for i in range(6):
            a.append(w.add(StartTransaction("A", str(i), 1, "T", 0.0, T0 + dt.timedelta(minutes=i))))
            a.append(w.add(MeterSample("A", str(i), T0 + dt.timedelta(minutes=i, seconds=1), float(i), 1)))
        b = w.add(StartTransaction("B", "100", 1, "T", 0.0, T0))
        rec.gate.set()
        await asyncio.gather(first, b, *a)
        await w.close()
        batches = [[(op.charger_id, type(op).__name__) for op in ops] for ops in rec.seen[1:]]
        a_order = [op for ops in rec.seen for op in ops if op.charger_id == "A"]
        assert [(o.tx_id, type(o).__name__) for o in a_order] == [
            (str(i), k) for i in range(6) for k in ("StartTransaction", "MeterSample")]
        if cap is None:
            assert len(batches) == 1 and batches[0][-1] == ("B", "StartTransaction")
        else:
            assert ("B", "StartTransaction") in batches[0]  # with A's first two, not after all
            assert [sum(t == "StartTransaction" for c, t in b if c == "A") for b in batches] == [2, 2, 2]
            assert [len(b) for b in batches] == [5, 4, 4]  # readings ride along, uncounted
        assert w.queue_depth == 0
        await store.close()
    run(main())
