"""The store's per-reading steps (``store/logrows.py`` and its compiled twin
``_logrows.pyx``): the same rows, tables, groups and errors from both."""

from __future__ import annotations

import datetime as dt
import os
import random

import msgspec
import pytest

from chargeyard.store import logrows
from chargeyard.store.base import MeterSample, StoreError, to_us
from chargeyard.store.logrows import READING_LOGS, reading_log
from tests.support import twin_modules

IMPLS = [m.Rows for m in twin_modules("chargeyard.store.logrows")]

UTC = dt.timezone.utc
TIMES = [
    dt.datetime(2026, 1, 1, tzinfo=UTC),
    dt.datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC),  # a leap day
    dt.datetime(2000, 3, 1, tzinfo=UTC),
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    dt.datetime(2026, 6, 1, 10, 30),  # naive: UTC
    dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),  # an offset
    dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(0))),  # +00:00, not the singleton
]


def test_the_compiled_twin_is_built():
    if os.environ.get("CHARGEYARD_REQUIRE_EXT", "") not in ("1", "true", "yes"):
        pytest.skip("a build without extensions may lack it (make test sets CHARGEYARD_REQUIRE_EXT=1)")
    assert len(IMPLS) == 2


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_sample_rows_convert_times_like_to_us(impl):
    run = [MeterSample(f"CP{i}", str(i), t, i + 0.5, i) for i, t in enumerate(TIMES)]
    out = [("before",)]
    impl.sample_rows(run, out)
    assert out[0] == ("before",)
    assert out[1:] == [(f"CP{i}", str(i), i, to_us(t), i + 0.5, 0) for i, t in enumerate(TIMES)]
    rng = random.Random(7)
    for _ in range(2000):
        t = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=rng.randrange(-2**55, 2**57))
        got: list = []
        impl.sample_rows([MeterSample("CP", "", t, 1.0, 1)], got)
        assert got[0][3] == to_us(t), t


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_sample_rows_refuse_what_to_us_refuses(impl):
    with pytest.raises((TypeError, AttributeError)):
        impl.sample_rows([MeterSample("CP", "", "2026-01-01", 1.0, 1)], [])  # type: ignore[arg-type]


GOOD = ("CP1", "1", 1, 10, 1.0, 0)
BAD = [
    ("CP1", "1", 1, 10, float("nan"), 0),
    ("CP1", "1", 1, 10, 1, 0),  # an int reading
    ("CP1", "1", 2**63, 10, 1.0, 0),
    ("CP1", "1", -2**63 - 1, 10, 1.0, 0),
    ("CP1", "1", 1, 2**63, 1.0, 0),
    ("CP1", "1", True, 10, 1.0, 0),  # a bool is not an int here
    ("CP1", "1", 1.0, 10, 1.0, 0),
    (b"CP1", "1", 1, 10, 1.0, 0),
    ("CP1", None, 1, 10, 1.0, 0),
]


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_checked(impl):
    impl.checked([GOOD, ("CP1", "", -2**63, 2**63 - 1, float("inf"), 2)])
    for bad in BAD:
        with pytest.raises(StoreError, match="a reading cannot be stored") as e:
            impl.checked([GOOD, bad])
        assert repr(bad) in str(e.value)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_split_and_its_cache(impl, monkeypatch):
    rows = [(f"CP{i % 97}", "1", 1, i, float(i), 0) for i in range(1000)]
    cache: dict = {}
    parts = impl.split(rows, cache, READING_LOGS, reading_log)
    assert len(parts) == READING_LOGS
    assert sorted(r for p in parts for r in p) == sorted(rows)
    for b, part in enumerate(parts):
        assert all(reading_log(r[0]) == b for r in part)
        assert part == [r for r in rows if reading_log(r[0]) == b]  # arrival order kept
    assert cache == {f"CP{i}": reading_log(f"CP{i}") for i in range(97)}
    monkeypatch.setattr(logrows, "_CACHE_MAX", 10)  # the twin reads it at call time
    if impl is logrows.Rows:
        impl.split([(f"NEW{i}", "1", 1, i, 1.0, 0) for i in range(30)], cache, READING_LOGS, reading_log)
        assert 0 < len(cache) <= 10
    with pytest.raises(UnicodeEncodeError):
        impl.split([("CP\udc80", "1", 1, 1, 1.0, 0)], {}, READING_LOGS, reading_log)


def test_the_twins_groups():
    """The twin's grouping, which its fold uses (the compiled fold groups in C and is
    compared with the twin's below)."""
    rng = random.Random(3)
    rows = [(f"CP{rng.randrange(5)}", rng.choice(["", "", "7", "8"]), rng.randrange(3), rng.randrange(50),
             float(rng.randrange(1000)), rng.choice([0, 0, 1, 2])) for _ in range(3000)]
    groups, newest = logrows.Rows.groups(rows)
    assert list(groups) == list(dict.fromkeys((r[0], r[1]) for r in rows))  # first-seen order
    for (charger, tx), g in groups.items():
        assert g == [r[2:] for r in rows if (r[0], r[1]) == (charger, tx)]
    for (charger, con), r in newest.items():
        mine = [x for x in rows if x[0] == charger and x[2] == con and not x[1] and not x[5]]
        top = max(x[3] for x in mine)
        assert r == [x for x in mine if x[3] == top][-1][:5]  # the newest by at; of equals the last


def _log_rows(rng: random.Random, n: int) -> list[tuple]:
    """Log rows with every msgpack integer width, ids of every str length class, repeated
    keys and ties: what a fold must group and summarise as the twin does."""
    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33, -128, -129,
            -32768, -32769, -2**31, -2**31 - 1, -2**63]
    ids = ["CP1", "CP2", "é-ü", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "v" * 70000]
    rows = []
    for _ in range(n):
        rows.append((rng.choice(ids), rng.choice(["", "", "7", "8" * 40]), rng.choice(ints[:6] + [rng.choice(ints)]),
                     rng.choice([rng.randrange(50), rng.choice(ints)]), rng.choice([float(rng.randrange(100)), -0.0,
                     0.0, float("inf"), float("-inf"), 1e300]), rng.choice([0, 0, 1, 2])))
    return rows


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_fold_matches_the_twin_byte_for_byte(impl):
    from chargeyard.store.logrows import chunk_summary, pack, unpack_chunk
    rng = random.Random(11)
    rows = _log_rows(rng, 3000)
    datas = []
    i = 0
    while i < len(rows):
        k = rng.choice([1, 5, 15, 16, 17, 300])
        datas.append(pack(rows[i:i + k]))
        i += k
    chunks, lasts = impl.fold(datas)
    assert (chunks, lasts) == logrows.Rows.fold(datas)
    groups, newest = logrows.Rows.groups(rows)
    assert [(c, t) for c, t, *_ in chunks] == list(groups)
    for charger, tx, summary, n, data in chunks:
        g = groups[(charger, tx)]
        assert (summary, n, unpack_chunk(data)) == (chunk_summary(g), len(g), g)
    many = [(f"CP{j % 5000}", str(j % 3), 1, j, float(j), 0) for j in range(40000)]  # 15,000 groups
    rng.shuffle(many)
    assert impl.fold([pack(many[:20000]), pack(many[20000:])]) == logrows.Rows.fold([pack(many)])
    big = [("CP9", "1", 1, j, float(j), 0) for j in range(70000)]  # a chunk past 65,535 readings
    assert impl.fold([pack(big[:30000]), pack(big[30000:])]) == logrows.Rows.fold([pack(big)])
    assert impl.fold([]) == ([], [])


NOT_LOG_ROWS = [
    b"\xc1",  # not msgpack
    msgspec.msgpack.encode([("CP1", "1", 1, 10, 1.0, 0)]) + b"\x00",  # trailing bytes
    msgspec.msgpack.encode([("CP1", "1", 1, 10, 1.0)]),  # five fields
    msgspec.msgpack.encode([("CP1", "1", 1, 10)])[:-1],  # cut short
    msgspec.msgpack.encode([("CP1", "1", 1, 10, 1, 0)]),  # an integer reading
    msgspec.msgpack.encode([("CP1", "1", 1, 2**64 - 1, 1.0, 0)]),  # beyond signed 64 bits
    msgspec.msgpack.encode([("CP1", "1", 1, 10, float("nan"), 0)]),
    msgspec.msgpack.Encoder().encode([("CP1", 1, 1, 10, 1.0, 0)]),  # a tx that is not text
    b"\x91\x96\xa2\xff\xfe\xa1\x31\x01\x0a\xcb" + b"\x3f\xf0" + b"\x00" * 6 + b"\x00",  # ids not UTF-8
    b"\x91\x96\xa3CP1\xa11\x01\x0a\xca\x3f\x80\x00\x00\x00",  # a 32-bit float
]


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
@pytest.mark.parametrize("data", NOT_LOG_ROWS, ids=range(len(NOT_LOG_ROWS)))
def test_fold_of_what_is_not_a_log_row(impl, data):
    """The compiled fold returns None (its caller then asks the twin); the twin decodes as
    the log's decoder does: it raises, or, for what the decoder accepts (a 32-bit float, an
    integer reading, a NaN), folds it."""
    good = msgspec.msgpack.encode([("CP1", "1", 1, 10, 1.0, 0)])
    try:
        want = repr(logrows.Rows.fold([good, data]))  # repr: a NaN equals itself
    except (msgspec.DecodeError, UnicodeDecodeError):
        want = None
    if impl is not logrows.Rows:
        assert impl.fold([good, data]) is None
    elif want is None:
        with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)):
            impl.fold([good, data])
    else:
        assert repr(impl.fold([good, data])) == want


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_split_packed_matches_the_twin_byte_for_byte(impl):
    from chargeyard.store.logrows import pack, unpack_log
    rng = random.Random(5)
    rows = _log_rows(rng, 3000) + [(f"CP{i}-ß€😀", "1", 1, i, 1.0, 0) for i in range(200)]
    rng.shuffle(rows)
    datas = [pack(rows[i:i + 77]) for i in range(0, len(rows), 77)]
    parts = impl.split_packed(datas, READING_LOGS, reading_log)
    assert parts == logrows.Rows.split_packed(datas, READING_LOGS, reading_log)
    assert [b for b, _, _ in parts] == sorted({reading_log(r[0]) for r in rows})
    for b, n, data in parts:
        assert unpack_log(data) == [r for r in rows if reading_log(r[0]) == b] and n == len(unpack_log(data))
    assert impl.split_packed([], READING_LOGS, reading_log) == []
    if impl is not logrows.Rows:  # the compiled one hashes as reading_log does, and only that
        assert impl.split_packed(datas, 7, lambda c: 0) is None


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
@pytest.mark.parametrize("data", NOT_LOG_ROWS + [b"\x91\x96\xa3\xed\xa0\x80\xa11\x01\x0a\xcb" + b"\x00" * 8 + b"\x00"],
                         ids=range(len(NOT_LOG_ROWS) + 1))
def test_split_packed_of_what_is_not_a_log_row(impl, data):
    """As for the fold: None from the compiled one, the decoder's answer from the twin (the
    last case: a surrogate's UTF-8 bytes, which strict UTF-8 refuses)."""
    good = msgspec.msgpack.encode([("CP1", "1", 1, 10, 1.0, 0)])
    try:
        want = repr(logrows.Rows.split_packed([good, data], READING_LOGS, reading_log))
    except (msgspec.DecodeError, UnicodeDecodeError):
        want = None
    if impl is not logrows.Rows:
        assert impl.split_packed([good, data], READING_LOGS, reading_log) is None
    elif want is None:
        with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)):
            impl.split_packed([good, data], READING_LOGS, reading_log)
    else:
        assert repr(impl.split_packed([good, data], READING_LOGS, reading_log)) == want


def test_split_packed_reads_ids_as_strict_utf8():
    """The compiled move checks ids' UTF-8 itself: it must refuse exactly what Python's
    strict decoder refuses (overlongs, surrogates, beyond U+10FFFF, cut sequences)."""
    if len(IMPLS) < 2:
        pytest.skip("the pure-Python build")
    crows = IMPLS[1]
    rng = random.Random(9)
    pool = [0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
            0x90, 0x9F, 0xA0, 0x8F]
    for _ in range(20000):
        raw = bytes(rng.choice(pool) for _ in range(rng.randrange(1, 6)))
        row = b"\x91\x96" + bytes([0xA0 | len(raw)]) + raw + b"\xa11\x01\x0a\xcb" + b"\x00" * 8 + b"\x00"
        try:
            raw.decode("utf-8")
            ok = True
        except UnicodeDecodeError:
            ok = False
        got = crows.split_packed([row], READING_LOGS, reading_log)
        assert (got is not None) == ok, raw


@pytest.mark.parametrize("impl", IMPLS, ids=lambda c: c.impl)
def test_run_end(impl):
    ops = [1, 2, "a", "b", "c", 3.0, 4]
    assert [impl.run_end(ops, i) for i in range(len(ops))] == [2, 2, 5, 5, 5, 6, 7]
