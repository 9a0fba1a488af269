"""The monitoring service: applies event batches to the :class:`Monitor`, stores the
alerts that changed with the events' ids (exactly-once effects), exports
``chargeyard_alerts_active{kind}``, and tells listeners (SSE, the webhook)."""

from __future__ import annotations

import logging
import time
from typing import Callable

from ...store.events import Event
from .. import metrics as m
from ..storage import MonitoringStore
from .alerts import KINDS, Alert, Monitor, MonitorSettings

log = logging.getLogger("chargeyard.monitoring")

GROUP = "chargeyard-monitoring"
REPLAY_SAFE_PREFIX = "transaction."  # the event types applied without an id check (see handle)

Listener = Callable[[Alert], None]


class Monitoring:
    def __init__(self, store: MonitoringStore, settings: MonitorSettings | None = None, *,
                 clock: Callable[[], float] = time.time, group: str = GROUP,
                 listeners: list[Listener] | None = None) -> None:
        self.store = store
        self.monitor = Monitor(settings, clock)
        self.group = group
        self.listeners = list(listeners or [])

    async def open(self) -> Monitoring:
        """Load the timers and open alerts saved before a restart."""
        states, alerts = await self.store.load_monitor()
        self.monitor.restore(states, alerts)
        self._gauges()
        return self

    async def handle(self, events: list[Event]) -> list[Alert]:
        """Apply a batch (duplicates skipped), check the timers, store; returns the alerts
        raised or cleared."""
        if not events:
            return await self.tick()
        # Transaction events need no id check: a replay is a contiguous run of a charger's
        # events in their order, and the monitor applies them as the state they set (a
        # reading not newer than the last is ignored, an end drops the transaction). So
        # the meter readings, nearly every event, are never looked up or kept by id; the
        # charger events are (a replayed Faulted or a counted login failure would raise).
        checked = [e.id for e in events if not e.type.startswith(REPLAY_SAFE_PREFIX)]
        seen = await self.store.seen(self.group, checked) if checked else set()
        if seen:
            m.DUPLICATES.labels(self.group).inc(len(seen))
            events = [e for e in events if e.id not in seen]
        for e in events:
            self.monitor.apply(e)
        self.monitor.tick()
        changed = await self._commit([i for i in checked if i not in seen])
        m.CONSUMED.labels(self.group).inc(len(events))
        return changed

    async def tick(self) -> list[Alert]:
        """Check the timers alone (the consumer calls this when no events come)."""
        self.monitor.tick()
        return await self._commit([])

    async def _commit(self, ids: list[str]) -> list[Alert]:
        alerts, states = self.monitor.take_changes()
        if not (alerts or states or ids):
            return []
        try:
            await self.store.commit_monitoring(self.group, ids, alerts, states)
        except BaseException:
            # not stored: the consumer does not commit its offsets, the events come again;
            # rebuild from what was stored so they apply to the state they found
            states_, open_ = await self.store.load_monitor()
            self.monitor.restore(states_, open_)
            raise
        for a in alerts:
            if a.cleared_at is None:
                m.ALERTS_RAISED.labels(a.kind).inc()
                log.warning("alert %s raised for %s: %s", a.kind, a.charger_id, a.detail)
            else:
                log.info("alert %s cleared for %s", a.kind, a.charger_id)
            for listener in self.listeners:
                try:
                    listener(a)
                except Exception:
                    log.exception("alert listener failed")
        self._gauges()
        return alerts

    def _gauges(self) -> None:
        counts = self.monitor.active_counts()
        for kind in KINDS:
            m.ALERTS_ACTIVE.labels(kind).set(counts[kind])
