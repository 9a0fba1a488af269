"""What a worker lends its sessions and their handlers, and nothing of its lifecycle.

Handlers reach these through ``session.services``; they never see the ``Worker``
(``server.py``), so the handlers, the sessions and the server do not import each other.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .authorization import Authorization
from .writer import BatchWriter
from .events import Events
from .leniency import Leniency
from .settings import WorkerSettings
from .txids import TxIds
from . import metrics as m

__all__ = ["Services"]

log = logging.getLogger("chargeyard.worker")


class Services:
    """One per worker: its settings, store writer, id-tag authorization, transaction ids,
    leniency profiles and events, the BootNotification admission count, the DataTransfer
    handlers by vendorId, background tasks and rate-limited warnings."""

    def __init__(self, settings: WorkerSettings, writer: BatchWriter, authorization: Authorization,
                 tx_ids: TxIds, leniency: Leniency, events: Events) -> None:
        self.settings = settings
        self.writer = writer
        self.authorization = authorization
        self.tx_ids = tx_ids
        self.leniency = leniency
        self.events = events
        # DataTransfer by vendorId: ``handler(session, request) -> response`` (the answer
        # forms of handlers/common.py); an unknown vendorId is answered UnknownVendorId
        self.data_transfer: dict[str, Callable[[Any, Any], Any]] = {}
        self.boots_in_flight = 0
        # charger security (worker/security/service.py ChargerSecurity): the CSMS CA for
        # SignCertificate, the store of security events; set by the worker
        self.security: Any = None
        self.tasks: set[asyncio.Task] = set()
        self._warned: dict[tuple[str, str], float] = {}

    # -- BootNotification admission: a reconnect storm must not queue thousands of
    # identity writes ahead of the meter readings; the rest are told to come back later
    def boot_admitted(self) -> bool:
        return self.boots_in_flight < self.settings.max_concurrent_boots

    def boot_retry_interval(self) -> int:
        """Jittered, so that chargers told Pending together do not come back together."""
        m.BOOTS_PENDING.inc()
        base = self.settings.boot_retry_interval
        return max(1, int(base * (0.5 + random.random())))

    # -- background work -------------------------------------------------------------
    def track(self, task: asyncio.Task) -> None:
        """Keep a reference (the loop keeps only weak ones) until the task is done; a drain
        cancels what is left."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.track(task)
        return task

    def warn_once(self, charger_id: str, key: str, msg: str, *args: Any) -> None:
        """Quirky chargers repeat themselves: one warning per charger and kind per 10 min."""
        k = (charger_id, key)
        t = time.monotonic()
        if self._warned.get(k, 0.0) > t:
            return
        if len(self._warned) > 50_000:
            self._warned.clear()
        self._warned[k] = t + 600
        log.warning(msg, *args)
