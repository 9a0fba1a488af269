# cython: language_level=3
"""``logrows.py`` compiled: the store's per-reading steps, with the same results and errors
(the twin's docstrings hold). Times: a datetime whose tzinfo is None or UTC is converted in
C; any other value goes through ``base.to_us``, as in the twin."""

from cpython.datetime cimport (import_datetime, datetime_tzinfo, datetime_year, datetime_month,
                               datetime_day, datetime_hour, datetime_minute, datetime_second,
                               datetime_microsecond, PyDateTime_CheckExact)
from cpython.long cimport PyLong_AsLongLongAndOverflow

import datetime as _dt

from .base import to_us as _py_to_us
from .logrows import _bad, _CACHE_MAX

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
    def groups(list rows):
        cdef dict groups = {}
        cdef dict newest = {}
        cdef tuple r, key, had
        cdef object g
        for r in rows:
            key = (r[0], r[1])
            g = groups.get(key)
            if g is None:
                groups[key] = [r[2:]]
            else:
                (<list>g).append(r[2:])
            if not r[1] and not r[5]:
                k = (r[0], r[2])
                h = newest.get(k)
                if h is None or r[3] >= (<tuple>h)[3]:
                    newest[k] = r[:5]
        return groups, newest
