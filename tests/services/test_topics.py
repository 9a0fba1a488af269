"""`chargeyard events create-topic` (services/topics.py, the k8s kafka-topic Job) against
the real broker the tests start: it creates the events topic with the partitions and
settings asked for, is idempotent, never changes an existing topic, and refuses settings
that would break the services' dedup."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from chargeyard import cli
from chargeyard.services import topics
from chargeyard.services.storage import SEEN_RETENTION_S


def _create(capsys, bootstrap: str, topic: str, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["events", "create-topic", "--kafka-bootstrap", bootstrap, "--topic", topic,
                     "--topic-replication-factor", "1", "--topic-min-insync-replicas", "1", *extra])
    out = capsys.readouterr()
    return code, out.out.strip(), out.err.strip()


async def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (resource,) = resp.resources
        return {entry[0]: entry[1] for entry in resource[4]}
    finally:
        await admin.close()


def test_create_topic_is_idempotent_and_never_changes_a_topic(kafka, run, capsys):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    assert _create(capsys, kafka.bootstrap, topic, "--topic-partitions", "6") == (
        0, f"topic {topic} created: 6 partitions, replication 1", "")
    configs = run(_topic_configs(kafka.bootstrap, topic))
    assert configs["retention.ms"] == str(7 * 24 * 3_600_000) and configs["min.insync.replicas"] == "1"
    assert configs["cleanup.policy"] == "delete"
    code, out, _ = _create(capsys, kafka.bootstrap, topic, "--topic-partitions", "6")
    assert (code, out) == (0, f"topic {topic} exists with 6 partitions: left unchanged")
    code, out, _ = _create(capsys, kafka.bootstrap, topic, "--topic-partitions", "12")
    assert code == 0 and out.startswith(f"topic {topic} exists with 6 partitions: left unchanged (asked for 12;")
    state = run(topics.ensure_topic(kafka.bootstrap, topics.TopicSpec(name=topic, replication_factor=1,
                                                                      min_insync_replicas=1)))
    assert state == topics.TopicState(name=topic, created=False, partitions=6)


def test_the_broker_refusal_fails_the_job(kafka, capsys):
    """Three replicas on a one-broker cluster: exit 1 (the Job retries), the reason logged."""
    code = cli.main(["events", "create-topic", "--kafka-bootstrap", kafka.bootstrap,
                     "--topic", f"events-{uuid.uuid4().hex[:8]}"])
    err = capsys.readouterr().err
    assert code == 1 and "InvalidReplicationFactor" in err, err


@pytest.mark.parametrize("args,message", [
    (["--topic-retention-hours", str(SEEN_RETENTION_S // 3600 + 1)], "below the services' event-id dedup"),
    (["--topic-partitions", "0"], "--topic-partitions must be at least 1"),
    (["--topic-min-insync-replicas", "4"], "--topic-min-insync-replicas must be 1 .. --topic-replication-factor"),
])
def test_settings_that_break_delivery_are_refused(args, message, capsys):
    code = cli.main(["events", "create-topic", "--kafka-bootstrap", "127.0.0.1:1", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_bootstrap_is_required(capsys, monkeypatch):
    monkeypatch.delenv("CHARGEYARD_KAFKA_BOOTSTRAP", raising=False)
    assert cli.main(["events", "create-topic"]) == 2
    assert "--kafka-bootstrap" in capsys.readouterr().err
