"""``chargeyard billing`` / ``chargeyard monitoring``: one service as a Kafka consumer
process (``services/runner.py``), with the app's settings.

Billing reads the ended transactions from the main store (``--store`` ...). Monitoring
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

    from .node import alert_publisher, make_store, service_settings

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    os.makedirs(s.data_dir, exist_ok=True)
    store = registry = None
    listeners: list = []
    if kind == "billing":
        store = make_store(s)
        await store.open()
    elif s.redis_url:
        # publish only (no start(): this process holds no lease and no charger)
        from chargeyard.router.redis_registry import RedisRegistry

        registry = RedisRegistry(s.redis_url, worker_id=s.worker_id or f"{kind}-{os.getpid()}", lease_s=s.lease)
        listeners.append(alert_publisher(registry))
    http = await _metrics_server(s.host, s.http_port) if s.http_port else None
    print(f"chargeyard {kind}: consuming {services.TOPIC} from {s.kafka_bootstrap} "
          f"(metrics: http://{s.host}:{s.http_port}/metrics)", flush=True)
    try:
        await services.serve(kind, service_settings(s), stop, store, listeners=listeners)
    finally:
        if http is not None:
            await http.cleanup()
        if registry is not None:
            await registry.stop()
        if store is not None:
            await store.close()
    log.info("%s stopped", kind)


def run(kind: str, s: Settings) -> int:
    if not s.kafka_bootstrap:
        print(f"chargeyard: {kind} consumes Kafka: set --kafka-bootstrap or CHARGEYARD_KAFKA_BOOTSTRAP "
              "(one node runs it in-process)", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(serve(kind, s))
    except PortInUse as exc:
        print(f"chargeyard: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
