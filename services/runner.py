"""Running the services: ``chargeyard billing`` / ``chargeyard monitoring`` processes (Kafka
consumers) and, on one node, both in-process behind the relay's ``LocalPublisher``.

    python -m chargeyard.services.runner billing --kafka-bootstrap 127.0.0.1:9092 --data-dir ./data

Flags mirror the node's (``--kafka-bootstrap``, ``--data-dir``, ``--store``,
``--scylla-hosts``, ``--keyspace``, ``--offline-after``, ``--heartbeat-interval``,
``--alert-webhook``) plus the monitoring thresholds ``--stall-after`` and ``--max-kw``;
the app's CLI can hand its settings to :func:`serve` directly instead.
The services keep their state in the store they are handed (``--store`` chooses it, in
``app/node.py``: the ScyllaDB keyspace of a cluster, ADR 0018), by default in
``<data-dir>/services.db``; billing reads the transactions from the main store (read only).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import msgspec

from ..core.tasks import cancel_and_wait
from ..store.events import TOPIC, Event
from .billing.service import GROUP as BILLING_GROUP
from .billing.service import Billing, TransactionSource
from .consumer import Consumer
from .monitoring.alerts import MonitorSettings
from .monitoring.service import GROUP as MONITORING_GROUP
from .monitoring.service import Monitoring
from .monitoring.webhook import Webhook
from .storage import ServiceStore, SqliteServiceStore

log = logging.getLogger("chargeyard.services")


class ServiceSettings(msgspec.Struct, kw_only=True):
    kafka_bootstrap: str = ""
    data_dir: str = "./data"
    services_db: str = ""  # default <data_dir>/services.db
    topic: str = TOPIC
    offline_after: float = 120.0
    heartbeat_interval: float = 300.0
    stall_after: float = 900.0
    max_kw: float = 350.0
    alert_webhook: str = ""
    currency: str = "EUR"  # of the zero CDRs of transactions no tariff matches

    def db_path(self) -> Path:
        return Path(self.services_db) if self.services_db else Path(self.data_dir) / "services.db"

    def monitor(self) -> MonitorSettings:
        return MonitorSettings(offline_after=self.offline_after, heartbeat_interval=self.heartbeat_interval,
                               stall_after=self.stall_after, max_kw=self.max_kw)


async def serve(kind: str, s: ServiceSettings, stop: asyncio.Event, transactions: TransactionSource | None = None,
                *, listeners: list | None = None, store: ServiceStore | None = None,
                **consumer_options: Any) -> None:
    """One service as a Kafka consumer until ``stop`` is set; ``listeners`` get monitoring's
    alerts raised and cleared; ``store`` (opened and closed here): where the service keeps
    its state, by default ``s.db_path()``."""
    if not s.kafka_bootstrap:
        raise ValueError(f"chargeyard {kind} consumes Kafka: set --kafka-bootstrap")
    webhook: Webhook | None = None
    async with store or SqliteServiceStore(s.db_path()) as store:
        if kind == "billing":
            if transactions is None:
                raise ValueError("billing needs the main store's transactions")
            billing = Billing(store, transactions, default_currency=s.currency)
            consumer = Consumer(s.kafka_bootstrap, BILLING_GROUP, billing.handle, topic=s.topic, **consumer_options)
        elif kind == "monitoring":
            listeners = list(listeners or [])
            if s.alert_webhook:
                webhook = Webhook(s.alert_webhook).start()
                listeners.append(webhook)
            mon = await Monitoring(store, s.monitor(), listeners=listeners).open()
            consumer = Consumer(s.kafka_bootstrap, MONITORING_GROUP, mon.handle, topic=s.topic, tick=mon.tick,
                                **consumer_options)
        else:
            raise ValueError(f"unknown service {kind!r}")
        consumer.start()
        log.info("chargeyard %s consuming %s from %s", kind, s.topic, s.kafka_bootstrap)
        try:
            await stop.wait()
        finally:
            await consumer.close()
            if webhook is not None:
                await webhook.close()


class InProcessServices:
    """One node without Kafka: billing and monitoring fed by the relay's LocalPublisher
    (``sinks``), the monitor's timers ticked every ``tick_s``; ``store`` as :func:`serve`'s."""

    def __init__(self, s: ServiceSettings, transactions: TransactionSource, *, tick_s: float = 1.0,
                 listeners: list | None = None, store: ServiceStore | None = None) -> None:
        self.settings = s
        self.listeners = list(listeners or [])  # of alerts raised and cleared (SSE)
        self.transactions = transactions
        self.tick_s = tick_s
        self.store: ServiceStore = store or SqliteServiceStore(s.db_path())
        self.billing: Billing | None = None
        self.monitoring: Monitoring | None = None
        self.webhook: Webhook | None = None
        self._ticker: asyncio.Task | None = None

    async def open(self) -> InProcessServices:
        await self.store.open()
        self.billing = Billing(self.store, self.transactions, default_currency=self.settings.currency)
        listeners = list(self.listeners)
        if self.settings.alert_webhook:
            self.webhook = Webhook(self.settings.alert_webhook).start()
            listeners.append(self.webhook)
        self.monitoring = await Monitoring(self.store, self.settings.monitor(), listeners=listeners).open()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="monitoring-timers")
        return self

    @property
    def sinks(self) -> list:
        assert self.billing is not None and self.monitoring is not None, "open() first"
        return [self.billing.handle, self.monitoring.handle]

    async def handle(self, events: list[Event]) -> None:
        for sink in self.sinks:
            await sink(events)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                assert self.monitoring is not None
                await self.monitoring.tick()
            except Exception:
                log.exception("monitoring timers failed")

    async def close(self) -> None:
        await cancel_and_wait(self._ticker)
        if self.webhook is not None:
            await self.webhook.close()
        await self.store.close()


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="chargeyard-services")
    ap.add_argument("service", choices=["billing", "monitoring"])
    ap.add_argument("--kafka-bootstrap", default=env("CHARGEYARD_KAFKA_BOOTSTRAP", ""))
    ap.add_argument("--data-dir", default=env("CHARGEYARD_DATA_DIR", "./data"))
    ap.add_argument("--store", default=env("CHARGEYARD_STORE", "sqlite"), choices=["sqlite", "scylla"])
    ap.add_argument("--scylla-hosts", default=env("CHARGEYARD_SCYLLA_HOSTS", ""))
    ap.add_argument("--keyspace", default=env("CHARGEYARD_KEYSPACE", "chargeyard"))
    ap.add_argument("--topic", default=TOPIC)
    ap.add_argument("--offline-after", type=float, default=float(env("CHARGEYARD_OFFLINE_AFTER", "120")))
    ap.add_argument("--heartbeat-interval", type=float, default=float(env("CHARGEYARD_HEARTBEAT_INTERVAL", "300")))
    ap.add_argument("--stall-after", type=float, default=float(env("CHARGEYARD_STALL_AFTER", "900")))
    ap.add_argument("--max-kw", type=float, default=float(env("CHARGEYARD_MAX_KW", "350")))
    ap.add_argument("--alert-webhook", default=env("CHARGEYARD_ALERT_WEBHOOK", ""))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    s = ServiceSettings(kafka_bootstrap=args.kafka_bootstrap, data_dir=args.data_dir, topic=args.topic,
                        offline_after=args.offline_after, heartbeat_interval=args.heartbeat_interval,
                        stall_after=args.stall_after, max_kw=args.max_kw, alert_webhook=args.alert_webhook)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from ..store import make_store

        store = None
        if args.service == "billing" or args.store == "scylla":
            store = make_store(args.store, data_dir=args.data_dir, scylla_hosts=args.scylla_hosts or None,
                               keyspace=args.keyspace)
            await store.open()
        services_store: ServiceStore | None = None  # --store sqlite: <data-dir>/services.db
        if args.store == "scylla":  # the services' tables in the same keyspace (ADR 0018)
            from .scylla_storage import ScyllaServiceStore

            services_store = ScyllaServiceStore(store)
        try:
            await serve(args.service, s, stop, store if args.service == "billing" else None, store=services_store)
        finally:
            if store is not None:
                await store.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
