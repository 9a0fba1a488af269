"""Events of the worker's chargers (``charger.*``, ``transaction.*``) for live listeners.

Published through the registry (SSE subscribers, in-process or Redis pub/sub) and to
optional in-process sinks. Never blocks a charger's reply.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

from ..router.registry import Registry

__all__ = ["Events"]

log = logging.getLogger("chargeyard.worker")
UTC = dt.timezone.utc


def _always(charger_id: str) -> bool:
    return True


class Events:
    """``emit(charger_id, kind, data)``; ``wants_events(charger_id)`` says whether anyone
    listens, so that per-message events are not even built when nobody does."""

    def __init__(self, registry: Registry, worker_id: str, spawn: Callable[[Any], None],
                 sinks: list[Callable[[dict], Any]] | None = None) -> None:
        self.registry = registry
        self.sinks = tuple(sinks or ())
        self._spawn = spawn
        self._seq = 0
        self._prefix = uuid.uuid4().hex[:12] + "-"  # ids stay unique across restarts
        self._source = f"chargeyard/{worker_id}"
        self._publish_nowait = getattr(registry, "publish_nowait", None)
        # Chosen once: the MeterValues path asks per message, and the registry's own method
        # answers it in one call when no sink always wants everything.
        self.wants_events: Callable[[str], bool] = _always if self.sinks else registry.wants_events

    def emit(self, charger_id: str, kind: str, data: dict) -> None:
        if not self.wants_events(charger_id):
            return
        self._seq += 1
        event = {"id": f"{self._prefix}{self._seq:x}", "type": kind, "source": self._source,
                 "time": dt.datetime.now(UTC).isoformat(), "charger_id": charger_id, "data": data}
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


