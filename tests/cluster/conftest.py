"""A real cluster for these suites: valkey, workers, the API node and nginx (all on
127.0.0.1, started by ``tests.support.ClusterProc``), with a short lease (2 s)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import ClusterProc

LEASE = 2.0


def start_cluster(path, workers: int = 3, **settings) -> ClusterProc:
    settings = {"call_timeout": 5.0, "heartbeat_interval": 120, "lease": LEASE, "drain_timeout": 2.0,
                "accept_unknown_tags": True, **settings}
    c = ClusterProc(path, workers=workers, **settings)
    try:
        c.start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def arun():
    """Run a coroutine with a hard time limit."""

    def run(coro, timeout: float = 60.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return run
