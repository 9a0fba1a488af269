"""Fixtures for the events relay and the services: a real Kafka broker (chargeyard.kafka_broker)
and an asyncio runner with a bounded wait."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from chargeyard.kafka_broker import KafkaBroker, java_bin


def _need_kafka_tools() -> None:
    try:
        java_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if shutil.which("mvn") is None:
        pytest.skip("mvn is needed to fetch Apache Kafka's jars")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """One broker for the session's tests that do not stop it (topics differ per test)."""
    _need_kafka_tools()
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_kafka(tmp_path):
    """A broker of this test's own, which the test may stop, kill and start again."""
    _need_kafka_tools()
    broker = KafkaBroker(tmp_path / "kafka")
    yield broker
    broker.kill()


@pytest.fixture
def run():
    def runner(coro, timeout: float = 60.0):
        with asyncio.Runner() as r:
            return r.run(asyncio.wait_for(coro, timeout))
    return runner
