"""``chargeyard cluster``: a whole cluster on one machine, for trying and testing.

valkey-server (unless ``--redis-url``), N ``chargeyard worker`` processes, one
``chargeyard api`` and nginx in front (ADR 0003): chargers use ``--ws-port``, the
operator API ``--http-port``, exactly as with ``chargeyard run``. Everything else
the processes write lives under ``<data-dir>/cluster``. Ctrl-C (or SIGTERM) stops
it in order: nginx, workers (they drain), the API, valkey.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import nginx_config, procs
from .config import Settings

log = logging.getLogger("chargeyard.cluster")

# set per process by the cluster, never forwarded from the parent's settings
_OWN = {"host", "ws_port", "http_port", "redis_url", "worker_id", "api_host", "extra"}


def child_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's settings as ``CHARGEYARD_*`` variables for the children."""
    env = dict(os.environ if base is None else base)
    for f in fields(Settings):
        if f.name in _OWN:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        env["CHARGEYARD_" + f.name.upper()] = str(value)
    return env


class Cluster:
    """Start/stop the processes; usable from tests (``with Cluster(...) as c``)."""

    def __init__(self, settings: Settings, workers: int = 3, *, python: str = sys.executable,
                 start_timeout: float = 30.0) -> None:
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        self.settings = settings
        self.n_workers = workers
        self.python = python
        self.start_timeout = start_timeout
        self.run_dir = Path(settings.data_dir).resolve() / "cluster"
        self.redis_url = settings.redis_url
        self.valkey: procs.Proc | None = None
        self.workers: list[procs.Proc] = []
        self.api: procs.Proc | None = None
        self.nginx: procs.Proc | None = None

    def _node(self, cmd: str, name: str, ws_port: int, http_port: int, wait_port: int,
              worker_id: str | None = None) -> procs.Proc:
        argv = [self.python, "-m", "chargeyard.cli", cmd, "--host", "127.0.0.1",
                "--ws-port", str(ws_port), "--http-port", str(http_port),
                "--redis-url", self.redis_url]
        if worker_id:
            argv += ["--worker-id", worker_id]
        return procs.start_process(argv, name=name, port=wait_port, env=child_env(self.settings),
                                   log_path=self.run_dir / f"{name}.log",
                                   timeout=self.start_timeout)

    def start(self) -> Cluster:
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.redis_url:
                self.valkey = procs.start_valkey(self.run_dir / "valkey")
                self.redis_url = f"redis://127.0.0.1:{self.valkey.port}/0"
            for i in range(1, self.n_workers + 1):
                ws = procs.free_port()
                self.workers.append(self._node("worker", f"worker-{i}", ws, procs.free_port(), ws,
                                               worker_id=f"w{i}"))
            api_port = procs.free_port()
            self.api = self._node("api", "api", procs.free_port(), api_port, api_port)
            conf = self.run_dir / "nginx.conf"
            conf.write_text(nginx_config.render(
                [f"127.0.0.1:{w.port}" for w in self.workers], f"{s.host}:{s.ws_port}",
                [f"127.0.0.1:{api_port}"], f"{s.host}:{s.http_port}",
                run_dir=self.run_dir / "nginx", worker_connections=4096))
            self.nginx = procs.start_nginx(conf, self.run_dir / "nginx", s.ws_port, s.host)
        except BaseException:
            self.stop()
            raise
        return self

    def children(self) -> list[procs.Proc]:
        return [p for p in (self.nginx, *self.workers, self.api, self.valkey) if p is not None]

    def stop(self) -> None:
        grace = self.settings.drain_timeout + 5
        for p in [self.nginx]:
            if p is not None:
                p.stop()
        # workers drain in parallel (each SIGTERM starts its own drain)
        threads = [threading.Thread(target=w.stop, args=(grace,)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in (self.api, self.valkey):
            if p is not None:
                p.stop()

    def banner(self) -> str:
        s = self.settings
        lines = [f"chargers: ws://{s.host}:{s.ws_port}/ocpp/{{charger_id}} -> "
                 f"{len(self.workers)} workers (nginx, hash on charger id)",
                 f"operator API: http://{s.host}:{s.http_port}/api/v1 (metrics: /metrics)",
                 f"registry: {self.redis_url}",
                 f"logs: {self.run_dir}"]
        return "\n".join(lines)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(settings: Settings, workers: int = 3) -> int:
    stop = threading.Event()
    reason = ["signal"]

    def on_signal(sig: int, _frame: Any) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster = Cluster(settings, workers).start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"chargeyard cluster: {exc}", file=sys.stderr)
        return 1
    print(cluster.banner(), flush=True)
    try:
        while not stop.wait(0.5):
            dead = [p for p in cluster.children() if not p.running]
            if dead:
                reason[0] = ", ".join(f"{p.name} exited ({p.popen.returncode})" for p in dead)
                log.error("cluster: %s; stopping (see %s)", reason[0], cluster.run_dir)
                break
    finally:
        cluster.stop()
    return 0 if reason[0] == "signal" else 1
