"""Fixtures for the router suites: a real valkey-server per session (and fresh ones
for tests that kill it), all on 127.0.0.1, files in pytest's tmp dirs."""

from __future__ import annotations

import asyncio

import pytest

from chargeyard import procs


@pytest.fixture(scope="session")
def valkey_cluster_mode(tmp_path_factory):
    """A one-node valkey in cluster mode owning all 16384 slots: any script or
    MULTI touching keys of two slots fails with CROSSSLOT, as on a real cluster."""
    import time

    import redis

    try:
        proc = procs.start_valkey(tmp_path_factory.mktemp("valkey-cluster"),
                                  extra=["--cluster-enabled", "yes",
                                         "--cluster-config-file", "nodes.conf",
                                         # the default bus port is port+10000: may not exist
                                         "--cluster-port", str(procs.free_port())])
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


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory):
    """A real three-shard valkey cluster (no replicas); ``.url`` is
    ``redis+cluster://`` for RedisRegistry, ``.ports`` its nodes."""
    import time

    import redis

    base = tmp_path_factory.mktemp("valkey-3")
    nodes, bus = [], []
    try:
        for i in range(3):
            bus.append(procs.free_port())  # the default, port+10000, may not exist
            nodes.append(procs.start_valkey(base / f"n{i}", extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus[-1]), "--cluster-node-timeout", "2000"]))
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in nodes]
        bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
        for c, (lo, hi) in zip(clients, bounds):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
        for n, b in zip(nodes[1:], bus[1:]):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", str(n.port), str(b))
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in c.execute_command("CLUSTER", "INFO") and
                      len(c.execute_command("CLUSTER", "SLOTS")) == 3 for c in clients):
            assert time.monotonic() < deadline, "cluster did not form"
            time.sleep(0.05)
        for c in clients:
            c.close()
    except FileNotFoundError as exc:
        for n in nodes:
            n.stop()
        pytest.skip(str(exc))
    except BaseException:
        for n in nodes:
            n.stop()
        raise

    class Cluster:
        ports = [n.port for n in nodes]
        url = f"redis+cluster://127.0.0.1:{nodes[0].port}/0"

        @staticmethod
        def flushall() -> None:
            for port in Cluster.ports:
                r = redis.Redis(port=port)
                r.flushall()
                r.close()

    yield Cluster
    for n in nodes:
        n.stop()


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


@pytest.fixture(params=["single", "cluster"])
def srv(request):
    """One valkey, or a three-shard valkey cluster; emptied for the test."""
    if request.param == "single":
        request.getfixturevalue("flush")
        return request.getfixturevalue("valkey")
    c = request.getfixturevalue("valkey_cluster")
    c.flushall()
    return c
