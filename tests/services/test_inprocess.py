"""One node without Kafka: outbox -> relay (LocalPublisher) -> billing and monitoring in-process."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

from chargeyard.services.billing import Tariff
from chargeyard.services.runner import InProcessServices, ServiceSettings
from chargeyard.store import events as ev
from chargeyard.worker.relay import LocalPublisher, Relay
from tests.services.kafka_read import until

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.timezone.utc)


class Txs:
    async def get_transaction(self, cid, tx):
        return {"charger_id": cid, "tx_id": tx, "energy_wh": 2000.0, "started_at": "2025-03-01T08:00:00Z",
                "stopped_at": "2025-03-01T08:30:00Z"}


def test_one_node_services_from_the_outbox(tmp_path, run):
    async def main():
        services = await InProcessServices(ServiceSettings(data_dir=str(tmp_path), offline_after=0.2), Txs(),
                                           tick_s=0.05).open()
        await services.store.put_tariff(Tariff(tariff_id="std", currency="EUR", per_kwh=Decimal("0.30"),
                                               session_fee=Decimal("1.00"), vat_percent=Decimal("19")))
        box = ev.MemoryOutbox()
        relay = Relay(box, LocalPublisher(*services.sinks), metrics=False, name="local").start()
        box.on_append = relay.wake
        now = dt.datetime.now(dt.timezone.utc)
        box.append(ev.connected("cp", now, "ocpp1.6", 1), ev.tx_started("cp", T0, "1", 1),
                   ev.tx_ended("cp", T0, "1"), ev.disconnected("cp", now, 1, "lost"))
        await until(lambda: relay.published == 4)
        await until(lambda: any(k == "charger_offline" for k, _, _ in services.monitoring.monitor.open), timeout=10)
        cdr = await services.store.get_cdr("cp", "1")
        assert cdr is not None and cdr.total == "1.90"
        await relay.close()
        await services.close()
    run(main())
