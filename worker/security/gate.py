"""An asynchronous check before picows answers a WebSocket upgrade.

picows asks its listener factory for the upgrade answer synchronously, while it parses
the request, and tells it nothing about the connection (peer address, TLS). Charger
authentication needs both, and an await: a credential lookup and, on a cold cache, a
memory-hard password check that must run off the event loop.

So each connection starts behind a :class:`_Gate` protocol wrapping picows' own
protocol. The gate passes bytes through until the HTTP request head is complete, then
pauses reading, runs ``precheck(head, transport)`` (any awaitable), and only then hands
the held bytes to picows with the check's result published in :attr:`GatedServer.ticket`
for the duration of that synchronous call, where the listener factory reads it. Then it
steps aside: ``transport.set_protocol(picows_protocol)`` leaves picows alone on the
transport, so frames after the handshake cost exactly what they cost without the gate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any

from picows.api import _resolve_logger  # type: ignore[attr-defined]
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

log = logging.getLogger("chargeyard.worker.security")

MAX_HEAD = 16 * 1024  # a longer request head is left to picows (which refuses it)

Precheck = Callable[[bytes, asyncio.BaseTransport], Awaitable[Any]]
# answers at once when it can (no await needed): a ticket, or NOT_NOW for the async precheck
Quick = Callable[[bytes, asyncio.BaseTransport], Any]
NOT_NOW = object()


def parse_head(head: bytes) -> tuple[bytes, dict[str, str]]:
    """The request target and headers of an HTTP/1.1 request head (header names in
    lower case; a repeated header keeps its first value). Lenient: picows validates the
    request itself right after. A ticket is only ever made from a complete head; when the
    gate leaves a request to picows unchecked (a head over ``MAX_HEAD``), the listener
    factory gets ``None`` and must refuse."""
    # only up to the blank line: bytes after it are not headers (a client may send data
    # right after its request; it must not smuggle identity headers in that way)
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    parts = lines[0].split(b" ")
    target = parts[1] if len(parts) >= 3 else b""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().decode("latin-1").lower()
        headers.setdefault(key, value.strip().decode("latin-1"))
    return target, headers


class _Gate(asyncio.BufferedProtocol):
    __slots__ = ("_inner", "_server", "_transport", "_buf", "_head", "_pending", "_task")

    def __init__(self, inner: Any, server: "GatedServer") -> None:
        self._inner = inner
        self._server = server
        self._transport: Any = None
        self._buf: Any = None
        self._head = bytearray()
        self._pending = 0
        self._task: asyncio.Task | None = None

    # -- delegated ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def get_buffer(self, sizehint: int) -> Any:
        self._buf = self._inner.get_buffer(sizehint)
        return self._buf

    # -- the gate -----------------------------------------------------------------------
    def buffer_updated(self, nbytes: int) -> None:
        if self._task is not None:  # cannot happen while paused; keep picows' order anyway
            self._pending += nbytes
            return
        start = len(self._head)
        self._head += self._buf[:nbytes]
        if b"\r\n\r\n" not in self._head[max(0, start - 3):] or len(self._head) > MAX_HEAD:
            self._inner.buffer_updated(nbytes)
            if len(self._head) > MAX_HEAD:
                self._step_aside()
            return
        head = bytes(self._head)
        server = self._server
        if server.quick is not None:
            try:
                ticket = server.quick(head, self._transport)
            except Exception:
                log.exception("handshake check failed")
                ticket = server.error_ticket
            if ticket is not NOT_NOW:
                self._answer(ticket, nbytes)
                return
        self._pending = nbytes
        self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._run(head))
        self._server._tasks.add(self._task)
        self._task.add_done_callback(self._server._tasks.discard)

    async def _run(self, head: bytes) -> None:
        t = self._transport
        try:
            ticket = await self._server.precheck(head, t)
        except asyncio.CancelledError:
            t.abort()
            raise
        except Exception:
            log.exception("handshake check failed")
            ticket = self._server.error_ticket
        if t.is_closing():
            return
        self._answer(ticket, self._pending)
        if not t.is_closing():
            t.resume_reading()

    def _answer(self, ticket: Any, nbytes: int) -> None:
        """picows reads the request and asks the listener factory, which sees ``ticket``."""
        server = self._server
        server.ticket = ticket
        try:
            self._inner.buffer_updated(nbytes)
        finally:
            server.ticket = None
        self._step_aside()

    def _step_aside(self) -> None:
        self._head = bytearray()
        self._buf = None
        if not self._transport.is_closing():
            self._transport.set_protocol(self._inner)


class GatedServer:
    """``listener_factory(request, ticket)`` answers the upgrade like a picows listener
    factory; ``ticket`` is what ``precheck`` returned for this connection (or
    ``error_ticket`` if it raised). ``quick(head, transport)``, when given, is asked first
    and synchronously: a ticket it returns is used at once (no pause, no task), ``NOT_NOW``
    defers to ``precheck``."""

    def __init__(self, listener_factory: Callable[[Any, Any], Any], precheck: Precheck,
                 error_ticket: Any = None, quick: Quick | None = None) -> None:
        self.listener_factory = listener_factory
        self.precheck = precheck
        self.quick = quick
        self.error_ticket = error_ticket
        self.ticket: Any = None
        self._tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    def _factory(self, request: Any) -> Any:
        return self.listener_factory(request, self.ticket)

    async def start(self, host: Any, port: Any, *, ssl: ssl_module.SSLContext | None = None,
                    disconnect_on_exception: bool = True, websocket_handshake_timeout: float | None = 5,
                    logger_name: Any = None, enable_auto_ping: bool = False,
                    auto_ping_idle_timeout: float = 20, auto_ping_reply_timeout: float = 20,
                    enable_auto_pong: bool = True, max_frame_size: int = 10 * 1024 * 1024,
                    read_buffer_init_size: int = 16 * 1024, **kwargs: Any) -> asyncio.Server:
        """``picows.ws_create_server`` with the gate in front (same keyword arguments,
        asyncio/uvloop transports: ``use_aiofastnet=False``)."""
        logger = _resolve_logger(logger_name, "server")
        factory = self._factory

        def protocol_factory() -> _Gate:
            # the positional arguments of picows 2.3.1's ws_create_server (pinned)
            inner = WSProtocol(None, None, False, factory, logger, disconnect_on_exception,
                               websocket_handshake_timeout, enable_auto_ping, auto_ping_idle_timeout,
                               auto_ping_reply_timeout, WSAutoPingStrategy.PING_WHEN_IDLE, enable_auto_pong,
                               max_frame_size, None, read_buffer_init_size)
            return _Gate(inner, self)

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(protocol_factory, host, port, ssl=ssl, **kwargs)
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()


__all__ = ["GatedServer", "MAX_HEAD", "NOT_NOW", "parse_head"]
