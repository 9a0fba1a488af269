# cython: language_level=3
"""``logrows.py`` compiled: the store's per-reading steps, with the same results and errors
(the twin's docstrings hold). Times: a datetime whose tzinfo is None or UTC is converted in
C; any other value goes through ``base.to_us``, as in the twin. ``fold`` and
``split_packed`` read the packed log rows in C, without a Python object per reading, and
return None for anything outside the form msgspec writes (the store then takes the twin's
path, which decodes, or reports, as before). ``outbox_rows`` writes a MeterSample's event
envelope in C, byte for byte as msgspec writes it, and leaves every other event to the
twin's code (ADR 0021)."""

from cpython.datetime cimport (import_datetime, datetime_tzinfo, datetime_year, datetime_month,
                               datetime_day, datetime_hour, datetime_minute, datetime_second,
                               datetime_microsecond, PyDateTime_CheckExact)
from cpython.long cimport PyLong_AsLongLongAndOverflow

import datetime as _dt

from .base import to_us as _py_to_us
from .logrows import _bad, _CACHE_MAX, reading_log as _reading_log

import_datetime()

cdef object _UTC = _dt.timezone.utc


cdef inline long long _days(long long y, long long m, long long d):
    """Days from 1970-01-01 to a proleptic Gregorian date (y >= 1)."""
    y -= 1 if m <= 2 else 0
    cdef long long era = y // 400
    cdef long long yoe = y - era * 400
    cdef long long doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    cdef long long doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef object _to_us(object t):
    if PyDateTime_CheckExact(t):
        tz = datetime_tzinfo(t)
        if tz is None or tz is _UTC:
            return (((_days(datetime_year(t), datetime_month(t), datetime_day(t)) * 24
                      + datetime_hour(t)) * 60 + datetime_minute(t)) * 60
                    + datetime_second(t)) * 1000000 + datetime_microsecond(t)
    return _py_to_us(t)


cdef inline bint _fits(object x):
    """An exact int of 64 bits."""
    cdef int overflow = 0
    if type(x) is not int:
        return False
    PyLong_AsLongLongAndOverflow(x, &overflow)
    return overflow == 0


class Rows:
    impl = "compiled"

    @staticmethod
    def sample_rows(list run, list out):
        for o in run:
            out.append((o.charger_id, o.tx_id, o.connector_id, _to_us(o.at), float(o.energy_wh), 0))

    @staticmethod
    def checked(list rows):
        cdef tuple row
        for row in rows:
            charger, tx, connector, at, wh, _ = row
            if (type(wh) is not float or wh != wh or not _fits(connector) or not _fits(at)
                    or type(charger) is not str or type(tx) is not str):
                raise _bad(row)

    @staticmethod
    def split(list rows, dict cache, int n, table_of):
        # logrows.table, inline
        cdef list parts = [[] for _ in range(n)]
        cdef tuple r
        cdef object b
        for r in rows:
            charger = r[0]
            b = cache.get(charger)
            if b is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                b = cache[charger] = table_of(charger)
            (<list>parts[b]).append(r)
        return parts

    @staticmethod
    def fold(list datas):
        return _fold(datas)

    @staticmethod
    def run_end(list ops, Py_ssize_t i):
        cdef Py_ssize_t j = i + 1, n = len(ops)
        cdef object t = type(ops[i])
        while j < n and type(ops[j]) is t:
            j += 1
        return j

    @staticmethod
    def outbox_rows(ops, results):
        return _outbox_rows(ops if type(ops) is list else list(ops),
                            results if type(results) is list else list(results))

    @staticmethod
    def split_packed(list datas, int n, table_of):
        if table_of is not _reading_log or n <= 0:
            return None
        return _split_packed(datas, n)


# -- the fold, without a Python object per reading ----------------------------------------
#
# A log row's data is msgpack (msgspec's encoding, ``logrows.pack``) of
# [[charger, tx, connector, at, wh, kind], ...]; a chunk's is [[connector, at, wh, kind], ...]:
# the last four fields of a log reading, in the same encoding. So a chunk is built by
# copying each reading's tail behind a new 4-array header, and only the group keys (charger,
# tx) become Python objects. Anything outside the form msgspec writes (a float not 64-bit,
# an integer beyond 64 bits, text that is not UTF-8, a NaN reading, a damaged row) returns
# None: the caller then takes the twin's path, which decodes (and reports) as before.

from libc.string cimport memcpy, memcmp
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.math cimport isnan
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeUTF8


cdef struct _R:  # a reading
    Py_ssize_t group
    const uint8_t* tail  # its connector, at, wh, kind: copied as they are
    Py_ssize_t tail_len


cdef struct _G:  # a group: a (charger, tx) of the fold, in first-seen order
    const uint8_t* cs  # its key, as first seen in the packed rows
    const uint8_t* ts
    Py_ssize_t cn, tn
    size_t h
    Py_ssize_t n, size, fill
    double high, low, last_wh
    long long last_at, last_con
    bint has_low
    char* out


cdef struct _P:  # a parser over one row's data
    const uint8_t* p
    const uint8_t* end


cdef inline int _arr(_P* s, Py_ssize_t* n):
    if s.p >= s.end:
        return -1
    cdef uint8_t b = s.p[0]
    if b & 0xf0 == 0x90:
        n[0] = b & 0x0f
        s.p += 1
    elif b == 0xdc and s.end - s.p >= 3:
        n[0] = (<Py_ssize_t>s.p[1] << 8) | s.p[2]
        s.p += 3
    elif b == 0xdd and s.end - s.p >= 5:
        n[0] = ((<Py_ssize_t>s.p[1] << 24) | (<Py_ssize_t>s.p[2] << 16)
                | (<Py_ssize_t>s.p[3] << 8) | s.p[4])
        s.p += 5
    else:
        return -1
    return 0


cdef inline int _str(_P* s, const uint8_t** at, Py_ssize_t* n):
    if s.p >= s.end:
        return -1
    cdef uint8_t b = s.p[0]
    cdef Py_ssize_t k
    if b & 0xe0 == 0xa0:
        k = b & 0x1f
        s.p += 1
    elif b == 0xd9 and s.end - s.p >= 2:
        k = s.p[1]
        s.p += 2
    elif b == 0xda and s.end - s.p >= 3:
        k = (<Py_ssize_t>s.p[1] << 8) | s.p[2]
        s.p += 3
    elif b == 0xdb and s.end - s.p >= 5:
        k = ((<Py_ssize_t>s.p[1] << 24) | (<Py_ssize_t>s.p[2] << 16)
             | (<Py_ssize_t>s.p[3] << 8) | s.p[4])
        s.p += 5
    else:
        return -1
    if s.end - s.p < k:
        return -1
    at[0] = s.p
    n[0] = k
    s.p += k
    return 0


cdef inline uint64_t _be(const uint8_t* p, int k):
    cdef uint64_t v = 0
    cdef int i
    for i in range(k):
        v = (v << 8) | p[i]
    return v


cdef inline int _int(_P* s, long long* v):
    """A msgpack integer of 64 bits, signed (an unsigned one above 2**63-1 fails)."""
    if s.p >= s.end:
        return -1
    cdef uint8_t b = s.p[0]
    cdef int k
    cdef uint64_t u
    if b <= 0x7f:
        v[0] = b
        s.p += 1
        return 0
    if b >= 0xe0:
        v[0] = <long long>(<signed char>b)
        s.p += 1
        return 0
    if 0xcc <= b <= 0xcf:
        k = 1 << (b - 0xcc)
        if s.end - s.p < 1 + k:
            return -1
        u = _be(s.p + 1, k)
        if u > <uint64_t>9223372036854775807:
            return -1
        v[0] = <long long>u
    elif 0xd0 <= b <= 0xd3:
        k = 1 << (b - 0xd0)
        if s.end - s.p < 1 + k:
            return -1
        u = _be(s.p + 1, k)
        if k == 1:
            v[0] = <signed char>u
        elif k == 2:
            v[0] = <short>u
        elif k == 4:
            v[0] = <int>u
        else:
            v[0] = <long long>u
    else:
        return -1
    s.p += 1 + k
    return 0


cdef inline int _f64(_P* s, double* v):
    cdef uint64_t u
    if s.end - s.p < 9 or s.p[0] != 0xcb:
        return -1
    u = _be(s.p + 1, 8)
    memcpy(v, &u, 8)
    s.p += 9
    return 0


cdef void* _grown(void* p, Py_ssize_t* cap, Py_ssize_t least, size_t size) except NULL:
    """A full C array ``p`` of ``*cap`` items of ``size`` bytes, reallocated to twice its
    capacity (or ``least``); on failure MemoryError, and ``p`` stays the caller's to free."""
    cdef Py_ssize_t n = max(least, cap[0] * 2)
    cdef void* m = realloc(p, n * size)
    if m == NULL:
        raise MemoryError()
    cap[0] = n
    return m


cdef inline int _reading(_P* s, const uint8_t** cs, Py_ssize_t* cn, const uint8_t** ts, Py_ssize_t* tn,
                         const uint8_t** tail, long long* con, long long* at, double* wh,
                         long long* kind) noexcept:
    """One log reading ``[charger, tx, connector, at, wh, kind]`` in msgspec's form, ``tail``
    at its connector; -1 for anything else (a NaN reading included)."""
    if s.p >= s.end or s.p[0] != 0x96:
        return -1
    s.p += 1
    if _str(s, cs, cn) < 0 or _str(s, ts, tn) < 0:
        return -1
    tail[0] = s.p
    if _int(s, con) < 0 or _int(s, at) < 0 or _f64(s, wh) < 0 or _int(s, kind) < 0:
        return -1
    return -1 if isnan(wh[0]) else 0


cdef class _Fold:
    """The C arrays of one fold, freed with it (also when it fails half way)."""
    cdef _R* rs
    cdef Py_ssize_t nr, cap_r
    cdef _G* gs
    cdef Py_ssize_t ng, cap_g
    cdef Py_ssize_t* slots  # open addressing over the groups' keys: group + 1, 0 when free
    cdef size_t mask

    def __dealloc__(self):
        free(self.rs)
        free(self.gs)
        free(self.slots)

    cdef Py_ssize_t find(self, const uint8_t* cs, Py_ssize_t cn, const uint8_t* ts, Py_ssize_t tn,
                         size_t h) noexcept:
        """The group of a key, or -1 (its free slot is then where ``add`` puts it)."""
        cdef size_t i = h & self.mask
        cdef Py_ssize_t g
        cdef _G* gr
        while True:
            g = self.slots[i] - 1
            if g < 0:
                return -1
            gr = &self.gs[g]
            if (gr.h == h and gr.cn == cn and gr.tn == tn and memcmp(gr.cs, cs, cn) == 0
                    and memcmp(gr.ts, ts, tn) == 0):
                return g
            i = (i + 1) & self.mask

    cdef int grow(self) except -1:
        """Twice the slots (or the first 256), the groups placed again."""
        cdef size_t n = 256 if self.slots == NULL else (self.mask + 1) * 2
        cdef Py_ssize_t* m = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
        cdef Py_ssize_t g
        cdef size_t i
        if m == NULL:
            raise MemoryError()
        free(self.slots)
        self.slots = m
        self.mask = n - 1
        for g in range(self.ng):
            i = self.gs[g].h & self.mask
            while self.slots[i]:
                i = (i + 1) & self.mask
            self.slots[i] = g + 1
        return 0

    cdef int add(self, Py_ssize_t g) except -1:
        """Index group ``g`` (made by ``group``, its key set)."""
        cdef size_t i
        if self.slots == NULL or <size_t>(self.ng * 2) > self.mask:
            self.grow()  # places every group, g included
            return 0
        i = self.gs[g].h & self.mask
        while self.slots[i]:
            i = (i + 1) & self.mask
        self.slots[i] = g + 1
        return 0

    cdef int reading(self) except -1:
        if self.nr == self.cap_r:
            self.rs = <_R*>_grown(self.rs, &self.cap_r, 1024, sizeof(_R))
        self.nr += 1
        return 0

    cdef int group(self) except -1:
        if self.ng == self.cap_g:
            self.gs = <_G*>_grown(self.gs, &self.cap_g, 64, sizeof(_G))
        self.gs[self.ng].n = 0
        self.gs[self.ng].size = 0
        self.gs[self.ng].fill = 0
        self.gs[self.ng].has_low = False
        self.gs[self.ng].out = NULL
        self.ng += 1
        return 0


cdef inline Py_ssize_t _header_len(Py_ssize_t n):
    return 1 if n < 16 else (3 if n < 65536 else 5)


cdef inline void _header(char* o, Py_ssize_t n):
    cdef uint8_t* u = <uint8_t*>o
    if n < 16:
        u[0] = 0x90 | n
    elif n < 65536:
        u[0] = 0xdc
        u[1] = (n >> 8) & 0xff
        u[2] = n & 0xff
    else:
        u[0] = 0xdd
        u[1] = (n >> 24) & 0xff
        u[2] = (n >> 16) & 0xff
        u[3] = (n >> 8) & 0xff
        u[4] = n & 0xff


cdef inline size_t _fnv(const uint8_t* p, Py_ssize_t n, size_t h) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * <size_t>1099511628211
    return h


cdef object _fold(list datas):
    """``Rows.fold`` (see the twin); None when a row is not in msgspec's form."""
    cdef _Fold f = _Fold()
    cdef _P s
    cdef Py_ssize_t count, i, j, k, cn, tn, g = -1
    cdef const uint8_t* cs
    cdef const uint8_t* ts
    cdef const uint8_t* pc = NULL
    cdef const uint8_t* pt = NULL
    cdef const uint8_t* tail
    cdef Py_ssize_t pcn = -1, ptn = -1
    cdef long long con, at, kind
    cdef double wh
    cdef _G* gr
    cdef _R* r
    cdef size_t h
    cdef list keys = []  # the groups' (charger, tx)
    cdef dict newest = {}  # (charger, connector) -> (charger, connector, at, wh)
    cdef bytes data
    cdef tuple key, had
    cdef list outs, chunks
    for data in datas:
        s.p = <const uint8_t*>PyBytes_AS_STRING(data)
        s.end = s.p + len(data)
        if _arr(&s, &count) < 0:
            return None
        for i in range(count):
            if _reading(&s, &cs, &cn, &ts, &tn, &tail, &con, &at, &wh, &kind) < 0:
                return None
            f.reading()
            r = &f.rs[f.nr - 1]
            r.tail = tail
            r.tail_len = s.p - tail
            if not (cn == pcn and tn == ptn and memcmp(cs, pc, cn) == 0 and memcmp(ts, pt, tn) == 0):
                h = _fnv(ts, tn, _fnv(cs, cn, <size_t>14695981039346656037ULL) * <size_t>31 + <size_t>cn)
                g = f.find(cs, cn, ts, tn, h) if f.slots != NULL else -1
                if g < 0:
                    try:
                        charger = PyUnicode_DecodeUTF8(<const char*>cs, cn, NULL)
                        tx = PyUnicode_DecodeUTF8(<const char*>ts, tn, NULL)
                    except UnicodeDecodeError:
                        return None
                    g = f.ng
                    f.group()
                    gr = &f.gs[g]
                    gr.cs, gr.cn, gr.ts, gr.tn, gr.h = cs, cn, ts, tn, h
                    f.add(g)
                    keys.append((charger, tx))
                pc, pcn, pt, ptn = cs, cn, ts, tn
            r.group = g
            gr = &f.gs[g]
            if gr.n == 0 or wh > gr.high:
                gr.high = wh
            if kind != 2 and (not gr.has_low or wh < gr.low):
                gr.low = wh
                gr.has_low = True
            if gr.n == 0 or at > gr.last_at or (at == gr.last_at and con <= gr.last_con):
                gr.last_at, gr.last_con, gr.last_wh = at, con, wh
            gr.n += 1
            gr.size += 1 + r.tail_len
            if tn == 0 and kind == 0:  # a sample without a transaction: the newest per connector
                k2 = ((<tuple>keys[g])[0], con)
                had = newest.get(k2)
                if had is None or at >= <long long>had[2]:
                    newest[k2] = ((<tuple>keys[g])[0], con, at, wh)
        if s.p != s.end:
            return None
    outs = [None] * f.ng
    for j in range(f.ng):
        gr = &f.gs[j]
        k = _header_len(gr.n)
        b = PyBytes_FromStringAndSize(NULL, k + gr.size)
        outs[j] = b
        gr.out = PyBytes_AS_STRING(b)
        _header(gr.out, gr.n)
        gr.fill = k
    for i in range(f.nr):
        r = &f.rs[i]
        gr = &f.gs[r.group]
        gr.out[gr.fill] = <char>0x94
        memcpy(gr.out + gr.fill + 1, r.tail, r.tail_len)
        gr.fill += 1 + r.tail_len
    chunks = []
    for j in range(f.ng):
        gr = &f.gs[j]
        key = <tuple>keys[j]
        chunks.append((key[0], key[1], (gr.low if gr.has_low else None, gr.high, gr.last_at, gr.last_con,
                                        gr.last_wh), gr.n, outs[j]))
    return chunks, list(newest.values())


# -- a move: packed log rows split by log table, without a Python object per reading --------

cdef unsigned int _CRC[256]
cdef unsigned int _c, _k, _j
for _j in range(256):
    _c = _j
    for _k in range(8):
        _c = (0xEDB88320 ^ (_c >> 1)) if (_c & 1) else (_c >> 1)
    _CRC[_j] = _c


cdef inline unsigned int _crc32(const uint8_t* p, Py_ssize_t n) noexcept:
    """zlib.crc32 (the log table of a charger is that of its id's UTF-8 bytes)."""
    cdef unsigned int c = 0xFFFFFFFF
    cdef Py_ssize_t i
    for i in range(n):
        c = _CRC[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


cdef struct _S:  # a reading of a move: its packed bytes and its table
    const uint8_t* at
    Py_ssize_t size
    int table


cdef object _split_packed(list datas, int n):
    """``Rows.split_packed`` (see the twin); None when a row is not in msgspec's form."""
    cdef _P s
    cdef Py_ssize_t count, i, cn, tn, nr = 0, cap = 0
    cdef const uint8_t* cs
    cdef const uint8_t* ts
    cdef const uint8_t* start
    cdef const uint8_t* tail
    cdef long long con, at, kind
    cdef double wh
    cdef _S* rs = NULL
    cdef Py_ssize_t* counts = NULL
    cdef Py_ssize_t* sizes = NULL
    cdef Py_ssize_t* fills = NULL
    cdef char** outs = NULL
    cdef bytes data
    cdef list parts = []
    cdef int b
    try:
        counts = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
        sizes = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
        fills = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
        outs = <char**>calloc(n, sizeof(char*))
        if counts == NULL or sizes == NULL or fills == NULL or outs == NULL:
            raise MemoryError()
        for data in datas:
            s.p = <const uint8_t*>PyBytes_AS_STRING(data)
            s.end = s.p + len(data)
            if _arr(&s, &count) < 0:
                return None
            for i in range(count):
                start = s.p
                if _reading(&s, &cs, &cn, &ts, &tn, &tail, &con, &at, &wh, &kind) < 0:
                    return None
                if not (_utf8(cs, cn) and _utf8(ts, tn)):  # the twin decodes them
                    return None
                if nr == cap:
                    rs = <_S*>_grown(rs, &cap, 1024, sizeof(_S))
                b = _crc32(cs, cn) % n
                rs[nr].at = start
                rs[nr].size = s.p - start
                rs[nr].table = b
                nr += 1
                counts[b] += 1
                sizes[b] += s.p - start
            if s.p != s.end:
                return None
        for b in range(n):
            if counts[b]:
                blob = PyBytes_FromStringAndSize(NULL, _header_len(counts[b]) + sizes[b])
                parts.append((b, counts[b], blob))
                outs[b] = PyBytes_AS_STRING(blob)
                _header(outs[b], counts[b])
                fills[b] = _header_len(counts[b])
        for i in range(nr):
            b = rs[i].table
            memcpy(outs[b] + fills[b], rs[i].at, rs[i].size)
            fills[b] += rs[i].size
        return parts
    finally:
        free(rs)
        free(counts)
        free(sizes)
        free(fills)
        free(outs)


cdef inline bint _utf8(const uint8_t* p, Py_ssize_t n) noexcept:
    """Valid UTF-8 as Python's strict decoder has it (no surrogates, no overlongs)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if i + 1 >= n:
            return False
        c1 = p[i + 1]
        if c < 0xF0:
            if i + 2 >= n or (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F):
                return False
            i += 3
            continue
        if i + 3 >= n or (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
            return False
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):
            return False
        i += 4
    return True


# -- the outbox: a batch's events, a MeterSample's envelope written in C -------------------
#
# A MeterSample with a transaction reports a ``transaction.meter`` event (store/events.py's
# ``tx_meter``), one per MeterValues message of a busy worker. Its envelope is written here
# as msgspec writes it (the fields in their Struct order, no spaces, the time as RFC 3339
# with ``Z`` and microseconds when there are some, a float as ``repr``: ``_millis_text``
# for whole thousandths, else CPython's), and its id, 128
# bits of BLAKE2b (RFC 7693) of "charger\\x1ftransaction.meter\\x1ftx\\x1fconnector\\x1fµs" in
# hex, is computed in C. An op outside that plain form goes through the twin's code
# (``from_op``, then msgspec), so every op gets the same bytes from both twins: a text that
# is not printable ASCII or holds a quote or backslash (it would be escaped), a reading
# that is not a finite float or whose repr has an exponent, a time that is not a datetime
# in UTC (or naive), a connector that is not an int of 64 bits, an id over 600 bytes.

from libc.string cimport memset
from cpython.conversion cimport PyOS_double_to_string, Py_DTSF_ADD_DOT_0
from cpython.mem cimport PyMem_Free
from cpython.float cimport PyFloat_AS_DOUBLE
from libc.math cimport isfinite, fabs, signbit, llround

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

import msgspec as _msgspec

from .base import MeterSample as _MeterSample
from .events import SOURCE as _SOURCE, encode as _encode_event, from_op as _from_op

cdef object _Sample = _MeterSample

# the envelope's fixed parts, between the values
cdef bytes _E_ID = b'{"id":"'
cdef bytes _E_TIME = (b'","type":"transaction.meter","source":' + _msgspec.json.encode(_SOURCE)
                      + b',"time":"')
cdef bytes _E_CHARGER = b'","charger_id":"'
cdef bytes _E_TX = b'","data":{"transaction_id":"'
cdef bytes _E_CON = b'","connector_id":'
cdef bytes _E_WH = b',"energy_wh":'
cdef bytes _E_END = b'}}'
cdef bytes _K_TYPE = b'\x1ftransaction.meter\x1f'  # the id's key parts are joined by U+001F
cdef Py_ssize_t _TEXT_MAX = 600  # charger and transaction id bytes written on the stack
cdef const char* _HEX = b"0123456789abcdef"


# BLAKE2b (RFC 7693), unkeyed, 16-byte digest: the id's hash (hashlib.blake2b(digest_size=16))

cdef uint64_t _IV[8]
cdef uint8_t _SIGMA[12][16]
for _j, _x in enumerate((0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
                         0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179)):
    _IV[_j] = _x
for _j, _row in enumerate(((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
                           (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
                           (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
                           (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
                           (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
                           (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
                           (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
                           (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
                           (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0))):
    for _k, _x in enumerate(_row):
        _SIGMA[_j][_k] = _x
        if _j < 2:  # rounds 10 and 11 repeat the first two permutations
            _SIGMA[_j + 10][_k] = _x


cdef inline uint64_t _rotr(uint64_t x, int n) noexcept:
    return (x >> n) | (x << (64 - n))


cdef inline void _mix(uint64_t* v, int a, int b, int c, int d, uint64_t x, uint64_t y) noexcept:
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


cdef void _compress(uint64_t* h, const uint8_t* block, uint64_t t, bint last) noexcept:
    """F of RFC 7693 on one 128-byte block; ``t`` counts the bytes so far (below 2**64)."""
    cdef uint64_t v[16]
    cdef uint64_t m[16]
    cdef const uint8_t* s
    cdef int i, r, k
    for i in range(16):
        m[i] = 0
        for k in range(8):
            m[i] |= (<uint64_t>block[8 * i + k]) << (8 * k)
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = _IV[i]
    v[12] ^= t
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = _SIGMA[r]
        _mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


cdef void _blake2b_hex(const uint8_t* p, Py_ssize_t n, char* out) noexcept:
    """The 32 lowercase hex digits of BLAKE2b-128 of ``p[:n]`` into ``out``."""
    cdef uint64_t h[8]
    cdef uint8_t block[128]
    cdef uint64_t t = 0
    cdef uint8_t b
    cdef int i
    for i in range(8):
        h[i] = _IV[i]
    h[0] ^= 0x01010000 ^ 16  # parameter block: digest length 16, no key, fanout 1, depth 1
    while n > 128:
        t += 128
        _compress(h, p, t, False)
        p += 128
        n -= 128
    memset(block, 0, 128)
    memcpy(block, p, n)
    t += n
    _compress(h, block, t, True)
    for i in range(16):
        b = (h[i >> 3] >> (8 * (i & 7))) & 0xff
        out[2 * i] = _HEX[b >> 4]
        out[2 * i + 1] = _HEX[b & 15]


def _blake2b_128_hex(bytes data):
    """``hashlib.blake2b(data, digest_size=16).hexdigest()``, for the tests of the C hash."""
    cdef char out[32]
    _blake2b_hex(<const uint8_t*>PyBytes_AS_STRING(data), len(data), out)
    return out[:32].decode("ascii")


# the envelope's writing

cdef inline char* _put(char* o, const char* s, Py_ssize_t n) noexcept:
    memcpy(o, s, n)
    return o + n


cdef inline char* _put_bytes(char* o, bytes b) noexcept:
    return _put(o, PyBytes_AS_STRING(b), len(b))


cdef inline char* _digits(char* o, long long v, int width) noexcept:
    """``v`` in decimal, at least ``width`` digits (zero-padded), with ``-`` if negative."""
    cdef char tmp[24]
    cdef int k = 0
    cdef unsigned long long u
    if v < 0:
        o[0] = b'-'
        o += 1
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        tmp[k] = <char>(48 + u % 10)
        k += 1
        u //= 10
        if u == 0 and k >= width:
            break
    while k:
        k -= 1
        o[0] = tmp[k]
        o += 1
    return o


cdef inline char* _millis_text(char* o, double x) noexcept:
    """``repr(x)`` for a reading in whole thousandths below 10**12 (a register's usual
    form), or NULL for any other. Such an x is the double nearest n/1000, and its ulp is
    below 1/1000, so no shorter decimal rounds to it: repr writes n/1000 itself."""
    cdef long long n, whole, frac
    if not fabs(x) < 1e12 or signbit(x):
        return NULL
    n = llround(x * 1000.0)
    if <double>n / 1000.0 != x:
        return NULL
    whole = n // 1000
    frac = n % 1000
    o = _digits(o, whole, 1)
    o[0] = b'.'
    o[1] = <char>(48 + frac // 100)
    o += 2
    frac %= 100
    if frac:
        o[0] = <char>(48 + frac // 10)
        o += 1
        if frac % 10:
            o[0] = <char>(48 + frac % 10)
            o += 1
    return o


cdef inline bint _plain(const char* s, Py_ssize_t n) noexcept:
    """Printable ASCII that JSON writes as it is (no quote, no backslash)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>s[i]
        if c < 0x20 or c > 0x7e or c == 0x22 or c == 0x5c:
            return False
    return True


cdef object _meter_row(object op, object tx):
    """``(charger id, envelope)`` of a MeterSample's event, or None when it is outside the
    plain form (see above)."""
    cdef Py_ssize_t cn, tn, wn
    cdef const char* cs
    cdef const char* ts
    cdef char* ws
    cdef int overflow = 0
    cdef long long con, us, days
    cdef double wh
    cdef char key[700]
    cdef char env[1024]
    cdef char* k
    cdef char* o
    cid = op.charger_id
    at = op.at
    c = op.connector_id
    w = op.energy_wh
    if type(cid) is not str or type(tx) is not str or type(c) is not int or type(w) is not float:
        return None
    if not PyDateTime_CheckExact(at):
        return None
    tz = datetime_tzinfo(at)
    if tz is not None and tz is not _UTC:
        return None
    wh = PyFloat_AS_DOUBLE(w)
    if not isfinite(wh):
        return None
    con = PyLong_AsLongLongAndOverflow(c, &overflow)
    if overflow:
        return None
    cs = PyUnicode_AsUTF8AndSize(cid, &cn)
    ts = PyUnicode_AsUTF8AndSize(tx, &tn)
    if cn + tn > _TEXT_MAX or not _plain(cs, cn) or not _plain(ts, tn):
        return None
    days = _days(datetime_year(at), datetime_month(at), datetime_day(at))
    us = (((days * 24 + datetime_hour(at)) * 60 + datetime_minute(at)) * 60
          + datetime_second(at)) * 1000000 + datetime_microsecond(at)
    # the id: charger, type, transaction, connector and time, joined by U+001F
    k = _put(key, cs, cn)
    k = _put_bytes(k, _K_TYPE)
    k = _put(k, ts, tn)
    k[0] = b'\x1f'
    k = _digits(k + 1, con, 1)
    k[0] = b'\x1f'
    k = _digits(k + 1, us, 1)
    # the envelope
    o = _put_bytes(env, _E_ID)
    _blake2b_hex(<const uint8_t*>key, k - key, o)
    o = _put_bytes(o + 32, _E_TIME)
    o = _digits(o, datetime_year(at), 4)
    o[0] = b'-'
    o = _digits(o + 1, datetime_month(at), 2)
    o[0] = b'-'
    o = _digits(o + 1, datetime_day(at), 2)
    o[0] = b'T'
    o = _digits(o + 1, datetime_hour(at), 2)
    o[0] = b':'
    o = _digits(o + 1, datetime_minute(at), 2)
    o[0] = b':'
    o = _digits(o + 1, datetime_second(at), 2)
    if datetime_microsecond(at):
        o[0] = b'.'
        o = _digits(o + 1, datetime_microsecond(at), 6)
    o[0] = b'Z'
    o = _put_bytes(o + 1, _E_CHARGER)
    o = _put(o, cs, cn)
    o = _put_bytes(o, _E_TX)
    o = _put(o, ts, tn)
    o = _put_bytes(o, _E_CON)
    o = _digits(o, con, 1)
    o = _put_bytes(o, _E_WH)
    k = _millis_text(o, wh)
    if k != NULL:
        o = _put_bytes(k, _E_END)
        return cid, PyBytes_FromStringAndSize(env, o - env)
    ws = PyOS_double_to_string(wh, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        wn = 0
        while ws[wn]:
            if ws[wn] == b'e':  # msgspec writes exponents its own way (1e20, not 1e+20)
                return None
            wn += 1
        o = _put(o, ws, wn)
    finally:
        PyMem_Free(ws)
    o = _put_bytes(o, _E_END)
    return cid, PyBytes_FromStringAndSize(env, o - env)


cdef list _outbox_rows(list ops, list results):
    """``Rows.outbox_rows`` (see the twin)."""
    cdef list out = []
    cdef Py_ssize_t i, n = min(len(ops), len(results))
    for i in range(n):
        op = ops[i]
        if type(op) is _Sample:
            tx = op.tx_id
            if type(tx) is str and not tx:
                continue  # a reading without a transaction reports no event
            row = _meter_row(op, tx)
            if row is not None:
                out.append(row)
                continue
        for e in _from_op(op, results[i]):
            out.append((e.charger_id, _encode_event(e)))
    return out
