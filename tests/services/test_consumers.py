"""The services' Kafka consumer loop against the real broker: billing and monitoring
consume what the relay published, effects once despite duplicates on the topic and a
consumer killed mid-stream, offsets committed, lag back to 0, broker absent at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from decimal import Decimal

from chargeyard.services import metrics as m
from chargeyard.services.billing import Tariff
from chargeyard.services.billing.service import Billing
from chargeyard.services.consumer import Consumer
from chargeyard.services.monitoring import MonitorSettings
from chargeyard.services.monitoring.service import Monitoring
from chargeyard.store import events as ev
from chargeyard.worker.relay import KafkaPublisher, Relay
from chargeyard.kafka_broker import KafkaBroker, free_port
from tests.services.kafka_read import until

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


class Transactions:
    """The main store's view billing reads: energy from here, never from the events."""

    def __init__(self, n: int) -> None:
        self.txs = {(f"cp-{i}", str(i)): {"charger_id": f"cp-{i}", "tx_id": str(i), "energy_wh": 1000.0 * (i + 1),
                                          "started_at": "2025-03-01T08:00:00Z", "stopped_at": "2025-03-01T08:30:00Z"}
                    for i in range(n)}

    async def get_transaction(self, cid, tx):
        return self.txs.get((cid, tx))


def _session_events(n: int) -> list[ev.Event]:
    out = []
    for i in range(n):
        cid = f"cp-{i}"
        out += [ev.tx_started(cid, T0, str(i), 1, "TAG", 0.0),
                ev.tx_meter(cid, T0 + dt.timedelta(minutes=10), str(i), 1, 300.0),
                ev.tx_ended(cid, T0 + dt.timedelta(minutes=30), str(i), 9e9)]
    return out


async def _publish(bootstrap: str, topic: str, events: list[ev.Event], times: int = 1) -> None:
    box = ev.MemoryOutbox()
    relay = Relay(box, KafkaPublisher(bootstrap, topic), metrics=False).start()
    box.on_append = relay.wake
    for _ in range(times):  # a relay that crashed before marking publishes again: same ids
        box.append(*events)
    await until(lambda: relay.published == len(events) * times)
    await relay.close()


def test_billing_consumer_prices_each_ended_transaction_once(kafka, run, services_store):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    group = f"chargeyard-billing-{uuid.uuid4().hex[:6]}"
    n = 40

    async def main():
        await _publish(kafka.bootstrap, topic, _session_events(n), times=2)
        txs = Transactions(n)
        async with services_store() as store:
            await store.put_tariff(Tariff(tariff_id="all", currency="EUR", per_kwh=Decimal("0.30"),
                                          session_fee=Decimal("1.00"), vat_percent=Decimal("19")))
            billing = Billing(store, txs, group=group)
            # a consumer that dies after a few batches without committing its offsets
            handled = []

            async def dying(events):
                handled.append(len(events))
                await billing.handle(events[: len(events) // 2])
                raise RuntimeError("killed mid-stream")

            c1 = Consumer(kafka.bootstrap, group, dying, topic=topic, max_records=30, backoff_min_s=30)
            c1.start()
            await until(lambda: handled)
            await c1.close()
            c2 = Consumer(kafka.bootstrap, group, billing.handle, topic=topic, max_records=50).start()
            await until(lambda: c2.lag == 0 and c2.consumed > 0, timeout=60)
            await c2.close()
            cdrs = await store.list_cdrs()
            assert sorted((c.charger_id, c.tx_id) for c in cdrs) == sorted(txs.txs)
            for c in cdrs:  # the store's energy, the tariff's price
                wh = txs.txs[(c.charger_id, c.tx_id)]["energy_wh"]
                net = Decimal("0.30") * Decimal(wh) / 1000 + Decimal("1.00")
                assert Decimal(c.net) == net and Decimal(c.total) == (net * Decimal("1.19")).quantize(Decimal("0.01"))
            assert m.CONSUMER_LAG.labels(group)._value.get() == 0
            # a restarted consumer of the same group starts after the committed offsets
            c3 = Consumer(kafka.bootstrap, group, billing.handle, topic=topic).start()
            await until(lambda: c3.lag == 0)
            await c3.close()
            assert c3.consumed == 0
    run(main(), timeout=120)


def test_monitoring_consumer_raises_and_clears(kafka, run, services_store):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    group = f"chargeyard-monitoring-{uuid.uuid4().hex[:6]}"

    async def main():
        async with services_store() as store:
            seen = []
            mon = await Monitoring(store, MonitorSettings(offline_after=1.0), group=group,
                                   listeners=[seen.append]).open()
            c = Consumer(kafka.bootstrap, group, mon.handle, topic=topic, tick=mon.tick, poll_ms=200).start()
            now = dt.datetime.now(UTC)
            await _publish(kafka.bootstrap, topic, [
                ev.connected("a", now, "ocpp1.6", 1), ev.connected("b", now, "ocpp1.6", 1),
                ev.status("a", now, 0, 1, "Faulted", "GroundFailure"),
                ev.disconnected("b", now, 1, "takeover"), ev.connected("b", now, "ocpp1.6", 2),
                ev.disconnected("a", now, 1, "lost")])
            await until(lambda: {(x.kind, x.cleared_at is None) for x in seen} ==
                        {("connector_faulted", True), ("charger_offline", True)}, timeout=30)
            await _publish(kafka.bootstrap, topic, [
                ev.status("a", dt.datetime.now(UTC), 0, 1, "Available"),
                ev.connected("a", dt.datetime.now(UTC), "ocpp1.6", 3)])
            await until(lambda: sum(x.cleared_at is not None for x in seen) == 2, timeout=30)
            await c.close()
            assert all(x.charger_id == "a" for x in seen)  # b's takeover raised nothing
            assert await store.list_alerts(active=True) == []
    run(main(), timeout=90)


def test_consumer_waits_for_a_broker_absent_at_start(tmp_path, run, caplog):
    broker = KafkaBroker(tmp_path / "kafka", port=free_port())
    topic = "chargeyard.events"
    caplog.set_level(logging.WARNING, "chargeyard.consumer")

    async def main():
        got: list[str] = []

        async def handle(events):
            got.extend(e.id for e in events)

        c = Consumer(broker.bootstrap, "g", handle, topic=topic, request_timeout_s=2.0, backoff_max_s=1.0).start()
        await until(lambda: c.errors >= 2, timeout=30)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, broker.start)
        sent = _session_events(5)
        await _publish(broker.bootstrap, topic, sent)
        await until(lambda: len(got) == len(sent), timeout=60)
        await c.close()
        assert got == [e.id for e in sent]  # one partition: the whole order
    try:
        run(main(), timeout=120)
    finally:
        broker.kill()
    assert any("restarting the consumer" in r.getMessage() for r in caplog.records)
    assert any("consuming again" in r.getMessage() for r in caplog.records)
