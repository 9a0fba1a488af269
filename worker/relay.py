"""The events relay: committed outbox rows -> Kafka (or in-process sinks on one node).

The store writes each event in the commit of its fact (``store/events.py``). The relay
is a task beside the worker's writer, never on a charger's path: it reads the
unpublished rows in commit order, publishes them, and only then marks them published.
While the broker is down the outbox grows (``chargeyard_events_spooled``), replies to
chargers go on as before, and the relay retries with a capped exponential backoff,
logging why; afterwards it drains the spool in order.

Only durable rows are published (``synced_only``, the worker's relay): a batch committed
on the event loop at ``synchronous=NORMAL`` is synced by the WAL's sync thread after its
COMMIT, and a power cut before that sync loses it, so publishing it at once could tell
Kafka of a fact the store then does not have. The writer reports, once per synced batch,
the highest outbox seq that sync covered (``BatchWriter(on_synced=...)`` ->
:meth:`Relay.synced`); the relay reads only up to that watermark, and each report wakes
it (one call per batch, none per message). At start the watermark is the store's
``outbox_durable_head()`` (rows left by an earlier process, synced once). A store without
one (commits durable when they return) has no watermark: every committed row may go.

Delivery is at least once: a crash (or a lost acknowledgement) between publishing and
marking publishes those rows again, with the same event ids, in the same order, so a
consumer that skips ids it has seen sees every event once, in commit order per charger.

Kafka specifics (``KafkaPublisher``): aiokafka's idempotent producer (``acks="all"``),
topic ``chargeyard.events``, key = charger id (the Java client's murmur2 partitioner, so
one charger's events share a partition and keep their order), each record's timestamp
the moment the relay learned its row was synced (its commit as the charger saw it: the
reply goes out then; a consumer's commit -> receipt latency is its receipt minus that
timestamp), one record batch per
partition per round (``create_batch``/``send_batch``), and a round is done only when
every partition's batch is acknowledged. After a failure the producer is replaced (a new
producer id) and the round is sent again from its first row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable, Iterable, Protocol

from prometheus_client import Counter

from ..core.tasks import cancel_and_wait
from ..store.events import CONTENT_TYPE, TOPIC, Event, Outbox, OutboxRow, decode
from .metrics import EVENTS_SPOOLED

log = logging.getLogger("chargeyard.relay")

EVENTS_PUBLISHED = Counter("chargeyard_events_published", "Events published to the bus (after the broker's ack)")
PUBLISH_ERRORS = Counter("chargeyard_events_publish_errors", "Failed attempts to publish a round of events")


Stamps = list[tuple[int, int]]  # (seq, unix ms): rows up to seq were known synced at ms; seq ascending


class Publisher(Protocol):
    async def publish(self, rows: list[OutboxRow], stamps: Stamps | None = None) -> None:
        """Deliver every row, in order per key, or raise (then none counts as delivered).
        ``stamps`` (when known) give each row's synced time: that of the first entry whose
        seq is at least the row's."""

    async def close(self) -> None: ...


# -- Kafka -------------------------------------------------------------------------------

_HEADERS = [("content-type", CONTENT_TYPE.encode())]


class _Replaced(Exception):
    """Fails the batches of a producer the relay drops."""


class KafkaPublisher:
    """Publishes rows with one aiokafka idempotent producer, made on first use and replaced
    after any failure. ``request_timeout_s`` bounds one round (metadata, every batch's
    acknowledgement) so that an outage shows up as an error, not as a hang."""

    def __init__(self, bootstrap: str, topic: str = TOPIC, *, client_id: str = "chargeyard-relay",
                 request_timeout_s: float = 10.0, max_batch_bytes: int = 1 << 20,
                 producer_options: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.request_timeout_s = request_timeout_s
        self.max_batch_bytes = max_batch_bytes
        self.options = dict(producer_options or {})
        self._producer: Any = None
        self._partition_of: dict[str, int] = {}
        self._partitions: list[int] = []

    async def _ensure(self) -> Any:
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer  # imported only where Kafka is configured

        ms = int(self.request_timeout_s * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, enable_idempotence=True, acks="all",
            request_timeout_ms=ms, max_batch_size=self.max_batch_bytes, max_request_size=self.max_batch_bytes,
            retry_backoff_ms=100, connections_max_idle_ms=540_000, **self.options)
        try:
            # not cancelled midway (see _stop); aiokafka bounds it by request_timeout_ms
            await producer.start()
        except BaseException:
            await self._stop(producer)
            raise
        self._producer = producer
        return producer

    async def _stop(self, producer: Any) -> None:
        """Drop a producer without waiting for its undelivered batches (the relay sends
        those rows again): fail them first, else ``stop()`` waits for a broker that is gone.
        ``stop()`` is then bounded by aiokafka's own request timeout; it is never cancelled
        midway, which would leave connections that its sender opens late unclosed."""
        try:
            acc = producer._message_accumulator
            batches = [b for bs in acc._batches.values() for b in bs] + list(acc._pending_batches)
            acc.fail_all(_Replaced("the relay replaces its producer"))
            for b in batches:  # retrieved here: nobody else awaits them any more
                if b.future.done() and not b.future.cancelled():
                    b.future.exception()
        except AttributeError:  # pragma: no cover (aiokafka internals moved)
            pass
        stopping = asyncio.ensure_future(producer.stop())
        try:
            await asyncio.wait_for(asyncio.shield(stopping), self.request_timeout_s * 3)
        except asyncio.TimeoutError:
            log.warning("relay: a Kafka producer took more than %.0f s to stop", self.request_timeout_s * 3)
        except Exception as exc:  # the producer is dropped either way
            log.debug("producer stop: %r", exc)
        except asyncio.CancelledError:
            await asyncio.wait([stopping], timeout=self.request_timeout_s * 3)
            raise

    def _partition_map(self, partitions: Iterable[int]) -> None:
        ps = sorted(partitions)
        if ps != self._partitions:
            self._partitions = ps
            self._partition_of.clear()

    async def publish(self, rows: list[OutboxRow], stamps: Stamps | None = None) -> None:
        try:
            producer = await self._ensure()
            await asyncio.wait_for(self._publish(producer, rows, stamps), self.request_timeout_s * 2)
        except BaseException:
            producer, self._producer = self._producer, None
            if producer is not None:
                await self._stop(producer)
            raise

    async def _publish(self, producer: Any, rows: list[OutboxRow], stamps: Stamps | None) -> None:
        from aiokafka.partitioner import murmur2

        topic = self.topic
        self._partition_map(await producer.partitions_for(topic))
        parts, n = self._partitions, len(self._partitions)
        partition_of = self._partition_of
        builders: dict[int, Any] = {}
        sends: list[Awaitable[Any]] = []
        # the rows' synced times: one comparison per row, the next stamp per batch of rows
        stamp_iter = iter(stamps or ())
        bound, ts = next(stamp_iter, (1 << 62, None))
        for r in rows:
            while r.seq > bound:
                bound, ts = next(stamp_iter, (1 << 62, None))
            key = r.key.encode()
            p = partition_of.get(r.key)
            if p is None:  # one charger id, one partition: cached per id (murmur2 is pure Python)
                p = partition_of[r.key] = parts[(murmur2(key) & 0x7FFFFFFF) % n]
            b = builders.get(p)
            if b is None:
                b = builders[p] = producer.create_batch()
            if b.append(key=key, value=r.payload, timestamp=ts, headers=_HEADERS) is None:
                # full: send it, then start the partition's next batch (sent after it, in order)
                sends.append(await producer.send_batch(b, topic, partition=p))
                b = builders[p] = producer.create_batch()
                if b.append(key=key, value=r.payload, timestamp=ts, headers=_HEADERS) is None:
                    raise ValueError(f"event {r.seq} is larger than a batch ({self.max_batch_bytes} bytes)")
        for p, b in builders.items():
            sends.append(await producer.send_batch(b, topic, partition=p))
        await asyncio.gather(*sends)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)


# -- in-process ------------------------------------------------------------------------

Sink = Callable[[list[Event]], Awaitable[None] | None]


class LocalPublisher:
    """One node without Kafka: hands each round's events, decoded, to in-process sinks
    (the billing and monitoring services, ...), one sink after the other. A sink that
    raises fails the round, which is handed to every sink again later: sinks deduplicate
    by event id, as Kafka consumers do."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)

    async def publish(self, rows: list[OutboxRow], stamps: Stamps | None = None) -> None:
        if not self.sinks:  # nobody in-process to feed: the rows are only marked published
            return
        events = [decode(r.payload) for r in rows]
        for sink in self.sinks:
            res = sink(events)
            if res is not None:
                await res

    async def close(self) -> None:
        pass


# -- the relay loop ----------------------------------------------------------------------


class Relay:
    """Moves outbox rows to a publisher. ``wake()`` after a commit that wrote events (one
    call per batch); without it the relay still polls every ``poll_s``.

    ``synced_only``: publish only rows at or below the synced watermark, raised by
    :meth:`synced` (the writer's ``on_synced``); it starts at the store's
    ``outbox_durable_head()``, and a store without one (or that returns None) turns the mode
    off. See the module docstring.

    ``metrics=False`` for a second relay in the same process (the gauges are global)."""

    def __init__(self, outbox: Outbox, publisher: Publisher, *, batch_max: int = 5000, poll_s: float = 0.5,
                 backoff_min_s: float = 0.1, backoff_max_s: float = 5.0, warn_every_s: float = 30.0,
                 mark_every_s: float = 0.1, metrics: bool = True, name: str = "kafka",
                 synced_only: bool = False) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.batch_max = batch_max
        self.poll_s = poll_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.warn_every_s = warn_every_s
        self.mark_every_s = mark_every_s
        self.metrics = metrics
        self.name = name
        self.after = 0  # the last seq this relay published
        self.published = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.spooled = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._failing_since: float | None = None
        self._warned_at = 0.0
        self._marked = 0  # the last seq marked published in the outbox
        self._marked_at = 0.0
        self.synced_only = synced_only
        self.watermark: int | None = None  # synced_only: the highest seq known synced (None: none yet)
        self._stamps: deque[tuple[int, int]] = deque()  # (watermark, unix ms it was reported), ascending

    def wake(self) -> None:
        self._wake.set()

    def synced(self, seq: int) -> None:
        """Every outbox row up to ``seq`` is durable (the writer, once per synced batch):
        raise the watermark and wake the relay."""
        if self.watermark is None or seq > self.watermark:  # a batch without events wakes nobody
            self.watermark = seq
            self._stamps.append((seq, time.time_ns() // 1_000_000))
            self._wake.set()

    async def _first_watermark(self) -> None:
        head = getattr(self.outbox, "outbox_durable_head", None)
        while not self._closing:
            try:
                seq = await head() if head is not None else None
            except Exception as exc:  # the store is down: the writer reports that; retry
                log.warning("relay %s: cannot read the outbox's durable head: %r", self.name, exc)
                await self._idle(self.backoff_max_s, clear=True)
                continue
            if seq is None:  # commits are durable when they return: no watermark to keep
                self.synced_only = False
            else:
                self.synced(seq)
            return

    def start(self) -> Relay:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"relay-{self.name}")
        return self

    async def close(self, drain_s: float = 0.0) -> None:
        """Stop; with ``drain_s``, first try for that long to publish what is spooled."""
        if drain_s > 0 and self._task is not None and not self._task.done():
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and self.errors_free() and await self._spool() > 0:
                self.wake()
                await asyncio.sleep(0.02)
        self._closing = True
        self._wake.set()
        await cancel_and_wait(self._task)
        await self._mark()
        await self.publisher.close()

    def errors_free(self) -> bool:
        return self._failing_since is None

    async def _spool(self) -> int:
        n = self.spooled = await self.outbox.outbox_spooled()
        if self.metrics:
            EVENTS_SPOOLED.set(n)
        return n

    async def _idle(self, seconds: float, clear: bool = False) -> None:
        """Wait for a wake or ``seconds``. The loop clears the wake before it reads the
        outbox, not here: a wake that came while it read, published or marked must not be
        lost (the rows it announces would wait for the next poll)."""
        if clear:
            self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def run(self) -> None:
        backoff = self.backoff_min_s
        if self.synced_only:
            await self._first_watermark()
        while not self._closing:
            self._wake.clear()  # a wake from here on is about rows this round may not see
            upto = self.watermark if self.synced_only else None
            if self.synced_only and (upto is None or upto <= self.after):  # nothing synced beyond what went out
                await self._caught_up()
                continue
            try:
                if upto is None:
                    rows = await self.outbox.outbox_read(self.after, self.batch_max)
                else:
                    rows = await self.outbox.outbox_read(self.after, self.batch_max, upto)
            except Exception as exc:  # the store is down: the writer reports that; retry
                log.warning("relay %s: cannot read the outbox: %r", self.name, exc)
                await self._idle(self.backoff_max_s, clear=True)
                continue
            if not rows:
                await self._caught_up()
                continue
            try:
                if self.synced_only:
                    await self.publisher.publish(rows, list(self._stamps))
                else:
                    await self.publisher.publish(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc, len(rows))
                await self._spool()
                await self._idle_for_backoff(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            backoff = self.backoff_min_s
            self._recovered()
            self.after = rows[-1].seq
            stamps = self._stamps
            while len(stamps) > 1 and stamps[0][0] <= self.after:  # the last one stays: the watermark's
                stamps.popleft()
            self.published += len(rows)
            if self.metrics:
                EVENTS_PUBLISHED.inc(len(rows))
            # marking is a write transaction in the store (SQLite: a synced COMMIT), at most
            # every mark_every_s, caught up or not (the cursor is in memory; a crash before a
            # mark only publishes those rows again, with the same ids): a mark per round
            # would be a sync per batch at partial load, when each synced batch is a round
            if time.monotonic() - self._marked_at >= self.mark_every_s:
                await self._mark()
                await self._spool()

    async def _caught_up(self) -> None:
        """Nothing to publish: mark what went out if a mark is due, else wait at most
        until it is (or for a wake: a synced batch, a commit)."""
        wait = self.poll_s
        if self.after > self._marked:
            due = self._marked_at + self.mark_every_s - time.monotonic()
            if due <= 0:
                await self._mark()
                await self._spool()
            else:
                wait = min(wait, due)
        else:
            await self._spool()
        await self._idle(wait)

    async def _mark(self) -> None:
        if self.after <= self._marked:
            return
        try:
            await self.outbox.outbox_mark_published(self.after)
        except Exception as exc:  # published anyway; a restart publishes them again (same ids)
            log.warning("relay %s: cannot mark events published: %r", self.name, exc)
            return
        self._marked, self._marked_at = self.after, time.monotonic()

    async def _idle_for_backoff(self, seconds: float) -> None:
        # a commit's wake() must not cut the backoff short: sleep it out unless closing
        end = time.monotonic() + seconds
        while not self._closing and (left := end - time.monotonic()) > 0:
            await self._idle(left, clear=True)

    def _failed(self, exc: BaseException, n: int) -> None:
        self.errors += 1
        self.last_error = exc
        if self.metrics:
            PUBLISH_ERRORS.inc()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._warned_at = now
            log.warning("relay %s: cannot publish %d events (%r); retrying with backoff, events spool meanwhile",
                        self.name, n, exc)
        elif now - self._warned_at >= self.warn_every_s:
            self._warned_at = now
            log.warning("relay %s: still cannot publish for %.0f s (%r); %d events spooled",
                        self.name, now - self._failing_since, exc, self.spooled)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("relay %s: publishing again after %.1f s; draining %d spooled events",
                        self.name, time.monotonic() - self._failing_since, self.spooled)
            self._failing_since = None


__all__ = ["Relay", "Publisher", "KafkaPublisher", "LocalPublisher", "EVENTS_PUBLISHED", "PUBLISH_ERRORS"]
