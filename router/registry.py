"""Ownership registry: which worker holds which charger, and the way to reach it.

The operator API never touches a charger session directly: it asks the registry
to ``call`` a charger, and the registry delivers the call to the owning worker
(in this process for :class:`LocalRegistry`, over Redis for ``RedisRegistry``).
Live events for apps flow through the same object (``publish`` / ``subscribe``).

Contract (``tests/router/test_registry_contract.py`` runs it on every backend):

* ``claim(charger_id)`` on connect returns a fencing epoch, strictly increasing per
  charger across the whole cluster; a previous owner is told through its
  ``on_takeover`` callback (locally at once, across nodes within 1 s).
* ``release(charger_id, epoch)`` on clean disconnect removes the owner record only
  if ``epoch`` is still the current one: a stale owner never erases the new one.
* ``owner(charger_id)`` -> ``Owner`` or None (None too when the owner's lease expired).
* ``call(charger_id, action, payload, timeout)`` -> the charger's response payload
  (a dict); raises :class:`NotConnected`, :class:`CallRejected` (the charger
  answered CALLERROR), :class:`CallTimeout`, :class:`PayloadInvalid` or
  :class:`RegistryUnavailable`.
* ``publish(event)`` / ``subscribe(charger_id)``: live events (dicts with the
  envelope of ARCHITECTURE.md) for one charger, or ``"*"`` for all.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# (charger_id, action, payload dict, timeout seconds) -> response payload dict
CallExecutor = Callable[[str, str, dict, float], Awaitable[dict]]
TakeoverCallback = Callable[[str, int], Any]  # (charger_id, new_epoch)

# Not an OCPP action: ``call(charger_id, DISCONNECT, {"reason": ...})`` makes the owning
# worker close the charger's connection (deregistration); the API refuses it from operators.
DISCONNECT = "_Disconnect"


class RegistryError(Exception):
    status = 500
    code = "internal"


class NotConnected(RegistryError):
    status, code = 404, "not_connected"


class PayloadInvalid(RegistryError):
    status, code = 422, "payload_invalid"


class CallRejected(RegistryError):
    """The charger answered with a CALLERROR."""
    status, code = 502, "charger_error"

    def __init__(self, error_code: str, description: str = "", details: Any = None) -> None:
        super().__init__(f"{error_code}: {description}")
        self.error_code = error_code
        self.description = description
        self.details = details or {}


class CallTimeout(RegistryError):
    status, code = 504, "timeout"


class RegistryUnavailable(RegistryError):
    status, code = 503, "registry_unavailable"


@dataclass(frozen=True, slots=True)
class Owner:
    worker_id: str
    epoch: int
    protocol: str = ""


class Registry(ABC):
    """One per process. A worker calls ``attach`` once with its call executor."""

    worker_id: str

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    def attach(self, worker_id: str, executor: CallExecutor, on_takeover: TakeoverCallback) -> None:
        """Called by the worker living in this process (none for an API-only node)."""
        self.worker_id = worker_id
        self._executor: CallExecutor | None = executor
        self._on_takeover: TakeoverCallback | None = on_takeover

    @abstractmethod
    async def claim(self, charger_id: str, protocol: str = "") -> int: ...

    @abstractmethod
    async def release(self, charger_id: str, epoch: int) -> None: ...

    @abstractmethod
    async def owner(self, charger_id: str) -> Owner | None: ...

    @abstractmethod
    async def connected(self) -> dict[str, Owner]:
        """Every charger with a live owner (the API's connected flag)."""

    @abstractmethod
    async def call(self, charger_id: str, action: str, payload: dict, timeout: float) -> dict: ...

    @abstractmethod
    async def publish(self, event: dict) -> None: ...

    @abstractmethod
    def subscribe(self, charger_id: str) -> AsyncIterator[dict]: ...

    @property
    def healthy(self) -> bool:
        return True

    def wants_events(self, charger_id: str) -> bool:
        """False when nobody could receive an event for this charger (lets workers skip them)."""
        return True


class LocalRegistry(Registry):
    """The single-node registry: a dict, a counter and in-process queues."""

    def __init__(self, worker_id: str = "local") -> None:
        self.worker_id = worker_id
        self._owners: dict[str, Owner] = {}
        self._epochs = itertools.count(1)
        self._executor = None
        self._on_takeover = None
        self._subs: dict[str, set[asyncio.Queue]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for qs in self._subs.values():
            for q in qs:
                q.put_nowait(None)

    async def claim(self, charger_id: str, protocol: str = "") -> int:
        epoch = next(self._epochs)
        old = self._owners.get(charger_id)
        self._owners[charger_id] = Owner(self.worker_id, epoch, protocol)
        if old is not None and old.worker_id != self.worker_id and self._on_takeover is not None:
            self._on_takeover(charger_id, epoch)
        return epoch

    async def release(self, charger_id: str, epoch: int) -> None:
        cur = self._owners.get(charger_id)
        if cur is not None and cur.epoch == epoch:
            del self._owners[charger_id]

    async def owner(self, charger_id: str) -> Owner | None:
        return self._owners.get(charger_id)

    async def connected(self) -> dict[str, Owner]:
        return dict(self._owners)

    async def call(self, charger_id: str, action: str, payload: dict, timeout: float) -> dict:
        if charger_id not in self._owners or self._executor is None:
            raise NotConnected(f"charger {charger_id!r} is not connected")
        return await self._executor(charger_id, action, payload, timeout)

    def wants_events(self, charger_id: str) -> bool:
        return charger_id in self._subs or "*" in self._subs

    async def publish(self, event: dict) -> None:
        self.publish_nowait(event)

    def publish_nowait(self, event: dict) -> None:
        for key in (event.get("charger_id"), "*"):
            for q in self._subs.get(key, ()):  # type: ignore[arg-type]
                if q.qsize() < 1000:  # a slow subscriber loses events, never blocks a charger
                    q.put_nowait(event)

    async def subscribe(self, charger_id: str) -> AsyncIterator[dict]:  # type: ignore[override]
        q: asyncio.Queue = asyncio.Queue()
        self._subs.setdefault(charger_id, set()).add(q)
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                yield ev
        finally:
            self._subs[charger_id].discard(q)
            if not self._subs[charger_id]:
                del self._subs[charger_id]
