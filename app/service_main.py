"""``chargeyard billing`` / ``chargeyard monitoring``: one service as a Kafka consumer
process (``services/runner.py``), with the app's settings.

Billing reads the ended transactions from the main store (``--store`` ...). Both keep
their state in the services store that ``--store`` selects (``make_services_store``: the
ScyllaDB keyspace in a cluster, ADR 0018). Monitoring
publishes the alerts it raises and clears on the registry's alert stream when
``--redis-url`` is set, so every API node's ``GET /api/v1/alerts/events`` streams them.
Both serve ``/metrics`` (``chargeyard_consumer_lag{group}`` among them) and ``/healthz``
on ``--http-port``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from .config import PortInUse, Settings, port_in_use

log = logging.getLogger("chargeyard.services")


async def _metrics_server(host: str, port: int) -> Any:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise port_in_use(exc, "http_port", host, port) from None
    return runner


async def serve(kind: str, s: Settings, stop: asyncio.Event | None = None) -> None:
    from chargeyard.services import runner as services

    from .node import alert_publisher, make_services_store, make_store, service_settings

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    os.makedirs(s.data_dir, exist_ok=True)
    transactions = registry = None
    listeners: list = []
    if kind == "billing":  # the main store, read for the ended transactions
        transactions = make_store(s)
        await transactions.open()
    # billing's shares that store's session; monitoring's opens its own (ScyllaDB)
    services_store = make_services_store(s, transactions)
    if kind != "billing" and s.redis_url:
        # publish only (no start(): this process holds no lease and no charger)
        from chargeyard.router.redis_registry import RedisRegistry

        registry = RedisRegistry(s.redis_url, worker_id=s.worker_id or f"{kind}-{os.getpid()}", lease_s=s.lease)
        listeners.append(alert_publisher(registry))
    http = await _metrics_server(s.host, s.http_port) if s.http_port else None
    print(f"chargeyard {kind}: consuming {services.TOPIC} from {s.kafka_bootstrap} "
          f"(metrics: http://{s.host}:{s.http_port}/metrics)", flush=True)
    try:
        await services.serve(kind, service_settings(s), stop, transactions, listeners=listeners,
                             store=services_store)
    finally:
        if http is not None:
            await http.cleanup()
        if registry is not None:
            await registry.stop()
        if transactions is not None:
            await transactions.close()
    log.info("%s stopped", kind)


def run(kind: str, s: Settings) -> int:
    if not s.kafka_bootstrap:
        print(f"chargeyard: {kind} consumes Kafka: set --kafka-bootstrap or CHARGEYARD_KAFKA_BOOTSTRAP "
              "(one node runs it in-process)", file=sys.stderr, flush=True)
        return 2
    from chargeyard.store import StoreError

    try:
        asyncio.run(serve(kind, s))
    except PortInUse as exc:
        print(f"chargeyard: {exc}", file=sys.stderr, flush=True)
        return 2
    except StoreError as exc:  # e.g. a keyspace not migrated: one line saying what to do
        print(f"chargeyard {kind}: --store {s.store}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
