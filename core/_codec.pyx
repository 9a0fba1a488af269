# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled OCPP-J codec. Same API, answers and bytes as its twin ``codec.py``; the class
is declared in ``_codec.pxd`` so that the worker's compiled listener calls
``encode_result`` in C.

The per-frame work is a C scan of ``[2,"id","Action",`` (whitespace allowed
between tokens), one msgspec decode of the payload bytes into the action's
Struct, and one encode of the reply (written here when its payload is an empty object,
else by msgspec). Anything the scan does not recognise goes to ``Tables.classify``,
shared with the pure twin.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH
from libc.string cimport memchr, memcmp, memcpy

import msgspec

from .checks import datetime_plan
from .framing import CALL, Call, FrameError, PayloadError, Tables

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    const char* PyUnicode_1BYTE_DATA(object)

cdef object _ValidationError = msgspec.ValidationError
cdef object _DecodeError = msgspec.DecodeError
cdef object _Struct = msgspec.Struct


cdef inline Py_ssize_t _skip_ws(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (p[i] == b' ' or p[i] == b'\t' or p[i] == b'\r' or p[i] == b'\n'):
        i += 1
    return i


cdef inline bint _is_digit(char c) noexcept nogil:
    return c >= b'0' and c <= b'9'


cdef inline bint _hhmm_before(const char* p, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """``dd:dd`` or ``dd:dd.d+`` ends at ``p[j]``."""
    cdef Py_ssize_t m = j
    while m >= i and _is_digit(p[m]):
        m -= 1
    if m >= i and m < j and p[m] == b'.':
        j = m - 1
    return (j - 4 >= i and _is_digit(p[j]) and _is_digit(p[j - 1]) and p[j - 2] == b':'
            and _is_digit(p[j - 3]) and _is_digit(p[j - 4]))


cdef bint _dt_suspect(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """C twin of ``checks.dt_suspect``: ``\\u``, digit-space-digit or ``hh:mm[.f][+-]hhmm"``
    in ``p[i:n]``. memchr hops between the few candidates instead of a byte loop."""
    cdef const char* s = p + i
    cdef const char* e = p + n
    cdef const char* q = s
    cdef int k
    cdef char sign
    while q < e:
        q = <const char*>memchr(q, b'\\', e - q)
        if q == NULL:
            break
        if q + 1 < e and q[1] == b'u':
            return True
        q += 2
    q = s
    while q < e:
        q = <const char*>memchr(q, b' ', e - q)
        if q == NULL:
            break
        if q > s and q + 1 < e and _is_digit(q[-1]) and _is_digit(q[1]):
            return True
        q += 1
    for sign in (b'+', b'-'):
        q = s
        while q < e:
            q = <const char*>memchr(q, sign, e - q)
            if q == NULL:
                break
            if (q + 5 < e and q[5] == b'"' and _is_digit(q[1]) and _is_digit(q[2])
                    and _is_digit(q[3]) and _is_digit(q[4]) and _hhmm_before(p, i, (q - p) - 1)):
                return True
            q += 1
    return False


cdef bytes _empty_result(str message_id):
    """``[3,"<message_id>",{}]`` written directly, for an id that JSON holds as it is
    (printable ASCII without a quote or backslash); None for any other id."""
    cdef Py_ssize_t n, i
    cdef const char* p
    cdef char* o
    cdef unsigned char c
    if not PyUnicode_CheckExact(message_id) or not PyUnicode_IS_ASCII(message_id):
        return None
    n = PyUnicode_GET_LENGTH(message_id)
    p = PyUnicode_1BYTE_DATA(message_id)
    for i in range(n):
        c = <unsigned char>p[i]
        if c < 0x20 or c == 0x22 or c == 0x5c or c == 0x7f:
            return None
    b = PyBytes_FromStringAndSize(NULL, n + 9)
    o = PyBytes_AS_STRING(b)
    memcpy(o, b'[3,"', 4)
    memcpy(o + 4, p, n)
    memcpy(o + 4 + n, b'",{}]', 5)
    return b


cdef class Codec:
    """Decode frames from and encode frames to one peer speaking ``version``."""

    impl = "cython"

    def __init__(self, str version, str role="csms"):
        self.tables = Tables(version, role)
        self.version = version
        self._inbound = self.tables.inbound
        # accepted actions by name length: (name bytes, name, bound decode, Struct type, has a
        # date-time field); found with a memcmp, without building and hashing a str per frame
        self._by_len = [[] for _ in range(65)]
        for a, d in self.tables.request_decoders.items():
            if a in self._inbound and len(a) <= 64:
                self._by_len[len(a)].append(
                    (a.encode(), a, d.decode, d.type, datetime_plan(d.type) is not None))
        self._enc = msgspec.json.Encoder()
        self._encode = self._enc.encode
        self._draft6 = self.tables.draft6
        self._empty_object = {}  # payload type -> whether the encoder writes it as {}

    def decode(self, data):
        """One frame -> Call | CallResult | CallError | Send | FrameError. Never raises.
        ``data`` is bytes or any buffer (a memoryview of the socket layer's read buffer is
        decoded in place: nothing returned refers to it)."""
        cdef Py_buffer view
        if type(data) is not bytes:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except Exception:  # not a buffer, or not a contiguous one
                data = bytes(data)
            else:
                try:
                    return self._decode(data, <const char*>view.buf, view.len)
                finally:
                    PyBuffer_Release(&view)
        return self._decode(data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef _decode(self, b, const char* p, Py_ssize_t n):
        """``b``'s bytes are ``p[:n]``; ``b`` goes to the slow path as it is."""
        cdef Py_ssize_t i, id0, id1, a0, a1, end
        cdef unsigned char c
        # [ 2 , " id " , " Action " , payload ]
        i = _skip_ws(p, 0, n)
        if i >= n or p[i] != b'[':
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b'2':
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b',':
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b'"':
            return self.tables.classify(b)
        id0 = i + 1
        i = id0
        while i < n:
            c = <unsigned char>p[i]
            if c == b'"':
                break
            if c < 0x20 or c == b'\\':
                return self.tables.classify(b)
            i += 1
        id1 = i
        if i >= n or id1 == id0 or id1 - id0 > 144:
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b',':
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b'"':
            return self.tables.classify(b)
        a0 = i + 1
        i = a0
        while i < n:
            c = <unsigned char>p[i]
            if not ((c >= b'A' and c <= b'Z') or (c >= b'a' and c <= b'z') or (c >= b'0' and c <= b'9')):
                break
            i += 1
        a1 = i
        if i >= n or p[i] != b'"' or a1 == a0 or a1 - a0 > 64:
            return self.tables.classify(b)
        i = _skip_ws(p, i + 1, n)
        if i >= n or p[i] != b',':
            return self.tables.classify(b)
        i += 1
        end = n - 1
        while end > i and (p[end] == b' ' or p[end] == b'\t' or p[end] == b'\r' or p[end] == b'\n'):
            end -= 1
        if end <= i or p[end] != b']':
            return self.tables.classify(b)
        entry = None
        for cand in <list>self._by_len[a1 - a0]:
            if memcmp(PyBytes_AS_STRING(<bytes>(<tuple>cand)[0]), p + a0, a1 - a0) == 0:
                entry = cand
                break
        if entry is None:  # unknown action or not accepted in this direction
            return self.tables.classify(b)
        try:
            msg_id = PyUnicode_DecodeUTF8(p + id0, id1 - id0, NULL)
        except UnicodeDecodeError:
            return self.tables.classify(b)
        if id1 - id0 > 36 and len(msg_id) > 36:
            return self.tables.classify(b)
        _, action, decode, typ, has_dt = <tuple>entry
        payload = PyMemoryView_FromMemory(<char*>p + i, end - i, 0x100)  # PyBUF_READ; used only here
        try:
            obj = decode(payload)
        except _ValidationError as exc:
            if not self._draft6 or "got `float`" not in str(exc):
                err = self.tables.payload_error(exc)
                return FrameError(msg_id, err.code, err.description, action, True, CALL)
        except (_DecodeError, RecursionError, UnicodeDecodeError):
            pass
        else:
            if has_dt and _dt_suspect(p, i, end):
                try:
                    self.tables.check_datetimes(typ, payload)
                except PayloadError as err:
                    return FrameError(msg_id, err.code, err.description, action, True, CALL)
            return Call(msg_id, action, obj)
        return self.tables.classify(b)

    def decode_result(self, str action, payload):
        """Validate the payload of a CALLRESULT to our ``action``; raises PayloadError."""
        return self.tables.decode_payload(action, "response", payload)

    cpdef bytes encode_result(self, str message_id, payload):
        """The CALLRESULT ``[3, message_id, payload]``, the same bytes as the twin's.

        Most replies to a charger's message carry no fields (MeterValues, StatusNotification,
        ...): for a Struct type without fields that the encoder writes as ``{}`` (checked once
        per type: a tagged or array-like Struct is not) the frame is written without the
        encoder, unless the id needs escaping."""
        t = type(payload)
        empty = self._empty_object.get(t)
        if empty is None:  # a Struct with optional fields may be {} or not: only fieldless ones
            empty = self._empty_object[t] = (
                isinstance(payload, _Struct) and len(t.__struct_fields__) == 0
                and self._encode((3, "x", payload)) == b'[3,"x",{}]')
        if empty is True and message_id is not None:
            frame = _empty_result(message_id)
            if frame is not None:
                return frame
        return self._encode((3, message_id, payload))

    def encode_call(self, str message_id, str action, payload):
        return self._enc.encode((2, message_id, action, payload))

    def encode_error(self, str message_id, str code, str description="", details=None):
        return self._enc.encode((4, message_id, code, description[:255],
                                 details if details is not None else {}))

    def encode_reply_error(self, err):
        return self.encode_error(err.message_id, err.code, err.description)
