"""``chargeyard-bench ...``: the benchmark suite's command line.

    chargeyard-bench compare                 # the standard comparison (make bench)
    chargeyard-bench compare --kafka         # and the worker publishing to a local Kafka broker
    chargeyard-bench smoke                   # seconds; what tests/bench runs
    chargeyard-bench run --profile metering --target chargeyard
    chargeyard-bench capacity [--from DIR] [--write-hpa k8s/hpa.yaml]
    chargeyard-bench profiles

Its own entry point, so the product's ``chargeyard`` command never imports the bench.
Also ``python -m chargeyard.bench.cli ...``. Targets are ``echo``, ``ocpp-baseline``,
``chargeyard`` or any command template with ``{ws_port}`` (and optionally
``{http_port}``, ``{data_dir}``, ``{python}``), e.g. ``--target 'mine={python} srv.py
--port {ws_port}'``. ``--chargeyard-cmd`` / ``CHARGEYARD_BENCH_CMD`` replace the command
used for Chargeyard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from . import capacity, report, suite

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HPA = os.path.join(REPO, "k8s", "hpa.yaml")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x.strip()]


def smoke_options() -> suite.Options:
    return suite.Options(chargers=50, warmup_s=0.2, duration_s=0.8, sweep_fractions=[0.5],
                         sweep_duration_s=0.7, conn_levels=[50], conn_duration_s=0.7,
                         metering_interval_s=0.5, memory_levels=[200], storm_timeout_s=15.0,
                         storm_at_memory_top=False, ready_timeout_s=10.0, idle_cpu_s=0.3,
                         rounds=1, round_s=0.5, auth_storm_chargers=20)


def _add_common(p: argparse.ArgumentParser):
    p.add_argument("--out", default=DEFAULT_ROOT,
                   help="results root; a <timestamp>/ folder and a 'latest' link go here")
    p.add_argument("--server-cpus", default=None, help="taskset list for servers (default 0)")
    p.add_argument("--gen-cpus", default=None, help="taskset list for generators (default 1)")
    p.add_argument("--gen-procs", type=int, default=None, help="generator processes")
    p.add_argument("--chargeyard-cmd", default=None,
                   help="command template for Chargeyard (env CHARGEYARD_BENCH_CMD)")
    p.add_argument("--protocol", choices=("ocpp1.6", "ocpp2.0.1"), default=None)
    p.add_argument("--no-plots", action="store_true")


def _add_compare(p: argparse.ArgumentParser):
    p.add_argument("--targets", default=None,
                   help="comma-separated targets (default echo,ocpp-baseline,chargeyard)")
    p.add_argument("--chargers", type=int, default=None)
    p.add_argument("--warmup", type=float, default=None, dest="warmup_s")
    p.add_argument("--duration", type=float, default=None, dest="duration_s")
    p.add_argument("--sweep", type=_floats, default=None, dest="sweep_fractions",
                   help="offered-load fractions of measured capacity, e.g. 0.25,0.5,0.75")
    p.add_argument("--sweep-duration", type=float, default=None, dest="sweep_duration_s")
    p.add_argument("--conn-levels", type=_ints, default=None, dest="conn_levels")
    p.add_argument("--conn-duration", type=float, default=None, dest="conn_duration_s")
    p.add_argument("--memory-levels", type=_ints, default=None, dest="memory_levels",
                   help="idle connection counts for memory, e.g. 1000,10000,50000 ('' = skip)")
    p.add_argument("--no-storm", action="store_false", dest="storm", default=None)
    p.add_argument("--no-auth-storm", action="store_false", dest="auth_storm", default=None,
                   help="skip the storm of password-authenticated chargers after a restart")
    p.add_argument("--auth-storm-chargers", type=int, default=None, dest="auth_storm_chargers",
                   help="chargers of that storm (default: --chargers, the unauthenticated storm's)")
    p.add_argument("--rounds", type=int, default=None,
                   help="extra closed-loop rounds, the servers in turn; ratios are judged on "
                        "the median of all rounds (default 2, 0 = none)")
    p.add_argument("--round-duration", type=float, default=None, dest="round_s")
    p.add_argument("--store", choices=("sqlite", "scylla"), default=None,
                   help="scylla: also measure the worker on the ScyllaDB store in the same run "
                        "(target chargeyard-scylla; a local Cassandra unless --scylla-hosts)")
    p.add_argument("--scylla-hosts", default=None,
                   help="CQL server for --store scylla (default: start tests/cassandra's Cassandra)")
    p.add_argument("--kafka", action="store_true", default=None,
                   help="also measure the worker publishing its events to a local Kafka broker in the "
                        "same run (target chargeyard-kafka; needs Java 17 and the aiokafka extra)")


def _options(args, base: suite.Options) -> suite.Options:
    names = {f.name for f in fields(suite.Options)}
    for key, val in vars(args).items():
        if key in names and val is not None:
            setattr(base, key, val)
    if getattr(args, "targets", None):
        base.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    return base


def _finish(results: dict, args) -> str:
    outdir = report.new_results_dir(args.out)
    results["capacity"] = capacity.table(results, {p: suite.load_profile(p)
                                                   for p in capacity.PROFILES})
    report.write(results, outdir, args.out, with_plots=not args.no_plots)
    md = os.path.join(outdir, "report.md")
    print(open(md).read())
    print(f"results: {outdir}", file=sys.stderr)
    return outdir


def cmd_compare(args, smoke: bool = False) -> int:
    o = _options(args, smoke_options() if smoke else suite.Options())
    logdir = os.path.join(args.out, "logs")
    results = suite.compare(o, logdir)
    results["kind"] = "smoke" if smoke else "compare"
    outdir = _finish(results, args)
    if smoke:
        ok = all(s.get("available") is False or s.get("closed", {}).get("msgs", 0) > 0
                 for s in results["servers"].values())
        if not ok:
            print("smoke: a server produced no replies", file=sys.stderr)
            return 1
    if args.write_hpa and results.get("capacity", {}).get("rows"):
        _write_hpa(results["capacity"], os.path.join(outdir, "results.json"), args.write_hpa)
    return 0


def cmd_run(args) -> int:
    prof = suite.load_profile(args.profile)
    if args.chargers:
        prof["chargers"] = args.chargers
    if args.duration_s:
        prof["duration_s"] = args.duration_s
    if args.protocol:
        prof["protocol"] = args.protocol
    o = _options(args, suite.Options())
    results = suite.run_profile(prof, args.target, o, os.path.join(args.out, "logs"))
    _finish(results, args)
    srv = next(iter(results["servers"].values()))
    for key in ("setup", "rss_per_conn_kib", "closed", "interval", "idle", "storm"):
        if key in srv:
            val = srv[key]
            if isinstance(val, dict):
                val = {k: v for k, v in val.items() if k != "hist"}
            print(f"{key}: {json.dumps(val, default=str)}")
    return 0


def _write_hpa(cap: dict, source: str, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        storm_t = suite.load_profile("reconnect-storm").get("fleet", {}).get(
            "storm_absorb_target_s", 60)
        f.write(capacity.hpa_yaml(cap, os.path.relpath(os.path.realpath(source), REPO),
                                  storm_t))
    print(f"wrote {path} (target {cap['hpa_target_conns_per_worker']} connections per worker)",
          file=sys.stderr)


def cmd_capacity(args) -> int:
    src = args.source or os.path.join(args.out, "latest")
    path = os.path.join(src, "results.json") if os.path.isdir(src) else src
    with open(path) as f:
        results = json.load(f)
    cap = capacity.table(results, {p: suite.load_profile(p) for p in capacity.PROFILES})
    if "error" in cap:
        print(cap["error"], file=sys.stderr)
        return 1
    results["capacity"] = cap
    md = report.markdown(results)
    print(md[md.index("## Capacity"):].split("\n## ")[0] if "## Capacity" in md else md)
    if args.write_hpa:
        _write_hpa(cap, path, args.write_hpa)
    return 0


def cmd_profiles(args) -> int:
    from importlib import resources
    for p in sorted((resources.files("chargeyard.bench") / "profiles").iterdir(),
                    key=lambda p: p.name):
        if p.name.endswith(".toml"):
            prof = suite.load_profile(p.name[:-5])
            print(f"{prof['name']:16} {prof.get('mode', ''):9} {prof.get('description', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chargeyard-bench", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compare", help="the standard side-by-side comparison (~10 min)")
    _add_common(p)
    _add_compare(p)
    p.add_argument("--write-hpa", nargs="?", const=DEFAULT_HPA, default=None,
                   help=f"also write the HPA manifest (default path {DEFAULT_HPA})")
    p = sub.add_parser("smoke", help="the comparison at toy size (seconds)")
    _add_common(p)
    _add_compare(p)
    p.set_defaults(write_hpa=None)
    p = sub.add_parser("run", help="one fleet profile against one server")
    _add_common(p)
    p.add_argument("--profile", required=True, help="profile name or path to a .toml")
    p.add_argument("--target", default="chargeyard")
    p.add_argument("--chargers", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, dest="duration_s")
    p = sub.add_parser("capacity", help="capacity table (and HPA) from a results.json")
    p.add_argument("--out", default=DEFAULT_ROOT)
    p.add_argument("--from", dest="source", default=None,
                   help="results dir or results.json (default <out>/latest)")
    p.add_argument("--write-hpa", nargs="?", const=DEFAULT_HPA, default=None)
    sub.add_parser("profiles", help="list fleet profiles")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "compare":
        return cmd_compare(args)
    if args.cmd == "smoke":
        return cmd_compare(args, smoke=True)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "capacity":
        return cmd_capacity(args)
    if args.cmd == "profiles":
        return cmd_profiles(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
