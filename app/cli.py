"""``chargeyard`` command line: every flag is also a ``CHARGEYARD_*`` environment variable."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from dataclasses import fields

from .config import Settings, add_arguments, from_sources


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="chargeyard", description="OCPP central system")
    ap.add_argument("--version", action="version", version=f"chargeyard {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (("run", "one node: worker + operator API, embedded store"),
                       ("worker", "a charger worker (cluster member)"),
                       ("api", "an operator API node (cluster member)")):
        p = sub.add_parser(name, help=text)
        add_arguments(p)
    services = {"kafka_bootstrap", "data_dir", "store", "scylla_hosts", "keyspace", "scylla_username",
                "scylla_password", "scylla_datacenter", "scylla_tls", "scylla_ca_file", "redis_url", "worker_id",
                "host", "http_port", "heartbeat_interval", "offline_after", "stall_after", "max_kw",
                "alert_webhook", "log_level"}
    for name, text in (("billing", "the billing service: prices ended transactions (Kafka consumer)"),
                       ("monitoring", "the monitoring service: raises and clears alerts (Kafka consumer)")):
        add_arguments(sub.add_parser(name, help=text), services)
    p = sub.add_parser("cluster", help="a local cluster: valkey, nginx, N workers and the API")
    p.add_argument("--workers", type=int, default=int(os.environ.get("CHARGEYARD_WORKERS", "3")),
                   help="worker processes (default: 3; env CHARGEYARD_WORKERS)")
    add_arguments(p)
    p = sub.add_parser("store", help="store maintenance")
    p.add_argument("action", choices=["migrate"])
    add_arguments(p, {"data_dir", "store", "keyspace"} | {f.name for f in fields(Settings)  # every --scylla-*
                                                           if f.name.startswith("scylla_")})
    sub.add_parser("nginx-config", help="render the nginx config for a worker list", add_help=False)
    # only what is built is listed; the benchmarks are their own command, chargeyard-bench

    if argv and argv[0] == "nginx-config":
        from .nginx_config import main as nginx_config_main

        return nginx_config_main(argv[1:]) or 0

    args = ap.parse_args(argv)
    from . import logs

    settings = from_sources(args)
    logs.setup(settings.log_level)
    if args.cmd in ("run", "worker", "api"):
        from .node import run

        # every node serves the operator API, /metrics and the probes on --http-port
        run(settings, worker=args.cmd in ("run", "worker"), api=True)
        return 0
    if args.cmd in ("billing", "monitoring"):
        from .service_main import run as run_service

        return run_service(args.cmd, settings)
    if args.cmd == "cluster":
        from .cluster import main as cluster_main

        return cluster_main(settings, args.workers)
    if args.cmd == "store":
        import asyncio

        from .node import make_store

        async def migrate() -> None:
            import os

            os.makedirs(settings.data_dir, exist_ok=True)
            await make_store(settings).migrate()
        from chargeyard.store import StoreError

        try:
            asyncio.run(migrate())
        except StoreError as exc:
            raise SystemExit(f"chargeyard store migrate: {exc}") from None
        print("store migrated")
        return 0
    ap.error(f"unknown command {args.cmd!r}")  # not reached: argparse allows only the above


if __name__ == "__main__":
    raise SystemExit(main())
