"""``chargeyard cluster`` with events: a real Kafka broker, ``chargeyard billing`` and
``chargeyard monitoring`` as supervised processes (killing billing restarts it), the
workers given CHARGEYARD_KAFKA_BOOTSTRAP, the services' routes served by the API."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import urllib.request

import aiohttp
import pytest

from chargeyard import procs
from chargeyard.cluster import Cluster
from chargeyard.config import Settings
from chargeyard.kafka_broker import java_bin, metadata_brokers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        procs.find_valkey_server()
        procs.find_nginx()
        java_bin()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(str(exc))
    if shutil.which("mvn") is None:
        pytest.skip("mvn is needed to fetch Apache Kafka's jars")
    ws_port, http_port = procs.cluster_ports(1)
    s = Settings(data_dir=str(tmp_path_factory.mktemp("cluster")), ws_port=ws_port, http_port=http_port,
                 call_timeout=5.0, drain_timeout=2.0)
    c = Cluster(s, workers=1, start_timeout=60, events=True)
    c.start()
    yield c
    c.stop()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def test_kafka_and_both_services_run(cluster):
    host, _, port = cluster.kafka_bootstrap.rpartition(":")
    assert metadata_brokers(host, int(port)), "the broker answers Metadata"
    banner = cluster.banner()
    assert f"events: Kafka {cluster.kafka_bootstrap}" in banner
    assert "billing: chargeyard billing" in banner and "monitoring: chargeyard monitoring" in banner
    assert [p.name for p in cluster.services] == ["billing", "monitoring"]
    assert all(p.running for p in cluster.services)
    assert _environ(cluster.workers[0].pid)["CHARGEYARD_KAFKA_BOOTSTRAP"] == cluster.kafka_bootstrap
    for spec in cluster.service_specs:  # each exports its consumer lag once it consumes
        deadline = time.monotonic() + 60
        while f'chargeyard_consumer_lag{{group="chargeyard-{spec.cmd}"}}' not in _metrics(spec.http_port):
            assert time.monotonic() < deadline, _metrics(spec.http_port)
            time.sleep(0.2)

    async def tariffs():
        base = f"http://127.0.0.1:{cluster.settings.http_port}/api/v1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            body = {"currency": "EUR", "per_kwh": "0.30", "session_fee": "1.00", "vat_percent": "19"}
            async with s.put(f"{base}/tariffs/std", json=body) as r:
                assert r.status == 200, await r.text()
            async with s.get(f"{base}/tariffs") as r:  # any node: they share the services' state
                assert [t["tariff_id"] for t in (await r.json())["items"]] == ["std"]
            async with s.get(f"{base}/alerts") as r:
                assert r.status == 200 and (await r.json())["items"] == []
    asyncio.run(asyncio.wait_for(tariffs(), 30))


def test_killed_billing_is_restarted(cluster):
    old = cluster.services[0]
    assert old.name == "billing"
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (cluster.services[0] is not old and cluster.services[0].running):
        assert time.monotonic() < deadline, "billing was not restarted"
        time.sleep(0.1)
    assert any(name == "billing" for name, _ in cluster.restarts)
    assert cluster.services[0].pid != old.pid
    assert "chargeyard_consumer_lag" in _metrics(cluster.service_specs[0].http_port)
