"""Group-commit writer: the worker's only way to the store, and the way a handler replies
after commit (:class:`Commit`).

Shaped like aiokafka's message accumulator (``aiokafka/producer/message_accumulator.py``):
``add(op)`` queues one store operation and returns a future that resolves with the op's
result once the COMMIT that contains it has returned (or fails with the commit's
exception); ``add_reply(op, target, ...)`` does the same without a future, calling
``target.committed(...)`` / ``target.commit_failed(...)`` (a charger's reply) directly
from the commit. One sender task drains the queue:

* idle -> the first op is committed at once, no linger;
* while a commit runs, new ops queue up and all go into the next commit (up to
  ``batch_max`` rows), so a busy writer commits large batches at the disk's pace;
* when the writer is busy and the next batch is not full, it may wait for more rows,
  but an op never waits longer than ``batch_ms`` after it was added for that reason;
* when nothing is queued and the store has deferred work (``store.maintenance_due()``,
  SQLite's reading log to fold), the sender runs one short ``store.maintain()`` slice before
  it waits, so that work is done in the writer's idle time instead of inside a batch;
* under steady load a commit always ends with more ops queued, so the writer is never
  idle: the deferred work then gets a share, one slice before the next batch whenever
  ``maintain_every_ms`` have passed since the last one. Without it the work waits until
  the store does it inside batches (SQLite: a whole log table per batch past
  ``fold_rows``), longer pauses than the slices.

Back-pressure: at most ``max_queued`` ops are queued. Beyond that, ``add`` still returns
a future at once (handlers are plain callbacks), but the op waits in a bounded admission
line for room, in order; if none frees within ``add_timeout`` seconds (or the line itself
holds ``max_queued`` ops) its future fails with :class:`WriterFull`, so memory stays bounded
and the charger gets an error instead of a silent drop.

Failure isolation: a store commits a batch all-or-nothing, so one op it rejects (a value
the schema cannot hold, a bug in one handler) would fail every other charger's message
in that batch. A failed commit of several ops is therefore retried split in halves,
depth first and left half first (bisection), so the ops still commit in add order and
only an op that fails *on its own* gets an exception; every other op is committed and
its future resolved by the sub-commit that contains it. With k bad ops in a batch of n
that costs about k*log2(n) extra commits. A store that is down must not turn into n
single-op commits: isolation gives up and fails the rest of the batch with the last
error when

* ``ceil(log2 n) + 4`` commits in a row fail with no success in between (a working store
  reaches a success after one descent to a bad op; only a run of more than three adjacent
  bad ops looks like an outage), or
* more than ``isolate_s`` seconds have passed since the batch failed, or the failed batch
  commit itself took longer than that (timeouts mean "unavailable", not "bad op").

Fenced writes (ADR 0016): a store that refuses ops because this worker's ownership epoch
for their charger is stale says which (:class:`~chargeyard.store.base.StaleEpoch`); those
ops fail at once with it, the rest of the batch is retried without them (no bisection),
and ``on_stale(stale)`` (charger -> stale epoch) lets the worker close those sessions.

Futures of failed ops have their exception marked as retrieved: fire-and-forget adds
(Heartbeat, StatusNotification) do not spam "exception was never retrieved"; the
writer logs each failed batch once and each op rejected on its own once.

Two implementations of the per-message part, one behaviour: :class:`Lane` (queue in),
:func:`reply_all` (replies out) and their record :class:`Pending` here in pure Python, and
``_writer.pyx`` compiled. The worker picks the pair with
``twins.load("chargeyard.worker.writer")`` and passes it as
``BatchWriter(lane=..., reply_all=...)``; the rest of the writer is this module's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from ..store.base import Op, StaleEpoch, Store, StoreError

__all__ = ["BatchWriter", "Commit", "Lane", "Pending", "WriterClosed", "WriterFull", "reply_all"]

log = logging.getLogger("chargeyard.worker.writer")

OnCommit = Callable[[int, float], Any]  # (rows, seconds)
_SPREAD_SCAN = 20_000  # queued items one batch looks at when it spreads chargers over batches


class Commit(msgspec.Struct, gc=False):
    """A handler's answer: reply ``response`` once ``op`` (one store write) has committed.
    The one way a handler replies after commit: the listener queues it with
    ``BatchWriter.add_reply`` and the writer sends the reply from the commit itself, with no
    future or callback per message. A Struct, so that it is made in C; the listeners test
    its exact type before they test for a response Struct. ``gc=False``: it holds an op and
    a response, never a cycle."""

    op: Any
    response: Any


class Pending(msgspec.Struct, array_like=True, gc=False):
    """One op in the writer's queue, from ``add`` or ``add_reply`` until it is answered.

    ``add`` sets ``future``; ``add_reply`` leaves it None and sets ``target`` and the reply
    (``target.committed(message_id, action, response, t0)``). ``seq`` numbers the ops in
    add order, ``added_at`` is the loop's time at the add. One is made per charger message:
    an array-like Struct without GC tracking costs what a tuple costs. Untracked, it must
    not be the only link of a cycle left behind, so ``close()`` and ``fail_all`` always
    empty the queues. The compiled lane has a twin of it with the same fields."""

    op: Any
    future: asyncio.Future | None
    added_at: float
    seq: int
    target: Any = None
    message_id: str | None = None
    action: str | None = None
    response: Any = None
    t0: float = 0.0


class SyncingBatch(msgspec.Struct):
    """A committed batch whose replies wait for its sync: ``durable`` is the sync's
    awaitable (None: durable already), ``started`` the ``perf_counter`` at its commit."""

    batch: list[Pending]
    durable: Any
    results: list[Any]
    started: float
    outbox_head: int | None = None  # the store's last outbox seq right after this batch's COMMIT


def reply_all(items: list[Pending], results: list[Any]) -> None:
    """Answer a committed batch: ``target.committed(...)`` for an ``add_reply`` item, the
    result into an ``add`` item's future. The compiled twin (``_writer.reply_all``) calls a
    compiled session's ``committed`` in C."""
    for item, result in zip(items, results):
        fut = item.future
        if fut is None:
            try:
                item.target.committed(item.message_id, item.action, item.response, item.t0)
            except Exception:
                log.exception("reply after commit failed")
        elif not fut.done():
            fut.set_result(result)


class Lane:
    """The writer's queue as ``add_reply`` fills it, the hot path of a charger message: while
    the writer is open (started, not closed, nobody waiting for room) and its queue has room,
    an item goes straight in, without a call into the writer (``BatchWriter._add_reply``
    otherwise). The writer keeps ``open``, ``idle`` and the numbering (``seq``) here, and
    makes its own items with ``pending``, so that one queue holds one record type. The
    compiled twin is ``_writer.Lane``."""

    __slots__ = ("writer", "queue", "batch_max", "max_queued", "seq", "open", "idle", "time", "wake", "filled")

    pending = Pending  # the record this lane queues

    def __init__(self, writer: Any, queue: deque, batch_max: int, max_queued: int) -> None:
        self.writer, self.queue, self.batch_max, self.max_queued = writer, queue, batch_max, max_queued
        self.seq = 0
        self.open = self.idle = False
        self.time = self.wake = self.filled = None  # the loop's clock, the sender's events' set()

    def add_reply(self, op: Op, target: Any, message_id: str, action: str, response: Any, t0: float) -> None:
        """``BatchWriter.add_reply``."""
        queue = self.queue
        if not self.open or len(queue) >= self.max_queued:
            self.writer._add_reply(op, target, message_id, action, response, t0)
            return
        self.seq += 1
        queue.append(Pending(op, None, self.time(), self.seq, target, message_id, action, response, t0))
        if self.idle:
            self.idle = False
            self.wake()
        if len(queue) >= self.batch_max:
            self.filled()

    def take(self, n: int) -> list[Pending]:
        """The queue's first ``n`` items, taken off it."""
        popleft = self.queue.popleft
        return [popleft() for _ in range(n)]

    @staticmethod
    def ops(items: list[Pending]) -> list[Op]:
        """The items' ops."""
        return [item.op for item in items]


class WriterFull(StoreError):
    """The write queue stayed full for ``add_timeout`` seconds."""


class WriterClosed(StoreError):
    """``add`` after ``close()``, or the writer stopped before the op was committed."""


class BatchWriter:
    """``BatchWriter(store, batch_max=1000, batch_ms=2.0, metrics=None, *, on_commit=None,
    max_queued=100_000, add_timeout=5.0, isolate_s=1.0, maintain_every_ms=4.0,
    reply_all=reply_all, lane=Lane)``.

    ``reply_all(items, results)`` answers a committed batch and ``lane`` makes the queue's
    :class:`Lane`: this module's, or both from the compiled twin (``_writer``; a lane and
    a reply loop of one module, since each reads its own record).

    ``isolate_s``: time budget for isolating the failing ops of a failed batch (0 turns
    isolation off: a failed commit fails its whole batch).

    ``metrics``/``on_commit``: called after every successful commit as
    ``on_commit(rows, seconds)`` (``metrics`` may be that callable or an object with an
    ``on_commit`` method); exceptions from it are logged, never raised.

    ``on_batch``: called once per committed (and synced) batch, before ``on_commit``, as
    ``on_batch(ops, results)``: the worker derives the live events of the batch there and
    wakes its events relay (one call per batch, none per message).

    ``on_synced``: called after ``on_batch`` as ``on_synced(seq)`` with the highest events
    outbox seq now known synced: the store's ``outbox_head()``, read right after the batch's
    COMMIT (so it covers this batch's events and every earlier one's; the writer commits
    one batch at a time) and reported once that batch is synced. The relay publishes no
    row above it (``Relay.synced``). Not called for a store without ``outbox_head``.
    """

    def __init__(self, store: Store, batch_max: int = 1000, batch_ms: float = 2.0, metrics: Any = None, *,
                 on_commit: OnCommit | None = None, max_queued: int = 100_000, add_timeout: float = 5.0,
                 isolate_s: float = 1.0, maintain_every_ms: float = 4.0,
                 reply_all: Callable[[list[Pending], list[Any]], None] = reply_all, lane: Any = Lane,
                 on_batch: Callable[[list[Op], list[Any]], None] | None = None,
                 on_synced: Callable[[int], None] | None = None) -> None:
        if batch_max < 1 or max_queued < batch_max:
            raise ValueError("need 1 <= batch_max <= max_queued")
        self.store = store
        self._reply_all = reply_all
        self.batch_max = batch_max
        self.batch_s = max(0.0, batch_ms) / 1000.0
        self.max_queued = max_queued
        self.add_timeout = add_timeout
        self.isolate_s = max(0.0, isolate_s)
        self._hooks: list[OnCommit] = []
        if metrics is not None:
            self._hooks.append(metrics if callable(metrics) else metrics.on_commit)
        if on_commit is not None:
            self._hooks.append(on_commit)
        self._on_batch = on_batch
        self._on_synced = on_synced
        self._outbox_head: Callable[[], int | None] | None = (
            getattr(store, "outbox_head", None) if on_synced is not None else None)
        # items: seq strictly increasing in add order
        self._queue: deque[Pending] = deque()
        self._waiting: deque[Pending] = deque()  # admission line
        self._inflight: list[Pending] = []
        # committed batches whose replies wait, in commit order; a batch goes out only after
        # every earlier one
        self._syncing: deque[SyncingBatch] = deque()
        self._lane = lane(self, self._queue, batch_max, max_queued)  # holds seq, open, idle
        # Head-of-line blocking: a store that writes a batch's chargers concurrently but one
        # charger's ops in sequence (ScyllaDB) asks for a bound on each charger's ops per
        # batch, so a charger replaying a backlog cannot hold the other chargers' replies
        # for its whole backlog. None (SQLite: one transaction per batch): batches as queued.
        per_charger = getattr(store, "charger_ops_per_batch", None)
        self._per_charger: int | None = max(1, int(per_charger)) if per_charger else None
        self._free_ops = frozenset(getattr(store, "charger_free_ops", ()))
        self._pending = self._lane.pending
        self.add_reply = self._lane.add_reply  # type: ignore[method-assign]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._filled: asyncio.Event | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._flush_waiters: list[tuple[int, asyncio.Future]] = []
        self._closed = False
        self._maintain_after = 0.0  # loop time before which store maintenance is not tried
        self.maintain_every_s = max(0.0, maintain_every_ms) / 1000.0
        self._last_maintain = 0.0
        self._maintaining: asyncio.Task | None = None  # the store maintenance slice under way
        self.maintenance_runs = 0  # store.maintain() calls (idle, or the share under load)
        self.maintained_rows = 0
        # counters for tests and /metrics
        self.commits = 0
        self.failed_commits = 0  # every store commit that raised, retries included
        self.rows_committed = 0
        self.rejected_ops = 0  # ops that failed on their own (isolated from their batch)
        self.isolations = 0  # failed batches retried in parts
        self.fenced_ops = 0  # ops refused for a stale ownership epoch
        self.on_stale: Callable[[dict[str, int]], Any] | None = None  # charger -> stale epoch

    # -- state -------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Ops added and not yet committed or failed (queued, waiting for room, in flight)."""
        return (len(self._queue) + len(self._waiting) + len(self._inflight)
                + sum(len(c.batch) for c in self._syncing))

    @property
    def full(self) -> bool:
        """True while a new op would wait for room (callers may pause reading sockets)."""
        return len(self._queue) >= self.max_queued or bool(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _seq(self) -> int:
        """The last op's number (ops are numbered in add order)."""
        return self._lane.seq

    @_seq.setter
    def _seq(self, n: int) -> None:
        self._lane.seq = n

    @property
    def _idle(self) -> bool:
        """The sender waits for work: the next add wakes it."""
        return self._lane.idle

    @_idle.setter
    def _idle(self, idle: bool) -> None:
        self._lane.idle = idle

    def _sync_lane(self) -> None:
        """Tell the lane whether items may go straight into the queue (after any change of
        the writer's start, close or admission line)."""
        lane = self._lane
        lane.open = self._task is not None and not self._closed and not self._waiting
        if self._loop is not None and lane.time is None:
            lane.time, lane.wake, lane.filled = self._loop.time, self._wake.set, self._filled.set  # type: ignore[union-attr]

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sender task on the running loop (``add`` also starts it lazily)."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._filled = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="chargeyard-batch-writer")
        self._sync_lane()
        if self._queue:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every op added before this call is committed (or failed)."""
        if self._seq == 0 or self._task is None or self._task.done():
            return
        target = self._seq
        if self._lowest_pending() > target:
            return
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._flush_waiters.append((target, fut))
        self._filled.set()  # type: ignore[union-attr]  # no lingering on behalf of a flush
        await fut

    async def close(self) -> None:
        """Refuse new ops, commit everything queued, stop the sender task."""
        self._closed = True
        self._sync_lane()
        if self._task is None:
            self.fail_all(WriterClosed("writer closed before it was started"))
            return
        self._wake.set()  # type: ignore[union-attr]
        self._filled.set()  # type: ignore[union-attr]
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.done():
                raise
        except Exception:
            log.exception("batch writer task failed")
        if self._syncing:  # committed batches: their replies go out once synced
            await asyncio.wait([c.durable for c in self._syncing if c.durable is not None])
        self.fail_all(WriterClosed("writer stopped"))

    def fail_all(self, exc: BaseException) -> None:
        """Fail every op not yet handed to the store (queued or waiting for room)."""
        items = list(self._queue) + list(self._waiting)
        self._queue.clear()
        self._waiting.clear()
        self._sync_lane()
        self._fail(items, exc)
        self._notify_flush()

    # -- producing -----------------------------------------------------------------------

    def add(self, op: Op) -> asyncio.Future:
        """Queue ``op``; the future resolves with its result after its COMMIT."""
        self._ensure_started()
        fut = self._loop.create_future()  # type: ignore[union-attr]
        if self._closed:
            self._fail([self._pending(op, fut, 0.0, 0)], WriterClosed("writer is closed"))
        else:
            self._seq += 1
            self._enqueue(self._pending(op, fut, self._loop.time(), self._seq))  # type: ignore[union-attr]
        return fut

    def add_reply(self, op: Op, target: Any, message_id: str, action: str, response: Any, t0: float) -> None:
        """Queue ``op`` and, instead of resolving a future, call
        ``target.committed(message_id, action, response, t0)`` right after its COMMIT
        (``target.commit_failed(message_id, action, exc)`` if it fails). The hot path of a
        charger message: no future, no callback handle, no closure per message; the
        instance's ``add_reply`` is its lane's (:class:`Lane`), which comes here only when
        the item cannot go straight into the queue."""
        self._add_reply(op, target, message_id, action, response, t0)

    def _add_reply(self, op: Op, target: Any, message_id: str, action: str, response: Any, t0: float) -> None:
        self._ensure_started()
        if self._closed:
            self._fail([self._pending(op, None, 0.0, 0, target, message_id, action, response, t0)],
                       WriterClosed("writer is closed"))
        else:
            self._seq += 1
            self._enqueue(self._pending(op, None, self._loop.time(), self._seq,  # type: ignore[union-attr]
                                        target, message_id, action, response, t0))

    def _enqueue(self, item: Pending) -> None:
        if len(self._queue) < self.max_queued and not self._waiting:
            self._queue.append(item)
            if self._idle:
                self._idle = False
                self._wake.set()  # type: ignore[union-attr]
            if len(self._queue) >= self.batch_max:
                self._filled.set()  # type: ignore[union-attr]
        elif len(self._waiting) < self.max_queued:
            self._waiting.append(item)
            self._sync_lane()
            if self._expiry is None:
                self._expiry = self._loop.call_later(self.add_timeout, self._expire)  # type: ignore[union-attr]
        else:
            self._fail([item], WriterFull(f"write queue full ({self.queue_depth} ops)"))
            self._notify_flush()

    def _admit(self) -> None:
        if self._waiting:
            while self._waiting and len(self._queue) < self.max_queued:
                self._queue.append(self._waiting.popleft())
            self._sync_lane()
        if not self._waiting and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        now = self._loop.time()  # type: ignore[union-attr]
        expired = []
        while self._waiting and now - self._waiting[0].added_at >= self.add_timeout:
            expired.append(self._waiting.popleft())
        if expired:
            log.warning("write queue full: %d ops refused after %.1f s", len(expired), self.add_timeout)
            self._fail(expired, WriterFull(f"write queue full for {self.add_timeout} s"))
            self._notify_flush()
        if self._waiting:
            delay = self._waiting[0].added_at + self.add_timeout - now
            self._expiry = self._loop.call_later(max(0.0, delay), self._expire)  # type: ignore[union-attr]
        self._sync_lane()

    # -- the sender ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop, wake, filled = self._loop, self._wake, self._filled
        assert loop is not None and wake is not None and filled is not None
        busy = False
        try:
            while True:
                if not self._queue:
                    self._admit()
                if not self._queue:
                    busy = False
                    if self._closed:
                        if self._maintaining is not None:
                            await asyncio.wait([self._maintaining])
                        return
                    if (self._maintaining is None and self._maintain_after <= loop.time()
                            and self.store.maintenance_due()):
                        await self._maintain()
                        continue
                    wake.clear()
                    self._idle = True
                    await wake.wait()
                    self._idle = False
                    continue
                now = loop.time()
                if (self.maintain_every_s > 0 and self._maintaining is None
                        and now - self._last_maintain >= self.maintain_every_s
                        and self._maintain_after <= now and not self._closed and self.store.maintenance_due()):
                    await self._maintain()  # the deferred work's share under load: a slice this often
                if busy and self.batch_s > 0 and len(self._queue) < self.batch_max and not self._closed:
                    delay = self._queue[0].added_at + self.batch_s - loop.time()
                    if delay > 0:
                        filled.clear()
                        try:
                            async with asyncio.timeout(delay):
                                await filled.wait()
                        except TimeoutError:
                            pass
                if self._per_charger is None:
                    batch = self._lane.take(min(len(self._queue), self.batch_max))
                else:
                    batch = self._take_spread(self._per_charger)
                self._admit()
                await self._commit(batch)
                busy = bool(self._queue)
        finally:
            # normal exit is close() with nothing left; otherwise (cancelled, crashed) nothing
            # queued can be committed any more: fail it rather than leave callers hanging
            self._closed = True
            self._sync_lane()
            stopped = WriterClosed("writer stopped")
            if self._inflight:
                self._fail(self._inflight, stopped)
                self._inflight = []
            self.fail_all(stopped)

    def _take_spread(self, cap: int) -> list[Pending]:
        """The next batch when the store wants at most ``cap`` ops per charger in one
        (``Store.charger_ops_per_batch``; ops of ``Store.charger_free_ops`` types do not
        count): the queue's items in order, a charger's items from its first one past the
        cap left queued, in order, for the next batches. So one charger's backlog is spread
        over batches while the others' ops go into each. The queue's first item is always
        taken, and at most ``_SPREAD_SCAN`` items are looked at per batch."""
        queue, batch_max, free = self._queue, self.batch_max, self._free_ops
        popleft = queue.popleft
        counts: dict[str, int] = {}  # per charger: ops counted so far; cap + 1: held back
        taken: list[Pending] = []
        skipped: list[Pending] = []
        for _ in range(min(len(queue), _SPREAD_SCAN)):
            item = popleft()
            op = item.op
            cid = op.charger_id
            n = counts.get(cid, 0) + (type(op) not in free)
            if n <= cap:
                counts[cid] = n
                taken.append(item)
                if len(taken) >= batch_max:
                    break
            else:
                counts[cid] = cap + 1  # and so its later ops too: a charger's ops stay in order
                skipped.append(item)
        queue.extendleft(reversed(skipped))  # still in add order, ahead of the unscanned rest
        return taken

    async def _maintain(self) -> None:
        """Start one slice of the store's deferred work, as a task of its own; the next slice
        starts only after it. When the store says the slice overlaps batches
        (``maintenance_overlaps()``; SQLite: it reads and packs on the store thread, and takes
        the write lock only for its short writes), batches go on committing meanwhile;
        otherwise the sender waits for it, and the ops queued meanwhile make the next batch."""
        task = self._maintaining = self._loop.create_task(  # type: ignore[union-attr]
            self._maintain_slice(), name="chargeyard-store-maintenance")
        if not self.store.maintenance_overlaps():
            await task

    async def _maintain_slice(self) -> None:
        """A failure is logged, and maintenance pauses for a second rather than retrying in
        a loop. An idle sender is woken at the end, to start the next slice if one is due."""
        try:
            self.maintained_rows += await self.store.maintain()
            self.maintenance_runs += 1
            self._last_maintain = self._loop.time()  # type: ignore[union-attr]
        except Exception:
            log.exception("store maintenance failed; retrying in 1 s")
            self._maintain_after = self._loop.time() + 1.0  # type: ignore[union-attr]
            self._loop.call_later(1.0, self._wake_idle)  # type: ignore[union-attr]
        finally:
            self._maintaining = None
            self._wake_idle()

    def _wake_idle(self) -> None:
        if self._idle and self._wake is not None:
            self._wake.set()

    async def _commit(self, batch: list[Pending]) -> None:
        self._inflight = batch
        started = time.perf_counter()
        try:
            results, durable = await self._apply(batch)
        except Exception as exc:
            took = time.perf_counter() - started
            self.failed_commits += 1
            if len(batch) == 1 or self.isolate_s <= 0 or took > self.isolate_s:
                log.error("store commit of %d ops failed: %r", len(batch), exc)
                self._fail(batch, exc)
                if len(batch) == 1:
                    self.rejected_ops += 1
            else:
                log.error("store commit of %d ops failed: %r; retrying in parts to isolate the failing ops",
                          len(batch), exc)
                await self._isolate(batch, exc)
            self._inflight = []
            self._notify_flush()
            return
        self._inflight = []
        if not batch:  # every op refused for a stale epoch (``_apply``)
            self._notify_flush()
            return
        # committed; not yet synced (the next batch commits meanwhile), or behind one that is not
        head = self._head() if self._outbox_head is not None else None
        self._syncing.append(SyncingBatch(batch, durable, results, started, head))
        if durable is not None:
            durable.add_done_callback(self._synced)
        else:
            self._synced()

    def _head(self) -> int | None:
        """The store's outbox head after a COMMIT; None if it cannot be read (this batch's
        events then go with the next batch's report: a later head covers them)."""
        try:
            return self._outbox_head()  # type: ignore[misc]
        except Exception as exc:
            log.warning("cannot read the events outbox head: %r", exc)
            return None

    def _synced(self, _: Any = None) -> None:
        """Send the replies of the committed batches whose sync is done, oldest first, up to
        the first one still syncing: a batch durable at once (committed by a synced COMMIT)
        waits behind earlier ones, so a charger's replies keep its order. A failed sync fails
        every op of its batch (the store's fault, not an op's: no isolation)."""
        syncing = self._syncing
        while syncing and (syncing[0].durable is None or syncing[0].durable.done()):
            done = syncing.popleft()
            exc = None
            if done.durable is not None:
                exc = WriterClosed("sync cancelled") if done.durable.cancelled() else done.durable.exception()
            if exc is not None:
                self.failed_commits += 1
                log.error("store sync of %d committed ops failed: %r", len(done.batch), exc)
                self._fail(done.batch, exc)
            else:
                self._resolve(done.batch, done.results, time.perf_counter() - done.started, done.outbox_head)
        self._notify_flush()

    async def _apply(self, items: list[Pending]) -> tuple[list[Any], Any]:
        """(results, None or the awaitable of their sync): ``Store.apply_then``. Ops refused
        for a stale epoch are failed and taken out of ``items`` (in place: the caller's list),
        and the rest is applied again."""
        while True:
            try:
                results, durable = await self.store.apply_then(self._lane.ops(items))
                break
            except StaleEpoch as exc:
                if not exc.indices:
                    raise
                self._fenced(items, exc)
                if not items:
                    return [], None
        if len(results) != len(items):
            raise StoreError(f"store returned {len(results)} results for {len(items)} ops")
        return results, durable

    def _resolve(self, items: list[Pending], results: list[Any],
                 seconds: float, outbox_head: int | None = None) -> None:
        self._reply_all(items, results)
        if self._on_batch is not None:
            try:
                self._on_batch(self._lane.ops(items), results)
            except Exception:
                log.exception("on_batch hook failed")
        if outbox_head is not None:
            try:
                self._on_synced(outbox_head)  # type: ignore[misc]
            except Exception:
                log.exception("on_synced hook failed")
        self.commits += 1
        self.rows_committed += len(items)
        for hook in self._hooks:
            try:
                hook(len(items), seconds)
            except Exception:
                log.exception("on_commit hook failed")

    async def _isolate(self, batch: list[Pending], exc: Exception) -> None:
        """Bisect a failed batch (all-or-nothing, so nothing of it is applied): commit its
        parts depth first, left before right (add order), until each failing op stands
        alone. Gives up on an apparently dead store (see the module docstring)."""
        self.isolations += 1
        deadline = time.perf_counter() + self.isolate_s
        max_streak = (len(batch) - 1).bit_length() + 4  # ceil(log2 n) + 4
        streak = 1  # failed commits since the last success, the whole batch included
        rejected = probes = 0
        last = exc
        mid = len(batch) // 2
        stack = [batch[mid:], batch[:mid]]  # popped from the end: left half first
        while stack:
            if streak > max_streak or time.perf_counter() > deadline:
                rest = [item for part in reversed(stack) for item in part]
                why = (f"{streak} commits failed in a row" if streak > max_streak
                       else f"isolation took over {self.isolate_s} s")
                log.error("store looks unavailable (%s): failing the %d remaining ops of the batch: %r",
                          why, len(rest), last)
                self._fail(rest, last)
                break
            part = stack.pop()
            probes += 1
            started = time.perf_counter()
            try:
                results, durable = await self._apply(part)
                head = self._head() if self._outbox_head is not None and part else None
                if durable is not None:  # isolating: each part durable before the next
                    await durable
            except Exception as e:
                self.failed_commits += 1
                streak += 1
                last = e
                if len(part) == 1:
                    op = part[0].op
                    log.warning("store rejected %s of %s on its own: %r", type(op).__name__,
                                getattr(op, "charger_id", "?"), e)
                    self._fail(part, e)
                    rejected += 1
                else:
                    mid = len(part) // 2
                    stack.append(part[mid:])
                    stack.append(part[:mid])
                continue
            streak = 0
            if part:  # empty: every op refused for a stale epoch (``_apply``)
                self._resolve(part, results, time.perf_counter() - started, head)
        self.rejected_ops += rejected
        log.warning("isolated %d failing op(s) of a batch of %d in %d retries", rejected, len(batch), probes)

    def _fenced(self, items: list[Pending], exc: StaleEpoch) -> None:
        refused = set(exc.indices)
        self._fail([items[i] for i in sorted(refused) if i < len(items)], exc)
        items[:] = [item for i, item in enumerate(items) if i not in refused]
        self.fenced_ops += len(refused)
        log.warning("store refused %d op(s) for a stale ownership epoch: %s", len(refused), exc)
        if self.on_stale is not None:
            try:
                self.on_stale(exc.stale)
            except Exception:
                log.exception("on_stale hook failed")

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _fail(items: Any, exc: BaseException) -> None:
        for item in items:
            fut = item.future
            if fut is None:
                try:
                    item.target.commit_failed(item.message_id, item.action, exc)
                except Exception:
                    log.exception("error reply after a failed commit failed")
            elif not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: an awaiting caller still gets it

    def _lowest_pending(self) -> int:
        if self._syncing:
            return self._syncing[0].batch[0].seq
        for q in (self._inflight, self._queue, self._waiting):
            if q:
                return q[0].seq
        return self._seq + 1

    def _notify_flush(self) -> None:
        if not self._flush_waiters:
            return
        low = self._lowest_pending()
        keep = []
        for target, fut in self._flush_waiters:
            if low > target:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._flush_waiters = keep
