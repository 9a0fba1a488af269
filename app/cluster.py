"""``chargeyard cluster``: a whole cluster on one machine, for trying and testing.

valkey-server (unless ``--redis-url``), N ``chargeyard worker`` processes, one
``chargeyard api`` and nginx in front (ADR 0003): chargers use ``--ws-port``, the
operator API ``--http-port``, exactly as with ``chargeyard run``; nginx spreads API
requests over every node (each worker serves the API too).

Fixed addresses: worker i (1..N) listens on ``--ws-port + i`` for chargers and on
``--http-port + i`` for its API and ``/metrics``; the API node on ``--http-port +
N + 1``. The banner prints every node's metrics address and
``<data-dir>/cluster/prometheus.json`` lists them for Prometheus' file-based service
discovery (``file_sd_configs``). A worker or the API node that dies is reported and
restarted after a second with the same worker id and ports.

With ``events=True`` (what ``chargeyard cluster`` does) the events go through Kafka: a
real Apache Kafka broker (``kafka_broker.py``, KRaft, data under
``<data-dir>/cluster/kafka``; the jars are fetched with mvn into ~/.cache/chargeyard on
first use) unless ``--kafka-bootstrap`` names one, every node gets
``CHARGEYARD_KAFKA_BOOTSTRAP``, and ``chargeyard billing`` and ``chargeyard monitoring``
run as processes (their /metrics on ``--http-port + N + 2`` and ``+ N + 3``), supervised
like the workers.

Files: the cluster's SQLite store is ``<data-dir>/cluster/store/`` (shared by its
nodes, never the one ``chargeyard run`` uses in ``<data-dir>``); logs, nginx and
valkey files are under ``<data-dir>/cluster`` too.

Ctrl-C (or SIGTERM) stops it in order: the workers drain first, in parallel, exactly
as ``chargeyard run`` does (readiness false, store flush, chargers closed with 1001,
through nginx that still proxies their connections), then the API node, nginx and
valkey. A child that exited non-zero, at any time, is reported on stderr, and the
cluster's exit status is then 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import nginx_config, procs
from .config import PortInUse, Settings

log = logging.getLogger("chargeyard.cluster")

# set per process by the cluster, never forwarded from the parent's settings
_OWN = {"host", "ws_port", "http_port", "redis_url", "worker_id", "api_host"}


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
    # the cluster's own store: `chargeyard run` on the same --data-dir keeps its file
    env["CHARGEYARD_DATA_DIR"] = str(store_dir(settings))
    return env


def store_dir(settings: Settings) -> Path:
    """Where the cluster's nodes keep their (shared) SQLite store."""
    return Path(settings.data_dir).resolve() / "cluster" / "store"


@dataclass
class _NodeSpec:
    """What a node is started with: kept so a restart reuses the same id and ports."""
    cmd: str
    name: str
    ws_port: int
    http_port: int
    worker_id: str = ""


class Cluster:
    """Start/stop the processes; usable from tests (``with Cluster(...) as c``).

    A worker (or the API node) that dies is started again after ``restart_delay``
    seconds with the same worker id and ports (``None``: no supervision)."""

    def __init__(self, settings: Settings, workers: int = 3, *, python: str = sys.executable,
                 start_timeout: float = 30.0, restart_delay: float | None = 1.0, events: bool = False) -> None:
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
        self.specs: list[_NodeSpec] = []
        self.api_spec: _NodeSpec | None = None
        # events: the Kafka broker (ours, or --kafka-bootstrap's) and the two services
        self.events = events
        self.kafka: Any = None  # kafka_broker.KafkaBroker when the cluster started one
        self.kafka_bootstrap = settings.kafka_bootstrap
        self.service_specs: list[_NodeSpec] = []
        self.services: list[procs.Proc] = []
        self.restart_delay = restart_delay
        self.restarts: list[tuple[str, float]] = []  # (name, monotonic time) per restart
        self.failures: list[str] = []  # one line per child that exited non-zero
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _node(self, spec: _NodeSpec) -> procs.Proc:
        argv = [self.python, "-m", "chargeyard.cli", spec.cmd, "--host", "127.0.0.1",
                "--ws-port", str(spec.ws_port), "--http-port", str(spec.http_port),
                "--redis-url", self.redis_url]
        if spec.worker_id:
            argv += ["--worker-id", spec.worker_id]
        wait = spec.ws_port if spec.cmd == "worker" else spec.http_port
        env = self._env()
        if self.settings.tls_cert:  # nginx terminates TLS in front of the workers (see start)
            env.update(CHARGEYARD_TLS_CERT="", CHARGEYARD_TLS_KEY="", CHARGEYARD_TLS_CLIENT_CA="",
                       CHARGEYARD_TRUSTED_PROXIES=self.settings.trusted_proxies or "127.0.0.1/32")
        proc = procs.start_process(argv, name=spec.name, port=wait, env=env,
                                   log_path=self.run_dir / f"{spec.name}.log",
                                   timeout=self.start_timeout)
        try:  # every node serves the operator API: wait for that listener too
            procs.wait_port("127.0.0.1", spec.http_port, self.start_timeout, proc.popen)
        except BaseException as exc:
            proc.stop(1.0)
            raise RuntimeError(f"{spec.name} did not start: {exc}\n{proc.log_tail()}") from exc
        return proc

    def _env(self) -> dict[str, str]:
        env = child_env(self.settings)
        if self.kafka_bootstrap:
            env["CHARGEYARD_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        return env

    def _service(self, spec: _NodeSpec) -> procs.Proc:
        """``chargeyard billing`` / ``monitoring``: ready once its /metrics listens."""
        argv = [self.python, "-m", "chargeyard.cli", spec.cmd, "--host", "127.0.0.1",
                "--http-port", str(spec.http_port), "--redis-url", self.redis_url,
                "--kafka-bootstrap", self.kafka_bootstrap, "--worker-id", spec.worker_id]
        return procs.start_process(argv, name=spec.name, port=spec.http_port, env=self._env(),
                                   log_path=self.run_dir / f"{spec.name}.log", timeout=self.start_timeout)

    def _start(self, spec: _NodeSpec) -> procs.Proc:
        return self._service(spec) if spec.cmd in ("billing", "monitoring") else self._node(spec)

    def start(self) -> Cluster:
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.events and not self.kafka_bootstrap:
                from .kafka_broker import KafkaBroker

                self.kafka = KafkaBroker(self.run_dir / "kafka").start()
                self.kafka_bootstrap = self.kafka.bootstrap
            if not self.redis_url:
                self.valkey = procs.start_valkey(self.run_dir / "valkey")
                self.redis_url = f"redis://127.0.0.1:{self.valkey.port}/0"
            n = self.n_workers
            self.specs = [_NodeSpec("worker", f"worker-{i}", s.ws_port + i, s.http_port + i, f"w{i}")
                          for i in range(1, n + 1)]
            self.api_spec = _NodeSpec("api", "api", procs.free_port(), s.http_port + n + 1)
            if self.events:
                self.service_specs = [_NodeSpec(kind, kind, 0, s.http_port + n + 2 + i, kind)
                                      for i, kind in enumerate(("billing", "monitoring"))]
            self._check_ports()
            self.store_dir.mkdir(parents=True, exist_ok=True)
            for spec in self.specs:
                self.workers.append(self._node(spec))
            self.api = self._node(self.api_spec)
            for spec in self.service_specs:
                self.services.append(self._service(spec))
            self.write_file_sd()
            conf = self.run_dir / "nginx.conf"
            # chargers: hashed over the workers; the API: any node (workers serve it too)
            api_upstreams = [f"127.0.0.1:{sp.http_port}" for sp in (*self.specs, self.api_spec)]
            conf.write_text(nginx_config.render(
                [f"127.0.0.1:{sp.ws_port}" for sp in self.specs], f"{s.host}:{s.ws_port}",
                api_upstreams, f"{s.host}:{s.http_port}",
                run_dir=self.run_dir / "nginx", worker_connections=4096,
                # nginx terminates the chargers' TLS; the workers believe its identity headers
                tls_cert=s.tls_cert, tls_key=s.tls_key, tls_client_ca=s.tls_client_ca,
                require_client_cert=s.security_profile == 3))
            self.nginx = procs.start_nginx(conf, self.run_dir / "nginx", s.ws_port, s.host)
        except BaseException:
            self.stop()
            raise
        if self.restart_delay is not None:
            self._supervisor = threading.Thread(target=self._supervise, name="cluster-supervisor",
                                                daemon=True)
            self._supervisor.start()
        return self

    @property
    def store_dir(self) -> Path:
        return store_dir(self.settings)

    def _check_ports(self) -> None:
        """The nodes' fixed ports must be free: say which flag they derive from."""
        s = self.settings
        for spec in (*self.specs, self.api_spec, *self.service_specs):
            assert spec is not None
            if spec.cmd == "worker" and not procs.port_free("127.0.0.1", spec.ws_port):
                raise PortInUse("ws_port", "127.0.0.1", spec.ws_port) from None
            if not procs.port_free("127.0.0.1", spec.http_port):
                raise PortInUse("http_port", "127.0.0.1", spec.http_port) from None
        for name, port in (("ws_port", s.ws_port), ("http_port", s.http_port)):
            if not procs.port_free(s.host, port):
                raise PortInUse(name, s.host, port)

    def metrics_targets(self) -> list[tuple[str, str]]:
        """(node name, host:port) of every node's /metrics."""
        nodes = [*self.specs, self.api_spec] if self.api_spec is not None else list(self.specs)
        nodes += self.service_specs
        return [(sp.name, f"127.0.0.1:{sp.http_port}") for sp in nodes]

    @property
    def file_sd_path(self) -> Path:
        return self.run_dir / "prometheus.json"

    def write_file_sd(self) -> None:
        """Prometheus file-SD: one target group per node, labelled with its name."""
        groups = [{"targets": [addr], "labels": {"job": "chargeyard", "node": name}}
                  for name, addr in self.metrics_targets()]
        tmp = self.file_sd_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        tmp.replace(self.file_sd_path)  # Prometheus never reads half a file

    def _failed(self, name: str, proc: procs.Proc, when: str) -> None:
        line = (f"{name} (pid {proc.pid}) exited with status {proc.popen.returncode} {when}"
                f"; log: {proc.log_path}")
        self.failures.append(line)
        log.error("%s", line)
        print(f"chargeyard cluster: {line}", file=sys.stderr, flush=True)

    # -- supervision: a node that dies is started again with the same id and ports --

    def _supervise(self) -> None:
        died: dict[str, float] = {}  # name -> when it was seen dead
        while not self._stopping.wait(0.1):
            slots = [(i, self.specs[i], w) for i, w in enumerate(self.workers)]
            if self.api is not None and self.api_spec is not None:
                slots.append((-1, self.api_spec, self.api))
            slots += [(-2 - i, self.service_specs[i], p) for i, p in enumerate(self.services)]
            for i, spec, proc in slots:
                if proc.running:
                    continue
                now = time.monotonic()
                if spec.name not in died:
                    died[spec.name] = now
                    if proc.popen.returncode != 0:
                        self._failed(spec.name, proc, "while running")
                    log.warning("%s (pid %d) exited with %s; restarting in %.1fs (same id and ports)",
                                spec.name, proc.pid, proc.popen.returncode, self.restart_delay)
                    continue
                if now - died[spec.name] < self.restart_delay:
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        new = self._start(spec)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        log.error("restarting %s failed: %s; trying again", spec.name, exc)
                        died[spec.name] = time.monotonic()
                        continue
                    if i >= 0:
                        self.workers[i] = new
                    elif i == -1:
                        self.api = new
                    else:
                        self.services[-2 - i] = new
                del died[spec.name]
                self.restarts.append((spec.name, time.monotonic()))
                log.warning("%s restarted (pid %d, worker id %s, ws %d, http %d)", spec.name, new.pid,
                            spec.worker_id or "-", spec.ws_port, spec.http_port)

    def restart_valkey(self) -> procs.Proc:
        """Start the cluster's own valkey again on the same port (after it died)."""
        if self.valkey is None:
            raise RuntimeError("valkey is external (--redis-url)")
        self.valkey.kill()
        self.valkey = procs.start_valkey(self.run_dir / "valkey", port=self.valkey.port)
        return self.valkey

    def children(self) -> list[procs.Proc]:
        return [p for p in (self.nginx, *self.workers, self.api, *self.services, self.valkey) if p is not None]

    def stop(self) -> list[str]:
        """Stop everything in order; returns the failures (children that exited
        non-zero, now or before), also reported on stderr."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(self.start_timeout + 10)
        with self._lock:
            self._stop_all()
        return self.failures

    def _stop_all(self) -> None:
        grace = self.settings.drain_timeout + 5
        # Workers first, in parallel (each SIGTERM starts its own drain: readiness
        # false, flush, close 1001). nginx stays up meanwhile: it carries the close
        # frames to the chargers (stopped first, it cut them without one).
        done: dict[str, tuple[procs.Proc, int | None]] = {}

        def stop_one(p: procs.Proc, g: float) -> None:
            was_running = p.running
            code = p.stop(g)
            done[p.name] = (p, code if was_running else None)

        threads = [threading.Thread(target=stop_one, args=(w, grace)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in (*self.services, self.api, self.nginx, self.valkey):
            if p is not None:
                stop_one(p, grace if p is self.api else 5.0)
        if self.kafka is not None:  # last: the services commit their offsets on stop
            self.kafka.stop()
        for name, (p, code) in sorted(done.items()):
            if code is not None and code != 0:  # None: it had died before (reported then)
                self._failed(name, p, "on stop")

    def banner(self) -> str:
        s = self.settings
        lines = [f"chargers: ws://{s.host}:{s.ws_port}/ocpp/{{charger_id}} -> "
                 f"{len(self.workers)} workers (nginx, hash on charger id)",
                 f"operator API: http://{s.host}:{s.http_port}/api/v1 -> "
                 f"{len(self.workers) + 1} nodes (every worker, and the API node)",
                 "metrics (one address per node; /metrics on the API port rotates between nodes):"]
        lines += [f"  {name}: http://{addr}/metrics" for name, addr in self.metrics_targets()]
        if self.events:
            lines.append(f"events: Kafka {self.kafka_bootstrap} (topic chargeyard.events"
                         f"{', data ' + str(self.kafka.data_dir) if self.kafka is not None else ''})")
            lines += [f"  {sp.name}: chargeyard {sp.cmd}, consumer group chargeyard-{sp.cmd}"
                      for sp in self.service_specs]
        lines += [f"prometheus file-SD: {self.file_sd_path}",
                  f"registry: {self.redis_url}",
                  f"store: {self.store_dir}",
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
        cluster = Cluster(settings, workers, events=True).start()
    except PortInUse as exc:
        print(f"chargeyard: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"chargeyard cluster: {exc}", file=sys.stderr)
        return 1
    print(cluster.banner(), flush=True)
    try:
        while not stop.wait(0.5):
            # workers and the API node are restarted by the supervisor; nginx or
            # valkey gone means the cluster cannot work: stop everything
            dead = [p for p in (cluster.nginx, cluster.valkey) if p is not None and not p.running]
            if dead:
                reason[0] = ", ".join(f"{p.name} exited ({p.popen.returncode})" for p in dead)
                log.error("cluster: %s; stopping (see %s)", reason[0], cluster.run_dir)
                break
    finally:
        failures = cluster.stop()
    if failures:
        print(f"chargeyard cluster: {len(failures)} child process(es) exited non-zero (see above)",
              file=sys.stderr, flush=True)
    return 0 if reason[0] == "signal" and not failures else 1
