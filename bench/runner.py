"""Coordinator: starts a server (pinned), drives generator workers, measures.

Servers ("targets") are commands; three are built in (``echo``, ``ocpp-baseline``,
``chargeyard``) and any command with ``{ws_port}`` in it can be benchmarked the same
way. Generator workers are :mod:`chargeyard.bench.loadgen` processes; commands carry
absolute CLOCK_MONOTONIC times so the server's CPU time is read at the same instants
the workers start and stop counting.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from . import procstat
from .loadgen import hist_percentiles

MAX_CONNS_PER_GEN = 18000   # below the usual 20k fd limit of one worker process

BUILTIN_TARGETS = {
    "echo": {
        "label": "picows echo (ceiling)", "role": "ceiling", "ready": "tcp",
        "cmd": "{python} -m chargeyard.bench.echo_server --host 127.0.0.1 --port {ws_port}",
    },
    "ocpp-baseline": {
        "label": "ocpp 2.1.0 + websockets (baseline)", "role": "baseline", "ready": "tcp",
        "cmd": "{python} -m chargeyard.bench.ocpp_server --host 127.0.0.1 --port {ws_port}",
    },
    "chargeyard": {
        "label": "Chargeyard worker", "role": "chargeyard", "ready": "http",
        "cmd": "{chargeyard} run --host 127.0.0.1 --ws-port {ws_port} --http-port {http_port}"
               " --data-dir {data_dir} --accept-unknown-tags",
        "metrics": "http://127.0.0.1:{http_port}/metrics",
    },
    # the same worker on the ScyllaDB store (``--store scylla``): a fresh keyspace per start,
    # migrated first (``chargeyard store migrate``), on the server of ``use_scylla``
    "chargeyard-scylla": {
        "label": "Chargeyard worker, ScyllaDB store", "role": "chargeyard-scylla", "ready": "http",
        "cmd": "{chargeyard} run --host 127.0.0.1 --ws-port {ws_port} --http-port {http_port}"
               " --data-dir {data_dir} --accept-unknown-tags --store scylla --scylla-hosts {scylla_hosts}"
               " --keyspace {keyspace}",
        "metrics": "http://127.0.0.1:{http_port}/metrics",
        "store": "scylla",
    },
    # the same worker with no consumer of its events (``--services off``: the outbox is written
    # and relayed to nobody): what Kafka on is judged against (``--kafka``)
    "chargeyard-bare": {
        "label": "Chargeyard worker, events to no consumer", "role": "chargeyard-bare", "ready": "http",
        "cmd": "{chargeyard} run --host 127.0.0.1 --ws-port {ws_port} --http-port {http_port}"
               " --data-dir {data_dir} --accept-unknown-tags --services off",
        "metrics": "http://127.0.0.1:{http_port}/metrics",
        "variant": True,
    },
    # the same worker publishing its events to Kafka (``--kafka``): the run's broker, ``use_kafka``
    "chargeyard-kafka": {
        "label": "Chargeyard worker, Kafka on", "role": "chargeyard-kafka", "ready": "http",
        "cmd": "{chargeyard} run --host 127.0.0.1 --ws-port {ws_port} --http-port {http_port}"
               " --data-dir {data_dir} --accept-unknown-tags --kafka-bootstrap {kafka_bootstrap}",
        "metrics": "http://127.0.0.1:{http_port}/metrics",
        "kafka": True,
        "variant": True,
    },
}

# The CQL server of the ``chargeyard-scylla`` target: its contact point and the pid whose
# process tree is the database (its CPU is measured per message; None: not measured).
SCYLLA: dict = {"hosts": None, "db_pid": None}


def use_scylla(hosts: str, db_pid: int | None) -> None:
    SCYLLA.update(hosts=hosts, db_pid=db_pid)


# The broker of the ``chargeyard-kafka`` target (bench/kafka_variant.py): its bootstrap and pid.
KAFKA: dict = {"bootstrap": None, "pid": None}


def use_kafka(bootstrap: str | None, pid: int | None) -> None:
    KAFKA.update(bootstrap=bootstrap, pid=pid)


def _migrate_keyspace(data_dir: str) -> str:
    """A fresh keyspace on the ScyllaDB/Cassandra of ``use_scylla``, migrated as the k8s Job does."""
    import uuid

    if not SCYLLA["hosts"]:
        raise TargetFailed("chargeyard-scylla: no CQL server (use_scylla / --scylla-hosts)")
    keyspace = "cy_bench_" + uuid.uuid4().hex[:10]
    argv = [_chargeyard_exe(), "store", "migrate", "--store", "scylla", "--scylla-hosts", SCYLLA["hosts"],
            "--keyspace", keyspace, "--data-dir", data_dir]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise TargetFailed(f"chargeyard-scylla: store migrate failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return keyspace


def _die_with_parent():  # runs in the child before exec
    """Servers and generators get SIGTERM if the coordinator dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nofile_hard() -> int:
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def taskset_prefix(cpus: str | None) -> list[str]:
    if cpus and shutil.which("taskset") and len(os.sched_getaffinity(0)) > 1:
        return ["taskset", "-c", cpus]
    return []


def resolve_target(name_or_cmd: str, chargeyard_cmd: str | None = None) -> tuple[str, dict]:
    """A built-in target by name, or ``name=command`` / a bare command template."""
    if name_or_cmd in BUILTIN_TARGETS:
        spec = dict(BUILTIN_TARGETS[name_or_cmd])
        if name_or_cmd == "chargeyard":
            override = chargeyard_cmd or os.environ.get("CHARGEYARD_BENCH_CMD")
            if override:
                spec["cmd"] = override
        return name_or_cmd, spec
    name, _, cmd = name_or_cmd.partition("=") if "=" in name_or_cmd.split()[0] else \
        ("custom", "", name_or_cmd)
    return name, {"label": name, "role": "custom", "ready": "tcp", "cmd": cmd}


def _chargeyard_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "chargeyard")
    return exe if os.path.exists(exe) else "chargeyard"


class TargetFailed(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    spec: dict
    proc: subprocess.Popen
    ws_port: int
    http_port: int
    data_dir: str
    log_path: str
    url: str
    metrics_url: str | None
    tmp: object = field(default=None, repr=False)
    db_pid: int | None = None  # the store's own process (ScyllaDB/Cassandra), if any
    broker_pid: int | None = None  # the Kafka broker's process, if the server publishes to one

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def rss(self) -> int:
        return procstat.rss_bytes(self.pid)

    def db_cpu(self) -> float | None:
        return procstat.cpu_seconds(self.db_pid) if self.db_pid else None

    def broker_cpu(self) -> float | None:
        return procstat.cpu_seconds(self.broker_pid) if self.broker_pid else None

    def metrics(self) -> str | None:
        if not self.metrics_url:
            return None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.tmp is not None:
            self.tmp.cleanup()


def start_server(name: str, spec: dict, cpus: str | None, logdir: str,
                 ready_timeout: float = 30.0) -> Server:
    ws_port, http_port = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix=f"cy-bench-{name}-")
    scylla = {}
    if spec.get("store") == "scylla":
        try:
            scylla = {"scylla_hosts": SCYLLA["hosts"], "keyspace": _migrate_keyspace(tmp.name)}
        except (TargetFailed, OSError, subprocess.TimeoutExpired) as exc:
            tmp.cleanup()
            raise TargetFailed(str(exc)) from exc
    kafka = {}
    if spec.get("kafka"):
        if not KAFKA["bootstrap"]:
            tmp.cleanup()
            raise TargetFailed(f"{name}: no Kafka broker (use_kafka / --kafka)")
        kafka = {"kafka_bootstrap": KAFKA["bootstrap"]}
    cmd = spec["cmd"].format(python=shlex.quote(sys.executable), chargeyard=_chargeyard_exe(),
                             ws_port=ws_port, http_port=http_port, data_dir=tmp.name, **scylla, **kafka)
    argv = taskset_prefix(cpus) + shlex.split(cmd)
    os.makedirs(logdir, exist_ok=True)
    log_path = os.path.join(logdir, f"server-{name}.log")
    log = open(log_path, "ab")
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)
    except OSError as exc:
        tmp.cleanup()
        raise TargetFailed(f"{name}: cannot start {argv[0]!r}: {exc}") from exc
    finally:
        log.close()
    metrics = spec.get("metrics", "").format(http_port=http_port) or None
    srv = Server(name, spec, proc, ws_port, http_port, tmp.name, log_path,
                 f"ws://127.0.0.1:{ws_port}/ocpp/", metrics, tmp, SCYLLA["db_pid"] if scylla else None,
                 KAFKA["pid"] if kafka else None)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            srv.stop()
            raise TargetFailed(f"{name}: exited with code {proc.returncode} before ready:\n"
                               + srv.log_tail())
        if _is_ready(srv):
            return srv
        time.sleep(0.05)
    srv.stop()
    raise TargetFailed(f"{name}: not ready within {ready_timeout:.0f}s:\n" + srv.log_tail())


def _is_ready(srv: Server) -> bool:
    if srv.spec.get("ready") == "http":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/readyz",
                                        timeout=0.5) as r:
                if r.status != 200:
                    return False
        except OSError:
            return False
    try:
        with socket.create_connection(("127.0.0.1", srv.ws_port), timeout=0.5):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------- generators

class GenPool:
    """Generator worker processes sharing one set of chargers."""

    def __init__(self, url: str, chargers: int, cfg: dict, procs: int, cpus: str | None,
                 logdir: str, prefix: str, ip_base: int = 10, server_cpus: str | None = None):
        self.workers: list[subprocess.Popen] = []
        self.q: queue.Queue = queue.Queue()
        self.url, self.cpus, self.logdir, self.ip_next = url, cpus, logdir, ip_base
        self.chargers = 0
        self.watch_cpus = sorted(set(procstat.parse_cpus(cpus)) | set(
            procstat.parse_cpus(server_cpus))) if cpus or server_cpus else []
        os.makedirs(logdir, exist_ok=True)
        self.pending = self.add(chargers, cfg, procs, prefix)

    def add(self, chargers: int, cfg: dict, procs: int, prefix: str) -> list[int]:
        """Start more workers (each on its own source address); returns their indices."""
        procs = max(procs, math.ceil(chargers / MAX_CONNS_PER_GEN))
        procs = max(1, min(procs, chargers))
        first, new = 0, []
        for i in range(procs):
            k = len(self.workers)
            count = chargers // procs + (1 if i < chargers % procs else 0)
            wcfg = dict(cfg, url=self.url, first=first, count=count, prefix=prefix,
                        local_ip=f"127.0.0.{self.ip_next}")
            self.ip_next += 1
            first += count
            err = open(os.path.join(self.logdir, f"gen-{prefix}-{i}.log"), "ab")
            p = subprocess.Popen(
                taskset_prefix(self.cpus) + [sys.executable, "-m", "chargeyard.bench.loadgen"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True, preexec_fn=_die_with_parent)
            err.close()
            p.stdin.write(json.dumps(wcfg) + "\n")
            p.stdin.flush()
            threading.Thread(target=self._read, args=(k, p), daemon=True).start()
            self.workers.append(p)
            new.append(k)
        self.chargers += chargers
        self.pending = new
        return new

    def _read(self, k: int, p: subprocess.Popen):
        for line in p.stdout:
            try:
                self.q.put((k, json.loads(line)))
            except ValueError:
                pass
        p.stdout.close()
        self.q.put((k, {"event": "exit"}))

    def _collect(self, timeout: float, only: list[int] | None = None) -> list[dict]:
        got: dict[int, dict] = {}
        want = set(range(len(self.workers)) if only is None else only)
        deadline = time.monotonic() + timeout
        while len(got) < len(want):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator: {len(got)}/{len(want)} answered")
            try:
                k, msg = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("event") == "exit":
                raise RuntimeError(f"generator worker {k} exited (see its log)")
            got[k] = msg
        return [got[k] for k in sorted(got)]

    def wait_ready(self, timeout: float) -> dict:
        """Wait for the workers started last (by __init__ or add) to report ready."""
        msgs = self._collect(timeout, self.pending)
        errs: dict[str, int] = {}
        for m in msgs:
            for key, v in m.get("connect_errors", {}).items():
                errs[key] = errs.get(key, 0) + v
        return {"connected": sum(m["connected"] for m in msgs),
                "failed": sum(m["failed"] for m in msgs),
                "setup_s": max(m["setup_s"] for m in msgs), "connect_errors": errs}

    def command(self, cmd: dict, timeout: float) -> list[dict]:
        line = json.dumps(cmd) + "\n"
        for p in self.workers:
            p.stdin.write(line)
            p.stdin.flush()
        return self._collect(timeout)

    def close(self):
        for p in self.workers:
            try:
                p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in self.workers:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            try:
                p.stdin.close()  # its stdout is closed by its reader thread, at EOF
            except OSError:  # a broken pipe to a generator that already exited
                pass


def merge(results: list[dict]) -> dict:
    hist: dict[str, int] = {}
    for r in results:
        for k, v in r.get("hist", {}).items():
            hist[k] = hist.get(k, 0) + v
    out = {key: sum(r.get(key, 0) for r in results)
           for key in ("count", "sent", "errors", "unmatched", "skipped", "late", "cpu_s")}
    out["hist"] = hist
    out["error_sample"] = next((r["error_sample"] for r in results if r.get("error_sample")), None)
    return out


# ----------------------------------------------------------- prometheus bits

def histogram_delta(before: str | None, after: str | None, name: str) -> dict | None:
    """Sum/count/buckets delta of a Prometheus histogram (all label sets summed)."""
    def parse(text):
        vals = {"sum": 0.0, "count": 0.0, "buckets": {}}
        for line in (text or "").splitlines():
            if not line.startswith(name):
                continue
            metric, _, value = line.rpartition(" ")
            try:
                v = float(value)
            except ValueError:
                continue
            base = metric.split("{")[0]
            if base == name + "_sum":
                vals["sum"] += v
            elif base == name + "_count":
                vals["count"] += v
            elif base == name + "_bucket" and 'le="' in metric:
                le = metric.split('le="')[1].split('"')[0]
                vals["buckets"][le] = vals["buckets"].get(le, 0.0) + v
        return vals
    if before is None or after is None or name not in (after or ""):
        return None
    b, a = parse(before), parse(after)
    count = a["count"] - b["count"]
    total = a["sum"] - b["sum"]
    buckets = {le: a["buckets"][le] - b["buckets"].get(le, 0.0) for le in a["buckets"]}
    p50 = p99 = None
    if count > 0:
        ordered = sorted(buckets.items(), key=lambda kv: float(kv[0].replace("+Inf", "inf")))
        for q in (0.5, 0.99):
            for le, c in ordered:
                if c >= q * count:
                    if q == 0.5:
                        p50 = le
                    else:
                        p99 = le
                    break
    return {"count": count, "sum": total, "mean": total / count if count else None,
            "p50_le": p50, "p99_le": p99}


def gauge_value(text: str | None, name: str) -> float | None:
    """An unlabelled gauge's (or counter's) value in a /metrics text (None when absent)."""
    for line in (text or "").splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


# -------------------------------------------------------------- measurements

def _sleep_until(t: float):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _window(srv: Server, pool: GenPool, cmd: dict, warmup: float, duration: float,
            gen_cores: int) -> dict:
    begin = time.monotonic() + 0.3
    start = begin + warmup
    end = start + duration
    cmd = dict(cmd, begin=begin, start=start, end=end)
    for p in pool.workers:
        p.stdin.write(json.dumps(cmd) + "\n")
        p.stdin.flush()
    _sleep_until(start)
    cpu0, m0, db0, br0 = srv.cpu(), srv.metrics(), srv.db_cpu(), srv.broker_cpu()
    busy0 = procstat.cpu_busy_seconds(pool.watch_cpus)
    _sleep_until(end)
    cpu1, m1, db1, br1 = srv.cpu(), srv.metrics(), srv.db_cpu(), srv.broker_cpu()
    busy1 = procstat.cpu_busy_seconds(pool.watch_cpus)
    res = merge(pool._collect(duration + warmup + 30))
    n = res["count"]
    pct = hist_percentiles(res["hist"])
    server_util = (cpu1 - cpu0) / duration
    gen_util = res["cpu_s"] / duration / max(1, gen_cores)
    out = {
        "msgs": n, "duration_s": duration, "msgs_per_s": n / duration,
        "server_cpu_s": cpu1 - cpu0,
        "cpu_us_per_msg": (cpu1 - cpu0) * 1e6 / n if n else None,
        "server_util": server_util, "gen_util": gen_util,
        "gen_cpu_us_per_msg": res["cpu_s"] * 1e6 / n if n else None,
        "p50_ms": pct[0.5], "p99_ms": pct[0.99], "p999_ms": pct[0.999],
        "errors": res["errors"], "error_sample": res["error_sample"],
        "unmatched": res["unmatched"], "skipped": res["skipped"], "late": res["late"],
        "sent": res["sent"],
    }
    # CPU used on the pinned cores by anything else (other jobs on a shared machine)
    busy = sum(busy1.get(c, 0) - busy0.get(c, 0) for c in busy0) / duration
    out["foreign_load"] = max(0.0, busy - server_util - res["cpu_s"] / duration) \
        if busy0 else None
    out["bottleneck"] = ("server" if server_util >= 0.85 else
                         "generator" if gen_util >= 0.85 else "neither")
    if db0 is not None and db1 is not None:  # the database's own process (ScyllaDB store)
        out["db_cpu_s"] = db1 - db0
        out["db_cpu_us_per_msg"] = (db1 - db0) * 1e6 / n if n else None
    if br0 is not None and br1 is not None:  # the Kafka broker's process (not in the server's CPU)
        out["broker_cpu_s"] = br1 - br0
        out["broker_cpu_us_per_msg"] = (br1 - br0) * 1e6 / n if n else None
    # the events relay: events published per second (to Kafka, or to the in-process services)
    pub0, pub1 = gauge_value(m0, "chargeyard_events_published_total"), gauge_value(m1, "chargeyard_events_published_total")
    if pub0 is not None and pub1 is not None:
        out["events_published_per_s"] = (pub1 - pub0) / duration
        out["events_spooled"] = gauge_value(m1, "chargeyard_events_spooled")
    batch = histogram_delta(m0, m1, "chargeyard_db_batch_rows")
    if batch is not None:
        out["db_batch_rows"] = batch
    commit = histogram_delta(m0, m1, "chargeyard_db_batch_commit_duration_seconds")
    if commit is not None:
        out["db_commit_seconds"] = commit
    deferred = gauge_value(m1, "chargeyard_db_deferred_rows")
    if deferred is not None:
        out["db_deferred_rows"] = deferred  # at the window's end: is deferred work keeping up?
        out["db_deferred_rows_start"] = gauge_value(m0, "chargeyard_db_deferred_rows")
    return out


def measure_closed(srv, pool, warmup, duration, gen_cores) -> dict:
    return _window(srv, pool, {"cmd": "closed"}, warmup, duration, gen_cores)


def measure_open(srv, pool, rate, warmup, duration, gen_cores) -> dict:
    per_worker = rate / len(pool.workers)
    out = _window(srv, pool, {"cmd": "open", "rate": per_worker}, warmup, duration, gen_cores)
    out["offered_per_s"] = rate
    return out


def measure_periodic(srv, pool, mode, interval_s, heartbeat_s, warmup, duration,
                     gen_cores, status_interval_s: float = 0.0) -> dict:
    cmd = {"cmd": mode, "interval_s": interval_s, "heartbeat_interval_s": heartbeat_s,
           "status_interval_s": status_interval_s}
    return _window(srv, pool, cmd, warmup, duration, gen_cores)


def measure_storm(srv, pool, timeout: float, command: dict | None = None) -> dict:
    """``command``: another storm-shaped generator command (e.g. ``rejoin`` after a
    server restart, bench/auth_phase.py), measured the same way."""
    at = time.monotonic() + 0.3
    cpu0 = srv.cpu()
    res = pool.command(dict(command or {"cmd": "storm"}, at=at, timeout=timeout), timeout + 30)
    cpu1 = srv.cpu()
    target = sum(r["storm_target"] for r in res)
    ready = sum(r["ready"] for r in res)
    done = [r["storm_done_at"] for r in res]
    complete = all(d is not None for d in done)
    absorb = (max(done) - at) if complete else None
    elapsed = max(r["wall_s"] for r in res)
    gen_cpu = sum(r["cpu_s"] for r in res)
    errs: dict[str, int] = {}
    for r in res:
        for k, v in r.get("connect_errors", {}).items():
            errs[k] = errs.get(k, 0) + v
    return {"chargers": target, "reconnected": ready, "complete": complete,
            "absorb_s": absorb,
            # when incomplete: what came back within the timeout, per second
            "reconnects_per_s": (target / absorb if absorb else ready / elapsed
                                 if elapsed else None),
            "gen_util": gen_cpu / elapsed if elapsed else None,
            "server_cpu_s": cpu1 - cpu0,
            "cpu_us_per_reconnect": (cpu1 - cpu0) * 1e6 / max(1, ready),
            "connect_errors": errs}
