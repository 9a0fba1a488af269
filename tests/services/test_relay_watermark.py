"""The relay's synced watermark (worker/relay.py ``synced_only``): a batch committed on the
event loop at ``synchronous=NORMAL`` is not published until the WAL sync that makes it
durable is done, and then at once (woken by the writer's report, not by a poll); rows
left by an earlier process are published after the one fdatasync at the relay's start.

The real SqliteStore, BatchWriter and Relay; only the WAL's sync is held back, by handing
the batches a durability future the test resolves (``Wal.durable``)."""

from __future__ import annotations

import asyncio
import datetime as dt

from chargeyard.store.base import ChargerSeen
from chargeyard.store.events import decode
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.relay import Relay
from chargeyard.worker.writer import BatchWriter

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


class Capture:
    """A publisher that keeps what it is given: the rows and their synced-time stamps."""

    def __init__(self) -> None:
        self.rows: list = []
        self.stamps: list = []

    async def publish(self, rows, stamps=None) -> None:
        self.rows.extend(rows)
        self.stamps.append(stamps)

    async def close(self) -> None:
        pass


async def until(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _held_syncs(store: SqliteStore) -> list[asyncio.Future]:
    """Every loop batch's durability future is one of ours, done when the test says."""
    held: list[asyncio.Future] = []

    def durable() -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        held.append(fut)
        return fut
    store.wal.durable = durable  # type: ignore[method-assign]
    return held


def test_an_unsynced_batch_is_published_only_after_its_sync(tmp_path, run):
    async def main():
        store = SqliteStore(tmp_path / "cy.db", outbox="w1")
        await store.open()
        assert store.wal.walsync is not None, "loop batches must commit at NORMAL and sync apart"
        held = _held_syncs(store)
        relay = Relay(store, Capture(), synced_only=True, poll_s=0.02, metrics=False, name="t")
        writer = BatchWriter(store, on_synced=relay.synced)
        await writer.start()
        relay.start()
        try:
            await until(lambda: relay.watermark is not None)  # the start's durable head: nothing yet
            assert relay.watermark == 0
            fut = writer.add(ChargerSeen("cp-1", T0))
            await until(lambda: len(held) == 1)  # committed, its sync held back
            assert [r.seq for r in await store.outbox_read(0, 10)] == [1]  # readable: committed
            await asyncio.sleep(0.3)  # many polls (poll_s 0.02): a relay that ignores the sync would publish
            assert relay.publisher.rows == [] and not fut.done()
            assert relay.watermark == 0
            held[0].set_result(None)  # the sync is done: the reply, and the relay's wake-up
            await fut
            await until(lambda: len(relay.publisher.rows) == 1)
            row = relay.publisher.rows[0]
            assert row.seq == 1 and decode(row.payload).charger_id == "cp-1"
            # its synced time: reported with the watermark that released it
            stamps = relay.publisher.stamps[-1]
            assert stamps[-1][0] == 1 and abs(stamps[-1][1] / 1000 - dt.datetime.now(UTC).timestamp()) < 60

            # a second batch, synced before a third: only the synced one goes out
            f2 = writer.add(ChargerSeen("cp-2", T0))
            await until(lambda: len(held) == 2)
            f3 = writer.add(ChargerSeen("cp-3", T0))
            await until(lambda: len(held) == 3)
            held[1].set_result(None)
            await f2
            await until(lambda: len(relay.publisher.rows) == 2)
            await asyncio.sleep(0.2)
            assert [r.seq for r in relay.publisher.rows] == [1, 2] and not f3.done()
            held[2].set_result(None)
            await f3
            await until(lambda: len(relay.publisher.rows) == 3)
            assert [decode(r.payload).charger_id for r in relay.publisher.rows] == ["cp-1", "cp-2", "cp-3"]
        finally:
            for f in held:
                if not f.done():
                    f.set_result(None)
            await writer.close()
            await relay.close()
            await store.close()
    run(main())


def test_rows_of_an_earlier_process_go_after_the_start_sync(tmp_path, run):
    """Rows committed before the relay starts (a restart) have no writer report: the
    relay's first watermark (one fdatasync of the WAL) covers them."""
    async def main():
        store = SqliteStore(tmp_path / "cy.db", outbox="w1")
        await store.open()
        await store.apply([ChargerSeen(f"cp-{i}", T0) for i in range(3)])
        relay = Relay(store, Capture(), synced_only=True, poll_s=0.02, metrics=False, name="t").start()
        try:
            await until(lambda: len(relay.publisher.rows) == 3)
            assert relay.watermark == 3 and relay.synced_only
        finally:
            await relay.close()
            await store.close()
    run(main())


def test_a_store_without_a_watermark_publishes_as_committed(run):
    """An outbox whose commits are durable when they return has no ``outbox_durable_head``:
    the relay turns the mode off and publishes what it reads."""
    from chargeyard.store.events import MemoryOutbox, heartbeat

    async def main():
        box = MemoryOutbox()
        relay = Relay(box, Capture(), synced_only=True, poll_s=0.02, metrics=False, name="t")
        box.on_append = relay.wake
        relay.start()
        try:
            box.append(heartbeat("cp-1", T0))
            await until(lambda: len(relay.publisher.rows) == 1)
            assert not relay.synced_only
        finally:
            await relay.close()
    run(main())


class RejectingStore(SqliteStore):
    """Refuses any batch that holds the charger "BAD" (all-or-nothing, like a constraint):
    the writer isolates it by committing the batch's parts one after the other."""

    async def apply_then(self, ops):
        if any(op.charger_id == "BAD" for op in ops):
            from chargeyard.store.base import StoreError

            raise StoreError("sqlite: CHECK constraint failed")
        return await super().apply_then(ops)


def test_a_batch_committed_in_parts_reports_each_part(tmp_path, run):
    """Isolation commits the good ops of a failed batch in parts: each part's report covers
    its own events, the reports rise, and the last covers every committed event."""
    async def main():
        store = RejectingStore(tmp_path / "cy.db", outbox="w1")
        await store.open()
        heads: list[int] = []
        writer = BatchWriter(store, on_synced=heads.append)
        await writer.start()
        try:
            futs = [writer.add(ChargerSeen("BAD" if i == 5 else f"cp-{i}", T0)) for i in range(8)]
            done = await asyncio.gather(*futs, return_exceptions=True)
            assert [isinstance(d, Exception) for d in done] == [i == 5 for i in range(8)]
            assert len(heads) >= 2 and heads == sorted(heads) and heads[-1] == 7
            rows = await store.outbox_read(0, 100, heads[-1])
            assert [decode(r.payload).charger_id for r in rows] == [f"cp-{i}" for i in range(8) if i != 5]
        finally:
            await writer.close()
            await store.close()
    run(main())


def test_marks_are_rate_limited_while_rows_keep_coming(run):
    """A mark is a synced write transaction: one per round would be one per batch at partial
    load (each synced batch wakes a round). At most one per ``mark_every_s``, and the last
    rows are marked soon after the relay catches up."""
    from chargeyard.store.events import MemoryOutbox, heartbeat

    class CountingOutbox(MemoryOutbox):
        marks = 0

        async def outbox_mark_published(self, upto_seq: int) -> None:
            self.marks += 1
            await super().outbox_mark_published(upto_seq)

    async def main():
        box = CountingOutbox()
        relay = Relay(box, Capture(), mark_every_s=0.2, poll_s=0.05, metrics=False, name="t")
        box.on_append = relay.wake
        relay.start()
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            n = 0
            while loop.time() - t0 < 1.0:  # a "batch" every 5 ms: a round each
                box.append(heartbeat(f"cp-{n}", T0))
                n += 1
                await asyncio.sleep(0.005)
            elapsed = loop.time() - t0
            await until(lambda: len(relay.publisher.rows) == n)
            rounds = len(relay.publisher.stamps)
            assert box.marks <= elapsed / 0.2 + 2 < rounds  # the bound, and it bites
            await until(lambda: box.published == n)  # caught up: the last rows marked too
        finally:
            await relay.close()
    run(main())
