"""A pod whose keyspace is not at this code's schema version refuses to start: one clear
line on stderr, a non-zero exit status, no traceback (issue 21, "Schema changes")."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest

from tests.cassandra.fixtures import scylla_store_args
from tests.support import free_port


def _start(cmd: str, tmp_path, store: list[str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "chargeyard.cli", cmd, "--host", "127.0.0.1", "--ws-port", str(free_port()),
            "--http-port", str(free_port()), "--data-dir", str(tmp_path), *store]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _bump(hosts: str, keyspace: str, version: int) -> None:
    from chargeyard.store.scylla import ScyllaStore

    async def go():
        s = ScyllaStore(hosts, keyspace=keyspace)
        await s._connect(schema_metadata=False)
        try:
            await s._record(version)
        finally:
            await s._shutdown()
    asyncio.run(asyncio.wait_for(go(), 60))


@pytest.mark.parametrize("cmd", ["worker", "api"])
def test_a_newer_schema_is_refused_in_one_line(cassandra, tmp_path, cmd):
    from chargeyard.store.scylla import LATEST

    store = scylla_store_args(cassandra, prefix="cy_schema_")
    _bump(cassandra.hosts, store[store.index("--keyspace") + 1], LATEST + 1)
    r = _start(cmd, tmp_path, store)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("chargeyard:")]
    assert len(lines) == 1, r.stderr
    assert f"schema version {LATEST + 1}, newer than this code ({LATEST})" in lines[0]
    assert lines[0].startswith("chargeyard: --store scylla: ")


def test_an_unmigrated_keyspace_says_to_run_the_migration(cassandra, tmp_path):
    keyspace = "cy_none_" + uuid.uuid4().hex[:12]
    r = _start("worker", tmp_path, ["--store", "scylla", "--scylla-hosts", cassandra.hosts, "--keyspace", keyspace])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    line = r.stderr.strip().splitlines()[-1]
    assert "has no Chargeyard schema" in line and "chargeyard store migrate" in line, r.stderr
