"""Composes the parts into a running process: the only module that knows them all."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from .config import PortInUse, Settings, port_in_use

log = logging.getLogger("chargeyard")


def scylla_options(s: Settings) -> dict[str, Any]:
    """ScyllaStore keyword arguments from the settings: password authentication, TLS with
    the server's certificate and host name verified (system CAs or ``--scylla-ca-file``),
    the local data centre, consistency levels, timeouts, concurrency, tablets, retention and
    replication (ScyllaStore validates the values)."""
    kw: dict[str, Any] = {
        "consistency": s.scylla_consistency, "read_consistency": s.scylla_read_consistency or None,
        "serial_consistency": s.scylla_serial_consistency, "request_timeout": s.scylla_request_timeout,
        "connect_timeout": s.scylla_connect_timeout, "max_concurrency": s.scylla_concurrency,
        "tablets": s.scylla_tablets, "retention_days": s.scylla_retention_days,
        "replication_factor": s.scylla_replication_factor or None}
    if s.scylla_concurrency < 1:
        raise ValueError(f"--scylla-concurrency must be at least 1, not {s.scylla_concurrency}")
    if s.scylla_replication_factor < 0:
        raise ValueError(f"--scylla-replication-factor must be 0 (automatic) or more, not {s.scylla_replication_factor}")
    if s.scylla_username:
        kw["username"], kw["password"] = s.scylla_username, s.scylla_password
    elif s.scylla_password:
        raise ValueError("--scylla-password needs --scylla-username")
    if s.scylla_datacenter:
        kw["datacenter"] = s.scylla_datacenter
    if s.scylla_tls or s.scylla_ca_file:
        import ssl

        try:
            kw["ssl_context"] = ssl.create_default_context(cafile=s.scylla_ca_file or None)
        except OSError as exc:
            raise ValueError(f"--scylla-ca-file {s.scylla_ca_file}: {exc.strerror or exc}") from None
    return kw


def outbox_id(s: Settings) -> str:
    """The events outbox a worker writes and relays: its worker id, which must be the same
    after a restart (what a killed process left spooled is published by the next one with
    that id). The default worker id (hostname-pid) changes with every start, so then the
    outbox is the host's name: one node per data directory and host."""
    import socket

    if s.worker_id == f"{socket.gethostname()}-{os.getpid()}":
        return socket.gethostname()
    return s.worker_id


def make_store(s: Settings, outbox: str | None = None) -> Any:
    """``outbox``: the worker id whose events outbox the store writes (None: no events,
    e.g. an API-only process)."""
    from chargeyard.store import make_store as build

    try:
        options = scylla_options(s) if s.store == "scylla" else {}
        if outbox is not None:
            options["outbox"] = outbox
        return build(s.store, data_dir=s.data_dir, scylla_hosts=s.scylla_hosts, keyspace=s.keyspace, **options)
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"--store {s.store}: {exc}") from None


def make_registry(s: Settings) -> Any:
    if not s.redis_url:
        from chargeyard.router.registry import LocalRegistry

        return LocalRegistry(s.worker_id)
    from chargeyard.router.redis_registry import RedisRegistry

    if not s.lease > 0:
        raise SystemExit(f"--lease must be a positive number of seconds, not {s.lease}")
    return RedisRegistry(s.redis_url, worker_id=s.worker_id, lease_s=s.lease)


def make_tokens(s: Settings) -> Any:
    if s.redis_url and s.tokens_file:
        from chargeyard.router.tokens import RedisTokens

        return RedisTokens(s.redis_url, seed_file=s.tokens_file)
    if s.tokens_file:
        from chargeyard.router.tokens import FileTokens

        return FileTokens(s.tokens_file)
    return None


def tune_gc() -> None:
    """The per-message path allocates many short-lived container objects; with the
    default thresholds the cyclic GC ran every few hundred messages and walked every
    live session, a large share of a saturated worker's CPU. Freeze what start-up built and
    collect the young generation less often; reference counting still frees almost
    everything at once."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # The store thread needs the GIL for a moment after each commit to release the
    # waiting replies; with the default 5 ms switch interval it can wait that long
    # behind a busy event loop, which shows in the reply latency tail.
    sys.setswitchinterval(0.0005)


def worker_settings(s: Settings) -> Any:
    """The worker's typed settings (``worker/settings.py``) from the app's."""
    from chargeyard.worker.settings import WorkerSettings

    return WorkerSettings(
        worker_id=s.worker_id, host=s.host, ws_port=s.ws_port, max_frame=s.max_frame,
        ws_read_buffer=s.ws_read_buffer, handshake_rate=s.handshake_rate, rate_limit=s.rate_limit,
        rate_burst=s.rate_burst, max_pending_calls=s.max_pending_calls, ping_interval=s.ping_interval,
        idle_timeout=s.idle_timeout, drain_timeout=s.drain_timeout, drain_rate=s.drain_rate,
        heartbeat_interval=s.heartbeat_interval,
        max_concurrent_boots=s.max_concurrent_boots, boot_retry_interval=s.boot_retry_interval,
        accept_unknown_tags=s.accept_unknown_tags, leniency_file=s.leniency_file, batch_ms=s.batch_ms,
        batch_max=s.batch_max, seen_interval=s.seen_interval, kafka_bootstrap=s.kafka_bootstrap,
        security_profile=s.security_profile, unknown_chargers=s.unknown_chargers, tls_cert=s.tls_cert,
        tls_key=s.tls_key, tls_client_ca=s.tls_client_ca, trusted_proxies=s.trusted_proxies,
        ca_cert=s.ca_cert, ca_key=s.ca_key, auth_cache_key=s.auth_cache_key,
        auth_cache_key_file=s.auth_cache_key_file, data_dir=s.data_dir)


def service_settings(s: Settings) -> Any:
    """Billing's and monitoring's settings (``services/runner.py``) from the app's."""
    from chargeyard.services.runner import ServiceSettings

    return ServiceSettings(kafka_bootstrap=s.kafka_bootstrap, data_dir=s.data_dir,
                           offline_after=s.offline_after, heartbeat_interval=s.heartbeat_interval,
                           stall_after=s.stall_after, max_kw=s.max_kw, alert_webhook=s.alert_webhook)


def make_services_store(s: Settings, store: Any = None) -> Any:
    """Where billing and monitoring keep their state, by ``--store`` (ADR 0018): with
    ``scylla`` the main store's keyspace, on ``store``'s session when given (already open;
    not closed with the services store) or on a connection of its own; with ``sqlite``
    ``<data-dir>/services.db``, which only processes of one machine can share."""
    if s.store == "scylla":
        from chargeyard.services.scylla_storage import ScyllaServiceStore

        return ScyllaServiceStore(store) if store is not None else ScyllaServiceStore(make_store(s), own=True)
    from chargeyard.services.storage import SqliteServiceStore

    return SqliteServiceStore(service_settings(s).db_path())


def alert_publisher(registry: Any) -> Any:
    """A monitoring listener: each alert raised or cleared onto the registry's alert stream,
    which ``GET /api/v1/alerts/events`` serves (``Api.sse``)."""
    from chargeyard.services.api import alert_event

    def publish(alert: Any) -> None:
        asyncio.get_running_loop().create_task(registry.publish(alert_event(alert)))
    return publish


class StoreUnusable(Exception):
    """The store refused to open (e.g. a schema version this code does not run on): one
    line on stderr, exit status 1, no traceback (a pod's log shows what to do)."""



def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_host(s: Settings, tokens: Any) -> str:
    """Where the operator API listens. Without tokens it is open to anyone who reaches
    it: only loopback, unless ``--insecure-api`` says otherwise."""
    host = s.api_host or (s.host if tokens is not None else "127.0.0.1")
    if tokens is None and not _loopback(host) and not s.insecure_api:
        raise SystemExit(f"--api-host {host}: the operator API would accept anyone on that address without "
                         "authentication; configure --tokens-file, or pass --insecure-api to run it open")
    return host


class Node:
    """A worker and/or the operator API in one process."""

    def __init__(self, settings: Settings, worker: bool = True, api: bool = True) -> None:
        self.settings = settings
        self.with_worker = worker
        self.with_api = api
        self.store: Any = None
        self.registry: Any = None
        self.worker: Any = None
        self.api: Any = None
        self.services: Any = None  # billing + monitoring in-process (one node, no Kafka)
        self.services_store: Any = None  # what the API serves tariffs, CDRs and alerts from
        self._own_services_store = False
        self._stop = asyncio.Event()

    async def start(self) -> None:
        from chargeyard.router.api import Api
        from chargeyard.worker.server import Worker

        s = self.settings
        if s.services not in ("auto", "off"):
            raise SystemExit(f"--services {s.services}: auto or off")
        tokens = make_tokens(s) if self.with_api else None
        host = api_host(s, tokens) if self.with_api else ""  # a refusal before anything starts
        os.makedirs(s.data_dir, exist_ok=True)
        from chargeyard.store import StoreError

        store = make_store(s, outbox_id(s) if self.with_worker else None)
        try:
            await store.open()
        except StoreError as exc:
            raise StoreUnusable(f"--store {s.store}: {exc}") from None
        self.store = store
        self.registry = make_registry(s)
        await self.registry.start()
        if self.with_worker and not s.kafka_bootstrap and not s.redis_url and s.services == "auto":
            # one node: billing and monitoring consume the outbox in-process (in a cluster
            # they are the `chargeyard billing` / `chargeyard monitoring` processes)
            from chargeyard.services.runner import InProcessServices

            self.services = await InProcessServices(service_settings(s), self.store,
                                                    listeners=[alert_publisher(self.registry)],
                                                    store=make_services_store(s, self.store)).open()
            self.services_store = self.services.store
        if self.with_worker:
            from chargeyard.worker.security.service import SecurityConfigError

            try:
                self.worker = Worker(worker_settings(s), self.store, self.registry,
                                     event_sinks=[self.services.handle] if self.services is not None else [])
            except SecurityConfigError as exc:  # e.g. --security-profile 2 without --tls-cert
                raise SystemExit(f"chargeyard: {exc}") from None
            try:
                await self.worker.start()
            except OSError as exc:
                raise port_in_use(exc, "ws_port", s.host, s.ws_port) from None
        if self.with_api:
            if tokens is None:
                log.warning("no API tokens configured (--tokens-file): the operator API listens on %s "
                            "without authentication", host)
            from chargeyard.services.api import ServicesApi

            if self.services_store is None:  # the services' state written by their processes
                self.services_store = await make_services_store(s, self.store).open()
                self._own_services_store = True
            self.api = Api(s, self.store, self.registry, tokens,
                           ready=lambda: self.worker is None or self.worker.ready,
                           on_id_tag_change=self.worker.authorization.forget if self.worker else None,
                           on_charger_change=self.worker.security.forget if self.worker else None,
                           services=ServicesApi(self.services_store, self.services_store))
            try:
                await self.api.start(host, s.http_port)
            except OSError as exc:
                raise port_in_use(exc, "http_port", host, s.http_port) from None

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        if self.api is not None:
            await self.api.stop()
        if self.services is not None:
            await self.services.close()
        elif self._own_services_store:
            await self.services_store.close()
        if self.registry is not None:
            await self.registry.stop()
        if self.store is not None:
            await self.store.close()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        hits = [0]

        def on_signal(sig: int) -> None:
            hits[0] += 1
            if hits[0] > 1:
                log.warning("second signal: exiting now")
                os._exit(1)
            log.info("signal %s: draining", signal.Signals(sig).name)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.start()
        except (PortInUse, StoreUnusable):
            await self.stop()  # what did start: the store, the registry, the worker's writer
            raise
        tune_gc()
        print(self.banner(), flush=True)
        await self._stop.wait()
        await self.stop()
        log.info("stopped")

    def banner(self) -> str:
        s = self.settings
        lines = []
        if self.worker is not None:
            lines.append(f"chargers: ws://{s.host}:{self.worker.port}/ocpp/{{charger_id}} "
                         "(ocpp1.6, ocpp2.0.1, ocpp2.1)")
        if self.api is not None:
            lines.append(f"operator API: http://{'127.0.0.1' if self.api.tokens is None else s.host}:"
                         f"{self.api.port}/api/v1 (metrics: /metrics)")
        return "\n".join(lines)


def run(settings: Settings, worker: bool = True, api: bool = True) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(Node(settings, worker, api).serve_forever())
    except PortInUse as exc:
        print(f"chargeyard: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except StoreUnusable as exc:
        print(f"chargeyard: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
