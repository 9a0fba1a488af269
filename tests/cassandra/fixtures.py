"""Pytest fixtures for the session's CQL server, imported by the conftest of each test
directory that needs it (tests/store, tests/e2e). They share one server: ``acquire`` and
``release`` count users, so it starts once per session and stops after its last user."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid

import pytest

from tests.cassandra import server as cassandra_server


@pytest.fixture(scope="session")
def cassandra():
    """The session's CQL server (``.hosts`` is ``"127.0.0.1:<port>"``)."""
    if importlib.util.find_spec("cassandra") is None:  # a missing extra fails loudly, never skips
        pytest.fail("the ScyllaDB store tests need scylla-driver: pip install -e '.[scylla]'")
    server = cassandra_server.acquire()
    yield server
    cassandra_server.release()


def scylla_store_args(server, prefix: str = "cy_node_") -> list[str]:
    """``chargeyard`` flags for the ScyllaDB store on a fresh, migrated keyspace of
    ``server`` (as the k8s Job would have migrated it before any pod starts)."""
    from chargeyard.store.scylla import ScyllaStore  # noqa: PLC0415

    keyspace = prefix + uuid.uuid4().hex[:12]
    asyncio.run(asyncio.wait_for(ScyllaStore(server.hosts, keyspace=keyspace).migrate(), 120))
    return ["--store", "scylla", "--scylla-hosts", server.hosts, "--keyspace", keyspace]


def summary(terminalreporter) -> None:
    """Say how long the server took to start (issue 21 asks for well under a minute)."""
    s = cassandra_server.last_started
    if s is not None and not getattr(summary, "done", False):
        summary.done = True  # type: ignore[attr-defined]
        terminalreporter.write_line(f"cassandra {cassandra_server.CASSANDRA_VERSION}: CQL ready in "
                                    f"{s.startup_seconds:.1f} s on {s.hosts}")
