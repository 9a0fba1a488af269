from __future__ import annotations

import pytest

from tests.cassandra import fixtures
from tests.cassandra.fixtures import cassandra, scylla_store_args  # noqa: F401  (session CQL server)
from tests.support import ClusterProc, NodeProc

# these suites also run against a 3-worker cluster through nginx (Redis forwarding), and
# on the ScyllaDB store (a local Cassandra, tests/cassandra)
_BOTH = ("test_ocpp16", "test_ocpp201")


def pytest_generate_tests(metafunc):
    if "node" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1] in _BOTH:
        metafunc.parametrize("node", ["single", "cluster", "scylla"], indirect=True, scope="module")


def pytest_terminal_summary(terminalreporter):
    fixtures.summary(terminalreporter)


@pytest.fixture(scope="module")
def node(request, tmp_path_factory):
    kind = getattr(request, "param", "single")
    if kind == "cluster":
        n = ClusterProc(tmp_path_factory.mktemp("cluster"), workers=3, call_timeout=5.0,
                        heartbeat_interval=120, lease=2.0, drain_timeout=2.0)
        try:
            n.start()
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
    else:
        store = scylla_store_args(request.getfixturevalue("cassandra")) if kind == "scylla" else []
        n = NodeProc(tmp_path_factory.mktemp("node"), "--call-timeout", "5", "--heartbeat-interval", "120", *store)
        n.start()
    yield n
    n.stop()
