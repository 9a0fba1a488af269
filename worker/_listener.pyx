# cython: language_level=3
"""Compiled twin of ``listener.py`` (read that module's docstring): the same fields and
methods, with C-level calls into picows (frame fields, ``WSTransport.send``) and into the
compiled codec's ``encode_result``, unboxed token-bucket arithmetic, and a whole frame
decoded straight from picows' read buffer (a memoryview, no copy; the pure twin takes
bytes, and ``Codec.decode`` accepts both). The class is declared in ``_listener.pxd``, so
that the writer's compiled reply loop calls ``_committed`` in C.
Keep the two in step; tests/worker/test_listener.py runs both."""

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from picows.picows cimport WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from chargeyard.core._codec cimport Codec

import msgspec

from chargeyard.core import Call
from chargeyard.worker.metrics import handle as _handle
from chargeyard.worker.writer import Commit

cdef object _Call = Call
cdef object _Commit = Commit

# Call's and Commit's fields read from their slots (``_slots.pxi``)
include "_slots.pxi"

cdef Py_ssize_t _CALL_ID = _offset(_Call, "message_id")
cdef Py_ssize_t _CALL_ACTION = _offset(_Call, "action")
cdef Py_ssize_t _CALL_PAYLOAD = _offset(_Call, "payload")
cdef Py_ssize_t _COMMIT_OP = _offset(_Commit, "op")
cdef Py_ssize_t _COMMIT_RESPONSE = _offset(_Commit, "response")


def _check():
    call, commit = _Call("1", "Heartbeat", {}), _Commit(object(), object())
    _check_slots("chargeyard.worker._listener", (
        (call, _Call, _CALL_ID, "message_id"), (call, _Call, _CALL_ACTION, "action"),
        (call, _Call, _CALL_PAYLOAD, "payload"), (commit, _Commit, _COMMIT_OP, "op"),
        (commit, _Commit, _COMMIT_RESPONSE, "response")))


_check()
cdef object _Struct = msgspec.Struct
# the handle-duration histogram (``metrics._Handle``), counted here without a call into Python
cdef dict _handle_data = _handle.data
cdef int _n_bounds = len(_handle.BOUNDS)
cdef double _bounds[32]
if _n_bounds > 32:
    raise ImportError(f"metrics.handle has {_n_bounds} bucket bounds; the listener holds 32")
for _i, _b in enumerate(_handle.BOUNDS):
    _bounds[_i] = _b


cdef inline void _observe(action, double seconds) except *:
    """``metrics.handle(action, seconds)``: the bucket is ``bisect_left(BOUNDS, seconds)``."""
    d = _handle_data.get(action)
    if d is None:  # the action's first observation makes its row
        _handle(action, seconds)
        return
    cdef int i = 0
    while i < _n_bounds and _bounds[i] < seconds:
        i += 1
    (<list>d)[i] += 1
    (<list>d)[_n_bounds + 1] += seconds


def observe(action, double seconds):
    """``_observe`` for the tests (``listener.observe`` in the twin)."""
    _observe(action, seconds)


cdef inline double _monotonic() noexcept nogil:
    """``time.monotonic()`` (CLOCK_MONOTONIC), without a call into Python."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Listener(WSListener):
    """Fields (declared in ``_listener.pxd``) are set by ``Session.__init__``; the clock is
    ``time.monotonic``."""

    impl = "cython"

    # -- hooks: what this per-message path calls on its subclass (``session.Session``; the
    # pure twin documents them)
    def _throttle(self, data):
        raise NotImplementedError

    def _on_message(self, data):
        raise NotImplementedError

    def _process_other(self, msg, data):
        raise NotImplementedError

    def _no_handler(self, call):
        raise NotImplementedError

    def _handler_failed(self, call, exc):
        raise NotImplementedError

    def _deferred_reply(self, call, res, t0):
        raise NotImplementedError

    def close(self, code=None, reason="", why="server"):
        raise NotImplementedError

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType mt = frame.msg_type
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            if frame.fin:  # the common case: one whole message
                self._frag = None  # (a new message before a fragmented one ended drops the fragments)
                if self._backlog is None and self._take():
                    # decoded in place: the view lives for this call only, nothing keeps it
                    self._process_c(frame.get_payload_as_memoryview())
                else:
                    self._throttle(frame.get_payload_as_bytes())
            else:
                self._frag = bytearray(frame.get_payload_as_memoryview())
        elif mt == WSMsgType.CONTINUATION:
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
        elif mt == WSMsgType.PONG:
            self._alive = _monotonic()
            self._ping_at = 0.0
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    cdef inline bint _take(self):
        cdef double now = _monotonic()
        cdef double tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens >= 1.0:
            self._tokens = (tokens if tokens < self._burst else self._burst) - 1.0
            return True
        self._tokens = tokens
        return False

    def _take_token(self):
        """Token bucket: ``_rate`` messages/s, up to ``_burst`` at once; ``_last`` is also the
        time the current message was taken in."""
        return self._take()

    cdef _process_c(self, data):
        """``data``: bytes, or a view of picows' read buffer valid during this call only."""
        msg = self.codec.decode(data)
        if type(msg) is _Call:
            action = _field(msg, _Call, _CALL_ACTION, "action")
            counts = self._counts_in
            counts[action] = counts.get(action, 0) + 1
            self._dispatch_c(msg)
        else:
            self._process_other(msg, data if type(data) is bytes else bytes(data))

    def _process(self, data):
        self._process_c(data)

    cdef _dispatch_c(self, call):
        action = _field(call, _Call, _CALL_ACTION, "action")
        handler = self.handlers.get(action)
        if handler is None:
            self._no_handler(call)
            return
        cdef double t0 = self._last  # when the frame was taken in
        try:
            res = handler(self, _field(call, _Call, _CALL_PAYLOAD, "payload"))
        except Exception as exc:  # a handler bug must not kill the connection
            self._handler_failed(call, exc)
            return
        if type(res) is _Commit:
            self.writer.add_reply(_field(res, _Commit, _COMMIT_OP, "op"), self,
                                  _field(call, _Call, _CALL_ID, "message_id"), action,
                                  _field(res, _Commit, _COMMIT_RESPONSE, "response"), t0)
        elif isinstance(res, _Struct):
            self._committed(_field(call, _Call, _CALL_ID, "message_id"), action, res, t0)
        else:
            self._deferred_reply(call, res, t0)

    def _dispatch(self, call):
        self._dispatch_c(call)

    cdef _committed(self, message_id, action, payload, double t0):
        cdef WSTransport tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        codec = self.codec
        if type(codec) is Codec:  # the compiled codec, called in C
            frame = (<Codec>codec).encode_result(message_id, payload)
        else:
            frame = codec.encode_result(message_id, payload)
        tr.send(WSMsgType.TEXT, frame)
        _observe(action, _monotonic() - t0)
        counts = self._counts_out
        counts[action] = counts.get(action, 0) + 1

    def committed(self, message_id, action, payload, double t0):
        """Send the CALLRESULT (the writer calls this right after a ``Commit``'s COMMIT)."""
        self._committed(message_id, action, payload, t0)
