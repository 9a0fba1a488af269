"""Store test fixtures: ``cassandra``, one real CQL server for the whole session.

The ScyllaDB store's tests run on Apache Cassandra 5.0 (``tests/cassandra/server.py``):
started once per session because a start costs tens of seconds, torn down at the end.
``CHARGEYARD_SCYLLA_HOSTS=host:port`` uses an existing server (e.g. ScyllaDB) instead.
"""

from __future__ import annotations

import importlib.util

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


def pytest_terminal_summary(terminalreporter):
    """Say how long the server took to start (issue 21 asks for well under a minute)."""
    s = cassandra_server.last_started
    if s is not None:
        terminalreporter.write_line(f"cassandra {cassandra_server.CASSANDRA_VERSION}: CQL ready in "
                                    f"{s.startup_seconds:.1f} s on {s.hosts}")
