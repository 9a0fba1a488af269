"""Fixtures for the events relay and the services: a real Kafka broker (chargeyard.kafka_broker),
the services' stores on both backends (SQLite, and ScyllaDB's on the session's real
Cassandra, tests/cassandra) and an asyncio runner with a bounded wait."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import pytest

from chargeyard.kafka_broker import KafkaBroker, java_bin
from chargeyard.services.storage import SqliteServiceStore
from tests.cassandra import fixtures as cassandra_fixtures
from tests.cassandra.fixtures import cassandra  # noqa: F401  (the session's CQL server)

SERVICE_STORES = ["sqlite", "scylla"]


@pytest.fixture(params=SERVICE_STORES)
def services_store(request, tmp_path):
    """Makes services stores (not yet opened) on one location of the test's own, so a test
    can "restart" by opening a new one: ``<tmp>/s.db``, or a fresh ScyllaDB keyspace
    migrated as `chargeyard store migrate` does, each store on its own connection."""
    if request.param == "sqlite":
        return lambda: SqliteServiceStore(tmp_path / "s.db")
    from chargeyard.services.scylla_storage import ScyllaServiceStore
    from chargeyard.store.scylla import ScyllaStore

    hosts = request.getfixturevalue("cassandra").hosts
    keyspace = "cy_svc_" + uuid.uuid4().hex[:12]
    asyncio.run(asyncio.wait_for(ScyllaStore(hosts, keyspace=keyspace).migrate(), 120))
    return lambda: ScyllaServiceStore(ScyllaStore(hosts, keyspace=keyspace), own=True)


def pytest_terminal_summary(terminalreporter):
    cassandra_fixtures.summary(terminalreporter)


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
