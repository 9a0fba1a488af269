"""``chargeyard-bench compare --kafka``: the worker with and without a Kafka broker, in the
same run (issue 20: CPU per message with Kafka on at most 15 % above Kafka off).

* One local Apache Kafka broker (``chargeyard.kafka_broker``, KRaft, the jars of
  ``~/.cache/chargeyard``) on its own data directory, started once for the run and pinned
  to the generator's cores (or to cores neither side uses, when there are any): the
  worker's core stays the worker's alone, as in production where the broker is another
  machine; the broker's CPU is measured by process and reported apart (ADR 0020).
* Target ``chargeyard-kafka``: the ``chargeyard`` worker with ``--kafka-bootstrap``,
  measured in the same closed-loop rounds as ``chargeyard``.
* At half load, a consumer process (this module's ``main``, aiokafka, on the generator's
  cores) reads ``chargeyard.events`` and takes each record's commit -> receipt latency:
  its receipt time minus the record's timestamp, which the relay sets to the moment the
  row's batch was known synced (the charger's reply goes out then). Kafka timestamps are
  whole milliseconds: a latency reads up to 1 ms high.
* The summary (``kafka_table``): worker CPU µs/msg on and off per round and their median
  ratio against 1.15; the relay's events/s at saturation (``chargeyard_events_published_total``
  over the closed window) beside the events committed; the latency percentiles; the
  broker's CPU µs/msg.

    python -m chargeyard.bench.kafka_variant --bootstrap 127.0.0.1:9092   # the consumer
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from . import procstat, runner

ROLE = "chargeyard-kafka"
CPU_RATIO_MAX = 1.15
TOPIC = "chargeyard.events"  # store/events.py TOPIC (the bench does not import the product's modules)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def broker_cpus(server_cpus: str | None, gen_cpus: str | None) -> str | None:
    """Where the broker runs: cores neither the server nor the generator is pinned to, if
    the machine has any; else the generator's (never the server's: the worker's CPU per
    message is the criterion, and a JVM on its core would take cache and time slices from
    it). None: nothing pinned, nothing to pin to."""
    if not server_cpus and not gen_cpus:
        return None
    used = set(procstat.parse_cpus(server_cpus)) | set(procstat.parse_cpus(gen_cpus))
    free = sorted(set(os.sched_getaffinity(0)) - used)
    if free:
        return ",".join(str(c) for c in free)
    return gen_cpus


class Broker:
    """The run's broker: ``bootstrap``, ``pid`` (its CPU is read by process), ``stop()``."""

    def __init__(self, data: tempfile.TemporaryDirectory, broker, cpus: str | None) -> None:
        self._data = data
        self.broker = broker
        self.cpus = cpus

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def pid(self) -> int | None:
        proc = self.broker.proc
        return proc.pid if proc is not None else None

    def stop(self) -> None:
        try:
            self.broker.stop()
        finally:
            self._data.cleanup()


def start_broker(server_cpus: str | None, gen_cpus: str | None, logdir: str) -> Broker:
    """Start the broker (raises RuntimeError when it cannot: no Java, no jars). Pinned by
    starting it with this process's affinity narrowed to its cores (the JVM and every
    thread it makes inherit it), then restored."""
    from ..kafka_broker import KafkaBroker

    os.makedirs(logdir, exist_ok=True)
    data = tempfile.TemporaryDirectory(prefix="cy-bench-kafka-")
    # the topic's segments are deleted as the run goes (a run writes gigabytes of events)
    broker = KafkaBroker(os.path.join(data.name, "kafka"), log_level="WARN", extra={
        "log.segment.bytes": str(64 << 20), "log.retention.bytes": str(256 << 20),
        "log.retention.check.interval.ms": "20000"})
    cpus = broker_cpus(server_cpus, gen_cpus)
    mine = os.sched_getaffinity(0)
    try:
        if cpus and runner.taskset_prefix(cpus):
            os.sched_setaffinity(0, procstat.parse_cpus(cpus))
        broker.start(timeout=180)
    except BaseException:
        broker.kill()
        data.cleanup()
        raise
    finally:
        os.sched_setaffinity(0, mine)
    try:
        _create_topic(broker.bootstrap)
    except BaseException:
        broker.kill()
        data.cleanup()
        raise
    _log(f"kafka: broker on {broker.bootstrap} (cores {cpus or 'any'}), up in {broker.startup_s:.1f} s")
    return Broker(data, broker, cpus)


def _create_topic(bootstrap: str, timeout: float = 60.0) -> None:
    """The events topic, made before any worker starts: auto-created on a worker's first
    publish it is not there for some seconds, and the first measured window of the Kafka
    target would publish nothing meanwhile. Waits until its partition has a leader."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    async def make() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            deadline = time.monotonic() + timeout
            while not await producer.partitions_for(TOPIC):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {TOPIC} has no partitions after {timeout:.0f} s")
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()
    asyncio.run(make())


# -- the latency consumer ------------------------------------------------------------------


class LatencyProbe:
    """The consumer process of one half-load window: started (and positioned at the
    topic's end) before the window, told the window's wall-clock bounds after it."""

    def __init__(self, bootstrap: str, cpus: str | None, logdir: str) -> None:
        argv = runner.taskset_prefix(cpus) + [sys.executable, "-m", "chargeyard.bench.kafka_variant",
                                              "--bootstrap", bootstrap, "--topic", TOPIC]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(logdir, "kafka-consumer.log"), "ab"),
                                     text=True, start_new_session=True, preexec_fn=runner._die_with_parent)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"kafka latency consumer did not start ({line.strip() or 'no output'}; "
                               f"see {logdir}/kafka-consumer.log)")

    def result(self, start_wall: float, end_wall: float, timeout: float = 30.0) -> dict:
        """The latencies of the records received within [start_wall, end_wall]."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"start": start_wall, "end": end_wall}) + "\n")
        self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def measure_half_load(srv, pool, rate: float, warmup: float, duration: float, cores: int,
                      bootstrap: str, cpus: str | None, logdir: str) -> dict:
    """``runner.measure_open`` at ``rate`` with the latency consumer reading meanwhile;
    the window's result gains ``kafka_latency``."""
    probe = LatencyProbe(bootstrap, cpus, logdir)
    try:
        t0 = time.time()
        r = runner.measure_open(srv, pool, rate, warmup, duration, cores)
        # _window's measured part starts 0.3 s + the warm-up after the call
        start = t0 + 0.3 + warmup
        time.sleep(0.5)  # the last records of the window on their way
        r["kafka_latency"] = probe.result(start, start + duration)
    finally:
        probe.close()
    return r


def _percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


async def _consume(bootstrap: str, topic: str) -> dict:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
                                enable_auto_commit=False, fetch_max_wait_ms=5)
    await consumer.start()
    samples: list[tuple[float, float]] = []  # (receipt, latency ms)
    try:
        while not consumer.assignment():  # positioned at the end before "ready"
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        bounds = loop.run_in_executor(None, sys.stdin.readline)
        while not bounds.done():
            batch = await consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.time()
            now_ms = now * 1000.0
            for records in batch.values():
                for rec in records:
                    samples.append((now, now_ms - rec.timestamp))
        window = json.loads(await bounds)
    finally:
        await consumer.stop()
    lat = sorted(ms for at, ms in samples if window["start"] <= at <= window["end"])
    return {"records": len(lat), "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99),
            "max_ms": lat[-1] if lat else None, "timestamp_resolution_ms": 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="commit -> consumer latency of chargeyard.events "
                                             "(prints 'ready', then one JSON line once a window "
                                             '{"start","end"} in unix seconds arrives on stdin)')
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default=TOPIC)
    args = ap.parse_args(argv)
    import asyncio

    print(json.dumps(asyncio.run(_consume(args.bootstrap, args.topic))), flush=True)
    return 0


# -- the summary -----------------------------------------------------------------------


def kafka_table(results: dict) -> dict | None:
    """Kafka on (``chargeyard-kafka``) against off (``chargeyard``), from the same run: the
    worker's CPU per message per round and the median ratio, judged against 1.15; the
    relay's events/s at saturation; commit -> consumer latency at half load; the broker's
    CPU per message."""
    servers = results.get("servers", {})

    def named(role: str) -> str | None:
        return next((n for n, s in servers.items() if s.get("role") == role and s.get("available")), None)

    on_name = next((n for n, s in servers.items() if s.get("role") == ROLE), None)
    # Kafka off = the worker whose events nobody consumes (--services off); without it, the
    # one-node worker, whose in-process billing and monitoring make Kafka on look cheaper
    bare_name, one_node_name = named("chargeyard-bare"), named("chargeyard")
    off_name = bare_name or one_node_name
    if on_name is None:
        return None
    on, off = servers[on_name], servers.get(off_name or "", {})
    rounds = [{n: s.get("closed", {}) for n, s in servers.items()}] + results.get("rounds", [])
    per_round = []
    for row in rounds:
        a = (row.get(on_name) or {}).get("cpu_us_per_msg")
        b = (row.get(off_name) or {}).get("cpu_us_per_msg") if off_name else None
        c = (row.get(one_node_name) or {}).get("cpu_us_per_msg") if one_node_name else None
        per_round.append({"cpu_us_per_msg_on": a, "cpu_us_per_msg_off": b,
                          "cpu_us_per_msg_one_node": c,
                          "ratio": a / b if a and b else None,
                          "ratio_one_node": a / c if a and c else None})
    ratios = [r["ratio"] for r in per_round if r["ratio"] is not None]
    median = statistics.median(ratios) if ratios else None
    one_node = [r["ratio_one_node"] for r in per_round if r["ratio_one_node"] is not None]
    closed_on, closed_off = on.get("closed") or {}, off.get("closed") or {}
    half = next((r for r in on.get("sweep", []) if r.get("fraction") == 0.5), {})
    lat = half.get("kafka_latency") or {}
    return {
        "available": bool(on.get("available")), "unavailable": on.get("unavailable"),
        "broker": results.get("kafka_broker"),
        "per_round": per_round, "cpu_ratio_median": median, "rounds": len(ratios),
        "off_target": off_name,
        "cpu_ratio_one_node_median": statistics.median(one_node) if one_node else None,
        "cpu_ratio_max": CPU_RATIO_MAX,
        "met": (median <= CPU_RATIO_MAX) if median is not None else None,
        "msgs_per_s_on": closed_on.get("msgs_per_s"), "msgs_per_s_off": closed_off.get("msgs_per_s"),
        "relay_events_per_s": closed_on.get("events_published_per_s"),
        "relay_events_per_s_off": closed_off.get("events_published_per_s"),
        "events_spooled_at_end": closed_on.get("events_spooled"),
        "broker_cpu_us_per_msg": closed_on.get("broker_cpu_us_per_msg"),
        "latency_rate_per_s": half.get("msgs_per_s"),
        "latency_records": lat.get("records"), "latency_p50_ms": lat.get("p50_ms"),
        "latency_p99_ms": lat.get("p99_ms"), "latency_error": half.get("kafka_latency_error"),
    }


def markdown(k: dict) -> list[str]:
    """The report's "Kafka" section."""
    def f(v, fmt="{:.1f}"):
        return "—" if v is None else fmt.format(v)
    lines = ["## Kafka (the same run: the worker with and without a broker, `--kafka`)", ""]
    if not k.get("available"):
        return lines + [f"Kafka on: unavailable ({(k.get('unavailable') or '').splitlines()[0:1]})", ""]
    verdict = {True: "yes", False: "NO", None: "not measured"}[k["met"]]
    lines += ["| round | worker CPU µs/msg, Kafka off (events to no consumer) | Kafka on | on / off "
              "| one node (services in-process) | on / one node |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(k["per_round"]):
        lines.append(f"| {i} | {f(r['cpu_us_per_msg_off'])} | {f(r['cpu_us_per_msg_on'])} | "
                     f"{f(r['ratio'], '{:.3f}x')} | {f(r.get('cpu_us_per_msg_one_node'))} | "
                     f"{f(r.get('ratio_one_node'), '{:.3f}x')} |")
    lines += ["", f"- CPU per message, Kafka on / off: **{f(k['cpu_ratio_median'], '{:.3f}x')}** "
                  f"(median of {k['rounds']} rounds, off = `{k.get('off_target')}`; target <= "
                  f"{k['cpu_ratio_max']:.2f}x: {verdict}); against the one-node worker, whose billing and "
                  f"monitoring run in its process: {f(k.get('cpu_ratio_one_node_median'), '{:.3f}x')}",
              f"- relay at saturation: **{f(k['relay_events_per_s'], '{:,.0f}')} events/s** published to "
              f"Kafka ({f(k['msgs_per_s_on'], '{:,.0f}')} msgs/s; Kafka off, to the in-process services: "
              f"{f(k['relay_events_per_s_off'], '{:,.0f}')} events/s; spooled at the window's end: "
              f"{f(k['events_spooled_at_end'], '{:,.0f}')})",
              f"- commit -> consumer at half load ({f(k['latency_rate_per_s'], '{:,.0f}')} msgs/s, "
              f"{f(k['latency_records'], '{:,}')} events): **p50 {f(k['latency_p50_ms'], '{:.1f}')} ms, "
              f"p99 {f(k['latency_p99_ms'], '{:.1f}')} ms** (Kafka timestamps: whole ms)"
              + (f"; {k['latency_error']}" if k.get("latency_error") else ""),
              f"- broker CPU: {f(k['broker_cpu_us_per_msg'])} µs/msg (not in the worker's; cores "
              f"{(k.get('broker') or {}).get('cpus') or 'any'})", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
