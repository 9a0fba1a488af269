"""The events topic, created once per deploy and never by the relay or the consumers:
``chargeyard events create-topic`` (in k8s the kafka-topic Job).

Its partition count is a decision, not a broker default: the relay keys events by charger
id, so a charger's events stay in order within one partition, and the partitions bound how
many billing replicas consume at once. Adding partitions later moves chargers to other
partitions (their order holds only within each side of the change), so the command never
changes an existing topic; it says what it found.

Retention must stay below the services' event-id dedup (``SEEN_RETENTION_S``): an event
redelivered after its id expired would be applied twice.
"""

from __future__ import annotations

import msgspec

from ..store.events import TOPIC
from .storage import SEEN_RETENTION_S

DEFAULT_PARTITIONS = 48  # divisible by 2, 3, 4, 6, 8, 12, 16, 24: billing replicas share them evenly
DEFAULT_RETENTION_HOURS = 7 * 24


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str = TOPIC
    partitions: int = DEFAULT_PARTITIONS
    replication_factor: int = 3
    min_insync_replicas: int = 2  # with the relay's acks=all: a write survives one broker lost
    retention_hours: float = DEFAULT_RETENTION_HOURS

    def check(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"--topic-partitions must be at least 1, not {self.partitions}")
        if self.replication_factor < 1:
            raise ValueError(f"--topic-replication-factor must be at least 1, not {self.replication_factor}")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(f"--topic-min-insync-replicas must be 1 .. --topic-replication-factor "
                             f"({self.replication_factor}), not {self.min_insync_replicas}")
        if not 0 < self.retention_hours * 3600 < SEEN_RETENTION_S:
            raise ValueError(f"--topic-retention-hours must be above 0 and below the services' event-id dedup "
                             f"({SEEN_RETENTION_S // 3600} h), not {self.retention_hours:g}")

    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": "delete", "min.insync.replicas": str(self.min_insync_replicas),
                "retention.ms": str(int(self.retention_hours * 3_600_000))}


class TopicState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    created: bool  # False: it was there already (left unchanged)
    partitions: int


async def ensure_topic(bootstrap: str, spec: TopicSpec, *, timeout_s: float = 30.0) -> TopicState:
    """Create ``spec``'s topic unless it exists; either way report its partition count."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    spec.check()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                client_id="chargeyard-events-admin")
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(spec.name, spec.partitions, spec.replication_factor,
                                                   topic_configs=spec.configs())], timeout_ms=int(timeout_s * 1000))
        created = True
        for name, code, *rest in resp.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                created = False
            elif code:
                raise for_code(code)(f"creating topic {name}: {rest[0] if rest else ''}")
        (topic,) = await admin.describe_topics([spec.name])
        if topic.get("error_code"):
            raise for_code(topic["error_code"])(f"describing topic {spec.name}")
        return TopicState(name=spec.name, created=created, partitions=len(topic["partitions"]))
    finally:
        await admin.close()


def report(spec: TopicSpec, state: TopicState) -> str:
    """One line for the operator (the Job's log)."""
    if state.created:
        return f"topic {state.name} created: {state.partitions} partitions, replication {spec.replication_factor}"
    line = f"topic {state.name} exists with {state.partitions} partitions: left unchanged"
    if state.partitions != spec.partitions:
        line += (f" (asked for {spec.partitions}; adding partitions moves chargers between partitions, "
                 "do it deliberately with Kafka's tools)")
    return line
