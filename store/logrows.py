"""The readings' rows: their packed format, and the per-reading steps on them.

A log row is ``(charger_id, tx_id, connector_id, at, energy_wh, kind)``: ``at`` in integer
microseconds since the epoch, ``kind`` 0 for a MeterSample, 1 for a TransactionEvent's
reading, 2 for an Ended event's (a closing reading). The log tables and the inbox hold them
packed, many to a row (``pack``: msgpack of a list of log rows, in arrival order); a chunk
(``meter_chunks.data``) holds a transaction's readings as ``(connector_id, at, energy_wh,
kind)``, packed the same way. ``READING_LOGS`` tables hold the log, a charger's in
``reading_log(charger_id)``.

The per-reading steps: building a batch's log rows, checking them, splitting them by log
table (a move of packed inbox rows: ``split_packed``), and turning a log table's packed rows
into chunks (a fold: ``fold``), and encoding a committed batch's events for the outbox
(``outbox_rows``: ``store/outbox_encoding.py``'s ``encoded``). A saturated worker runs them for every reading, so
``_logrows.pyx`` is the same code compiled (same results, same errors); this module is its
pure-Python twin, chosen by ``core.twins.load("chargeyard.store.logrows")``.

Log rows, chunks and their summaries stay tuples: the compiled steps build them in C, one
per reading or chunk, and msgpack packs a tuple as the array the format wants. Their first
Python reader unpacks them into named variables (``sqlite/readings.py``, ``apply_fold``).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import msgspec

from .base import StoreError, to_us
from .events import encoded_python

__all__ = ["READING_LOGS", "Rows", "chunk_summary", "pack", "reading_log", "table", "unpack_chunk",
           "unpack_log"]

READING_LOGS = 64  # tables the reading log is split into (schema version 5)


def reading_log(charger_id: str) -> int:
    """The reading log table of a charger: the same in every process (CRC-32, not ``hash``)."""
    return zlib.crc32(charger_id.encode()) % READING_LOGS


pack = msgspec.msgpack.Encoder().encode
unpack_log = msgspec.msgpack.Decoder(list[tuple[str, str, int, int, float, int]]).decode
unpack_chunk = msgspec.msgpack.Decoder(list[tuple[int, int, float, int]]).decode


def chunk_summary(rows: list) -> tuple:
    """(lowest not closing or None, highest, and the newest's at, connector and reading) of a
    chunk's [connector, at, wh, kind] rows: newest by at, then the lowest connector; of a
    repeated key, the last reading."""
    cons, ats, whs, kinds = zip(*rows)
    high = max(whs)
    if 2 in kinds:
        lows = [w for w, k in zip(whs, kinds) if k != 2]
        low = min(lows) if lows else None
    else:
        low = min(whs)
    at = max(ats)
    if ats.count(at) == 1:
        i = ats.index(at)
    else:
        con = min(c for c, a in zip(cons, ats) if a == at)
        i = max(j for j, (c, a) in enumerate(zip(cons, ats)) if a == at and c == con)
    return low, high, at, cons[i], whs[i]


_I64 = 2**63
_CACHE_MAX = 200_000  # charger ids whose log table is remembered


def table(charger: str, cache: dict, table_of: Callable[[str], int]) -> int:
    """A charger's log table (``table_of``), remembered in ``cache``, which is cleared when
    it holds too many."""
    b = cache.get(charger)
    if b is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        b = cache[charger] = table_of(charger)
    return b


def _bad(row: Any) -> StoreError:
    return StoreError(f"sqlite: bad operation: a reading cannot be stored: {row!r}")


class Rows:
    """The per-reading steps, as static functions (the compiled class has the same)."""

    impl = "python"

    @staticmethod
    def sample_rows(run: list, out: list) -> None:
        """Append the log rows of a run of MeterSample ops to ``out``."""
        out += [(o.charger_id, o.tx_id, o.connector_id, to_us(o.at), float(o.energy_wh), 0) for o in run]

    @staticmethod
    def checked(rows: list) -> None:
        """Refuse (StoreError) a batch's log rows when one holds what a reading cannot be: a
        NaN reading, an integer beyond 64 bits, another type (text that is not UTF-8 fails
        when packed). The batch then fails in its own transaction, and the writer isolates
        the op; packed, it would fail every fold."""
        for row in rows:
            charger, tx, connector, at, wh, _ = row
            if (type(wh) is not float or wh != wh or type(connector) is not int or type(at) is not int
                    or not -_I64 <= connector < _I64 or not -_I64 <= at < _I64
                    or type(charger) is not str or type(tx) is not str):
                raise _bad(row)

    @staticmethod
    def split(rows: list, cache: dict, n: int, table_of: Callable[[str], int]) -> list[list]:
        """``rows`` by log table (``n`` lists, in order), each charger's through ``table``."""
        parts: list[list] = [[] for _ in range(n)]
        for r in rows:
            parts[table(r[0], cache, table_of)].append(r)
        return parts

    @staticmethod
    def groups(rows: list) -> tuple[dict, dict]:
        """A fold's rows grouped: ({(charger, tx): [(connector, at, wh, kind), ...]} in
        order, {(charger, connector): the newest reading (charger, tx, connector, at, wh)
        of the samples without a transaction, by at, of equals the last})."""
        groups: dict[tuple[str, str], list] = {}
        newest: dict[tuple[str, int], tuple] = {}
        for r in rows:
            key = r[0], r[1]
            g = groups.get(key)
            if g is None:
                groups[key] = [r[2:]]
            else:
                g.append(r[2:])
            if not r[1] and not r[5]:
                k = r[0], r[2]
                had = newest.get(k)
                if had is None or r[3] >= had[3]:
                    newest[k] = r[:5]
        return groups, newest

    @staticmethod
    def run_end(ops: list, i: int) -> int:
        """The end of the run of ops of ``ops[i]``'s type from ``i`` on."""
        j, n, t = i + 1, len(ops), type(ops[i])
        while j < n and type(ops[j]) is t:
            j += 1
        return j

    @staticmethod
    def fold(datas: list[bytes]) -> tuple[list, list] | None:
        """A fold's plan from a log table's packed rows (``datas``, in order): its chunks,
        ``[(charger, tx, chunk_summary, readings, packed), ...]`` in first-seen order, and
        the newest reading per connector of the samples without a transaction, ``[(charger,
        connector, at, wh), ...]``. Raises msgspec.DecodeError (UnicodeDecodeError for text
        that is not UTF-8) on a row that is not a log row; the compiled twin returns None
        instead, for the caller to come here."""
        rows: list = []
        for data in datas:
            rows += unpack_log(data)
        groups, newest = Rows.groups(rows)
        return ([(charger, tx, chunk_summary(g), len(g), pack(g)) for (charger, tx), g in groups.items()],
                [(c, con, at, wh) for c, _, con, at, wh in newest.values()])

    @staticmethod
    def outbox_rows(ops: list, results: list) -> list[tuple[str, bytes]]:
        """``(charger id, encoded envelope)`` of every event of a committed batch, in op order
        (``store.outbox_encoding.encoded``: the same bytes as ``encode`` of ``from_op``'s events)."""
        return encoded_python(ops, results)

    @staticmethod
    def split_packed(datas: list[bytes], n: int, table_of: Callable[[str], int]) -> list | None:
        """A move's rows: the log rows packed in ``datas`` (in order), split by log table
        (``table_of``, ``n`` tables), as ``[(table, readings, packed), ...]`` by table, each
        table's in order. Raises as ``fold`` does; the compiled twin returns None instead (also
        for a ``table_of`` other than ``reading_log``)."""
        rows: list = []
        for data in datas:
            rows += unpack_log(data)
        parts = Rows.split(rows, {}, n, table_of)
        return [(b, len(part), pack(part)) for b, part in enumerate(parts) if part]
