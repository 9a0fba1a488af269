"""Capacity table: from measured per-core figures to a fleet's needs, and the HPA target.

Inputs are the Chargeyard figures of a comparison run (falling back to another server,
with a note, when Chargeyard was not measured). Every assumption is a named constant
below and is repeated in the report; change them here, not in the table.
"""

from __future__ import annotations

import math

import orjson

from . import frames

FLEETS = (10_000, 100_000, 1_000_000)
PROFILES = ("idle", "metering", "burst", "reconnect-storm")

# Assumptions (a worker pod = one core, see k8s/hpa.yaml)
CPU_TARGET = 0.6                 # keep a worker at <= 60 % of its core in steady state
MEM_FOR_CONNS = 1 << 30          # 1 GiB of a worker's memory for connection state
MAX_CONNS_PER_WORKER = 50_000    # fd / kernel comfort cap
MIN_WORKERS = 2                  # high availability
LEASE_RENEW_S = 10 / 3           # registry lease renewed every lease/3 (10 s lease)
REDIS_OPS_PER_CONNECT = 2        # INCR epoch + SET owner
REDIS_OPS_PER_DISCONNECT = 1     # compare-and-delete (one script)
KAFKA_ENVELOPE = {"id": "0f3c5b6e-7c1a-4d0e-9a51-2b8f7e0c9d11", "type": "transaction.meter",
                  "source": "chargeyard/worker-00", "time": "2026-01-01T00:00:00.000Z",
                  "charger_id": "CY-000000000001"}


def _event_bytes(data: dict, kind: str) -> int:
    return len(orjson.dumps(dict(KAFKA_ENVELOPE, type=kind, data=data)))


def _meter_event_bytes() -> int:
    tmpl = frames.meter_values16(123456, 45678, 4)
    payload = orjson.loads(tmpl % (b"1", 0))[3]
    return _event_bytes(payload, "transaction.meter")


def _status_event_bytes() -> int:
    return _event_bytes(frames.status16("Charging")[1], "charger.status")


def util_curve(server: dict) -> list[tuple[float, float]]:
    """(messages/s, server core utilisation) points measured on one core, rate-sorted.

    Includes the low-rate metering point and the open-loop sweep, so fixed costs
    (small commits, timers) are priced in where a real fleet runs, not only at saturation.
    """
    pts = [(0.0, 0.0)]
    for r in [server.get("metering") or {}] + list(server.get("sweep", [])) + \
            [server.get("closed") or {}]:
        if r.get("msgs_per_s") and r.get("server_util") is not None:
            pts.append((r["msgs_per_s"], r["server_util"]))
    pts.sort()
    # keep it monotonic: utilisation never falls as the rate rises
    out, top = [], 0.0
    for rate, util in pts:
        top = max(top, util)
        out.append((rate, top))
    return out


def util_at(curve: list[tuple[float, float]], rate: float) -> float:
    for (r0, u0), (r1, u1) in zip(curve, curve[1:]):
        if rate <= r1:
            return u0 + (u1 - u0) * (rate - r0) / (r1 - r0) if r1 > r0 else u1
    r1, u1 = curve[-1]
    return u1 * rate / r1 if r1 else float("inf")  # beyond saturation: linear


def per_core_inputs(results: dict) -> dict:
    servers = results.get("servers", {})
    order = sorted(servers.items(), key=lambda kv: kv[1].get("role") != "chargeyard")
    for name, s in order:
        closed = s.get("closed") or {}
        if closed.get("cpu_us_per_msg"):
            memory = s.get("memory") or {}
            mem = memory.get("levels") or []
            storm = memory.get("storm") or s.get("storm") or {}  # the bigger storm first
            half = next((r for r in s.get("sweep", []) if r.get("fraction") == 0.5), {})
            batch = ((s.get("metering") or {}).get("db_batch_rows") or half.get("db_batch_rows")
                     or closed.get("db_batch_rows") or {}).get("mean")
            return {
                "source": name, "source_role": s.get("role"),
                "cpu_us_per_msg": closed["cpu_us_per_msg"],
                "cpu_us_per_msg_metering": (s.get("metering") or {}).get("cpu_us_per_msg"),
                "util_curve": util_curve(s),
                "kib_per_conn": mem[-1]["kib_per_conn"] if mem else 32.0,
                "kib_per_conn_measured": bool(mem),
                "idle_cpu_us_per_conn_s": memory.get("idle_cpu_us_per_conn_s") or 0.0,
                "cpu_us_per_reconnect": storm.get("cpu_us_per_reconnect") or 1000.0,
                "reconnects_per_s": storm.get("reconnects_per_s"),
                "storm_chargers": storm.get("chargers"),
                "rows_per_batch": batch,
            }
    return {}


def fleet_rates(profile: dict) -> dict:
    f = profile.get("fleet", {})
    hb = float(f.get("heartbeat_interval_s", 300))
    meter = float(f.get("meter_interval_s", 0))
    status = float(f.get("status_per_hour", 0)) / 3600
    reconn = float(f.get("reconnects_per_day", 1)) / 86400
    meter_rate = 1 / meter if meter > 0 else 0.0
    return {"msgs": (1 / hb if hb > 0 else 0) + meter_rate + status + 2 * reconn,
            "meter": meter_rate, "status": status, "reconnect": reconn,
            "storm_target_s": float(f.get("storm_absorb_target_s", 60))}


def worker_util(conns: int, r: dict, inp: dict) -> float:
    """Core utilisation of one worker holding `conns` chargers of this profile."""
    return (util_at(inp["util_curve"], conns * r["msgs"])
            + conns * inp["idle_cpu_us_per_conn_s"] / 1e6
            + conns * r["reconnect"] * inp["cpu_us_per_reconnect"] / 1e6)


def cpu_bound_conns(r: dict, inp: dict) -> int:
    lo, hi = 0, MAX_CONNS_PER_WORKER
    if worker_util(hi, r, inp) <= CPU_TARGET:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if worker_util(mid, r, inp) <= CPU_TARGET:
            lo = mid
        else:
            hi = mid
    return max(1, lo)


def table(results: dict, profiles: dict[str, dict]) -> dict:
    inp = per_core_inputs(results)
    if not inp:
        return {"error": "no server with a CPU-per-message figure"}
    recon_cpu = inp["cpu_us_per_reconnect"] / 1e6
    mem_bound = int(MEM_FOR_CONNS / (inp["kib_per_conn"] * 1024))
    meter_ev, status_ev = _meter_event_bytes(), _status_event_bytes()
    rows, per_worker = [], {}
    for pname in PROFILES:
        prof = profiles.get(pname)
        if prof is None:
            continue
        r = fleet_rates(prof)
        conns = max(1, min(cpu_bound_conns(r, inp), mem_bound, MAX_CONNS_PER_WORKER))
        if pname == "reconnect-storm" and inp.get("reconnects_per_s"):
            # after a fleet-wide drop each worker re-admits its share within the target
            conns = max(1, min(conns, int(inp["reconnects_per_s"] * r["storm_target_s"])))
        per_worker[pname] = conns
        for n in FLEETS:
            workers = max(MIN_WORKERS, math.ceil(n / conns))
            redis = workers / LEASE_RENEW_S + n * r["reconnect"] * (
                REDIS_OPS_PER_CONNECT + REDIS_OPS_PER_DISCONNECT)
            if pname == "reconnect-storm":
                t = r["storm_target_s"]
                storm_workers = math.ceil(n * recon_cpu / t / 0.9)
                workers = max(workers, storm_workers, MIN_WORKERS)
                redis = workers / LEASE_RENEW_S + n / t * (
                    REDIS_OPS_PER_CONNECT + REDIS_OPS_PER_DISCONNECT)
            store_rows = n * (r["meter"] + r["status"])
            batch = inp["rows_per_batch"]
            kafka = n * (r["meter"] * meter_ev + r["status"] * status_ev +
                         r["reconnect"] * 2 * 300) / 1e6
            rows.append({"profile": pname, "chargers": n, "workers": workers,
                         "conns_per_worker": conns, "msgs_per_s": n * r["msgs"],
                         "redis_ops_per_s": redis, "store_rows_per_s": store_rows,
                         "store_commits_per_s": store_rows / batch if batch else None,
                         "kafka_mb_per_s": kafka})
    hpa = min(per_worker.get(p, MAX_CONNS_PER_WORKER)
              for p in ("idle", "metering", "reconnect-storm"))
    hpa = max(100, int(hpa * 0.8 // 100 * 100))  # 20 % headroom, round down to 100
    return {"inputs": inp, "rows": rows, "conns_per_worker": per_worker,
            "hpa_target_conns_per_worker": hpa,
            "assumptions": {
                "cpu_target": CPU_TARGET, "mem_for_conns_bytes": MEM_FOR_CONNS,
                "max_conns_per_worker": MAX_CONNS_PER_WORKER, "min_workers": MIN_WORKERS,
                "worker": "one pod = one core, one worker process",
                "cpu_model": "core utilisation interpolated between the measured (rate, "
                             "utilisation) points (metering, sweep, closed loop) + idle "
                             "CPU per connection + reconnect cost; heartbeats priced like "
                             "MeterValues (upper bound)",
                "redis": f"lease renew every {LEASE_RENEW_S:.1f}s per worker; "
                         f"{REDIS_OPS_PER_CONNECT} ops per connect, "
                         f"{REDIS_OPS_PER_DISCONNECT} per disconnect",
                "store": "one row per MeterValues and per StatusNotification; commits = "
                         "rows / rows per commit measured in the metering phase",
                "kafka": f"producer payload only (x replication factor at the brokers); "
                         f"meter event {meter_ev} B, status event {status_ev} B",
                "storm": "a worker re-admits chargers at the rate measured in the biggest "
                         "storm of this run; conns/worker <= that rate x the profile's "
                         "storm_absorb_target_s",
                "hpa": "min(conns/worker for idle, metering, reconnect-storm) minus 20 % "
                       "headroom",
            }}


HPA_TEMPLATE = """\
# Generated by `chargeyard-bench capacity --write-hpa` from {source}.
# Target connections per worker = {target}: the smallest per-worker capacity of the
# idle, metering and reconnect-storm profiles on one core (CPU <= {cpu_pct}% of a core
# at the measured {cpu_us:.1f} us/message at saturation; {kib:.1f} KiB per idle
# connection within 1 GiB; re-admitting its share of a fleet-wide reconnect storm at
# the measured {storm_rate} reconnects/s within {storm_t:g} s), minus 20 % headroom.
# Assumption: one worker process per pod with a 1-core CPU limit, and
# prometheus-adapter exposing the gauge chargeyard_ws_connections (summed over the
# protocol label) as the pods metric `chargeyard_ws_connections`, e.g.
#   rules: - seriesQuery: 'chargeyard_ws_connections{{namespace!="",pod!=""}}'
#            metricsQuery: 'sum(<<.Series>>{{<<.LabelMatchers>>}}) by (<<.GroupBy>>)'
# Re-run the benchmark on the production instance type and regenerate this file.
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: chargeyard-worker
  labels:
    app.kubernetes.io/name: chargeyard
    app.kubernetes.io/component: worker
  annotations:
    chargeyard.io/bench-source: "{source}"
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: StatefulSet
    name: chargeyard-worker
  minReplicas: {min_workers}
  maxReplicas: 200
  metrics:
    - type: Pods
      pods:
        metric:
          name: chargeyard_ws_connections
        target:
          type: AverageValue
          averageValue: "{target}"
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies:
        - type: Percent
          value: 100
          periodSeconds: 60
    scaleDown:
      # scaling down moves chargers (they reconnect elsewhere): do it slowly
      stabilizationWindowSeconds: 900
      policies:
        - type: Pods
          value: 1
          periodSeconds: 300
"""


def hpa_yaml(cap: dict, source: str, storm_t: float = 60.0) -> str:
    inp = cap["inputs"]
    return HPA_TEMPLATE.format(source=source, target=cap["hpa_target_conns_per_worker"],
                               cpu_pct=int(CPU_TARGET * 100), cpu_us=inp["cpu_us_per_msg"],
                               kib=inp["kib_per_conn"], min_workers=MIN_WORKERS,
                               storm_rate=f"{inp['reconnects_per_s']:.0f}"
                               if inp.get("reconnects_per_s") else "(unmeasured)",
                               storm_t=storm_t)
