"""Start real Chargeyard processes for tests (loopback only, bounded waits)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from chargeyard.procs import kill_popen, stop_popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProc:
    """``chargeyard run`` in a subprocess; ``ws(cid)`` and ``api(path)`` give URLs."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None, cmd: str = "run") -> None:
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.env = env or {}
        self.cmd = cmd
        self.ws_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 20.0) -> NodeProc:
        env = dict(os.environ, **self.env)
        argv = [sys.executable, "-m", "chargeyard.cli", self.cmd, "--host", "127.0.0.1",
                "--ws-port", str(self.ws_port), "--http-port", str(self.http_port),
                "--data-dir", str(self.data_dir), *self.args]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("chargeyard exited:\n" + "\n".join(self.log[-40:]))
            try:
                status, _ = self.get("/readyz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("chargeyard did not become ready:\n" + "\n".join(self.log[-40:]))

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            if len(self.log) > 5000:
                del self.log[:1000]

    def ws(self, charger_id: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ocpp/{charger_id}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def request(self, method: str, path: str, body: object = None, timeout: float = 10,
                headers: dict | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, **kw: object) -> tuple[int, object]:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, body: object = None, **kw: object) -> tuple[int, object]:
        return self.request("POST", path, body if body is not None else {}, **kw)  # type: ignore[arg-type]

    def _reap(self) -> None:
        assert self.proc is not None
        self._pump_thread.join(5)
        if self.proc.stdout is not None and not self._pump_thread.is_alive():
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc is not None:
            kill_popen(self.proc)
            self._reap()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        code = stop_popen(self.proc, timeout)
        self._reap()
        return code


async def api_call(base: str, method: str, path: str, body: object = None, timeout: float = 15,
                   headers: dict | None = None) -> tuple[int, object]:
    """The API from inside an event loop that also runs chargers (urllib would block it)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.request(method, base + path, json=body, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text


class ClusterProc(NodeProc):
    """``chargeyard cluster`` (valkey, N workers, the API node, nginx) run from the test
    process, with NodeProc's interface: ``ws(cid)`` and ``url(path)`` go through nginx.
    ``workers``/``api`` are the nodes (``chargeyard.procs.Proc``); ``node_url(i, path)``
    addresses one node's own HTTP port directly (0..N-1: workers, N: the API node)."""

    def __init__(self, data_dir: Path, workers: int = 3, *, restart_delay: float | None = 1.0,
                 **settings: object) -> None:
        super().__init__(data_dir)
        from chargeyard import procs

        self.ws_port, self.http_port = procs.cluster_ports(workers)  # the nodes take the ports above
        self.n_workers = workers
        self.restart_delay = restart_delay
        self.settings_kw = settings
        self.cluster = None

    def start(self, timeout: float = 60.0) -> ClusterProc:
        from chargeyard import procs
        from chargeyard.cluster import Cluster
        from chargeyard.config import Settings

        procs.find_valkey_server()  # FileNotFoundError: the caller decides to skip
        procs.find_nginx()
        s = Settings(data_dir=str(self.data_dir), ws_port=self.ws_port, http_port=self.http_port,
                     **self.settings_kw)  # type: ignore[arg-type]
        self.cluster = Cluster(s, workers=self.n_workers, start_timeout=timeout,
                               restart_delay=self.restart_delay)
        self.cluster.start()
        deadline = time.monotonic() + timeout
        while True:  # nginx up and every node ready behind it
            try:
                if all(self.node_get(i, "/readyz", timeout=2)[0] == 200 for i in range(self.n_workers + 1)):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("cluster did not become ready")
            time.sleep(0.1)

    @property
    def workers(self) -> list:
        return self.cluster.workers

    @property
    def api(self):
        return self.cluster.api

    def node_ports(self) -> list[int]:
        """Every node's HTTP port: the workers', then the API node's."""
        c = self.cluster
        return [sp.http_port for sp in c.specs] + [c.api_spec.http_port]

    def node_url(self, i: int, path: str) -> str:
        return f"http://127.0.0.1:{self.node_ports()[i]}{path}"

    def node_get(self, i: int, path: str, timeout: float = 10) -> tuple[int, object]:
        try:
            with urllib.request.urlopen(self.node_url(i, path), timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    def kill(self) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.cluster is not None:
            self.cluster.stop()
        return 0


def schema_at(conn, monkeypatch, version: int) -> None:
    """Migrate a new SQLite database only up to schema ``version`` (to test the later
    migrations on a database made by an older release)."""
    from chargeyard.store import migrations

    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
        m.setattr(migrations, "LATEST", version)
        assert migrations.migrate(conn) == list(range(1, version + 1))


def twin_modules(name: str) -> list:
    """The pure-Python twin of compiled module ``name`` (``core.twins``), and the compiled one
    when it is built (with ``CHARGEYARD_REQUIRE_EXT=1`` it must be), for a parametrization
    that runs a test on both."""
    from chargeyard.core import twins

    modules = [twins.load(name, pure=True)]
    try:
        modules.append(twins.load(name, pure=False))
    except ImportError:
        if twins.require_ext():
            raise
    return modules
