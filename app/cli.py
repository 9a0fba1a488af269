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
    p = sub.add_parser("events", help="the events topic on Kafka (created once per deploy)")
    p.add_argument("action", choices=["create-topic"])
    _topic_arguments(p)
    add_arguments(p, {"kafka_bootstrap", "log_level"})
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
    if args.cmd == "events":
        return _create_topic(args, settings)
    ap.error(f"unknown command {args.cmd!r}")  # not reached: argparse allows only the above


def _topic_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `chargeyard events create-topic`; each also a CHARGEYARD_* variable (argparse
    converts a string default with the flag's type, so a bad variable is a usage error)."""
    from chargeyard.services import topics

    env = os.environ.get
    p.add_argument("--topic", default=env("CHARGEYARD_TOPIC", topics.TOPIC),
                   help=f"topic name: the one the workers' relay publishes to "
                        f"(default: {topics.TOPIC}; env CHARGEYARD_TOPIC)")
    p.add_argument("--topic-partitions", type=int,
                   default=env("CHARGEYARD_TOPIC_PARTITIONS", str(topics.DEFAULT_PARTITIONS)),
                   help="partitions of a new topic; an existing topic is never changed "
                        f"(default: {topics.DEFAULT_PARTITIONS}; env CHARGEYARD_TOPIC_PARTITIONS)")
    p.add_argument("--topic-replication-factor", type=int, default=env("CHARGEYARD_TOPIC_REPLICATION_FACTOR", "3"),
                   help="replicas of each partition (default: 3; env CHARGEYARD_TOPIC_REPLICATION_FACTOR)")
    p.add_argument("--topic-min-insync-replicas", type=int, default=env("CHARGEYARD_TOPIC_MIN_INSYNC_REPLICAS", "2"),
                   help="replicas that must have an event before the relay's acks=all succeeds "
                        "(default: 2; env CHARGEYARD_TOPIC_MIN_INSYNC_REPLICAS)")
    p.add_argument("--topic-retention-hours", type=float,
                   default=env("CHARGEYARD_TOPIC_RETENTION_HOURS", str(topics.DEFAULT_RETENTION_HOURS)),
                   help="how long the broker keeps events, below the services' event-id dedup "
                        f"(default: {topics.DEFAULT_RETENTION_HOURS}; env CHARGEYARD_TOPIC_RETENTION_HOURS)")


def _create_topic(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from chargeyard.services import topics

    if not settings.kafka_bootstrap:
        print("chargeyard events: set --kafka-bootstrap or CHARGEYARD_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    spec = topics.TopicSpec(name=args.topic, partitions=args.topic_partitions,
                            replication_factor=args.topic_replication_factor,
                            min_insync_replicas=args.topic_min_insync_replicas,
                            retention_hours=args.topic_retention_hours)
    try:
        state = asyncio.run(topics.ensure_topic(settings.kafka_bootstrap, spec))
    except ValueError as exc:
        print(f"chargeyard events: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the broker's refusal or absence: the Job retries
        print(f"chargeyard events: {settings.kafka_bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    print(topics.report(spec, state), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
