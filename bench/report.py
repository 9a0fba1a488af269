"""Write ``results.json``, ``report.md`` and PNG plots into a results directory."""

from __future__ import annotations

import json
import os
import time

from . import kafka_variant

ORDER = {"ceiling": 0, "baseline": 1, "chargeyard": 2, "custom": 3}


def _deferred_span(r: dict) -> tuple[float | None, float | None]:
    """A sweep row's deferred rows (the store's gauge) at the window's start and end."""
    return r.get("db_deferred_rows_start"), r.get("db_deferred_rows")


def _deferred(r: dict) -> str:
    a, b = _deferred_span(r)
    if b is None:
        return "—"
    return f"{a:,.0f} → {b:,.0f}" if a is not None else f"{b:,.0f}"


def new_results_dir(root: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(root, stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(root, f"{stamp}-{n}")
    os.makedirs(path)
    return path


def link_latest(root: str, path: str):
    link = os.path.join(root, "latest")
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(path), tmp)
    os.replace(tmp, link)


def _f(v, fmt="{:,.0f}", none="—"):
    if v is None:
        return none
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def _servers(results):
    return sorted(results["servers"].items(), key=lambda kv: ORDER.get(kv[1].get("role"), 9))


def markdown(results: dict) -> str:
    m = results["meta"]
    o = m["options"]
    servers = _servers(results)
    lines = [f"# Chargeyard benchmark — {results.get('kind')} — {m['timestamp']}", ""]
    lines.append(f"Host {m['host']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}, "
                 f"picows {m.get('picows')}, websockets {m.get('websockets')}; load average at "
                 f"start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}. Server pinned "
                 f"to CPU {m['pinning']['server'] or 'none'}, generator to CPU "
                 f"{m['pinning']['generator'] or 'none'}. Load: {o['chargers']} chargers, "
                 f"{o['protocol']} {'MeterValues' if o['protocol'] == 'ocpp1.6' else 'TransactionEvent(Updated)'} with 4 sampled values, closed loop "
                 f"({o['duration_s']:g} s after {o['warmup_s']:g} s warm-up).")
    lines.append("")
    head = "| | " + " | ".join(s["label"] for _, s in servers) + " |"
    lines += [head, "|---" * (len(servers) + 1) + "|"]

    def row(title, fn):
        lines.append(f"| {title} | " + " | ".join(fn(s) for _, s in servers) + " |")

    def unavailable(s):
        return "unavailable" if not s.get("available") else None

    def closed(key, fmt="{:,.0f}"):
        return lambda s: unavailable(s) or _f((s.get("closed") or {}).get(key), fmt)

    row("messages/s (closed loop)", closed("msgs_per_s"))
    row("server CPU µs / message", closed("cpu_us_per_msg", "{:.1f}"))
    row("server core utilisation", closed("server_util", "{:.0%}"))
    row("generator core utilisation", closed("gen_util", "{:.0%}"))
    row("generator CPU µs / message", closed("gen_cpu_us_per_msg", "{:.1f}"))
    row("bottleneck", closed("bottleneck", "{}"))
    row("others' load on the pinned cores", closed("foreign_load", "{:.0%} of a core"))
    row("closed-loop p50 / p99 (ms)", lambda s: unavailable(s) or
        f"{_f((s.get('closed') or {}).get('p50_ms'), '{:.2f}')} / "
        f"{_f((s.get('closed') or {}).get('p99_ms'), '{:.2f}')}")

    def at_half(s):
        if unavailable(s):
            return "unavailable"
        r = next((r for r in s.get("sweep", []) if r.get("fraction") == 0.5), None)
        if not r:
            return "—"
        return (f"{_f(r['p50_ms'], '{:.2f}')} / {_f(r['p99_ms'], '{:.2f}')} / "
                f"{_f(r['p999_ms'], '{:.2f}')} @ {r['offered_per_s']:,.0f}/s")
    row("p50 / p99 / p99.9 ms at 50 % capacity", at_half)

    def metering(s):
        r = s.get("metering")
        if not r:
            return unavailable(s) or "—"
        return (f"{r['msgs_per_s']:,.0f}/s: {_f(r['cpu_us_per_msg'], '{:.0f}')} µs/msg, "
                f"p99 {_f(r['p99_ms'], '{:.2f}')} ms")
    row("metering (each charger every "
        f"{o.get('metering_interval_s', 1):g} s)", metering)

    def mem(s):
        lv = (s.get("memory") or {}).get("levels") or []
        if not lv:
            return unavailable(s) or (s.get("memory") or {}).get("error", "—")
        return ", ".join(f"{_f(x['kib_per_conn'], '{:.1f}')} @ {x['conns']:,}" for x in lv)
    row("idle memory KiB / conn", mem)

    def storm(s):
        parts = []
        for st in (s.get("storm"), (s.get("memory") or {}).get("storm")):
            if not st:
                continue
            if not st["complete"]:
                parts.append(f"incomplete after {o.get('storm_timeout_s', 60):g} s: "
                             f"{st['reconnected']:,}/{st['chargers']:,}")
            else:
                parts.append(f"{st['absorb_s']:.2f} s for {st['chargers']:,}")
        return unavailable(s) or "; ".join(parts) or "—"
    row("reconnect storm absorbed in", storm)

    def batch(s):
        b = (s.get("closed") or {}).get("db_batch_rows")
        if not b:
            return unavailable(s) or "n/a"
        return f"{_f(b['mean'], '{:.1f}')} mean (p50 ≤ {b['p50_le']}, p99 ≤ {b['p99_le']})"
    row("DB rows per commit (closed loop)", batch)
    lines.append("")

    lines += _auth_storm_lines(results.get("auth_storm"))
    if results.get("kind") == "compare":
        lines += ["## Ratios (Chargeyard / other)", "",
                  "| | vs baseline | vs ceiling |", "|---|---|---|",
                  f"| messages/s | {_f(results.get('ratio_vs_baseline'), '{:.2f}x')} | "
                  f"{_f(results.get('ratio_vs_ceiling'), '{:.2f}x')} |",
                  f"| CPU µs / message | {_f(results.get('cpu_ratio_vs_baseline'), '{:.3f}x')} | "
                  f"{_f(results.get('cpu_ratio_vs_ceiling'), '{:.2f}x')} |", ""]
        lines += ["## Targets (measured and reported, never asserted)", "",
                  "| target | measured | met |", "|---|---|---|"]
        for name, t in results.get("targets", {}).items():
            met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {name} | {_f(t['measured'], '{:.2f}')}{note} | {met} |")
        lines.append("")

    if results.get("stores"):
        lines += ["## Stores (the same run: SQLite and ScyllaDB, `--store scylla`)", "",
                  "| store | worker CPU µs/msg | rows / batch | p99 ms at 50 % | database CPU µs/msg |",
                  "|---|---|---|---|---|"]
        for r in results["stores"]:
            db = _f(r["db_cpu_us_per_msg"], "{:.1f}") if r.get("db_cpu_note") is None else r["db_cpu_note"]
            lines.append(f"| {r['store']} | {_f(r['cpu_us_per_msg'], '{:.1f}')} | "
                         f"{_f(r['rows_per_batch'], '{:.1f}')} | {_f(r['p99_ms_half_load'], '{:.2f}')} | {db} |")
        lines.append("")

    if results.get("kafka"):
        lines += kafka_variant.markdown(results["kafka"])

    rr = results.get("round_ratios") or {}
    if rr.get("rounds", 0) > 1:
        lines += ["## Ratios round by round (the servers in turn; round 0 is the closed loop above)", "",
                  "| round | msgs/s vs baseline | msgs/s vs ceiling | CPU vs baseline | CPU vs ceiling |",
                  "|---|---|---|---|---|"]
        for i, r in enumerate(rr["per_round"]):
            lines.append(f"| {i} | {_f(r['ratio_vs_baseline'], '{:.2f}x')} | "
                         f"{_f(r['ratio_vs_ceiling'], '{:.2f}x')} | "
                         f"{_f(r['cpu_ratio_vs_baseline'], '{:.3f}x')} | "
                         f"{_f(r['cpu_ratio_vs_ceiling'], '{:.2f}x')} |")
        m = rr["median"]
        lines += [f"| median | {_f(m['ratio_vs_baseline'], '{:.2f}x')} | {_f(m['ratio_vs_ceiling'], '{:.2f}x')} | "
                  f"{_f(m['cpu_ratio_vs_baseline'], '{:.3f}x')} | {_f(m['cpu_ratio_vs_ceiling'], '{:.2f}x')} |", ""]
    sweep_rows = [(s["label"], r) for _, s in servers for r in s.get("sweep", [])]
    if sweep_rows:
        lines += ["## Offered load sweep (open loop, relative to each server's capacity)", "",
                  "| server | offered/s | achieved/s | CPU µs/msg | p50 ms | p99 ms | p99.9 ms "
                  "| server / generator core | others' load | rows deferred (start → end) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in sweep_rows:
            lines.append(f"| {label} | {r['offered_per_s']:,.0f} ({r['fraction']:.0%}) | "
                         f"{r['msgs_per_s']:,.0f} | {_f(r['cpu_us_per_msg'], '{:.1f}')} | "
                         f"{_f(r['p50_ms'], '{:.2f}')} | {_f(r['p99_ms'], '{:.2f}')} | "
                         f"{_f(r['p999_ms'], '{:.2f}')} | {r['server_util']:.0%} / "
                         f"{r['gen_util']:.0%} | {_f(r.get('foreign_load'), '{:.0%}')} | "
                         f"{_deferred(r)} |")
        lines.append("")

    conn_rows = [(s["label"], r) for _, s in servers for r in s.get("connections", [])]
    if conn_rows:
        lines += ["## Connections sweep (closed loop)", "",
                  "| server | connections | messages/s | CPU µs/msg | p99 ms | bottleneck |",
                  "|---|---|---|---|---|---|"]
        for label, r in conn_rows:
            lines.append(f"| {label} | {r['conns']:,} | {r['msgs_per_s']:,.0f} | "
                         f"{_f(r['cpu_us_per_msg'], '{:.1f}')} | {_f(r['p99_ms'], '{:.2f}')} | "
                         f"{r['bottleneck']} |")
        lines.append("")

    cap = results.get("capacity")
    if cap and cap.get("rows"):
        inp = cap["inputs"]
        lines += ["## Capacity (per one-core worker, from this run)", "",
                  f"From **{inp['source']}** ({inp['source_role']}, "
                  f"{inp.get('store') or 'unknown'} store): "
                  f"{inp['cpu_us_per_msg']:.1f} µs/message at saturation, "
                  f"{_f(inp.get('cpu_us_per_msg_metering'), '{:.0f}')} µs/message in the "
                  f"metering phase, {_f(inp.get('idle_cpu_us_per_conn_s'), '{:.2f}')} µs/s per "
                  f"idle connection, {inp['kib_per_conn']:.1f} KiB/idle "
                  f"connection{'' if inp['kib_per_conn_measured'] else ' (assumed)'}, "
                  f"{inp['cpu_us_per_reconnect']:.0f} µs/reconnect, "
                  f"{_f(inp.get('reconnects_per_s'), '{:,.0f}')} reconnects/s in a storm of "
                  f"{_f(inp.get('storm_chargers'), '{:,}')}, rows per commit "
                  f"{_f(inp['rows_per_batch'], '{:.1f}')}. "
                  f"**HPA target: {cap['hpa_target_conns_per_worker']:,} connections per "
                  f"worker** (k8s/hpa.yaml).", "",
                  "| profile | chargers | workers | conns/worker | msgs/s | Redis ops/s | "
                  "store rows/s | store commits/s | Kafka MB/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in cap["rows"]:
            lines.append(f"| {r['profile']} | {r['chargers']:,} | {r['workers']:,} | "
                         f"{r['conns_per_worker']:,} | {r['msgs_per_s']:,.0f} | "
                         f"{r['redis_ops_per_s']:,.0f} | {r['store_rows_per_s']:,.0f} | "
                         f"{_f(r['store_commits_per_s'], '{:,.0f}')} | "
                         f"{r['kafka_mb_per_s']:.2f} |")
        lines += ["", "Assumptions: " + "; ".join(f"{k}: {v}" for k, v in
                                                  cap["assumptions"].items()), ""]

    notes = []
    for name, s in servers:
        if not s.get("available"):
            notes.append(f"- **{s['label']}** unavailable: "
                         f"`{(s.get('unavailable') or '').splitlines()[0] if s.get('unavailable') else ''}`")
        if s.get("error"):
            notes.append(f"- {s['label']}: {s['error']}")
        c = s.get("closed") or {}
        if c.get("bottleneck") == "generator":
            notes.append(f"- {s['label']}: the generator was the bottleneck (its core at "
                         f"{c['gen_util']:.0%}); messages/s is a lower bound for this server, "
                         f"CPU µs/message still holds (server CPU time / messages).")
        if c.get("errors"):
            notes.append(f"- {s['label']}: {c['errors']} CALLERRORs, e.g. `{c.get('error_sample')}`")
        noisy = [r for r in [c] + list(s.get("sweep", [])) + [s.get("metering") or {}]
                 if (r.get("foreign_load") or 0) >= 0.2]
        if noisy:
            worst = max(r["foreign_load"] for r in noisy)
            notes.append(f"- {s['label']}: other processes used up to {worst:.0%} of a core on "
                         f"the pinned CPUs during {len(noisy)} measurement(s); latencies there "
                         f"are inflated by the neighbours — rerun on a quiet machine.")
        for r in s.get("sweep", []):
            a, b = _deferred_span(r)
            if a is not None and b is not None and b - a > 0.02 * r["msgs_per_s"] * r["duration_s"]:
                notes.append(f"- {s['label']}: at {r['fraction']:.0%} offered load the store's "
                             f"deferred rows grew from {a:,.0f} to {b:,.0f} "
                             f"({(b - a) / r['duration_s']:,.0f}/s): its slices between batches did "
                             f"not keep up with the deferred work, so at this rate it would go on "
                             f"growing until batches do that work themselves (the in-batch "
                             f"threshold), with their latency.")
            if r.get("skipped", 0) > 0.01 * r["offered_per_s"] * r["duration_s"]:
                notes.append(f"- {s['label']}: at {r['fraction']:.0%} offered load "
                             f"{r['skipped']:,} sends were skipped because every charger "
                             f"still waited for a reply (one CALL in flight per charger): "
                             f"add chargers for this rate.")
        mem = s.get("memory") or {}
        if mem.get("note"):
            notes.append(f"- {s['label']}: {mem['note']}")
        for st in (s.get("storm") or {}, mem.get("storm") or {}):
            if (st.get("gen_util") or 0) >= 0.85:
                notes.append(f"- {s['label']} storm of {st['chargers']:,}: the generator's core "
                             f"was {st['gen_util']:.0%} busy, so the absorb time is an upper "
                             f"bound for this server.")
            if st.get("connect_errors"):
                notes.append(f"- {s['label']} storm of {st['chargers']:,}: connect errors "
                             f"{st['connect_errors']} (retried with back-off)")
    if notes:
        lines += ["## Notes", ""] + notes + [""]
    lines += ["Plots: `load.png` (throughput and p99 vs offered load), `connections.png` "
              "(throughput and p99 vs connections), `memory.png` (memory vs connections).", ""]
    return "\n".join(lines)


def _auth_storm_lines(a: dict | None) -> list[str]:
    """The storm of password-authenticated chargers after a worker restart
    (bench/auth_phase.py) beside the unauthenticated storm, as a ratio."""
    if not a:
        return []
    out = ["## Reconnect storm with authenticated chargers (security profile 1, after a worker restart)", ""]
    if a.get("unavailable") or a.get("error"):
        return out + [f"Not measured: {a.get('unavailable') or a.get('error')}", ""]
    st, first = a.get("storm") or {}, a.get("first_connect") or {}

    def absorbed(s: dict, n) -> str:
        if not s.get("complete", True) or s.get("absorb_s") is None:
            return f"incomplete: {_f(s.get('reconnected'), '{:,}')}/{_f(n, '{:,}')}"
        return f"{s['absorb_s']:.2f} s"
    checks = st.get("password_checks") or {}
    out += ["| storm | chargers | absorbed in | password checks |", "|---|---|---|---|",
            f"| unauthenticated (the Chargeyard column above) | {_f(a.get('unauthenticated_chargers'), '{:,}')} | "
            f"{_f(a.get('unauthenticated_absorb_s'), '{:.2f} s')} | none |",
            f"| HTTP Basic, restarted worker (cold process, stored verifiers) | {_f(st.get('chargers'), '{:,}')} | "
            f"{absorbed(st, st.get('chargers'))} | {_f(checks.get('scrypt'))} scrypt, "
            f"{_f(checks.get('stored_verifier'))} stored verifier |",
            "", f"Ratio authenticated / unauthenticated: **{_f(a.get('ratio_vs_unauthenticated'), '{:.2f}x')}**. "
            f"Before the restart the first connection of the {_f(first.get('connected'), '{:,}')} chargers took "
            f"{_f(first.get('setup_s'), '{:.1f} s')} ({_f((first.get('password_checks') or {}).get('scrypt'))} "
            "scrypt runs, at most 32 handshakes in flight).", ""]
    if st.get("connect_errors"):
        out += [f"Connect errors in the authenticated storm (retried with back-off, counted in its absorb "
                f"time): {st['connect_errors']}; password checks after a retry: "
                f"{_f(checks.get('process_verifier'))} by the process's own verifier.", ""]
    return out


def plots(results: dict, outdir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    servers = [(n, s) for n, s in _servers(results) if s.get("available")]

    def throughput_and_p99(name: str, series: list, xlabel: str, titles: tuple[str, str]) -> None:
        """Two log-log panels, messages/s and p99 against x, one line per server."""
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for label, pts in series:
            x = [r["x"] for r in pts]
            a1.plot(x, [r["msgs_per_s"] for r in pts], "o-", label=label)
            a2.plot(x, [r["p99_ms"] or float("nan") for r in pts], "o-", label=label)
        for ax, ttl, yl in ((a1, titles[0], "messages/s"), (a2, titles[1], "p99 (ms)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(ttl)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
        a1.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    load, conns = [], []
    for _, s in servers:
        pts = [dict(r, x=r["offered_per_s"]) for r in sorted(s.get("sweep", []), key=lambda r: r["offered_per_s"])]
        c = s.get("closed")
        if c:
            pts.append({"x": c["msgs_per_s"], "msgs_per_s": c["msgs_per_s"], "p99_ms": c["p99_ms"]})
        if pts:
            load.append((s["label"], pts))
        if s.get("connections"):
            conns.append((s["label"], [dict(r, x=r["conns"]) for r in s["connections"]]))
    throughput_and_p99("load.png", load, "offered messages/s (last point: closed loop)",
                       ("Throughput vs offered load", "p99 latency vs offered load"))
    throughput_and_p99("connections.png", conns, "connections",
                       ("Throughput vs connections (closed loop)", "p99 latency vs connections (closed loop)"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for _, s in servers:
        lv = (s.get("memory") or {}).get("levels") or []
        if not lv:
            continue
        x = [r["conns"] for r in lv]
        a1.plot(x, [r["rss_delta_bytes"] / 2**20 for r in lv], "o-", label=s["label"])
        a2.plot(x, [r["kib_per_conn"] for r in lv], "o-", label=s["label"])
    a1.set_title("Server RSS growth vs idle connections")
    a1.set_ylabel("RSS delta (MiB)")
    a2.set_title("Memory per idle connection")
    a2.set_ylabel("KiB / connection")
    a2.axhline(12, color="grey", ls="--", lw=1, label="target 12 KiB")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("connections")
        ax.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(outdir, "memory.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    return written


def write(results: dict, outdir: str, root: str | None = None, with_plots: bool = True) -> dict:
    paths = {}
    if with_plots:
        paths["plots"] = [os.path.basename(p) for p in plots(results, outdir)]
    results["files"] = dict(paths, results="results.json", report="report.md")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(markdown(results))
    if root:
        link_latest(root, outdir)
    return results
