"""The per-message path of a charger connection: the base class of ``Session``.

Two implementations, one behaviour (like the frame codec in ``core/``): this module in pure
Python, and ``_listener.pyx`` compiled with Cython; callers take the class from
``twins.load("chargeyard.worker.listener")`` (the compiled one unless ``CHARGEYARD_PURE=1``;
``CHARGEYARD_REQUIRE_EXT=1`` makes its absence an error). A whole text frame goes: token
bucket -> ``Codec.decode`` -> the action's handler -> either an answer now, or a
``Commit`` whose reply the writer (``writer.py``) sends right after the COMMIT
(``committed``, which has the codec's ``encode_result`` build the reply). Everything else is delegated to ``Session`` methods: ``_throttle`` (over
the rate limit), ``_on_message`` (a reassembled fragmented message), ``_process_other``
(replies to our calls, bad frames, SEND), ``_no_handler``, ``_handler_failed``,
``_deferred_reply`` (futures, coroutines), ``close``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from ..core import Call
from .metrics import handle as _handle
from .writer import Commit

observe = _handle  # the compiled twin counts the histogram itself (``_listener.observe``)

__all__ = ["Listener", "observe"]

_TEXT, _BINARY, _CONT, _PONG, _CLOSE = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION,
                                        WSMsgType.PONG, WSMsgType.CLOSE)
_monotonic = time.monotonic
_Struct = msgspec.Struct


class Listener(WSListener):
    """Fields are set by ``Session.__init__``; the clock is ``time.monotonic``."""

    __slots__ = ("transport", "codec", "handlers", "writer", "max_frame", "_counts_in", "_counts_out",
                 "_tokens", "_last", "_rate", "_burst", "_backlog", "_frag", "_alive", "_ping_at")

    impl = "python"

    # -- hooks: what this per-message path calls on its subclass (``session.Session``) --
    def _throttle(self, data: bytes) -> None:
        """A whole message over the rate limit (or behind ones that were): queue it."""
        raise NotImplementedError

    def _on_message(self, data: bytes) -> None:
        """A message reassembled from fragments."""
        raise NotImplementedError

    def _process_other(self, msg: Any, data: bytes) -> None:
        """A frame that is not a CALL: a reply to our call, an error, a bad frame, a SEND."""
        raise NotImplementedError

    def _no_handler(self, call: Call) -> None:
        raise NotImplementedError

    def _handler_failed(self, call: Call, exc: Exception) -> None:
        raise NotImplementedError

    def _deferred_reply(self, call: Call, res: Any, t0: float) -> None:
        """A handler's answer that is neither a response nor a ``Commit`` (a coroutine)."""
        raise NotImplementedError

    def close(self, code: WSCloseCode = WSCloseCode.OK, reason: str = "", why: str = "server") -> None:
        raise NotImplementedError

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt is _TEXT or mt is _BINARY:
            if frame.fin:  # the common case: one whole message
                self._frag = None  # (a new message before a fragmented one ended drops the fragments)
                data = frame.get_payload_as_bytes()
                if self._backlog is None and self._take_token():
                    self._process(data)
                else:
                    self._throttle(data)
            else:
                self._frag = bytearray(frame.get_payload_as_memoryview())
        elif mt is _CONT:
            if self._frag is None:
                return
            self._frag += frame.get_payload_as_memoryview()
            if len(self._frag) > self.max_frame:
                self._frag = None
                self.close(WSCloseCode.MESSAGE_TOO_BIG, "message too big", "too_big")
                return
            if frame.fin:
                data, self._frag = bytes(self._frag), None
                self._on_message(data)
        elif mt is _PONG:
            self._alive = _monotonic()
            self._ping_at = 0.0
        elif mt is _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def _take_token(self) -> bool:
        """Token bucket: ``_rate`` messages/s, up to ``_burst`` at once; ``_last`` is also the
        time the current message was taken in."""
        now = _monotonic()
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens >= 1.0:
            self._tokens = (tokens if tokens < self._burst else self._burst) - 1.0
            return True
        self._tokens = tokens
        return False

    def _process(self, data: bytes) -> None:
        msg = self.codec.decode(data)
        if type(msg) is Call:
            counts, action = self._counts_in, msg.action
            counts[action] = counts.get(action, 0) + 1
            self._dispatch(msg)
        else:
            self._process_other(msg, data)

    def _dispatch(self, call: Call) -> None:
        handler = self.handlers.get(call.action)
        if handler is None:
            self._no_handler(call)
            return
        t0 = self._last  # when the frame was taken in
        try:
            res = handler(self, call.payload)
        except Exception as exc:  # a handler bug must not kill the connection
            self._handler_failed(call, exc)
            return
        if type(res) is Commit:
            self.writer.add_reply(res.op, self, call.message_id, call.action, res.response, t0)
        elif isinstance(res, _Struct):
            self.committed(call.message_id, call.action, res, t0)
        else:
            self._deferred_reply(call, res, t0)

    def committed(self, message_id: str, action: str, payload: Any, t0: float) -> None:
        """Send the CALLRESULT (the writer calls this right after a ``Commit``'s COMMIT)."""
        tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        tr.send(_TEXT, self.codec.encode_result(message_id, payload))
        _handle(action, _monotonic() - t0)
        counts = self._counts_out
        counts[action] = counts.get(action, 0) + 1

