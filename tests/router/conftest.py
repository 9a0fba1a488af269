"""Fixtures for the router suites: a real valkey-server per session (and fresh ones
for tests that kill it), all on 127.0.0.1, files in pytest's tmp dirs."""

from __future__ import annotations

import asyncio

import pytest

from chargeyard import procs


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    """A valkey-server shared by the session; its URL is ``valkey.url``."""
    try:
        proc = procs.start_valkey(tmp_path_factory.mktemp("valkey"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    proc.url = f"redis://127.0.0.1:{proc.port}/0"
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def valkey_cluster_mode(tmp_path_factory):
    """A one-node valkey in cluster mode owning all 16384 slots: any script or
    MULTI touching keys of two slots fails with CROSSSLOT, as on a real cluster."""
    import time

    import redis

    try:
        proc = procs.start_valkey(tmp_path_factory.mktemp("valkey-cluster"),
                                  extra=["--cluster-enabled", "yes",
                                         "--cluster-config-file", "nodes.conf"])
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    proc.url = f"redis://127.0.0.1:{proc.port}/0"
    r = redis.Redis.from_url(proc.url, decode_responses=True)
    r.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "cluster did not become ok"
        time.sleep(0.05)
    r.close()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_valkey(tmp_path):
    """A private valkey-server the test may kill and restart (same port)."""
    try:
        proc = procs.start_valkey(tmp_path / "valkey")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    box = {"proc": proc}

    class Handle:
        port = proc.port
        url = f"redis://127.0.0.1:{proc.port}/0"

        @staticmethod
        def kill() -> None:
            box["proc"].kill()

        @staticmethod
        def restart() -> None:
            box["proc"].kill()
            box["proc"] = procs.start_valkey(tmp_path / "valkey", port=proc.port)

    yield Handle
    box["proc"].stop()


@pytest.fixture
def flush(valkey):
    """Empty the shared valkey before a test (db 0)."""
    import redis

    r = redis.Redis.from_url(valkey.url)
    r.flushall()
    r.close()


@pytest.fixture
def arun():
    """Run a coroutine to completion with a hard time limit (no pytest-asyncio here)."""

    def run(coro, timeout: float = 20.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return run
