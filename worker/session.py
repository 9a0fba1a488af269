"""One charger connection: frames in, replies out, CSMS->charger calls.

A frame's path: ``on_ws_frame`` -> ``Codec.decode`` (core) -> the version's
handler (``handlers/``) -> reply now, or after the batch commit of its write (the
writer). That per-message path is the base class (``listener.py``, compiled from
``_listener.pyx`` when built); this class has everything else. A session knows its
worker only through ``Services`` (what handlers use) and a ``SessionTable`` (the
worker's table of open sessions), so it imports neither the server nor the handlers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import itertools
import logging
import time
from collections import deque
from typing import Any, Protocol

import msgspec
from picows import WSCloseCode, WSMsgType, WSTransport

from ..core import Call, CallError, CallResult, Codec, FrameError, PayloadError, Send, twins
from ..router.registry import CallRejected, CallTimeout, NotConnected, PayloadInvalid
from ..store.base import ChargerSeen, StaleEpoch
from . import metrics as m
from .services import Services

log = logging.getLogger("chargeyard.worker")
_ids = itertools.count(1)
_COUNTS: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
Listener = twins.load("chargeyard.worker.listener").Listener  # compiled unless CHARGEYARD_PURE=1
LISTENER_IMPL: str = Listener.impl


def _counters(protocol: str) -> tuple[dict[str, int], dict[str, int]]:
    """The per-action counters of the hot path: (CALLs in, CALLRESULTs out)."""
    c = _COUNTS.get(protocol)
    if c is None:
        c = _COUNTS[protocol] = (m.messages.by_action(protocol, "in", "call"),
                                 m.messages.by_action(protocol, "out", "result"))
    return c


class SessionTable(Protocol):
    """The worker's table of open sessions, told when a connection opens and closes."""

    def session_opened(self, session: Session) -> None: ...

    def session_closed(self, session: Session, reason: str) -> None: ...


class Session(Listener):  # type: ignore[misc,valid-type]
    """The listener picows calls for one charger's WebSocket."""

    __slots__ = ("services", "table", "charger_id", "protocol", "version", "address", "tables", "epoch",
                 "vendor", "model", "leniency", "closed_reason", "connected_at", "_seen_written", "_pending",
                 "_call_lock", "_queued", "ticket")

    def __init__(self, services: Services, table: SessionTable, charger_id: str, protocol: str, version: str,
                 codec: Codec, handlers: dict[str, Any]) -> None:
        settings = services.settings
        self.services = services
        self.table = table
        self.charger_id = charger_id
        self.protocol = protocol
        self.version = version
        self.address = ""  # the peer's host:port, once connected (for the logs)
        self.ticket: Any = None  # the handshake's authentication (worker/security/service.py)
        self.codec = codec
        self.tables = codec.tables
        self.handlers = handlers
        self.writer = services.writer
        self.max_frame = settings.max_frame
        self._counts_in, self._counts_out = _counters(protocol)
        self.transport: WSTransport | None = None
        self.epoch = 0
        self.vendor = ""
        self.model = ""
        self.leniency: frozenset[str] = services.leniency.for_charger(charger_id, "", "")
        self.closed_reason: str | None = None
        self.connected_at = time.monotonic()
        # CSMS -> charger calls: one in flight (OCPP-J), the rest wait their turn
        self._pending: dict[str, tuple[str, asyncio.Future]] = {}
        self._call_lock: asyncio.Lock | None = None  # created on the first operator call
        self._queued = 0
        # fragmented messages
        self._frag: bytearray | None = None
        # rate limit (token bucket)
        self._rate = settings.rate_limit
        self._burst = float(settings.rate_burst)
        self._tokens = self._burst
        self._last = self.connected_at  # also the time of the last message taken in
        self._seen_written = self._last  # the _last that last_seen was last written for
        self._backlog: deque[bytes] | None = None
        # keepalive (Sweeps.keepalive, worker/sweeps.py): last pong, and when the unanswered ping was sent
        self._alive = time.monotonic()
        self._ping_at = 0.0

    # -- picows callbacks ------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.table.session_opened(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        reason = self.closed_reason
        if reason is None:
            hs = transport.close_handshake
            if hs is not None and hs.sent is not None and hs.sent.code == WSCloseCode.MESSAGE_TOO_BIG:
                reason = "too_big"
            elif hs is not None and hs.recv is not None:
                reason = "client"
            else:
                reason = "dropped"
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NotConnected(f"charger {self.charger_id!r} disconnected"))
        self._pending.clear()
        self.table.session_closed(self, reason)

    # -- inbound -----------------------------------------------------------------------
    def _on_message(self, data: bytes) -> None:
        if self._backlog is None and self._take_token():
            self._process(data)
        else:
            self._throttle(data)

    def _throttle(self, data: bytes) -> None:
        if self._backlog is not None:  # throttled: keep the order, process later
            self._backlog.append(data)
        else:
            # Over its rate: slow the sender down instead of dropping anything. Messages
            # already received wait here in order; its socket is not read until it is
            # back within its rate. Other chargers are unaffected.
            self._backlog = deque([data])
            if self.transport is not None:
                self.transport.underlying_transport.pause_reading()
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        delay = (1.0 - self._tokens) / self._rate
        asyncio.get_running_loop().call_later(max(0.0, delay), self._drain)

    def _drain(self) -> None:
        backlog = self._backlog
        tr = self.transport
        if backlog is None or tr is None or tr.is_disconnected:
            self._backlog = None
            return
        while backlog and self._take_token():
            self._process(backlog.popleft())
        if backlog:
            self._schedule_drain()
        else:
            self._backlog = None
            tr.underlying_transport.resume_reading()

    def _process_other(self, msg: Any, data: bytes) -> None:
        t = type(msg)
        if t is CallResult:
            self._on_reply(msg, None)
        elif t is CallError:
            self._on_reply(None, msg)
        elif t is FrameError:
            self._on_frame_error(msg, data)
        elif t is Send:
            m.messages(self.protocol, "in", msg.action, "send")
            h = self.handlers.get(msg.action)
            if h is not None:
                try:
                    h(self, msg.payload)
                except Exception:
                    log.exception("handler for SEND %s failed", msg.action)

    def _no_handler(self, call: Call) -> None:  # a known inbound action without one: never (tested)
        self.send_error(call.message_id, self.tables.codes["not_implemented"], "no handler")

    def _handler_failed(self, call: Call, exc: Exception) -> None:
        log.error("handler %s failed for %s", call.action, self.charger_id, exc_info=exc)
        self.send_error(call.message_id, self.tables.codes["internal"], type(exc).__name__)

    def _deferred_reply(self, call: Call, res: Any, t0: float) -> None:
        """A handler's deferred answer (``handlers/common.py``): a coroutine, run as a task;
        its result is the response."""
        if not inspect.isawaitable(res):
            self._handler_failed(call, TypeError(f"handler answered {type(res).__name__}, not a response"))
            return
        task = asyncio.ensure_future(res)
        self.services.track(task)
        task.add_done_callback(lambda f: self._deferred(call, f, t0))

    def _deferred(self, call: Call, fut: asyncio.Future, t0: float) -> None:
        if fut.cancelled():
            self.send_error(call.message_id, self.tables.codes["internal"], "cancelled")
            return
        exc = fut.exception()
        if exc is not None:
            self.commit_failed(call.message_id, call.action, exc)
            return
        self.committed(call.message_id, call.action, fut.result(), t0)

    def commit_failed(self, message_id: str, action: str, exc: BaseException) -> None:
        if isinstance(exc, StaleEpoch):  # another worker owns the charger now (ADR 0016): it
            # has the charger's session, so no reply from here; this connection goes
            if self.closed_reason is None:
                log.info("ownership epoch %d of %s is stale: closing its connection", self.epoch, self.charger_id)
            self.close(WSCloseCode.OK, "connected elsewhere", "takeover")
            return
        # nothing is acknowledged unless committed: the charger will retry
        log.warning("reply to %s from %s failed: %r", action, self.charger_id, exc)
        self.send_error(message_id, self.tables.codes["internal"], "storage unavailable")

    def send_error(self, message_id: str, code: str, description: str = "") -> None:
        tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        tr.send(WSMsgType.TEXT, self.codec.encode_error(message_id, code, description))
        m.call_errors(self.protocol, code).inc()

    def _on_frame_error(self, err: FrameError, data: bytes) -> None:
        action = err.action if err.action in self.tables.requests else "_unknown"
        m.messages(self.protocol, "in", action, "invalid")
        if (self.leniency and err.message_type == 2 and err.action in self.tables.inbound
                and err.code not in ("NotImplemented", "NotSupported")):
            call = self._relax(err, data)
            if call is not None:
                self._dispatch(call)
                return
        if err.reply:
            self.services.warn_once(self.charger_id, f"bad frame {err.code}",
                                  "%s sent an invalid message (%s): %s", self.charger_id, err.code,
                                  err.description)
            self.send_error(err.message_id, err.code, err.description)

    def _relax(self, err: FrameError, data: bytes) -> Call | None:
        from ..core.leniency import relax

        try:
            frame = msgspec.json.decode(data)
            payload, used = relax(self.tables, err.action, msgspec.json.encode(frame[3]), self.leniency)
        except (PayloadError, Exception):  # still invalid: answer with the strict error
            return None
        for rule in used:
            m.LENIENCY.labels(rule).inc()
            self.services.warn_once(self.charger_id, "lenient " + rule,
                                  "relaxed rule %s for %s (%s %s) on %s", rule, self.charger_id,
                                  self.vendor, self.model, err.action)
        return Call(err.message_id, err.action, payload)

    # -- outbound (CSMS -> charger) ----------------------------------------------------
    def _on_reply(self, res: CallResult | None, err: CallError | None) -> None:
        msg_id = res.message_id if res is not None else err.message_id  # type: ignore[union-attr]
        entry = self._pending.pop(msg_id, None)
        if entry is None:
            self.services.warn_once(self.charger_id, "unexpected reply", "%s answered an unknown message id %r",
                                  self.charger_id, msg_id)
            return
        action, fut = entry
        if fut.done():
            return
        if res is not None:
            m.messages(self.protocol, "in", action, "result")
            try:
                payload = self.codec.decode_result(action, res.payload)
            except PayloadError as exc:
                fut.set_exception(CallRejected(exc.code, f"invalid {action} response: {exc.description}"))
                return
            fut.set_result(msgspec.to_builtins(payload))
        else:
            m.messages(self.protocol, "in", action, "error")
            fut.set_exception(CallRejected(err.code, err.description, err.details))  # type: ignore[union-attr]

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        """Send a CALL to the charger and wait for its answer (one in flight at a time)."""
        if action not in self.tables.outbound:
            raise PayloadInvalid(f"{action} is not a CSMS-initiated action of OCPP {self.version}")
        try:
            obj = self.tables.validate(action, "request", payload)
        except PayloadError as exc:
            raise PayloadInvalid(f"{exc.code}: {exc.description}") from None
        if self._queued >= self.services.settings.max_pending_calls:
            raise CallTimeout(f"more than {self._queued} calls already queued for {self.charger_id}")
        deadline = time.monotonic() + timeout
        if self._call_lock is None:
            self._call_lock = asyncio.Lock()
        self._queued += 1
        try:
            try:
                await asyncio.wait_for(self._call_lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise CallTimeout(f"{self.charger_id} is busy with earlier calls") from None
            try:
                tr = self.transport
                if tr is None or tr.is_disconnected:
                    raise NotConnected(f"charger {self.charger_id!r} is not connected")
                msg_id = f"cy{next(_ids)}"
                fut = asyncio.get_running_loop().create_future()
                self._pending[msg_id] = (action, fut)
                tr.send(WSMsgType.TEXT, self.codec.encode_call(msg_id, action, obj))
                m.messages(self.protocol, "out", action, "call")
                try:
                    return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise CallTimeout(f"{self.charger_id} did not answer {action} in {timeout:g} s") from None
                finally:
                    self._pending.pop(msg_id, None)
            finally:
                self._call_lock.release()
        finally:
            self._queued -= 1

    # -- last_seen -------------------------------------------------------------------
    def seen_now(self) -> ChargerSeen:
        """last_seen = now (a Heartbeat); the periodic write need not repeat it."""
        self._seen_written = self._last
        return ChargerSeen(self.charger_id, dt.datetime.now(dt.timezone.utc))

    def seen_since_written(self, wall_now: dt.datetime, now: float) -> ChargerSeen | None:
        """last_seen = the time of the last message, if one came since the last write
        (``now``: the monotonic clock at ``wall_now``). The worker asks every session
        periodically, so last_seen follows a charger's messages without a write per message."""
        last = self._last
        if last <= self._seen_written:
            return None
        self._seen_written = last
        return ChargerSeen(self.charger_id, wall_now - dt.timedelta(seconds=max(0.0, now - last)))

    def close_info(self) -> tuple[int | None, str]:
        """The close code and reason text received, else the ones sent; ``(None, "")`` when
        the connection dropped without a close frame."""
        tr = self.transport
        hs = tr.close_handshake if tr is not None else None
        if hs is not None:
            for info in (hs.recv, hs.sent):
                if info is not None:
                    return int(info.code), info.reason or ""
        return None, ""

    # -- lifecycle -------------------------------------------------------------------
    def keepalive(self, now: float, ping_after: float, reply_timeout: float) -> None:
        """Ping after ``ping_after`` s without a message or pong; close (1001) when a ping
        stays unanswered, and no message came, for ``reply_timeout`` s."""
        tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        if self._ping_at:
            if self._last < self._ping_at:  # no message since the ping
                if now - self._ping_at >= reply_timeout:
                    self.closed_reason = "idle"
                    tr.send_close(WSCloseCode.GOING_AWAY, b"no pong")
                    tr.disconnect(graceful=False)  # a dead peer never acks: do not wait for it
                return
            self._ping_at = 0.0  # a message since the ping: alive
        if now - max(self._last, self._alive) >= ping_after:
            tr.send_ping()
            self._ping_at = now

    def close(self, code: WSCloseCode = WSCloseCode.OK, reason: str = "", why: str = "server") -> None:
        tr = self.transport
        if self.closed_reason is None:
            self.closed_reason = why
        if tr is not None and not tr.is_disconnected:
            tr.send_close(code, reason.encode())
            tr.disconnect()
