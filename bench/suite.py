"""The standard comparison and single-profile runs, as plain functions.

``compare`` puts the three servers through the same load with the same pinning, one
after the other: closed loop at the standard size, an offered-load sweep relative to
each server's own measured capacity, a reconnect storm, a connection sweep, and idle
memory on a fresh server process.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources

from . import kafka_variant, runner
from .runner import GenPool, TargetFailed, start_server


def load_profile(name_or_path: str) -> dict:
    if os.path.exists(name_or_path):
        with open(name_or_path, "rb") as f:
            return tomllib.load(f)
    ref = resources.files("chargeyard.bench") / "profiles" / f"{name_or_path}.toml"
    if not ref.is_file():
        names = sorted(p.name[:-5] for p in (resources.files("chargeyard.bench") / "profiles")
                       .iterdir() if p.name.endswith(".toml"))
        raise SystemExit(f"unknown profile {name_or_path!r}; known: {', '.join(names)}")
    return tomllib.loads(ref.read_text())


def gen_config(profile: dict) -> dict:
    keys = ("protocol", "start_transactions", "action", "sampled_values",
            "heartbeat_interval_s", "reconnect", "connect_concurrency", "read_buffer")
    cfg = {k: profile[k] for k in keys if k in profile}
    cfg.setdefault("setup_timeout_s", 300)
    return cfg


@dataclass
class Options:
    targets: list[str] = field(default_factory=lambda: ["echo", "ocpp-baseline", "chargeyard"])
    chargeyard_cmd: str | None = None
    chargers: int = 1000
    warmup_s: float = 2.0
    duration_s: float = 10.0
    sweep_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    sweep_duration_s: float = 5.0
    conn_levels: list[int] = field(default_factory=lambda: [100, 1000, 4000])
    conn_duration_s: float = 4.0
    memory_levels: list[int] = field(default_factory=lambda: [1000, 10000, 50000])
    metering_interval_s: float = 1.0
    idle_cpu_s: float = 3.0
    storm: bool = True
    storm_at_memory_top: bool = True
    storm_timeout_s: float = 60.0
    server_cpus: str | None = "0"
    gen_cpus: str | None = "1"
    gen_procs: int = 1
    ready_timeout_s: float = 30.0
    protocol: str = "ocpp1.6"
    rounds: int = 2            # extra closed-loop rounds, the servers taken in turn (drift)
    round_s: float = 5.0
    kafka: bool = False        # also the worker publishing to a local Kafka broker, in the same run
    store: str = "sqlite"      # scylla: also the worker on the ScyllaDB store, in the same run
    scylla_hosts: str | None = None  # its CQL server (default: a local Cassandra, tests/cassandra)
    auth_storm: bool = True    # the storm of password-authenticated chargers after a restart
    auth_storm_chargers: int = 0  # its fleet (0: ``chargers``, the unauthenticated storm's)


def _gen_cores(cpus: str | None) -> int:
    if not cpus:
        return os.cpu_count() or 1
    n = 0
    for part in cpus.split(","):
        a, _, b = part.partition("-")
        n += (int(b) - int(a) + 1) if b else 1
    return n


def meta(o: Options) -> dict:
    import picows
    try:
        import websockets
        ws_version = websockets.__version__
    except ImportError:
        ws_version = None
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": sys.version.split()[0], "picows": getattr(picows, "__version__", None),
        "websockets": ws_version, "rlimit_nofile_hard": runner.nofile_hard(),
        "loadavg_at_start": os.getloadavg(),
        "pinning": {"server": runner.taskset_prefix(o.server_cpus) and o.server_cpus,
                    "generator": runner.taskset_prefix(o.gen_cpus) and o.gen_cpus},
        "options": asdict(o),
    }


def _log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _store_note(r: dict) -> str:
    """The durable path at a glance: mean rows and milliseconds per commit, rows deferred."""
    rows, secs = r.get("db_batch_rows"), r.get("db_commit_seconds")
    if not rows or not rows.get("count"):
        return ""
    note = f"; {rows['mean']:.0f} rows/commit"
    if secs and secs.get("count"):
        note += f", {secs['mean'] * 1e3:.2f} ms/commit"
    if r.get("db_deferred_rows") is not None:
        note += f", {r['db_deferred_rows']:.0f} rows deferred"
    return note


def memory_phase(name: str, spec: dict, o: Options, logdir: str) -> dict:
    cap = runner.nofile_hard() - 256
    levels = sorted({min(level, cap) for level in o.memory_levels})
    out = {"levels": [], "cap": cap,
           "capped": any(level > cap for level in o.memory_levels),
           "note": (f"connections capped at {cap} by RLIMIT_NOFILE hard limit "
                    f"{runner.nofile_hard()} of the server process")
           if any(level > cap for level in o.memory_levels) else None}
    idle = load_profile("idle")
    cfg = dict(gen_config(idle), protocol=o.protocol, start_transactions=False,
               action="Heartbeat", connect_concurrency=200,
               reconnect=load_profile("reconnect-storm")["reconnect"])
    srv = start_server(name, spec, o.server_cpus, logdir, o.ready_timeout_s)
    pool: GenPool | None = None
    try:
        time.sleep(0.5)
        rss0 = srv.rss()
        out["rss_empty_bytes"] = rss0
        cur = 0
        for level in levels:
            add = level - cur
            if add <= 0:
                continue
            if pool is None:
                pool = GenPool(srv.url, add, cfg, o.gen_procs, o.gen_cpus, logdir,
                               prefix=f"mem{level}", server_cpus=o.server_cpus)
            else:
                pool.add(add, cfg, o.gen_procs, prefix=f"mem{level}")
            ready = pool.wait_ready(timeout=600)
            cur += ready["connected"]
            time.sleep(1.0)
            rss = srv.rss()
            row = {"requested": level, "conns": cur, "failed": ready["failed"],
                   "setup_s": ready["setup_s"], "rss_bytes": rss, "rss_delta_bytes": rss - rss0,
                   "kib_per_conn": (rss - rss0) / cur / 1024 if cur else None}
            out["levels"].append(row)
            _log(f"  {name} memory: {cur} conns, {row['kib_per_conn']:.1f} KiB/conn")
            if ready["failed"]:
                out["note"] = (out["note"] or "") + f" {ready['failed']} connects failed at {level};"
                break
        if cur and o.idle_cpu_s > 0:
            # what idle connections cost in CPU (pings, timers), no messages sent
            c0 = srv.cpu()
            time.sleep(o.idle_cpu_s)
            out["idle_cpu_us_per_conn_s"] = (srv.cpu() - c0) * 1e6 / o.idle_cpu_s / cur
            out["idle_cpu_conns"] = cur
        if cur and o.storm_at_memory_top:
            storm = runner.measure_storm(srv, pool, o.storm_timeout_s)
            out["storm"] = storm
            _log(f"  {name} storm of {storm['chargers']}: absorbed in {storm['absorb_s']} s "
                 f"({storm['reconnected']} back)")
    finally:
        if pool is not None:
            pool.close()
        srv.stop()
    return out


def bench_target(name: str, spec: dict, o: Options, logdir: str) -> dict:
    res: dict = {"label": spec["label"], "role": spec["role"], "available": False}
    # a variant of the worker (events to no consumer, Kafka on) is there for its CPU per
    # message beside the worker's: the closed loop and half load, not the whole tour
    variant = bool(spec.get("variant"))
    burst = load_profile("burst")
    cfg = dict(gen_config(burst), protocol=o.protocol,
               reconnect=load_profile("reconnect-storm")["reconnect"])
    cores = _gen_cores(o.gen_cpus)
    _log(f"{name}: starting")
    try:
        srv = start_server(name, spec, o.server_cpus, logdir, o.ready_timeout_s)
    except TargetFailed as exc:
        res["unavailable"] = str(exc)
        _log(f"{name}: UNAVAILABLE: {exc}")
        return res
    res["available"] = True
    res["connections"] = []
    try:
        pool = GenPool(srv.url, o.chargers, cfg, o.gen_procs, o.gen_cpus, logdir, prefix="main", server_cpus=o.server_cpus)
        try:
            res["setup"] = pool.wait_ready(timeout=600)
            _log(f"{name}: {res['setup']['connected']} chargers ready "
                 f"in {res['setup']['setup_s']:.1f}s")
            closed = runner.measure_closed(srv, pool, o.warmup_s, o.duration_s, cores)
            closed["chargers"] = res["setup"]["connected"]
            res["closed"] = closed
            _log(f"{name}: closed loop {closed['msgs_per_s']:.0f} msg/s, "
                 f"{closed['cpu_us_per_msg'] or 0:.1f} us/msg, bottleneck {closed['bottleneck']}"
                 f"{_store_note(closed)}")
            cap = closed["msgs_per_s"]
            res["sweep"] = []
            fractions = [0.5] if variant else list(o.sweep_fractions)
            if spec.get("kafka") and 0.5 not in fractions:  # commit -> consumer latency is at half load
                fractions.append(0.5)
            for frac in fractions:
                if cap <= 0:
                    break
                if spec.get("kafka") and frac == 0.5:
                    r = _kafka_half_load(srv, pool, frac * cap, o, cores, logdir)
                else:
                    r = runner.measure_open(srv, pool, frac * cap, min(1.0, o.warmup_s),
                                            o.sweep_duration_s, cores)
                r["fraction"] = frac
                res["sweep"].append(r)
                _log(f"{name}: offered {frac:.0%} = {frac * cap:.0f}/s -> "
                     f"{r['msgs_per_s']:.0f}/s p99 {r['p99_ms'] or 0:.2f} ms{_store_note(r)}")
            if o.metering_interval_s > 0 and not variant:
                # the fleet's shape at a low rate: each charger every interval, own phase
                r = runner.measure_periodic(srv, pool, "interval", o.metering_interval_s, 0,
                                            min(1.0, o.warmup_s), o.sweep_duration_s, cores)
                r["interval_s"] = o.metering_interval_s
                res["metering"] = r
                _log(f"{name}: metering every {o.metering_interval_s:g}s -> "
                     f"{r['msgs_per_s']:.0f}/s, {r['cpu_us_per_msg'] or 0:.0f} us/msg, "
                     f"p99 {r['p99_ms'] or 0:.2f} ms")
            if o.storm and not variant:
                res["storm"] = runner.measure_storm(srv, pool, o.storm_timeout_s)
                _log(f"{name}: storm of {res['storm']['chargers']} absorbed in "
                     f"{res['storm']['absorb_s']} s")
        finally:
            pool.close()
        for level in [] if variant else o.conn_levels:
            if level == o.chargers:
                res["connections"].append({"conns": closed["chargers"], **{
                    k: closed[k] for k in ("msgs_per_s", "cpu_us_per_msg", "p50_ms", "p99_ms",
                                           "bottleneck")}})
                continue
            p = GenPool(srv.url, level, cfg, o.gen_procs, o.gen_cpus, logdir, prefix=f"c{level}", server_cpus=o.server_cpus)
            try:
                ready = p.wait_ready(timeout=600)
                r = runner.measure_closed(srv, p, min(1.0, o.warmup_s), o.conn_duration_s, cores)
                res["connections"].append({"conns": ready["connected"], **{
                    k: r[k] for k in ("msgs_per_s", "cpu_us_per_msg", "p50_ms", "p99_ms",
                                      "bottleneck")}})
                _log(f"{name}: {level} conns closed loop {r['msgs_per_s']:.0f} msg/s")
            finally:
                p.close()
    except Exception as exc:  # keep the other servers' results
        res["error"] = f"{type(exc).__name__}: {exc}"
        _log(f"{name}: ERROR {res['error']}")
    finally:
        srv.stop()
    res["connections"].sort(key=lambda r: r["conns"])
    if o.memory_levels and not variant:
        try:
            res["memory"] = memory_phase(name, spec, o, logdir)
        except Exception as exc:
            res["memory"] = {"error": f"{type(exc).__name__}: {exc}", "levels": []}
            _log(f"{name}: memory ERROR {res['memory']['error']}")
    return res


def _kafka_half_load(srv, pool, rate: float, o: Options, cores: int, logdir: str) -> dict:
    """The Kafka target's half-load window, with the commit -> consumer latency consumer
    reading the topic meanwhile (on the generator's cores); without it if it cannot start."""
    try:
        return kafka_variant.measure_half_load(srv, pool, rate, min(1.0, o.warmup_s), o.sweep_duration_s,
                                               cores, runner.KAFKA["bootstrap"], o.gen_cpus, logdir)
    except (RuntimeError, OSError, ValueError) as exc:
        _log(f"kafka: no latency measured: {exc}")
        r = runner.measure_open(srv, pool, rate, min(1.0, o.warmup_s), o.sweep_duration_s, cores)
        r["kafka_latency_error"] = f"{type(exc).__name__}: {exc}"
        return r


def _ratio(a, b):
    return a / b if a and b else None


def auth_storm(o: Options, logdir: str, chargeyard: dict) -> dict:
    """The reconnect storm of password-authenticated chargers after a worker restart
    (bench/auth_phase.py), beside the unauthenticated storm of this run, as a ratio."""
    from . import auth_phase

    _, spec = runner.resolve_target("chargeyard", o.chargeyard_cmd)
    cfg = dict(gen_config(load_profile("burst")), protocol=o.protocol,
               reconnect=load_profile("reconnect-storm")["reconnect"])  # as bench_target's storm
    out = auth_phase.measure(spec, o.auth_storm_chargers or o.chargers, cfg, o, logdir)
    plain = chargeyard.get("storm") or {}
    out["unauthenticated_absorb_s"] = plain.get("absorb_s")
    out["unauthenticated_chargers"] = plain.get("chargers")
    out["ratio_vs_unauthenticated"] = _ratio((out.get("storm") or {}).get("absorb_s"), plain.get("absorb_s"))
    return out


def summarize(results: dict) -> None:
    """Top-level figures: per server, and Chargeyard against baseline and ceiling."""
    by_role = {s["role"]: (n, s) for n, s in results["servers"].items()}
    results["msgs_per_s"] = {n: s.get("closed", {}).get("msgs_per_s")
                             for n, s in results["servers"].items()}
    results["cpu_us_per_msg"] = {n: s.get("closed", {}).get("cpu_us_per_msg")
                                 for n, s in results["servers"].items()}
    _round_ratios(results, {role: n for role, (n, _) in by_role.items()})
    # the main closed loop's ratios (round 0); CPU per message is Chargeyard / other, lower
    # is better (targets <= 1/30 and <= 1.6)
    results.update(results["round_ratios"]["per_round"][0])

    cy_srv = by_role.get("chargeyard", (None, {}))[1]
    p99_half = next((r["p99_ms"] for r in cy_srv.get("sweep", []) if r.get("fraction") == 0.5), None)
    mem = [lv for lv in cy_srv.get("memory", {}).get("levels", [])]
    mem_top = mem[-1] if mem else {}
    # the ratio targets are judged on the median of the rounds (one round: the main closed loop)
    med = results["round_ratios"]["median"]
    n = results["round_ratios"]["rounds"]
    note = f"median of {n} rounds" if n > 1 else None
    r_base, r_cpu, r_ceil = med["ratio_vs_baseline"], med["cpu_ratio_vs_baseline"], med["cpu_ratio_vs_ceiling"]
    results["targets"] = {
        "msgs_per_s_vs_baseline >= 30x": _verdict(r_base, r_base is not None and r_base >= 30, note),
        "cpu_per_msg_vs_baseline >= 30x better": _verdict(
            1 / r_cpu if r_cpu else None, r_cpu is not None and r_cpu <= 1 / 30, note),
        "cpu_per_msg <= 1.6x ceiling": _verdict(r_ceil, r_ceil is not None and r_ceil <= 1.6, note),
        "p99 <= 5 ms at 50% capacity": _verdict(p99_half, p99_half is not None and p99_half <= 5),
        "idle memory <= 12 KiB/conn at 50k": _verdict(
            mem_top.get("kib_per_conn"),
            mem_top.get("kib_per_conn") is not None and mem_top["kib_per_conn"] <= 12,
            _memory_note(mem_top, cy_srv.get("memory", {})), judged=(mem_top.get("conns") or 0) >= 50_000),
    }


def _memory_note(top: dict, memory: dict) -> str | None:
    """Where idle memory was measured; below 50k connections the target is not judged."""
    if not top:
        return None
    if (top.get("conns") or 0) >= 50_000:
        return f"at {top['conns']} connections"
    why = memory.get("note") or "fewer levels asked for"
    return f"at {top.get('conns')} connections; 50k not reached: {why}"


def _round_ratios(results: dict, names: dict) -> None:
    """The four ratios per round (the main closed loop is round 0) and their medians, in
    ``results["round_ratios"]``; a ratio needs both servers measured in that round."""
    rounds = [{n: s.get("closed", {}) for n, s in results["servers"].items()}] + results.get("rounds", [])
    cy, base, ceil = names.get("chargeyard"), names.get("baseline"), names.get("ceiling")
    keys = {"ratio_vs_baseline": ("msgs_per_s", cy, base), "ratio_vs_ceiling": ("msgs_per_s", cy, ceil),
            "cpu_ratio_vs_baseline": ("cpu_us_per_msg", cy, base),
            "cpu_ratio_vs_ceiling": ("cpu_us_per_msg", cy, ceil)}
    per_round = []
    for row in rounds:
        per_round.append({k: _ratio((row.get(a) or {}).get(f), (row.get(b) or {}).get(f))
                          for k, (f, a, b) in keys.items()})
    medians = {}
    for k in keys:
        vals = [r[k] for r in per_round if r[k] is not None]
        medians[k] = statistics.median(vals) if vals else None
    results["round_ratios"] = {"per_round": per_round, "median": medians, "rounds": len(per_round)}


def _verdict(value, met: bool, note: str | None = None, judged: bool = True) -> dict:
    """A target's line: ``met`` is None (not measured) without a value, or when what was
    measured is not what the target names (``judged`` False)."""
    return {"measured": value, "met": bool(met) if value is not None and judged else None, "note": note}


def compare(o: Options, logdir: str) -> dict:
    results = {"kind": "compare", "meta": meta(o), "servers": {}}
    specs = {}
    targets = list(o.targets)
    db = None
    if o.store == "scylla":
        if "chargeyard-scylla" not in targets:  # next to the SQLite worker: the same run
            at = targets.index("chargeyard") + 1 if "chargeyard" in targets else len(targets)
            targets.insert(at, "chargeyard-scylla")
        db = _start_scylla(o, logdir)
    elif o.store != "sqlite":
        raise SystemExit(f"--store {o.store}: sqlite or scylla")
    broker = None
    if o.kafka:
        # right after the worker without Kafka, in the same run: the worker whose events
        # nobody consumes (the baseline), then the worker publishing them to Kafka
        at = targets.index("chargeyard") + 1 if "chargeyard" in targets else len(targets)
        for name in ("chargeyard-bare", "chargeyard-kafka"):
            if name not in targets:
                targets.insert(at, name)
                at += 1
        try:
            broker = kafka_variant.start_broker(o.server_cpus, o.gen_cpus, logdir)
            runner.use_kafka(broker.bootstrap, broker.pid)
            results["kafka_broker"] = {"bootstrap": broker.bootstrap, "cpus": broker.cpus}
        except Exception as exc:  # no Java, no jars, no start: the other targets still run
            runner.use_kafka(None, None)
            results["kafka_broker"] = {"error": f"{type(exc).__name__}: {exc}"}
            _log(f"kafka: the broker did not start, chargeyard-kafka is unavailable: {exc}")
    try:
        for t in targets:
            name, spec = runner.resolve_target(t, o.chargeyard_cmd)
            specs[name] = spec
            results["servers"][name] = bench_target(name, spec, o, logdir)
        if o.auth_storm and o.storm and results["servers"].get("chargeyard", {}).get("available"):
            results["auth_storm"] = auth_storm(o, logdir, results["servers"]["chargeyard"])
        if o.rounds > 0:
            available = {n: sp for n, sp in specs.items() if results["servers"][n].get("available")}
            results["rounds"] = closed_rounds(available, o, logdir)
    finally:
        if db is not None:
            db.stop()
        if broker is not None:
            broker.stop()
            runner.use_kafka(None, None)
    summarize(results)
    results["stores"] = store_table(results)
    kafka = kafka_variant.kafka_table(results)
    if kafka is not None:
        results["kafka"] = kafka
        results["targets"][f"cpu_per_msg Kafka on <= {kafka_variant.CPU_RATIO_MAX:.2f}x off"] = _verdict(
            kafka["cpu_ratio_median"], bool(kafka["met"]),
            f"median of {kafka['rounds']} rounds" if kafka["rounds"] > 1 else None)
        _log(f"kafka: worker CPU/msg on/off {_fmt(kafka['cpu_ratio_median'] and kafka['cpu_ratio_median'] * 100)} %, "
             f"relay {_fmt(kafka['relay_events_per_s'])} events/s at saturation, commit -> consumer "
             f"p50 {_fmt(kafka['latency_p50_ms'])} ms p99 {_fmt(kafka['latency_p99_ms'])} ms at half load, "
             f"broker {_fmt(kafka['broker_cpu_us_per_msg'])} us/msg")
    for row in results["stores"]:
        _log(f"store {row['store']}: {_fmt(row['cpu_us_per_msg'])} us/msg worker CPU, "
             f"{_fmt(row['rows_per_batch'])} rows/batch, p99 {_fmt(row['p99_ms_half_load'])} ms at 50%, "
             f"database {_fmt(row['db_cpu_us_per_msg'])} us/msg")
    return results


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def store_table(results: dict) -> list[dict]:
    """Per store, from the same run (issue 21): the worker's CPU per message and rows per
    batch in the closed loop, p99 at half load, and the database process's CPU per message
    (SQLite runs inside the worker: its CPU is in the worker's)."""
    rows = []
    for store, role in (("sqlite", "chargeyard"), ("scylla", "chargeyard-scylla")):
        srv = next((s for s in results["servers"].values() if s.get("role") == role and s.get("available")), None)
        if srv is None:
            continue
        closed = srv.get("closed", {})
        batch = closed.get("db_batch_rows") or {}
        rows.append({
            "store": store, "cpu_us_per_msg": closed.get("cpu_us_per_msg"),
            "rows_per_batch": batch.get("mean") if batch.get("count") else None,
            "p99_ms_half_load": next((r["p99_ms"] for r in srv.get("sweep", []) if r.get("fraction") == 0.5), None),
            "db_cpu_us_per_msg": closed.get("db_cpu_us_per_msg"),
            "db_cpu_note": "in the worker process" if store == "sqlite" else None})
    return rows


class _Scylla:
    """The CQL server of a ``--store scylla`` run: ``--scylla-hosts`` (its CPU is not
    measured), or a local Cassandra started here (``python -m tests.cassandra.server``, from
    a source checkout), whose process tree is measured and stopped at the end."""

    def __init__(self, proc=None) -> None:
        self.proc = proc

    def stop(self) -> None:
        import signal as _signal
        import subprocess as _sp

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGTERM)
            try:
                self.proc.wait(30)
            except _sp.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _start_scylla(o: Options, logdir: str) -> _Scylla:
    import subprocess as _sp

    if o.scylla_hosts:
        runner.use_scylla(o.scylla_hosts, None)
        _log(f"scylla: using {o.scylla_hosts} (database CPU not measured)")
        return _Scylla()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(repo, "tests", "cassandra", "server.py")):
        raise SystemExit("--store scylla needs --scylla-hosts, or a source checkout (tests/cassandra)")
    os.makedirs(logdir, exist_ok=True)
    # not pinned: on the servers' core it would take the worker's CPU; its CPU time is
    # measured by process either way
    cmd = [sys.executable, "-m", "tests.cassandra.server"]
    proc = _sp.Popen(cmd, cwd=repo, stdout=_sp.PIPE, stderr=open(os.path.join(logdir, "cassandra.log"), "ab"),
                     text=True, start_new_session=True, preexec_fn=runner._die_with_parent)
    line = proc.stdout.readline() if proc.stdout else ""  # "Cassandra X on 127.0.0.1:P, ready in ..."
    words = line.split()
    if proc.poll() is not None or "on" not in words:
        _Scylla(proc).stop()
        raise SystemExit(f"--store scylla: the local Cassandra did not start ({line.strip() or 'no output'}; "
                         f"see {logdir}/cassandra.log)")
    hosts = words[words.index("on") + 1].rstrip(",")
    runner.use_scylla(hosts, proc.pid)
    _log(f"scylla: local Cassandra on {hosts}")
    return _Scylla(proc)


def closed_rounds(specs: dict, o: Options, logdir: str) -> list[dict]:
    """``o.rounds`` more closed-loop windows of ``o.round_s`` seconds, each server in turn
    (fresh process, the standard load), so the ratios can be taken round by round: the
    machine's speed drifts over the minutes one server's phases take, not within a round."""
    burst = load_profile("burst")
    cfg = gen_config(burst) | {"protocol": o.protocol}
    cores = _gen_cores(o.gen_cpus)
    rounds = []
    for r in range(1, o.rounds + 1):
        row: dict = {}
        for name, spec in specs.items():
            try:
                srv = start_server(name, spec, o.server_cpus, logdir, o.ready_timeout_s)
            except TargetFailed as exc:
                row[name] = {"error": str(exc)}
                continue
            try:
                pool = GenPool(srv.url, o.chargers, cfg, o.gen_procs, o.gen_cpus, logdir,
                               prefix=f"round{r}", server_cpus=o.server_cpus)
                try:
                    pool.wait_ready(timeout=600)
                    m = runner.measure_closed(srv, pool, min(1.0, o.warmup_s), o.round_s, cores)
                    row[name] = {k: m[k] for k in ("msgs_per_s", "cpu_us_per_msg", "bottleneck")}
                    _log(f"round {r}: {name} {m['msgs_per_s']:.0f} msg/s, "
                         f"{m['cpu_us_per_msg'] or 0:.1f} us/msg")
                finally:
                    pool.close()
            except Exception as exc:  # keep the other rounds
                row[name] = {"error": f"{type(exc).__name__}: {exc}"}
                _log(f"round {r}: {name} ERROR {row[name]['error']}")
            finally:
                srv.stop()
        rounds.append(row)
    return rounds


def run_profile(profile: dict, target: str, o: Options, logdir: str) -> dict:
    """One fleet profile against one server."""
    name, spec = runner.resolve_target(target, o.chargeyard_cmd)
    chargers = int(profile.get("chargers", o.chargers))
    res = {"kind": "run", "profile": profile, "meta": meta(o), "target": name,
           "servers": {name: {"label": spec["label"], "role": spec["role"]}}}
    out = res["servers"][name]
    srv = start_server(name, spec, o.server_cpus, logdir, o.ready_timeout_s)
    out["available"] = True
    cores = _gen_cores(o.gen_cpus)
    try:
        time.sleep(0.3)
        rss0 = srv.rss()
        pool = GenPool(srv.url, chargers, gen_config(profile), o.gen_procs, o.gen_cpus, logdir,
                       prefix=profile.get("name", "run"), server_cpus=o.server_cpus)
        try:
            out["setup"] = pool.wait_ready(timeout=600)
            time.sleep(0.5)
            rss1 = srv.rss()
            out["rss_per_conn_kib"] = (rss1 - rss0) / max(1, out["setup"]["connected"]) / 1024
            mode = profile.get("mode", "closed")
            warm, dur = float(profile.get("warmup_s", 2)), float(profile.get("duration_s", 10))
            if mode == "closed":
                out["closed"] = runner.measure_closed(srv, pool, warm, dur, cores)
            elif mode in ("interval", "idle"):
                out[mode] = runner.measure_periodic(
                    srv, pool, mode, float(profile.get("interval_s", 10)),
                    float(profile.get("heartbeat_interval_s", 300)), warm, dur, cores,
                    float(profile.get("status_interval_s", 0)))
            elif mode == "storm":
                out["storm"] = runner.measure_storm(srv, pool,
                                                    float(profile.get("storm_timeout_s", 60)))
            else:
                raise SystemExit(f"unknown mode {mode!r}")
        finally:
            pool.close()
    finally:
        srv.stop()
    return res


def gen_procs_for(chargers: int, requested: int) -> int:
    return max(requested, math.ceil(chargers / runner.MAX_CONNS_PER_GEN))
