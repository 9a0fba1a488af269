"""One settings object, filled from CLI flags, then ``CHARGEYARD_*`` environment
variables, then defaults (every flag is listed in docs/configuration.md).

Every option is declared once, as a ``Settings`` field with its ``HELP`` line; the CLI
builds its flags from them (help text, default, environment variable) and
the environment variable name is derived: ``--ws-port`` -> ``CHARGEYARD_WS_PORT``.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    scylla_password: str = ""
    scylla_datacenter: str = ""
    scylla_tls: bool = False
    scylla_ca_file: str = ""
    scylla_consistency: str = "LOCAL_QUORUM"
    scylla_read_consistency: str = ""
    scylla_serial_consistency: str = "LOCAL_SERIAL"
    scylla_request_timeout: float = 10.0
    scylla_connect_timeout: float = 10.0
    scylla_concurrency: int = 128
    scylla_tablets: bool = False
    scylla_retention_days: float = 90.0
    scylla_replication_factor: int = 0
    redis_url: str = ""
    kafka_bootstrap: str = ""
    worker_id: str = ""
    heartbeat_interval: int = 300
    seen_interval: float = 30.0
    tokens_file: str = ""
    accept_unknown_tags: bool = False
    # limits and tuning
    max_frame: int = 64 * 1024
    rate_limit: float = 200.0
    rate_burst: int = 400
    max_pending_calls: int = 100
    call_timeout: float = 30.0
    ping_interval: float = 900.0
    idle_timeout: float = 1800.0
    handshake_rate: float = 2000.0
    max_concurrent_boots: int = 200
    boot_retry_interval: int = 60
    batch_ms: float = 0.5
    batch_max: int = 1000
    drain_timeout: float = 10.0
    drain_rate: float = 500.0
    lease: float = 10.0
    sse_keepalive: float = 15.0
    leniency_file: str = ""
    log_level: str = "info"
    api_host: str = ""
    insecure_api: bool = False
    # charger security (ARCHITECTURE.md, Charger security)
    security_profile: int = 0
    unknown_chargers: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    trusted_proxies: str = ""
    ca_cert: str = ""
    ca_key: str = ""
    auth_cache_key_file: str = ""
    auth_cache_key: str = field(default="", repr=False)  # a secret: never in a repr or a log
    # billing and monitoring (services/)
    services: str = "auto"
    offline_after: float = 120.0
    stall_after: float = 900.0
    max_kw: float = 350.0
    alert_webhook: str = ""

    @property
    def ws_read_buffer(self) -> int:
        return 1024


# One line per setting: the flag's help text (the default and the environment
# variable are appended by add_arguments, and the same text makes the table in
# docs/configuration.md: ``python -m chargeyard.config --markdown``).
HELP = {
    "host": "address the charger and API listeners bind to",
    "ws_port": "charger WebSocket port",
    "http_port": "operator API, /metrics and probes port",
    "data_dir": "where the SQLite store (and a local cluster's files, under cluster/) live",
    "store": "sqlite (embedded) or scylla",
    "scylla_hosts": "ScyllaDB contact points, comma-separated (--store scylla)",
    "keyspace": "ScyllaDB keyspace",
    "scylla_username": "ScyllaDB user (password authentication)",
    "scylla_password": "ScyllaDB password (better: the environment variable than the flag)",
    "scylla_datacenter": "ScyllaDB local data centre for routing and replication (empty: the driver's choice)",
    "scylla_tls": "connect to ScyllaDB over TLS (server certificate and host name verified)",
    "scylla_ca_file": "CA bundle to verify ScyllaDB's certificate (implies --scylla-tls; empty: system CAs)",
    "scylla_consistency": "ScyllaDB consistency level of writes (and of reads unless --scylla-read-consistency)",
    "scylla_read_consistency": "ScyllaDB consistency level of reads (empty: --scylla-consistency)",
    "scylla_serial_consistency": "ScyllaDB serial consistency of the per-charger lightweight transactions, "
                                 "SERIAL or LOCAL_SERIAL (1.6 transaction ids always use SERIAL)",
    "scylla_request_timeout": "seconds a ScyllaDB statement may take before it fails",
    "scylla_connect_timeout": "seconds to connect to a ScyllaDB node",
    "scylla_concurrency": "chargers of one commit batch written to ScyllaDB at once",
    "scylla_tablets": "create the keyspace with tablets (ScyllaDB only; off because this store uses LWT, "
                      "which tablet keyspaces lack before ScyllaDB 2025.1)",
    "scylla_retention_days": "days ScyllaDB keeps readings outside a transaction and the replay keys "
                             "(0: forever); transactions and their readings never expire",
    "scylla_replication_factor": "replicas per data centre of a keyspace `store migrate` creates "
                                 "(0: min(3, nodes in the data centre))",
    "redis_url": "Redis/Valkey for the cluster registry, redis://host:port/0 or redis+cluster://host:port "
                 "(empty: in-process)",
    "kafka_bootstrap": "Kafka bootstrap servers, host:port[,...]: the worker's relay publishes the events "
                       "outbox to topic chargeyard.events (empty: events stay in-process)",
    "worker_id": "this worker's id in the cluster (empty: hostname-pid)",
    "heartbeat_interval": "heartbeat interval in seconds given to chargers in BootNotification",
    "seen_interval": "seconds between writes of the chargers' last_seen (one write per active charger per "
                     "interval, never one per message)",
    "tokens_file": "JSON file of API bearer tokens, their scopes and charger ACLs (empty: no "
                   "authentication, API on 127.0.0.1 only)",
    "accept_unknown_tags": "authorize id tags that are not in the list",
    "max_frame": "largest accepted WebSocket message in bytes (bigger: close 1009)",
    "rate_limit": "messages per second a charger connection may send, sustained",
    "rate_burst": "messages a charger connection may send at once",
    "max_pending_calls": "operator calls queued per charger before 503",
    "call_timeout": "seconds an operator call waits for the charger's answer (then 504)",
    "ping_interval": "WebSocket ping after this many seconds idle (0: off)",
    "idle_timeout": "close a connection whose ping is unanswered after this many seconds idle",
    "handshake_rate": "WebSocket handshakes accepted per second (more: 503 with Retry-After)",
    "max_concurrent_boots": "BootNotifications in flight before answering Pending",
    "boot_retry_interval": "base in seconds of the jittered retry interval of a Pending boot",
    "batch_ms": "most extra wait in milliseconds for a fuller commit batch when busy",
    "batch_max": "most rows per store commit",
    "drain_timeout": "seconds a stop waits for the store flush and for chargers to close",
    "drain_rate": "chargers a stopping worker closes per second, in waves (0: all at once). Its chargers "
                  "reconnect to the other N-1 workers, each getting about rate/(N-1) per second; keep it "
                  "at most half of --handshake-rate so that even with 2 workers the receiver keeps half "
                  "its admission for its own chargers. The worker's terminationGracePeriodSeconds must "
                  "cover connections/rate plus the flush (k8s/worker.yaml)",
    "lease": "seconds a worker's ownership lease lives in Redis (renewed every lease/3)",
    "sse_keepalive": "seconds of silence before an event stream sends a keep-alive comment",
    "leniency_file": "TOML file of per-model leniency profiles",
    "log_level": "debug, info, warning or error (JSON lines on stderr)",
    "api_host": "address of the operator API (empty: --host with tokens, else 127.0.0.1; "
                "another address without tokens needs --insecure-api)",
    "insecure_api": "let the operator API listen on a non-loopback --api-host without tokens",
    "security_profile": "the chargers' minimum OCPP security profile: 0 anyone, 1 HTTP Basic password, "
                        "2 TLS + password, 3 TLS client certificate (a registered charger may require more)",
    "unknown_chargers": "accept or reject charger ids that are not registered (empty: accept at profile 0, "
                        "else reject)",
    "tls_cert": "PEM server certificate chain for wss:// on the charger port (profiles 2 and 3)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle that chargers' client certificates must chain to (profile 3)",
    "trusted_proxies": "comma-separated addresses or CIDRs of TLS-terminating proxies whose "
                       "X-Client-Verify / X-Client-Cert-CN / X-Forwarded-Proto / X-Real-IP headers are believed",
    "ca_cert": "PEM certificate of the CSMS CA that signs chargers' SignCertificate requests",
    "ca_key": "PEM private key of --ca-cert",
    "auth_cache_key_file": "file holding the key (32+ characters) of the stored password verifiers that spare a "
                           "restarted or other worker the scrypt run per charger (ADR 0019); every worker of a "
                           "cluster needs the same key (empty: --auth-cache-key, else <data-dir>/auth-cache.key, "
                           "made at first start, mode 0600)",
    "auth_cache_key": "that key itself (better: the environment variable, from a Secret, than the flag); wins "
                      "over --auth-cache-key-file",
    "services": "auto: on one node without --kafka-bootstrap and --redis-url, billing and monitoring run in "
                "this process and consume its outbox; off: they do not, and the relay drops the events "
                "(a node whose operator neither bills nor monitors here)",
    "offline_after": "monitoring: seconds a charger may stay disconnected before charger_offline is raised "
                     "(a takeover is not an outage)",
    "stall_after": "monitoring: seconds an active transaction may go without meter values before "
                   "transaction_stalled is raised",
    "max_kw": "monitoring: a meter register rising faster than this many kW raises meter_anomaly",
    "alert_webhook": "monitoring: URL that gets a JSON POST per alert raised or cleared, retried with backoff "
                     "(empty: none)",
}


def env_name(name: str) -> str:
    """``ws_port`` -> ``CHARGEYARD_WS_PORT``."""
    return "CHARGEYARD_" + name.upper()


def flag(name: str) -> str:
    """``ws_port`` -> ``--ws-port``."""
    return "--" + name.replace("_", "-")


class PortInUse(Exception):
    """A listener's port is taken: one line naming the setting's flag (exit status 2)."""

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(f"{flag(name)} {port}: {host}:{port} is already in use "
                         f"(choose another port with {flag(name)} or {env_name(name)})")
        self.name, self.port = name, port


def port_in_use(exc: BaseException, name: str, host: str, port: int) -> BaseException:
    """``PortInUse`` for an EADDRINUSE bind error, else ``exc`` itself."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return PortInUse(name, host, port)
    return exc


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "off"
    return '""' if value == "" else str(value)


def add_arguments(ap: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """One flag per setting; ``default=None`` so that a flag not given falls through
    to the environment, then to the default (both named in the help)."""
    for f in fields(Settings):
        if only is not None and f.name not in only:
            continue
        text = f"{HELP[f.name]} (default: {_default_text(f.default)}; env {env_name(f.name)})"
        if f.type in ("bool", bool):
            action = ap.add_argument(flag(f.name), action="store_true", default=None, help=text)
        else:
            action = ap.add_argument(flag(f.name), default=None, metavar=f.name.upper(), help=text)
        action.setting = f.name  # type: ignore[attr-defined]  (the table below reads it)


def table_rows(ap: argparse.ArgumentParser | None = None) -> list[tuple[str, str, str, str]]:
    """(flag, environment variable, default, meaning) per setting, read back from the
    argparse definitions (those of ``add_arguments`` when ``ap`` is None)."""
    if ap is None:
        ap = argparse.ArgumentParser()
        add_arguments(ap)
    defaults = {f.name: f.default for f in fields(Settings)}
    rows = []
    for action in ap._actions:
        name = getattr(action, "setting", None)
        if name is None:
            continue
        meaning = (action.help or "").rsplit(" (default: ", 1)[0]
        rows.append((action.option_strings[0], env_name(name), _default_text(defaults[name]), meaning))
    return rows


def markdown() -> str:
    """docs/configuration.md: every setting of every ``chargeyard`` node command."""
    out = ["# Configuration", "",
           "<!-- generated by `python -m chargeyard.config --markdown`; "
           "tests/app/test_config.py checks it -->", "",
           "Every setting is a flag, else a `CHARGEYARD_*` environment variable, else the "
           "default (in that order). `chargeyard run`, `worker`, `api` and `cluster` take them "
           "all.", "",
           "| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for fl, env, default, meaning in table_rows():
        out.append(f"| `{fl}` | `{env}` | `{default}` | {meaning.replace('|', '/')} |")
    return "\n".join(out) + "\n"


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
        value = overrides.get(f.name)
        if value is None and args is not None:
            value = getattr(args, f.name, None)
        if value is None and env_name(f.name) in env:
            value = env[env_name(f.name)]
        if value is not None:
            try:
                setattr(s, f.name, _convert(f.type, value))
            except ValueError:
                raise SystemExit(f"invalid value for --{f.name.replace('_', '-')}: {value!r}") from None
    if not s.worker_id:
        import socket

        s.worker_id = f"{socket.gethostname()}-{os.getpid()}"
    return s


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m chargeyard.config --markdown")
    sys.stdout.write(markdown())
