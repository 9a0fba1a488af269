"""The worker: a picows WebSocket server holding one Session per charger.

Lifecycle only (uvicorn's shape): start listening, admit handshakes, keep the
session table, hand operator calls to sessions, keep last_seen current, drain on
SIGTERM. What sessions and handlers use lives in ``services.py`` and the modules it
composes (``authorization``, ``txids``, ``leniency``, ``events``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from picows import (WSCloseCode, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener,
                    ws_create_server)

from ..core import IMPL as CODEC_IMPL
from ..core import SUBPROTOCOLS, Codec, twins
from ..router.registry import DISCONNECT, NotConnected, Registry
from ..store.base import Fence, Store
from ..store.events import ConnectionClosed, ConnectionOpened, SecurityEventReported
from . import metrics as m
from .authorization import Authorization
from .events import Events
from .handlers import all_handlers
from .leniency import Leniency
from .relay import KafkaPublisher, LocalPublisher, Relay, Sink
from .services import Services
from .session import Session
from .security.gate import GatedServer
from .security.service import UNAVAILABLE, ChargerSecurity, Ticket
from .settings import WorkerSettings
from .sweeps import Sweeps
from .txids import TxIds
from .writer import BatchWriter

log = logging.getLogger("chargeyard.worker")
_PATH = re.compile(r"^/(?:ocpp/)?([^/?#]+)/?$")


def parse_charger_id(path: bytes) -> str | None:
    """``/ocpp/{id}`` or ``/{id}``, URL-decoded; 1-48 printable characters."""
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        return None
    text = text.split("?", 1)[0]
    mt = _PATH.match(text)
    if mt is None:
        return None
    try:
        cid = urllib.parse.unquote(mt.group(1), errors="strict")
    except UnicodeDecodeError:
        return None
    if not 1 <= len(cid) <= 48 or not cid.isprintable() or "/" in cid:
        return None
    return cid


def choose_subprotocol(header: str | None) -> tuple[str, str] | None:
    """The first OCPP subprotocol of the client's list that we speak."""
    if not header:
        return None
    for p in header.split(","):
        p = p.strip()
        if p in SUBPROTOCOLS:
            return p, SUBPROTOCOLS[p]
    return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chargeyard")
    except Exception:
        return "unknown"


def _event(event: str, **fields: Any) -> dict[str, Any]:
    """The structured fields of one info line (``extra={"fields": ...}``; the JSON log
    formatter puts them into the line's object)."""
    return {"fields": {"event": event, **fields}}


class Worker:
    """One worker process's charger endpoint. ``sinks`` receive every live event too, as
    the SSE dicts (tests). ``event_sinks`` are the in-process consumers of the outbox on a
    node without Kafka (``relay.LocalPublisher``: the billing and monitoring services,
    which ``app/node.py`` composes); with ``settings.kafka_bootstrap`` the relay publishes
    to Kafka instead. Either way the events are the store's committed outbox rows."""

    def __init__(self, settings: WorkerSettings, store: Store, registry: Registry,
                 sinks: list[Callable[[dict], Any]] | None = None,
                 event_sinks: list[Sink] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.codecs = {v: Codec(v) for v in ("1.6", "2.0.1", "2.1")}
        per_message = twins.load("chargeyard.worker.writer")  # Lane, reply_all: compiled unless pure
        self.writer = BatchWriter(store, batch_max=settings.batch_max, batch_ms=settings.batch_ms,
                                  on_commit=self._on_commit, reply_all=per_message.reply_all,
                                  lane=per_message.Lane, on_batch=self._on_batch, on_synced=self._on_synced)
        # the outbox relay (ADR 0015): Kafka, or the in-process consumers on one node
        self.event_sinks = list(event_sinks or ())
        # synced_only: it publishes only what a sync made durable (the writer's on_synced)
        self.relay = Relay(store, KafkaPublisher(settings.kafka_bootstrap, client_id=f"chargeyard-{settings.worker_id}")
                           if settings.kafka_bootstrap else LocalPublisher(*self.event_sinks), synced_only=True)
        self.writer.on_stale = self._stale_epochs
        self.services = Services(
            settings, self.writer, Authorization(store, settings.accept_unknown_tags), TxIds(store),
            Leniency.from_file(settings.leniency_file),
            Events(registry, settings.worker_id, self.spawn, sinks))
        # charger authentication at the handshake, TLS, the CSMS CA (worker/security/)
        self.security = ChargerSecurity(settings, store, parse_charger_id)
        self.services.security = self.security
        self.handlers = all_handlers(self.services)
        self.sessions: dict[str, Session] = {}
        self.sweeps = Sweeps(settings, self.sessions, self.writer)  # keep-alive, last_seen
        self._announced: set[int] = set()  # sessions whose charger.connected was queued
        self.ready = False
        self.draining = False
        self._server: asyncio.Server | None = None
        self._gate: GatedServer | None = None
        self._auth_events: dict[str, float] = {}
        self._hs_tokens = float(settings.handshake_rate)
        self._hs_last = time.monotonic()
        self.port = 0

    @property
    def authorization(self) -> Authorization:
        """The operator API tells it when an id tag changes (``forget``)."""
        return self.services.authorization

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await self.writer.start()
        self.relay.start()
        self.registry.attach(s.worker_id, self.execute_call, self.on_takeover)
        options: dict[str, Any] = dict(
            max_frame_size=s.max_frame,
            # pings come from one sweep over all sessions (sweeps.py), not from picows'
            # auto-ping: that is a task with a sleeping timer per connection
            enable_auto_ping=False,
            read_buffer_init_size=s.ws_read_buffer,
            websocket_handshake_timeout=10,
            logger_name="chargeyard.ws",
        )
        if self.security.gated:
            # the handshake waits for the charger's authentication (a store lookup, maybe a
            # password check in a thread), then picows alone serves the connection
            await self.security.start()
            self._gate = GatedServer(self._gated_factory, self.security.precheck, UNAVAILABLE,
                                     quick=self.security.quick)
            self._server = await self._gate.start(s.host, s.ws_port, ssl=self.security.tls, **options)
        else:
            # uvloop's own TCP transport: the same CPU per message as picows' default
            # (aiofastnet) here, and less memory per idle connection
            self._server = await ws_create_server(self._factory, s.host, s.ws_port, use_aiofastnet=False,
                                                  **options)
        self.port = self._server.sockets[0].getsockname()[1]
        if s.ping_interval > 0:
            self.spawn(self.sweeps.keepalive())
        if s.seen_interval > 0:
            self.spawn(self.sweeps.last_seen())
        m.BUILD_INFO.labels(_version(), CODEC_IMPL).set(1)
        self.ready = True
        log.info("worker %s listening for chargers on %s://%s:%d/ocpp/{id}", s.worker_id, self.security.scheme,
                 s.host, self.port)
        log.info(self.security.describe())

    async def drain(self) -> None:
        """SIGTERM: readiness false and new chargers refused at once; then the chargers are
        closed with 1001 in waves at ``drain_rate`` per second, each wave after a store
        flush (nothing a charger was told is committed stays only in the queue); then
        the background tasks stop.

        Why waves: the closed chargers reconnect at once, through nginx, to the other
        workers (consistent hash: about drain_rate/(N-1) per second each). Closing them
        all together was a reconnect storm of our own making that the receivers'
        handshake admission (``handshake_rate``) refused in part."""
        if self.draining:
            return
        self.ready, self.draining = False, True
        if self._gate is not None:
            self._gate.close()
        elif self._server is not None:
            self._server.close()
        self.sweeps.write_all_seen()
        s = self.settings
        todo = list(self.sessions.values())
        rate = s.drain_rate
        # a wave every period (10 per second, fewer when the rate is below 10/s); wave k
        # (1, 2, ...) brings the chargers closed up to rate x period x k in all, so a
        # fractional wave size (25/s: 2.5 a wave) still averages the rate
        period = 0.1 if rate <= 0 else max(0.1, 1.0 / rate)
        log.info("drain: closing %d chargers at %s per second", len(todo),
                 f"{rate:g}" if rate > 0 else "all")
        flush_ok = True
        started = next_wave = time.monotonic()
        done, k = 0, 0
        while done < len(todo):
            k += 1
            upto = len(todo) if rate <= 0 else min(len(todo), max(done + 1, round(rate * period * k)))
            wave = [x for x in todo[done:upto] if self.sessions.get(x.charger_id) is x]
            done = upto
            if flush_ok and wave:  # what these chargers sent is committed before they go
                try:
                    await asyncio.wait_for(self.writer.flush(), s.drain_timeout)
                except asyncio.TimeoutError:  # a store that is down: close without waiting
                    flush_ok = False
                    log.warning("drain: store flush did not finish in %.0f s", s.drain_timeout)
            for sess in wave:
                sess.close(WSCloseCode.GOING_AWAY, "server draining", "drain")
            if done < len(todo):
                # never faster than the rate: a slow flush delays the next wave, the
                # waves after it do not catch up in a burst
                next_wave = max(next_wave + period, time.monotonic())
                await asyncio.sleep(next_wave - time.monotonic())
        deadline = time.monotonic() + s.drain_timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning("drain: %d connections did not close in time", len(self.sessions))
        log.info("drain: %d chargers closed in %.1f s", len(todo), time.monotonic() - started)
        for t in list(self.services.tasks):
            t.cancel()

    async def stop(self) -> None:
        await self.drain()
        await self.writer.close()
        # after the writer's last commit: publish what is spooled, for a bounded time (what
        # is left is published by the next process with this worker id)
        await self.relay.close(drain_s=self.settings.relay_drain_s)
        self.security.close()

    def spawn(self, coro: Any) -> None:
        self.services.spawn(coro)

    # -- handshakes ------------------------------------------------------------------
    def _refuse(self, request: WSUpgradeRequest, status: int, reason: str, body: str,
                headers: dict | None = None) -> Any:
        m.WS_REFUSED.labels(reason).inc()
        if reason != "overload":  # a storm refused for overload would log a line per attempt
            log.info("handshake refused", extra=_event(
                "refused", reason=reason, status=status, path=request.path.decode("latin-1")[:100]))
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_error_response(status, body.encode(), headers), None)

    def _gated_factory(self, request: WSUpgradeRequest, ticket: Ticket | None) -> Any:
        """The upgrade answer once the gate's check is done: its refusal (401, 429, 503),
        or the usual checks and a session."""
        if ticket is None:
            # no check ran: the path has no charger id (the usual 400 below), or the request
            # head was too large for the gate to read, which never becomes a session
            if parse_charger_id(request.path) is not None:
                return self._refuse(request, 431, "bad_request", "request header fields too large")
        else:
            d = ticket.decision
            if not d.accepted:
                if d.status in (401, 429):
                    self._auth_failed(ticket)
                reason = "auth" if d.status in (401, 429) else d.reason or "unavailable"
                text = {401: "authentication failed", 429: "too many failed attempts, retry later"}.get(
                    d.status, "charger authentication unavailable, retry")
                return self._refuse(request, d.status, reason, text, d.headers())
            if ticket.charger_id != parse_charger_id(request.path):  # cannot differ; never trust it
                return self._refuse(request, 400, "bad_id", "charger id mismatch")
        answer = self._factory(request)
        if ticket is not None and isinstance(answer.listener, Session):
            answer.listener.ticket = ticket
        return answer

    AUTH_EVENT_EVERY = 10.0  # seconds between two charger.auth_failed events of one charger

    def _auth_failed(self, ticket: Ticket) -> None:
        """A ``LoginFailed`` security event for monitoring's ``auth_failures`` alert: at most one per
        charger every ``AUTH_EVENT_EVERY`` seconds (an attacker's loop must not flood the bus;
        the counter chargeyard_ws_auth_failures_total counts every one)."""
        now_t = time.monotonic()
        last = self._auth_events.get(ticket.charger_id, 0.0)
        if now_t - last < self.AUTH_EVENT_EVERY:
            return
        if len(self._auth_events) > 50_000:
            self._auth_events.clear()
        self._auth_events[ticket.charger_id] = now_t
        # published from the outbox as charger.security_event (LoginFailed), in order with
        # the charger's other facts
        self._event_op(SecurityEventReported(
            ticket.charger_id, "LoginFailed", dt.datetime.now(dt.timezone.utc),
            f"reason={ticket.decision.reason} status={ticket.decision.status} address={ticket.peer.address}"))

    def _factory(self, request: WSUpgradeRequest) -> Any:
        if self.draining:
            return self._refuse(request, 503, "draining", "draining, connect again", {"Retry-After": "5"})
        cid = parse_charger_id(request.path)
        if cid is None:
            return self._refuse(request, 400, "bad_id",
                                "charger id must be 1-48 printable characters: /ocpp/{id}")
        chosen = choose_subprotocol(request.headers.get("Sec-WebSocket-Protocol"))
        if chosen is None:
            return self._refuse(request, 400, "no_subprotocol",
                                "offer one of the subprotocols ocpp1.6, ocpp2.0.1, ocpp2.1")
        now_t = time.monotonic()
        rate = self.settings.handshake_rate
        self._hs_tokens = min(rate, self._hs_tokens + (now_t - self._hs_last) * rate)
        self._hs_last = now_t
        if self._hs_tokens < 1.0:
            return self._refuse(request, 503, "overload", "too many connections at once, retry",
                                {"Retry-After": str(random.randint(1, 10))})
        self._hs_tokens -= 1.0
        proto, version = chosen
        session = Session(self.services, self, cid, proto, version, self.codecs[version], self.handlers[version])
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": proto}), session)

    # -- session table -----------------------------------------------------------------
    def session_opened(self, s: Session) -> None:
        s.address = _peer(s)
        if s.ticket is not None:  # needed only now: not kept for the connection's life
            self.security.accepted(s.ticket)
            s.ticket = None
        old = self.sessions.get(s.charger_id)
        self.sessions[s.charger_id] = s
        m.WS_CONNECTIONS.labels(s.protocol).inc()
        log.info("charger connected", extra=_event(
            "connect", charger_id=s.charger_id, protocol=s.protocol, address=s.address))
        if old is not None:
            log.info("charger reconnected: closing its previous connection", extra=_event(
                "takeover", charger_id=s.charger_id, by="reconnect", address=s.address))
            old.close(WSCloseCode.OK, "replaced by a new connection", "takeover")
        # fenced writes (ADR 0016): its messages wait for its claim, so that its Fence is
        # queued before any of its writes (one registry round trip per connect)
        _reading(s, False)
        self.spawn(self._claim(s))

    async def _claim(self, s: Session) -> None:
        try:
            s.epoch = await self.registry.claim(s.charger_id, s.protocol)
        except Exception as exc:  # registry down: keep serving, it re-registers later
            log.warning("could not register %s: %r", s.charger_id, exc)
            # unfenced until it is: the store forgets the epoch it held for the charger
            self._fence(Fence(s.charger_id, 0))
        else:
            if s.epoch and s.closed_reason is None:
                # before any of its writes: from here on the store refuses this connection's
                # writes once a higher epoch is recorded for the charger (ADR 0016)
                fut = self._fence(Fence(s.charger_id, s.epoch))
                if fut is not None:
                    fut.add_done_callback(lambda f: self._fenced(s, f))
        finally:
            # charger.connected, committed in order with the charger's facts, after its
            # Fence and before any of its messages (epoch 0: the registry did not answer)
            if s.closed_reason is None:
                self._announced.add(id(s))
                self._event_op(ConnectionOpened(s.charger_id, s.protocol, s.epoch, self.settings.worker_id,
                                                dt.datetime.now(dt.timezone.utc)))
            _reading(s, True)

    def _fence(self, op: Fence) -> asyncio.Future | None:
        if self.writer.closed:
            return None
        fut = self.writer.add(op)
        fut.add_done_callback(_ignore_failure)
        return fut

    def _fenced(self, s: Session, fut: asyncio.Future) -> None:
        """A Fence landed: False means a newer claim was recorded first (stale at once)."""
        if fut.cancelled() or fut.exception() is not None:
            if not fut.cancelled():
                log.warning("could not fence %s at epoch %d: %r", s.charger_id, s.epoch, fut.exception())
            return
        if fut.result() is False:
            self._stale_epochs({s.charger_id: s.epoch})

    def _stale_epochs(self, stale: dict[str, int]) -> None:
        """The store refused writes of these chargers (charger -> the stale epoch): another
        worker owns them now. Close our connection if it is the one of that epoch or older."""
        for cid, epoch in stale.items():
            s = self.sessions.get(cid)
            if s is not None and 0 < s.epoch <= epoch and s.closed_reason is None:
                log.info("ownership epoch is stale: closing the charger's connection here", extra=_event(
                    "takeover", charger_id=cid, by="fenced", epoch=epoch))
                s.close(WSCloseCode.OK, "connected elsewhere", "takeover")

    def _event_op(self, op: Any) -> None:
        """Queue an op whose only effect is its event (``store.events.EVENT_OPS``)."""
        if self.writer.closed:
            log.debug("event op not written, the writer is closed: %r", op)
            return
        try:
            self.writer.add(op).add_done_callback(_ignore_failure)
        except Exception as exc:  # a full writer
            log.warning("event not written: %r (%r)", op, exc)

    def session_closed(self, s: Session, reason: str) -> None:
        m.WS_CONNECTIONS.labels(s.protocol).dec()
        m.WS_CLOSED.labels(reason).inc()
        code, text = s.close_info()
        log.info("charger disconnected", extra=_event(
            "disconnect", charger_id=s.charger_id, code=code, reason=reason, close_reason=text,
            duration_s=round(time.monotonic() - s.connected_at, 3)))
        if self.sessions.get(s.charger_id) is s:
            del self.sessions[s.charger_id]
            self.sweeps.write_seen(s)
            if s.epoch:
                self.spawn(self._release(s.charger_id, s.epoch))
        # every session announced reports its close, a replaced one too (reason takeover)
        if id(s) in self._announced:
            self._announced.discard(id(s))
            self._event_op(ConnectionClosed(s.charger_id, s.epoch, reason, self.settings.worker_id,
                                            dt.datetime.now(dt.timezone.utc)))
        if s.epoch:  # after every write of this connection: the store forgets its epoch
            self._fence(Fence(s.charger_id, s.epoch, release=True))

    async def _release(self, charger_id: str, epoch: int) -> None:
        try:
            await self.registry.release(charger_id, epoch)
        except Exception as exc:
            log.warning("could not release %s: %r", charger_id, exc)

    def on_takeover(self, charger_id: str, new_epoch: int) -> None:
        """Another worker now owns this charger: close our connection to it."""
        s = self.sessions.get(charger_id)
        if s is not None and 0 < s.epoch < new_epoch:  # epoch 0: our own claim is still pending
            log.info("charger connected elsewhere: closing its connection here", extra=_event(
                "takeover", charger_id=charger_id, by="other_worker"))
            s.close(WSCloseCode.OK, "connected elsewhere", "takeover")

    async def execute_call(self, charger_id: str, action: str, payload: dict, timeout: float) -> dict:
        s = self.sessions.get(charger_id)
        if s is None:
            raise NotConnected(f"charger {charger_id!r} is not connected")
        if action == DISCONNECT:  # deregistered: the charger's credentials are gone
            self.security.forget(charger_id)
            s.close(WSCloseCode.POLICY_VIOLATION, str(payload.get("reason") or "disconnected"), "deregistered")
            return {}
        return await s.call(action, payload, timeout)

    def _on_batch(self, ops: list[Any], results: list[Any]) -> None:
        """A committed batch: its live events to the watched chargers' SSE subscribers, and
        the relay told that the outbox has new rows (by ``_on_synced`` when it keeps a
        synced watermark)."""
        self.services.events.committed(ops, results)
        if not self.relay.synced_only:
            self.relay.wake()

    def _on_synced(self, seq: int) -> None:
        """A synced batch: the relay may publish the outbox up to ``seq``."""
        self.relay.synced(seq)

    def _on_commit(self, rows: int, seconds: float) -> None:
        m.BATCH_ROWS.observe(rows)
        m.BATCH_COMMIT.observe(seconds)
        m.WRITE_QUEUE.set(self.writer.queue_depth)
        m.DEFERRED.set(self.writer.store.deferred_rows)


def _peer(s: Session) -> str:
    """The charger's address as ``host:port`` ("" when the transport does not say)."""
    tr = s.transport
    try:
        peer = tr.underlying_transport.get_extra_info("peername") if tr is not None else None
    except Exception:
        peer = None
    if not peer:
        return ""
    return f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)


def _reading(s: Session, on: bool) -> None:
    """Pause or resume reading the session's socket (not once it is closed)."""
    tr = s.transport
    if tr is None or tr.is_disconnected:
        return
    if on:
        tr.underlying_transport.resume_reading()
    else:
        tr.underlying_transport.pause_reading()


def _ignore_failure(fut: asyncio.Future) -> None:
    """A last_seen write that failed is not retried: the next one moves it further."""
    if not fut.cancelled():
        fut.exception()
