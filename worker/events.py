"""Live events of the worker's chargers (``charger.*``, ``transaction.*``) for SSE.

Fed from committed batches only (``BatchWriter(on_batch=...)``): the same facts, and the
same event ids, as the store's outbox (``store/events.py``'s ``from_op``), so nothing is
shown live that was not acknowledged. Events are built only for chargers someone watches
(the registry's ``wants_events``), published through the registry (in-process, or Redis in
a cluster) and to optional in-process sinks (tests). Never blocks a charger's reply.

The live payload keeps the names SSE clients know: a ``transaction.meter``'s register is
``meter_wh`` (a transaction's ``energy_wh`` elsewhere in the API is the energy delivered),
and every event's ``data`` carries ``at`` (the fact's time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from ..router.registry import Registry
from ..store.events import Event, from_op

__all__ = ["Events", "live"]

log = logging.getLogger("chargeyard.worker")


def _always(charger_id: str) -> bool:
    return True


def live(event: Event) -> dict:
    """The SSE form of an event: the envelope as a dict, ``data`` with ``at``."""
    data = msgspec.to_builtins(event.data)
    if event.type == "transaction.meter":
        data["meter_wh"] = data.pop("energy_wh")
    at = event.time.isoformat()
    data["at"] = at
    return {"id": event.id, "type": event.type, "source": event.source, "time": at,
            "charger_id": event.charger_id, "data": data}


class Events:
    """``committed(ops, results)`` per committed batch; ``wants_events(charger_id)`` says
    whether anyone listens (chosen once: the registry's own method unless a sink wants
    everything)."""

    def __init__(self, registry: Registry, worker_id: str, spawn: Callable[[Any], None],
                 sinks: list[Callable[[dict], Any]] | None = None) -> None:
        self.registry = registry
        self.sinks = tuple(sinks or ())
        self._spawn = spawn
        self._publish_nowait = getattr(registry, "publish_nowait", None)
        self.wants_events: Callable[[str], bool] = _always if self.sinks else registry.wants_events

    def committed(self, ops: list[Any], results: list[Any]) -> None:
        """The live events of one committed batch, for the watched chargers only."""
        wants = self.wants_events
        for op, result in zip(ops, results):
            cid = getattr(op, "charger_id", None)
            if cid is None or not wants(cid):
                continue
            for event in from_op(op, result):
                self.emit(live(event))

    def emit(self, event: dict) -> None:
        if self._publish_nowait is not None:
            self._publish_nowait(event)
        else:
            self._spawn(self._publish(event))
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed")

    async def _publish(self, event: dict) -> None:
        try:
            await self.registry.publish(event)
        except Exception as exc:
            log.debug("event not published: %r", exc)
