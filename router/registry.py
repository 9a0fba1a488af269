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
  envelope of docs/architecture.md, Live events) for one charger, or ``"*"`` for all.
* ``events(charger_id, after)`` -> a :class:`Subscription` that exists when the
  call returns (so an event published afterwards reaches it). Each event comes with
  a stream id that increases monotonically within its stream; ``after`` (an SSE
  ``Last-Event-ID``) first replays the events of that stream newer than it, from a
  bounded window (the last ``REPLAY_EVENTS`` of a charger, ``REPLAY_ALL`` of ``"*"``,
  kept ``REPLAY_SECONDS`` after the last event or subscriber).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# (charger_id, action, payload dict, timeout seconds) -> response payload dict
CallExecutor = Callable[[str, str, dict, float], Awaitable[dict]]
TakeoverCallback = Callable[[str, int], Any]  # (charger_id, new_epoch)

# Not an OCPP action: ``call(charger_id, DISCONNECT, {"reason": ...})`` makes the owning
# worker close the charger's connection (deregistration); the API refuses it from operators.
DISCONNECT = "_Disconnect"


# The replay window behind ``Last-Event-ID``: per charger, for the firehose, and how
# long a stream's window outlives its last subscriber (single node) or event (Redis).
REPLAY_EVENTS = 100
REPLAY_ALL = 1000
REPLAY_SECONDS = 300.0


class Subscription(ABC):
    """One live event stream, already subscribed. ``next(timeout)`` returns
    ``(stream_id, event)``, or None when nothing came within ``timeout`` (the
    subscription stays intact), and raises StopAsyncIteration once the stream ended
    (the registry stopped)."""

    @abstractmethod
    async def next(self, timeout: float) -> tuple[str, dict] | None: ...

    @abstractmethod
    async def close(self) -> None: ...


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
    async def events(self, charger_id: str, after: str | None = None) -> Subscription:
        """Subscribe now; replay what is newer than ``after`` first (see the module doc)."""

    async def subscribe(self, charger_id: str) -> AsyncIterator[dict]:
        """The events of one charger (``"*"``: all) as they come; ends when the registry stops."""
        sub = await self.events(charger_id)
        try:
            while True:
                item = await sub.next(3600.0)
                if item is not None:
                    yield item[1]
        except StopAsyncIteration:
            return
        finally:
            await sub.close()

    @property
    def healthy(self) -> bool:
        return True

    def wants_events(self, charger_id: str) -> bool:
        """False when nobody could receive an event for this charger (lets workers skip them)."""
        return True


class _LocalStream:
    """Subscribers of one stream and its replay window (``(seq, event)``, oldest first).
    It stays in the registry while it has subscribers, and ``REPLAY_SECONDS`` after
    the last one left, so a client that reconnects misses nothing."""

    __slots__ = ("subs", "window", "idle_since")

    def __init__(self, size: int) -> None:
        self.subs: set[asyncio.Queue] = set()
        self.window: deque[tuple[int, dict]] = deque(maxlen=size)
        self.idle_since = 0.0


class _LocalSubscription(Subscription):
    def __init__(self, reg: LocalRegistry, key: str, stream: _LocalStream, after: int | None) -> None:
        self._reg, self._key, self._stream = reg, key, stream
        self._q: asyncio.Queue = asyncio.Queue()
        if after is not None:
            for item in stream.window:
                if item[0] > after:
                    self._q.put_nowait(item)
        stream.subs.add(self._q)

    async def next(self, timeout: float) -> tuple[str, dict] | None:
        if self._q.empty():
            if self._reg._stopped:
                raise StopAsyncIteration
            try:
                # cancelling a Queue.get loses nothing: the item stays queued
                item = await asyncio.wait_for(self._q.get(), timeout)
            except asyncio.TimeoutError:
                return None
        else:
            item = self._q.get_nowait()
        if item is None:
            raise StopAsyncIteration
        return str(item[0]), item[1]

    async def close(self) -> None:
        st = self._stream
        st.subs.discard(self._q)
        if not st.subs:
            st.idle_since = time.monotonic()


class LocalRegistry(Registry):
    """The single-node registry: a dict, a counter and in-process queues."""

    def __init__(self, worker_id: str = "local") -> None:
        self.worker_id = worker_id
        self._owners: dict[str, Owner] = {}
        # epochs from the clock in milliseconds, +1 when claims come faster, as the Redis
        # registry floors them (a store may move between one node and a cluster): the store keeps
        # each charger's highest epoch (fencing), so a restarted node must issue larger ones
        self._last_epoch = 0
        self._executor = None
        self._on_takeover = None
        # charger id (or "*") -> its stream; a charger nobody watched within
        # REPLAY_SECONDS has none, and then its events are not even built
        self._subs: dict[str, _LocalStream] = {}
        # stream ids: microseconds at start, +1 per event, so a Last-Event-ID from
        # before a restart is older than every new event
        self._seq = itertools.count(time.time_ns() // 1000)
        self._stopped = False

    async def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        for st in self._subs.values():
            for q in st.subs:
                q.put_nowait(None)

    async def claim(self, charger_id: str, protocol: str = "") -> int:
        epoch = self._last_epoch = max(self._last_epoch + 1, time.time_ns() // 1_000_000)
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
        item = None
        for key in (event.get("charger_id"), "*"):
            st = self._subs.get(key)  # type: ignore[arg-type]
            if st is None:
                continue
            if item is None:
                item = (next(self._seq), event)
            st.window.append(item)
            for q in st.subs:
                if q.qsize() < 1000:  # a slow subscriber loses events, never blocks a charger
                    q.put_nowait(item)

    def _expire(self) -> None:
        limit = time.monotonic() - REPLAY_SECONDS
        for key in [k for k, st in self._subs.items() if not st.subs and st.idle_since < limit]:
            del self._subs[key]

    async def events(self, charger_id: str, after: str | None = None) -> Subscription:
        self._expire()
        st = self._subs.get(charger_id)
        if st is None:
            st = self._subs[charger_id] = _LocalStream(REPLAY_ALL if charger_id == "*" else REPLAY_EVENTS)
        try:
            since = int(after) if after else None
        except ValueError:
            since = None  # not one of ours: live events only
        return _LocalSubscription(self, charger_id, st, since)
