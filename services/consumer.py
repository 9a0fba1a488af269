"""A service's Kafka consumer loop: batches of events from ``chargeyard.events`` to a
handler, offsets committed only after the handler stored their effect.

* Consumer group per service (``chargeyard-billing``, ``chargeyard-monitoring``): the
  partitions are shared among the service's processes, each charger's events stay in
  one partition, so in order.
* At least once from Kafka (a crash between the handler's commit and the offsets' commit
  delivers a batch again); the handlers store the consumed event ids with the effect and
  skip ids they have, so effects happen once.
* A handler that fails, or a broker that goes away, restarts the consumer from the last
  committed offsets after a capped backoff, with a log line saying why.
* ``tick`` (the monitor's timers) runs when a poll brings nothing, and only while the
  consumer is caught up with the topic (the broker answered and nothing is waiting):
  during an outage of the bus, the silence of the chargers is not theirs.
* ``chargeyard_consumer_lag{group}``: records on the assigned partitions not yet consumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from ..core.tasks import cancel_and_wait
from ..store.events import TOPIC, Event, decode
from . import metrics as m

log = logging.getLogger("chargeyard.consumer")

Handler = Callable[[list[Event]], Awaitable[Any]]


class Consumer:
    def __init__(self, bootstrap: str, group: str, handle: Handler, *, topic: str = TOPIC,
                 tick: Callable[[], Awaitable[Any]] | None = None, poll_ms: int = 1000, max_records: int = 2000,
                 backoff_min_s: float = 0.2, backoff_max_s: float = 10.0, request_timeout_s: float = 10.0,
                 client_id: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.handle = handle
        self.topic = topic
        self.tick = tick
        self.poll_ms = poll_ms
        self.max_records = max_records
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.request_timeout_s = request_timeout_s
        self.client_id = client_id or group
        self.options = dict(options or {})
        self.consumed = 0
        self.errors = 0
        self.lag: int | None = None
        self.running = False  # connected and polling
        self._closing = False
        self._task: asyncio.Task | None = None
        self._lag_at = 0.0

    def start(self) -> Consumer:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"consumer-{self.group}")
        return self

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._task)

    def _make(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        ms = int(self.request_timeout_s * 1000)
        return AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, group_id=self.group, client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest", request_timeout_ms=max(ms, 5000),
            max_poll_records=self.max_records, **self.options)

    async def run(self) -> None:
        backoff = self.backoff_min_s
        failing_since: float | None = None
        while not self._closing:
            consumer = self._make()
            try:
                # never cancelled midway (a start cut short leaves the connections it was
                # opening behind): aiokafka bounds it by its own request timeout
                await consumer.start()
                self.running = True
                if failing_since is not None:
                    log.warning("%s: consuming again after %.1f s", self.group, time.monotonic() - failing_since)
                    failing_since = None
                backoff = self.backoff_min_s
                await self._poll(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                log.warning("%s: %r; restarting the consumer from its committed offsets in %.1f s",
                            self.group, exc, backoff)
            finally:
                self.running = False
                await _stop(consumer, self.request_timeout_s * 3)
            if not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    async def _poll(self, consumer: Any) -> None:
        while not self._closing:
            batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
            events: list[Event] = []
            for records in batch.values():
                for r in records:
                    try:
                        events.append(decode(r.value))
                    except Exception as exc:  # not an event of ours: skip it, never stall on it
                        log.error("%s: skipping an undecodable record at %s:%d: %r", self.group, r.topic,
                                  r.offset, exc)
            if events:
                await self.handle(events)
                self.consumed += len(events)
            if batch:
                await consumer.commit()
            if events and time.monotonic() - self._lag_at < 1.0:
                continue  # busy: the end offsets are asked for at most once a second
            caught_up = await self._lag(consumer)
            if not events and self.tick is not None and caught_up:
                await self.tick()

    async def _lag(self, consumer: Any) -> bool:
        """Update the lag gauge from the broker's end offsets; True if caught up (False
        also when the broker did not answer)."""
        self._lag_at = time.monotonic()
        tps = list(consumer.assignment())
        if not tps:
            return False
        try:
            ends = await consumer.end_offsets(tps)  # bounded by aiokafka's request timeout
            lag = 0
            for tp in tps:
                lag += max(0, ends[tp] - await consumer.position(tp))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("%s: no end offsets: %r", self.group, exc)
            return False
        self.lag = lag
        m.CONSUMER_LAG.labels(self.group).set(lag)
        return lag == 0


async def _stop(consumer: Any, timeout: float) -> None:
    """Stop a consumer to the end even if our task is being cancelled meanwhile (a stop cut
    short leaves connections open); give up waiting after ``timeout``."""
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        await asyncio.wait_for(asyncio.shield(stopping), timeout)
    except asyncio.CancelledError:
        await asyncio.wait([stopping], timeout=timeout)
        raise
    except Exception as exc:
        log.debug("consumer stop: %r", exc)
