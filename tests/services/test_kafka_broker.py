"""The test broker itself: it starts, round-trips a message from aiokafka's idempotent
producer, and keeps its data across a restart."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from chargeyard.kafka_broker import metadata_brokers


async def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out


def test_round_trip_with_idempotent_producer(kafka, run):
    assert [p for _, _, p in metadata_brokers("127.0.0.1", kafka.port)] == [kafka.port]
    topic = f"t-{uuid.uuid4().hex[:8]}"
    items = [(b"cp-1", b'{"n":1}'), (b"cp-1", b'{"n":2}'), (b"cp-2", b'{"n":3}')]
    run(_produce(kafka.bootstrap, topic, items))
    assert run(_consume(kafka.bootstrap, topic, 3)) == items


def test_restart_keeps_the_data(own_kafka, run):
    own_kafka.start()
    topic = "kept"
    run(_produce(own_kafka.bootstrap, topic, [(b"k", b"before")]))
    own_kafka.stop()
    assert not own_kafka.running()
    own_kafka.start()
    run(_produce(own_kafka.bootstrap, topic, [(b"k", b"after")]))
    assert run(_consume(own_kafka.bootstrap, topic, 2)) == [(b"k", b"before"), (b"k", b"after")]
