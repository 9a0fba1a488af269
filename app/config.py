"""One settings object, filled from CLI flags, then ``CHARGEYARD_*`` environment
variables, then defaults (ARCHITECTURE.md, Configuration).

Every option is declared once in ``OPTIONS``; the CLI builds its flags from it and
the environment variable name is derived: ``--ws-port`` -> ``CHARGEYARD_WS_PORT``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Settings:
    host: str = "127.0.0.1"
    ws_port: int = 9000
    http_port: int = 8080
    data_dir: str = "./data"
    store: str = "sqlite"
    scylla_hosts: str = ""
    keyspace: str = "chargeyard"
    scylla_username: str = ""
    scylla_password: str = ""         # prefer the environment (CHARGEYARD_SCYLLA_PASSWORD) to a flag
    scylla_datacenter: str = ""       # the local data centre (default: the driver's choice)
    scylla_tls: bool = False
    scylla_ca_file: str = ""          # CA bundle for TLS (implies --scylla-tls); empty: system CAs
    redis_url: str = ""
    kafka_bootstrap: str = ""
    worker_id: str = ""
    heartbeat_interval: int = 300
    tokens_file: str = ""
    accept_unknown_tags: bool = False
    # limits and tuning
    max_frame: int = 64 * 1024
    rate_limit: float = 200.0         # messages/s per connection (sustained)
    rate_burst: int = 400             # messages a connection may send at once
    max_pending_calls: int = 100      # CSMS->charger calls queued per charger
    call_timeout: float = 30.0        # seconds an operator call waits for the charger
    ping_interval: float = 900.0      # WebSocket ping after this long idle (0: off)
    idle_timeout: float = 1800.0      # close a connection whose ping is not answered by then
    handshake_rate: float = 2000.0    # accepted WebSocket handshakes per second
    max_concurrent_boots: int = 200   # BootNotifications in flight before answering Pending
    boot_retry_interval: int = 60     # base of the jittered Pending retry interval (s)
    batch_ms: float = 0.5             # most extra wait for a fuller batch when busy (ms)
    batch_max: int = 1000
    drain_timeout: float = 10.0
    lease: float = 10.0               # seconds a worker's registry lease lives without renewal
    leniency_file: str = ""
    log_level: str = "info"
    api_host: str = ""                # default: --host when tokens are configured, else 127.0.0.1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ws_read_buffer(self) -> int:
        return 1024


HELP = {
    "host": "address the charger and API listeners bind to",
    "ws_port": "charger WebSocket port",
    "http_port": "operator API / metrics port",
    "data_dir": "where the SQLite store and spools live",
    "store": "sqlite (embedded) or scylla",
    "redis_url": "Redis for the cluster registry (empty: in-process)",
    "scylla_username": "ScyllaDB user (password authentication)",
    "scylla_password": "ScyllaDB password (better: the CHARGEYARD_SCYLLA_PASSWORD environment variable)",
    "scylla_datacenter": "ScyllaDB local data centre for routing and replication",
    "scylla_tls": "connect to ScyllaDB over TLS (server certificate and host name verified)",
    "scylla_ca_file": "CA bundle to verify ScyllaDB's certificate (implies --scylla-tls)",
    "kafka_bootstrap": "Kafka bootstrap servers (empty: in-process bus)",
    "worker_id": "this worker's id in the cluster (default: hostname-pid)",
    "heartbeat_interval": "interval (s) given to chargers in BootNotification",
    "tokens_file": "JSON file of API bearer tokens and their scopes",
    "accept_unknown_tags": "authorize id tags that are not in the list",
    "max_frame": "largest accepted WebSocket message in bytes (bigger: close 1009)",
    "lease": "seconds a worker's ownership lease lives in Redis (renewed every lease/3)",
    "leniency_file": "TOML file of per-model leniency profiles",
}


def _env_name(name: str) -> str:
    return "CHARGEYARD_" + name.upper()


def add_arguments(ap: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    for f in fields(Settings):
        if f.name == "extra" or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action="store_true", default=None, help=HELP.get(f.name))
        else:
            ap.add_argument(flag, default=None, help=HELP.get(f.name, ""))


def _convert(kind: Any, value: Any) -> Any:
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind in ("int", int):
        return int(value)
    if kind in ("float", float):
        return float(value)
    return str(value)


def from_sources(args: argparse.Namespace | None = None, env: dict[str, str] | None = None,
                 **overrides: Any) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    env = os.environ if env is None else env
    s = Settings()
    for f in fields(Settings):
        if f.name == "extra":
            continue
        value = overrides.get(f.name)
        if value is None and args is not None:
            value = getattr(args, f.name, None)
        if value is None and _env_name(f.name) in env:
            value = env[_env_name(f.name)]
        if value is not None:
            try:
                setattr(s, f.name, _convert(f.type, value))
            except ValueError:
                raise SystemExit(f"invalid value for --{f.name.replace('_', '-')}: {value!r}") from None
    if not s.worker_id:
        import socket

        s.worker_id = f"{socket.gethostname()}-{os.getpid()}"
    return s
