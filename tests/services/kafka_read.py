"""Read a topic back in tests (no consumer group: from the earliest offset)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer

from chargeyard.store import events as ev


async def read_events(bootstrap: str, topic: str, want_ids: set[str], timeout: float = 60.0) -> list[ev.Event]:
    """Every event on ``topic`` (duplicates included, in offset order per partition) until
    all of ``want_ids`` were seen, or ``timeout``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[ev.Event] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while not want_ids <= seen and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for r in records:
                    e = ev.decode(r.value)
                    assert r.key == e.charger_id.encode()
                    out.append(e)
                    seen.add(e.id)
    finally:
        await consumer.stop()
    return out


def first_of_each(events: list[ev.Event]) -> list[ev.Event]:
    """Consumer-side dedupe by event id (what every consumer does)."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out


async def until(cond, timeout: float = 30.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)
