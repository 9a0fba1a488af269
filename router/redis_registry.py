"""The cluster registry: charger ownership, forwarding and live events over Redis.

Keys (hash tags keep every multi-key script inside one slot, so Redis Cluster works):

* ``cy:{<charger>}:owner``  -> ``"<worker_id>:<epoch>"``; no TTL, liveness comes
  from the owner's lease.
* ``cy:{<charger>}:epoch``  -> fencing counter: ``INCR``, floored at Redis ``TIME``
  in milliseconds so epochs keep growing even after Redis lost its data
  (docs/adr/0001-ownership-in-redis.md).
* ``cy:worker:{<worker_id>}`` -> lease (value: this process's incarnation id),
  TTL ``lease_s``, renewed every ``lease_s / 3``: the only steady-state write.
* ``cy:worker:{<worker_id>}:chargers`` -> hash charger -> ``"<epoch>|<protocol>"``,
  written on claim/release only (the ``connected()`` index and the protocol).
* ``cy:workers`` -> set of worker ids ever seen (to find the hashes above).

Channels: ``cy:worker:{<w>}:control`` (takeover notices), ``cy:worker:{<w>}:calls``
(forwarded CALLs), ``cy:node:{<node>}:replies`` (replies to this process),
``cy:watch`` (a charger's events are wanted; with the sorted set ``cy:watched``),
and the streams (XADD, capped; the SSE replay window) ``cy:events:{<charger>}``
and the firehose ``cy:events``.

Failure model: Redis calls fail fast (no retries, short socket timeouts). ``claim``
and ``release`` never raise because Redis is down: this process keeps what it owns
in memory (``_owned``) and re-asserts all of it as soon as Redis answers again
(at the latest one renew tick, ``lease_s / 3``, after it is back). ``owner``,
``connected``, ``call`` and ``check_fence`` raise :class:`RegistryUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import time
import uuid
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .registry import (
    REPLAY_ALL,
    REPLAY_EVENTS,
    REPLAY_SECONDS,
    CallRejected,
    CallTimeout,
    NotConnected,
    Owner,
    PayloadInvalid,
    Registry,
    RegistryUnavailable,
    Subscription,
)

log = logging.getLogger("chargeyard.router.redis")

# Network-level failures of Redis (RedisError covers ConnectionError/TimeoutError
# of redis-py; OSError covers a refused socket surfacing before redis-py wraps it).
_DOWN = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def owner_key(charger_id: str) -> str:
    return f"cy:{{{charger_id}}}:owner"


def epoch_key(charger_id: str) -> str:
    return f"cy:{{{charger_id}}}:epoch"


def lease_key(worker_id: str) -> str:
    return f"cy:worker:{{{worker_id}}}"


def chargers_key(worker_id: str) -> str:
    return f"cy:worker:{{{worker_id}}}:chargers"


def calls_channel(worker_id: str) -> str:
    return f"cy:worker:{{{worker_id}}}:calls"


def control_channel(worker_id: str) -> str:
    return f"cy:worker:{{{worker_id}}}:control"


def reply_channel(node_id: str) -> str:
    return f"cy:node:{{{node_id}}}:replies"


def events_key(charger_id: str) -> str:
    """The stream of one charger's live events (``"*"``: of all chargers)."""
    return "cy:events" if charger_id == "*" else f"cy:events:{{{charger_id}}}"


WORKERS_KEY = "cy:workers"
# Chargers someone watches (SSE): sorted set charger (or "*") -> until (epoch s), and
# the channel announcing a new watch to every worker at once. Workers build events
# only for watched chargers (wants_events), as on one node; they re-read the set
# every WATCH_SYNC_S (and at start) for what they missed.
WATCH_KEY = "cy:watched"
WATCH_CHANNEL = "cy:watch"
WATCH_SYNC_S = 30.0

# Epoch = INCR, but never below Redis' clock in ms: a Redis that lost its data still
# hands out epochs above every one issued before. Returns {epoch, previous owner}.
_CLAIM = """
local e = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if e < floor then
  e = floor
  redis.call('SET', KEYS[2], string.format('%.0f', e))
end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', e))
return {e, old}
"""

# Delete the owner record only if it still names (worker, epoch).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# True iff no claim newer than ARGV[1] happened (a stale owner gets false).
_FENCE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur <= tonumber(ARGV[1]) then return 1 end
return 0
"""

# Re-assert an ownership held in memory after Redis lost it (restart, failover).
# ARGV: worker_id, epoch. Returns {1, previous owner} if we own it (again), {0}
# if someone newer does. A previous owner with an older epoch (both claimed while
# Redis was away) is told to let go, as on claim.
_REASSERT = """
local mine = ARGV[1] .. ':' .. ARGV[2]
local want = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local owner = redis.call('GET', KEYS[1])
if owner == mine then return {1, false} end
if cur > want then return {0, false} end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], mine)
return {1, owner}
"""

_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _split_owner(value: str) -> tuple[str, int]:
    worker_id, _, epoch = value.rpartition(":")
    return worker_id, int(epoch)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Bounded:
    """RedisCluster raises MaxConnectionsError instead of waiting for a free
    connection: bound the commands in flight here so bursts queue."""

    def __init__(self, client: Any, limit: int) -> None:
        self._c = client
        self._sem = asyncio.Semaphore(limit)

    def register_script(self, script: str) -> Any:
        from redis.commands.core import AsyncScript

        return AsyncScript(self, script)  # its EVALSHAs go through the bound too

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._c, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            res = attr(*args, **kw)
            return self._run(res) if inspect.isawaitable(res) else res
        return call

    async def _run(self, aw: Any) -> Any:
        async with self._sem:
            return await aw


class _Concurrent:
    """Pipeline stand-in for Redis Cluster (keys of many slots, keyless PUBLISH):
    records the calls, then runs them concurrently and returns results in order."""

    def __init__(self, client: Any) -> None:
        self._c = client
        self._ops: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kw: Any) -> _Concurrent:
            self._ops.append((name, args, kw))
            return self
        return record

    async def execute(self) -> list:
        ops, self._ops = self._ops, []
        return list(await asyncio.gather(*(getattr(self._c, n)(*a, **kw) for n, a, kw in ops)))

    async def __aenter__(self) -> _Concurrent:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


class RedisRegistry(Registry):
    """Registry over Redis (or Valkey). One instance per process.

    ``worker_id`` is this process's worker identity (``attach`` may set it too); an
    API-only process passes none and only reads, forwards calls and subscribes.
    """

    def __init__(self, url: str, worker_id: str | None = None, lease_s: float = 10.0,
                 *, connect_timeout: float = 0.5, op_timeout: float = 1.0,
                 max_connections: int = 64) -> None:
        self.url = url
        self.worker_id = worker_id  # type: ignore[assignment]
        self.lease_s = float(lease_s)
        self.node_id = uuid.uuid4().hex[:12]  # this process incarnation
        self._executor = None
        self._on_takeover = None
        opts = dict(decode_responses=True, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                    socket_connect_timeout=connect_timeout, socket_timeout=op_timeout,
                    health_check_interval=0)
        # ``redis+cluster://host:port`` (any node) selects the Redis Cluster client
        self.cluster = url.split("://", 1)[0].endswith("+cluster")
        if self.cluster:
            plain = url.replace("+cluster://", "://", 1)
            # per-node pools get headroom over the bound for pub/sub connections
            self._r = _Bounded(aioredis.RedisCluster.from_url(
                plain, max_connections=max_connections + 64, **opts), max_connections)
            self._ps = self._r  # ClusterPubSub opens its own node connection
        else:
            # Commands share a bounded pool: a reconnect storm of thousands of
            # chargers queues for connections instead of opening thousands. When
            # Redis is down connections fail at once, so the wait stays short.
            self._r = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=5.0, **opts))
            # pub/sub holds a connection each (listener, one per subscribe()): own pool
            self._ps = aioredis.Redis.from_url(url, **opts)
        self._claim = self._r.register_script(_CLAIM)
        self._release = self._r.register_script(_RELEASE)
        self._fence = self._r.register_script(_FENCE)
        self._reassert = self._r.register_script(_REASSERT)
        self._drop_lease = self._r.register_script(_DROP_LEASE)
        # what this process owns: charger -> (epoch, protocol); the source of truth
        # for re-registration after a Redis outage
        self._owned: dict[str, tuple[int, str]] = {}
        self._pending_release: dict[str, int] = {}
        self._last_epoch = 0
        self._dirty = True  # re-assert everything at the next successful renew
        self._watched: dict[str, float] = {}  # charger (or "*") -> until (epoch s)
        self._watch_sync_at = 0.0
        self._healthy = False
        self._pending: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._lease_task: asyncio.Task | None = None
        self._listen_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._started = False
        self._stopping = False
        self._subscribed = False

    # -- lifecycle -----------------------------------------------------------------

    def attach(self, worker_id, executor, on_takeover) -> None:  # type: ignore[override]
        changed = worker_id != self.worker_id
        super().attach(worker_id, executor, on_takeover)
        if self._started and changed:  # attach after start: listen on the new channels
            self._restart_listener()
            self._wake.set()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        with contextlib.suppress(*_DOWN):
            await self._renew()
        self._lease_task = asyncio.create_task(self._lease_loop(), name="registry-lease")
        self._restart_listener()
        # wait (bounded) until our channels are subscribed: a takeover or call sent
        # right after start() returns must not be lost
        deadline = time.monotonic() + 2.0
        while not self._subscribed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stopping = True
        for t in (self._lease_task, self._listen_task, *self._tasks):
            if t is not None:
                t.cancel()
        for t in (self._lease_task, self._listen_task, *self._tasks):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, *_DOWN):
                    await t
        if self.worker_id and self._started:
            with contextlib.suppress(*_DOWN):
                # a stopping process owns nothing any more (unless another process
                # with our worker id holds the lease now)
                await self._drop_lease(keys=[lease_key(self.worker_id)], args=[self.node_id])
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RegistryUnavailable("registry stopped"))
        self._pending.clear()
        self._started = False
        await self._r.aclose()
        if self._ps is not self._r:
            await self._ps.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _pipe(self) -> Any:
        """A non-transactional pipeline; on Redis Cluster the same calls, concurrent."""
        return _Concurrent(self._r) if self.cluster else self._r.pipeline(transaction=False)

    # -- lease and re-registration -------------------------------------------------

    async def _renew(self) -> None:
        if not self.worker_id:
            await self._r.ping()
            self._healthy = True
            return
        prev = await self._r.set(lease_key(self.worker_id), self.node_id,
                                 px=int(self.lease_s * 1000), get=True)
        self._healthy = True
        if prev is None:
            # first start, Redis restarted, or the lease lapsed: re-register
            self._dirty = True
        elif prev != self.node_id:
            log.warning("worker id %s is also used by another process", self.worker_id)
        if self._dirty:
            await self._resync()

    async def _resync(self) -> None:
        """Re-assert everything held in memory and flush releases that failed."""
        w = self.worker_id
        self._dirty = False  # a claim failing meanwhile sets it again; so does an error here
        await self._r.sadd(WORKERS_KEY, w)
        await self._sync_watched()
        # forget records of a previous incarnation that we do not hold any more
        stale = await self._r.hgetall(chargers_key(w))
        for cid, val in stale.items():
            if cid in self._owned:
                continue
            epoch = int(val.split("|", 1)[0])
            await self._release(keys=[owner_key(cid)], args=[f"{w}:{epoch}"])
            if cid not in self._owned:  # not re-claimed while we awaited
                await self._r.hdel(chargers_key(w), cid)
        for cid, epoch in list(self._pending_release.items()):
            await self._release(keys=[owner_key(cid)], args=[f"{w}:{epoch}"])
            self._pending_release.pop(cid, None)
        lost: list[tuple[str, int]] = []
        items = list(self._owned.items())
        for i in range(0, len(items), 500):  # pipelined: 1000 chargers in a few RTTs
            chunk = items[i:i + 500]
            if self.cluster:  # keys of many slots: no script pipelining
                oks = await asyncio.gather(*(
                    self._reassert(keys=[owner_key(cid), epoch_key(cid)], args=[w, epoch])
                    for cid, (epoch, _) in chunk))
            else:
                async with self._r.pipeline(transaction=False) as p:
                    for cid, (epoch, _) in chunk:
                        await self._reassert(keys=[owner_key(cid), epoch_key(cid)],
                                             args=[w, epoch], client=p)
                    oks = await p.execute()
            async with self._pipe() as p:
                for (cid, (epoch, proto)), (ok, prev) in zip(chunk, oks):
                    if self._owned.get(cid, (None,))[0] != epoch:
                        continue  # changed while we awaited
                    if ok:
                        p.hset(chargers_key(w), cid, f"{epoch}|{proto}")
                        old_worker = _split_owner(prev)[0] if prev else None
                        if old_worker is not None and old_worker != w:
                            p.publish(control_channel(old_worker), json.dumps(
                                {"type": "takeover", "charger_id": cid, "epoch": epoch, "by": w}))
                    else:
                        lost.append((cid, epoch))
                await p.execute()
        for cid, _ in lost:  # someone newer claimed it while Redis could not tell us
            cur = await self._r.get(epoch_key(cid))
            self._lose(cid, int(cur or 0))

    async def _lease_loop(self) -> None:
        period = self.lease_s / 3
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period if self._healthy else min(period, 0.2))
            self._wake.clear()
            try:
                await self._renew()
                if self.worker_id and time.monotonic() >= self._watch_sync_at:
                    await self._sync_watched()
            except asyncio.CancelledError:
                raise
            except _DOWN as exc:
                if self._healthy:
                    log.warning("redis unavailable: %s", exc)
                self._healthy = False
                self._dirty = True
            except Exception:  # never let the lease die silently
                log.exception("lease renew failed")
                self._dirty = True

    # -- pub/sub listener: takeovers, forwarded calls, replies ---------------------

    def _restart_listener(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
        self._subscribed = False
        self._listen_task = asyncio.create_task(self._listen_loop(), name="registry-listen")

    def _channels(self) -> list[str]:
        chans = [reply_channel(self.node_id)]
        if self.worker_id:
            chans += [control_channel(self.worker_id), calls_channel(self.worker_id), WATCH_CHANNEL]
        return chans

    async def _listen_loop(self) -> None:
        while True:
            ps = self._ps.pubsub()
            try:
                chans = self._channels()
                await ps.subscribe(*chans)
                waiting = set(chans)
                while True:
                    msg = await ps.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    if kind == "message":
                        try:
                            self._dispatch(msg["channel"], msg["data"])
                        except Exception:  # one bad message must not stop the listener
                            log.exception("bad message on %s", msg.get("channel"))
                    elif kind == "subscribe" and waiting:
                        waiting.discard(msg["channel"])
                        if not waiting:  # listening on every channel: safe to serve
                            self._subscribed = True
                            if not self._healthy:
                                self._wake.set()  # Redis is back: renew, re-register now
            except asyncio.CancelledError:
                self._subscribed = False
                with contextlib.suppress(*_DOWN, asyncio.CancelledError):
                    await asyncio.shield(ps.aclose())
                raise
            except _DOWN as exc:
                self._subscribed = False
                self._healthy = False
                self._dirty = True
                self._fail_pending(RegistryUnavailable(f"redis connection lost: {exc}"))
                with contextlib.suppress(*_DOWN):
                    await ps.aclose()
                await asyncio.sleep(0.2)

    def _fail_pending(self, exc: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _dispatch(self, channel: str, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            log.warning("bad message on %s", channel)
            return
        if channel == reply_channel(self.node_id):
            fut = self._pending.get(msg.get("id"))
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif channel == WATCH_CHANNEL:
            cid, until = msg.get("charger_id"), msg.get("until")
            if isinstance(cid, str) and isinstance(until, (int, float)):
                self._watched[cid] = max(until, self._watched.get(cid, 0.0))
        elif self.worker_id and channel == control_channel(self.worker_id):
            if msg.get("type") == "takeover":
                self._lose(msg["charger_id"], int(msg["epoch"]))
        elif self.worker_id and channel == calls_channel(self.worker_id):
            if isinstance(msg.get("reply_to"), str) and "action" in msg:
                self._spawn(self._serve_call(msg))
            else:
                log.warning("forwarded call without reply_to/action ignored")

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _lose(self, charger_id: str, new_epoch: int) -> None:
        """Another owner with ``new_epoch`` took ``charger_id`` from us."""
        held = self._owned.get(charger_id)
        if held is not None and held[0] < new_epoch:
            del self._owned[charger_id]
            if self.worker_id:
                self._spawn(self._hdel_quiet(charger_id))
        if self._on_takeover is not None:
            try:
                res = self._on_takeover(charger_id, new_epoch)
                if asyncio.iscoroutine(res):
                    self._spawn(res)
            except Exception:
                log.exception("on_takeover failed for %s", charger_id)

    async def _hdel_quiet(self, charger_id: str) -> None:
        with contextlib.suppress(*_DOWN):
            if charger_id not in self._owned:
                await self._r.hdel(chargers_key(self.worker_id), charger_id)

    async def _serve_call(self, msg: dict) -> None:
        """Run a forwarded CALL on the attached executor and publish the reply."""
        cid = msg.get("charger_id", "")
        reply: dict[str, Any] = {"id": msg.get("id")}
        try:
            if cid not in self._owned or self._executor is None:
                raise NotConnected(f"charger {cid!r} is not connected here")
            timeout = float(msg.get("timeout", 30.0))
            result = await asyncio.wait_for(
                self._executor(cid, msg["action"], msg.get("payload") or {}, timeout), timeout + 1.0)
            reply["result"] = result
        except asyncio.TimeoutError:
            reply["error"] = {"kind": "timeout", "message": "no answer from the charger"}
        except CallRejected as exc:
            reply["error"] = {"kind": "rejected", "code": exc.error_code,
                              "description": exc.description, "details": exc.details}
        except CallTimeout as exc:
            reply["error"] = {"kind": "timeout", "message": str(exc)}
        except NotConnected as exc:
            reply["error"] = {"kind": "not_connected", "message": str(exc)}
        except PayloadInvalid as exc:
            reply["error"] = {"kind": "invalid", "message": str(exc)}
        except Exception as exc:  # the caller gets an answer, whatever happened
            log.exception("forwarded call %s to %s failed", msg.get("action"), cid)
            reply["error"] = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(*_DOWN):
            await self._r.publish(msg["reply_to"], json.dumps(reply))

    # -- ownership ----------------------------------------------------------------

    async def claim(self, charger_id: str, protocol: str = "") -> int:
        if not self.worker_id:
            raise RuntimeError("claim needs a worker_id (attach first)")
        w = self.worker_id
        try:
            if not self._healthy and self._started:
                raise RegistryUnavailable("redis down")  # do not queue behind a dead server
            epoch, old = await self._claim(keys=[owner_key(charger_id), epoch_key(charger_id)], args=[w])
            epoch = int(epoch)
        except (*_DOWN, RegistryUnavailable):
            # Redis down: hand out a provisional epoch (same clock floor as the
            # script) and register it when Redis is back; the charger is served.
            epoch = max(_now_ms(), self._last_epoch + 1)
            self._last_epoch = epoch
            self._owned[charger_id] = (epoch, protocol)
            self._pending_release.pop(charger_id, None)
            self._dirty = True
            self._healthy = False
            return epoch
        self._last_epoch = max(self._last_epoch, epoch)
        self._owned[charger_id] = (epoch, protocol)
        self._pending_release.pop(charger_id, None)
        try:
            await self._r.hset(chargers_key(w), charger_id, f"{epoch}|{protocol}")
        except _DOWN:
            self._dirty = True
        old_worker = _split_owner(old)[0] if old else None
        # A reconnect to this very worker is the worker's own business (it replaces
        # the session itself); only another worker is told.
        if old_worker is not None and old_worker != w:
            try:
                await self._r.publish(control_channel(old_worker), json.dumps(
                    {"type": "takeover", "charger_id": charger_id, "epoch": epoch, "by": w}))
            except _DOWN:
                pass  # the old owner's own re-assert will find the newer epoch
        return epoch

    async def release(self, charger_id: str, epoch: int) -> None:
        w = self.worker_id
        held = self._owned.get(charger_id)
        mine = held is not None and held[0] == epoch
        if mine:
            del self._owned[charger_id]
        try:
            if not self._healthy and self._started:
                raise RegistryUnavailable("redis down")
            await self._release(keys=[owner_key(charger_id)], args=[f"{w}:{epoch}"])
            if mine and charger_id not in self._owned:
                await self._r.hdel(chargers_key(w), charger_id)
        except (*_DOWN, RegistryUnavailable):
            if mine:
                self._pending_release[charger_id] = epoch
                self._dirty = True

    async def check_fence(self, charger_id: str, epoch: int) -> bool:
        """False if a claim newer than ``epoch`` happened: the caller is a stale owner."""
        try:
            return bool(await self._fence(keys=[epoch_key(charger_id)], args=[epoch]))
        except _DOWN as exc:
            raise RegistryUnavailable(str(exc)) from exc

    async def owner(self, charger_id: str) -> Owner | None:
        try:
            value = await self._r.get(owner_key(charger_id))
            if value is None:
                return None
            w, epoch = _split_owner(value)
            async with self._pipe() as p:
                p.exists(lease_key(w))
                p.hget(chargers_key(w), charger_id)
                alive, rec = await p.execute()
        except _DOWN as exc:
            raise RegistryUnavailable(str(exc)) from exc
        if not alive:
            return None
        proto = rec.split("|", 1)[1] if rec and rec.split("|", 1)[0] == str(epoch) else ""
        return Owner(w, epoch, proto)

    async def connected(self) -> dict[str, Owner]:
        try:
            workers = sorted(await self._r.smembers(WORKERS_KEY))
            if not workers:
                return {}
            async with self._pipe() as p:
                for w in workers:
                    p.exists(lease_key(w))
                alive = await p.execute()
            cands: list[tuple[str, str, int, str]] = []
            for w, ok in zip(workers, alive):
                if not ok:
                    continue
                for cid, val in (await self._r.hgetall(chargers_key(w))).items():
                    e, _, proto = val.partition("|")
                    cands.append((cid, w, int(e), proto))
            out: dict[str, Owner] = {}
            for i in range(0, len(cands), 1000):
                chunk = cands[i:i + 1000]
                async with self._pipe() as p:
                    for cid, *_ in chunk:
                        p.get(owner_key(cid))
                    owners = await p.execute()
                for (cid, w, e, proto), cur in zip(chunk, owners):
                    if cur == f"{w}:{e}":
                        out[cid] = Owner(w, e, proto)
            return out
        except _DOWN as exc:
            raise RegistryUnavailable(str(exc)) from exc

    # -- forwarding ----------------------------------------------------------------

    async def call(self, charger_id: str, action: str, payload: dict, timeout: float) -> dict:
        held = self._owned.get(charger_id)
        if held is not None and self._executor is not None:
            own = await self.owner(charger_id)
            if own is not None and own.worker_id == self.worker_id and own.epoch == held[0]:
                return await self._executor(charger_id, action, payload, timeout)
        else:
            own = await self.owner(charger_id)
        if own is None:
            raise NotConnected(f"charger {charger_id!r} is not connected")
        if not self._subscribed:
            raise RegistryUnavailable("reply channel not subscribed (redis down?)")
        cid = uuid.uuid4().hex
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            msg = {"id": cid, "charger_id": charger_id, "action": action, "payload": payload,
                   "timeout": timeout, "reply_to": reply_channel(self.node_id),
                   "epoch": own.epoch}
            try:
                n = await self._r.publish(calls_channel(own.worker_id), json.dumps(msg))
            except _DOWN as exc:
                raise RegistryUnavailable(str(exc)) from exc
            if n == 0 and not self.cluster:  # cluster PUBLISH counts one node only
                raise NotConnected(f"owner {own.worker_id} of {charger_id!r} is not listening")
            try:
                reply = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise CallTimeout(f"no reply from {charger_id!r} within {timeout}s") from None
        finally:
            self._pending.pop(cid, None)
        err = reply.get("error")
        if err is None:
            return reply.get("result") or {}
        kind = err.get("kind")
        if kind == "rejected":
            raise CallRejected(err.get("code", "GenericError"), err.get("description", ""),
                               err.get("details"))
        if kind == "timeout":
            raise CallTimeout(err.get("message", ""))
        if kind == "not_connected":
            raise NotConnected(err.get("message", ""))
        if kind == "invalid":
            raise PayloadInvalid(err.get("message", ""))
        raise RegistryUnavailable(err.get("message", "owner failed"))

    # -- live events ----------------------------------------------------------------

    def wants_events(self, charger_id: str) -> bool:
        """Someone watches this charger (or all of them), or did within REPLAY_SECONDS."""
        return charger_id in self._watched or "*" in self._watched

    async def _sync_watched(self) -> None:
        now = time.time()
        self._watch_sync_at = time.monotonic() + WATCH_SYNC_S
        async with self._pipe() as p:
            p.zremrangebyscore(WATCH_KEY, "-inf", now)
            p.zrangebyscore(WATCH_KEY, now, "+inf", withscores=True)
            _, rows = await p.execute()
        self._watched = {cid: until for cid, until in rows}

    async def _watch(self, charger_id: str) -> None:
        """Mark ``charger_id`` watched for REPLAY_SECONDS from now, on every worker."""
        until = time.time() + REPLAY_SECONDS
        self._watched[charger_id] = until
        async with self._pipe() as p:
            p.zadd(WATCH_KEY, {charger_id: until}, gt=True)  # GT still adds a new member
            p.publish(WATCH_CHANNEL, json.dumps({"charger_id": charger_id, "until": until}))
            await p.execute()

    async def publish(self, event: dict) -> None:
        """Best effort, never raises: a charger reply must not wait on Redis.

        Each event is appended to its charger's stream and to the firehose, both
        capped (``REPLAY_EVENTS`` / ``REPLAY_ALL``); a charger's stream expires
        ``REPLAY_SECONDS`` after its last event. The stream ids are the SSE ids."""
        if not self._healthy and self._started:
            return  # dropped while Redis is down: live events are best effort
        data = json.dumps(event, default=str)
        try:
            async with self._pipe() as p:
                cid = event.get("charger_id")
                if cid:
                    key = events_key(cid)
                    p.xadd(key, {"e": data}, maxlen=REPLAY_EVENTS, approximate=True)
                    p.pexpire(key, int(REPLAY_SECONDS * 1000))
                p.xadd(events_key("*"), {"e": data}, maxlen=REPLAY_ALL, approximate=True)
                await p.execute()
        except _DOWN:
            pass

    async def events(self, charger_id: str, after: str | None = None) -> Subscription:
        """Subscribed at once: the stream's current last id is the starting point
        (``after``, when it is a stream id, replays what came since)."""
        key = events_key(charger_id)
        start = after if after and _STREAM_ID.match(after) else None
        try:
            await self._watch(charger_id)  # from now on the workers build its events
        except _DOWN as exc:
            raise RegistryUnavailable(str(exc)) from exc
        if start is None:
            try:
                info = await self._ps.xinfo_stream(key)
                start = info.get("last-generated-id") or "0-0"
            except aioredis.ResponseError:  # no such stream yet
                start = "0-0"
            except _DOWN as exc:
                raise RegistryUnavailable(str(exc)) from exc
        return _RedisSubscription(self, charger_id, key, start)


# an SSE Last-Event-ID we accept: a Redis stream id
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class _RedisSubscription(Subscription):
    """Reads one event stream with blocking XREADs of at most 0.5 s (the client's
    socket timeout is short), continuing after the last id it delivered."""

    def __init__(self, reg: RedisRegistry, charger_id: str, key: str, last: str) -> None:
        self._reg, self._cid, self._key, self._last = reg, charger_id, key, last
        self._buf: deque[tuple[str, dict]] = deque()
        self._rewatch_at = time.monotonic() + REPLAY_SECONDS / 3

    async def next(self, timeout: float) -> tuple[str, dict] | None:
        deadline = time.monotonic() + timeout
        reg = self._reg
        while not self._buf:
            if not reg._started or reg._stopping:
                raise StopAsyncIteration
            if time.monotonic() >= self._rewatch_at:  # still watching: keep it marked
                self._rewatch_at = time.monotonic() + REPLAY_SECONDS / 3
                with contextlib.suppress(*_DOWN):
                    await reg._watch(self._cid)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                got = await reg._ps.xread({self._key: self._last}, count=100,
                                          block=max(1, int(min(left, 0.5) * 1000)))
            except _DOWN as exc:
                raise RegistryUnavailable(str(exc)) from exc
            for _key, entries in got or ():
                for sid, fields in entries:
                    self._last = sid
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._buf.append((sid, json.loads(fields["e"])))
        return self._buf.popleft()

    async def close(self) -> None:
        """The window is kept REPLAY_SECONDS from now, for a client coming back."""
        self._buf.clear()
        if self._reg._started and not self._reg._stopping:
            with contextlib.suppress(*_DOWN):
                await self._reg._watch(self._cid)


__all__ = ["RedisRegistry", "owner_key", "epoch_key", "lease_key", "chargers_key",
           "calls_channel", "control_channel", "events_key"]
