"""``chargeyard cluster`` as an operator runs it: fixed, printed metrics addresses and
a Prometheus file-SD file; SIGTERM drains every worker (chargers closed with 1001);
a child that exits non-zero is reported and makes the exit status 1; the cluster's
store is not the one of ``chargeyard run`` (issue 19, bugs 2, 3 and 7)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from chargeyard import procs


class ClusterCli:
    """``chargeyard cluster`` in a subprocess; ``banner`` once it printed one."""

    def __init__(self, data: Path, workers: int) -> None:
        try:
            procs.find_valkey_server()
            procs.find_nginx()
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        self.data = data
        self.ws_port, self.http_port = procs.cluster_ports(workers)  # the nodes take the ports above
        env = dict(os.environ, CHARGEYARD_DRAIN_TIMEOUT="3", CHARGEYARD_LEASE="2",
                   CHARGEYARD_ACCEPT_UNKNOWN_TAGS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chargeyard.cli", "cluster", "--workers", str(workers),
             "--data-dir", str(data), "--ws-port", str(self.ws_port), "--http-port", str(self.http_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.signalled = False
        self.out: list[str] = []
        self.err: list[str] = []
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self.pumps:
            t.start()
        deadline = time.monotonic() + 60
        while not any(line.startswith("logs: ") for line in self.out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.terminate()
                raise RuntimeError("cluster did not start:\n" + "\n".join(self.err[-30:]))
            time.sleep(0.05)
        self.banner = "\n".join(self.out)

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def signal(self) -> None:
        """SIGTERM, once (a second one makes the cluster exit at once)."""
        if not self.signalled and self.proc.poll() is None:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 60) -> int:
        self.signal()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for t in self.pumps:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        return self.proc.returncode

    def child_pid(self, fragment: str) -> int:
        """The pid of the cluster's child whose command line contains ``fragment``."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and fragment in cmd:
                return int(entry.name)
        raise LookupError(fragment)


def _metrics(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_addresses_drain_with_1001_and_own_store(tmp_path):
    c = ClusterCli(tmp_path / "data", workers=2)
    try:
        targets = json.loads((tmp_path / "data" / "cluster" / "prometheus.json").read_text())
        addrs = {g["labels"]["node"]: g["targets"][0] for g in targets}
        assert addrs == {"worker-1": f"127.0.0.1:{c.http_port + 1}", "worker-2": f"127.0.0.1:{c.http_port + 2}",
                         "api": f"127.0.0.1:{c.http_port + 3}", "billing": f"127.0.0.1:{c.http_port + 4}",
                         "monitoring": f"127.0.0.1:{c.http_port + 5}"}
        for name, addr in addrs.items():
            if name in ("billing", "monitoring"):  # Kafka consumers: their lag, not connections
                assert f"{name}: http://{addr}/metrics" in c.banner, c.banner
                continue
            assert f"{name}: http://{addr}/metrics" in c.banner, c.banner
            assert "chargeyard_ws_connections" in _metrics(addr) or name == "api"

        async def scenario() -> list[int | None]:
            conns = []
            for i in range(6):
                conns.append(await websockets.connect(f"ws://127.0.0.1:{c.ws_port}/ocpp/stop-{i}",
                                                      subprotocols=["ocpp1.6"], open_timeout=10,
                                                      ping_interval=None))
            for i, ws in enumerate(conns):  # a boot each: both workers serve some
                await ws.send(json.dumps([2, "b", "BootNotification",
                                          {"chargePointVendor": "V", "chargePointModel": "M"}]))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3
            await asyncio.to_thread(c.signal)
            codes = []
            for ws in conns:
                await asyncio.wait_for(ws.wait_closed(), 20)
                codes.append(ws.close_code)
            return codes

        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [1001] * 6
        assert c.terminate() == 0, "\n".join(c.err[-20:])
        assert (tmp_path / "data" / "cluster" / "store" / "chargeyard.db").exists()
        assert not (tmp_path / "data" / "chargeyard.db").exists()  # `chargeyard run`'s file
    finally:
        c.terminate()


def test_child_exiting_non_zero_is_reported_and_fails_the_cluster(tmp_path):
    c = ClusterCli(tmp_path / "data", workers=1)
    try:
        pid = c.child_pid("--worker-id w1")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any("restarted" in line for line in c.err):  # the supervisor's second start
            assert time.monotonic() < deadline and c.proc.poll() is None, "\n".join(c.err[-20:])
            time.sleep(0.05)
        code = c.terminate()
        err = "\n".join(c.err)
        assert code == 1, err
        assert f"chargeyard cluster: worker-1 (pid {pid}) exited with status -9 while running" in err
    finally:
        c.terminate()
