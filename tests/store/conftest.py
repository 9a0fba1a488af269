"""Store test fixtures: ``cassandra``, one real CQL server for the whole session.

The ScyllaDB store's tests run on Apache Cassandra 5.0 (``tests/cassandra/server.py``):
started once per session because a start costs tens of seconds, torn down at the end.
``CHARGEYARD_SCYLLA_HOSTS=host:port`` uses an existing server (e.g. ScyllaDB) instead.
"""

from __future__ import annotations

from tests.cassandra import fixtures
from tests.cassandra.fixtures import cassandra  # noqa: F401  (the fixture, shared with tests/e2e)


def pytest_terminal_summary(terminalreporter):
    fixtures.summary(terminalreporter)
