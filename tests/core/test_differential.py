"""Differential validation: our decoders against ``jsonschema`` on generated payloads.

A small seeded generator reads each official schema and writes, for every action of
every version, request and response alike, ``N_VALID`` payloads meant to be valid and
``N_INVALID`` payloads that each break exactly one constraint (missing required, wrong
JSON type, enum, maxLength, minimum/maximum, minItems/maxItems, unknown field where
``additionalProperties`` is false, date-time, multipleOf; at any depth, including
objects inside arrays). Each payload is judged by the reference validator
(Draft4/Draft6 per ``$schema``, ``FormatChecker`` with ``rfc3339-validator``) and by us:
``Tables.decode_payload`` and, through both codecs, the full frame in the right
direction (``[2,id,action,payload]`` for requests, ``[3,id,payload]`` then
``decode_result`` for responses, ``[6,...]`` for 2.1 SEND). The verdicts must agree,
the CALLERROR code must be the version's code for the broken constraint, and both
codecs must answer like ``decode_payload``.
"""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator, Draft6Validator, FormatChecker

from chargeyard.core import Call, CallResult, FrameError, PayloadError, Send, Tables
from chargeyard.core.directions import CHARGER_INITIATED
from chargeyard.core.framing import MODULES

TOTALS = {"versions": 0, "payloads": 0, "disagreements": 0}
N_VALID = 200
N_INVALID = 200
SCHEMAS = Path(__import__("chargeyard.core", fromlist=["x"]).__file__).parent / "schemas"
VDIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}
FORMAT_CHECKER = FormatChecker()

# Characters strings are built from: mostly ASCII, some that need escaping, some
# outside the BMP (one code point each, two UTF-16 units when escaped).
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .:/"
SPECIAL = ['"', "\\", "\n", "\t", "\x00", "\x1f", "é", "ß", "€", "\u2028", "日", "😀", "𝄞"]
BAD_DATETIMES = [
    "2024-01-01 10:00:00Z", "2024-01-01T10:00:00+0100", "2024-01-01T10:00:00-0530",
    "2024-01-01T10:00:00", "2024-01-01T10:00:00.5", "2024-13-01T10:00:00Z",
    "2023-02-29T10:00:00Z", "2024-04-31T10:00:00Z", "2024-01-01T24:00:00Z",
    "2024-01-01T10:60:00Z", "2024-01-01T10:00:60Z", "2024-01-01T10:00:00+24:00",
    "2024-01-01T10:00:00+01", "2024-01-01", "10:00:00Z", "2024-01-01T10:00Z",
    "0000-01-01T00:00:00Z", "2024-1-01T10:00:00Z", "2024-01-01T10:00:00.Z",
    "2024-01-01T10:00:00,5Z", "", "now", "2024-01-01 10:00:00+01:00", "2024-01-01_10:00:00Z",
    "2024-01-01T10:00:00 Z", " 2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z ",
    "２０２４-01-01T10:00:00Z", "2024-01-01T10:00:00+01:00:00", "20240101T100000Z",
]


def schema_files(version: str):
    """(action, kind, path) for every schema of a version, from the generated registry."""
    mod = MODULES[version]
    for (action, kind), name in sorted(mod.SCHEMA_FILES.items()):
        yield action, kind, SCHEMAS / VDIRS[version] / name


class Gen:
    """Valid and single-fault payloads for one schema."""

    def __init__(self, root: dict, rng: Any, draft6: bool) -> None:
        self.root = root
        self.rng = rng
        self.draft6 = draft6

    def res(self, s: dict) -> dict:
        while "$ref" in s:
            s = self.root["definitions"][s["$ref"].split("/")[-1]]
        return s

    # -- valid ------------------------------------------------------------------------
    def valid(self, s: dict, depth: int = 0) -> Any:
        s = self.res(s)
        rng = self.rng
        t = s.get("type")
        if t == "object":
            out = {}
            req = set(s.get("required", ()))
            p_opt = 0.6 if depth < 3 else 0.3
            for name, sub in s.get("properties", {}).items():
                if name in req or rng.random() < p_opt:
                    out[name] = self.valid(sub, depth + 1)
            if s.get("additionalProperties", True) is not False and rng.random() < 0.15:
                out["vendorExtension"] = self.anything(depth + 1)
            return out
        if t == "array":
            lo = s.get("minItems", 0)
            hi = min(s.get("maxItems", lo + 3), lo + (3 if depth < 3 else 1))
            return [self.valid(s["items"], depth + 1) for _ in range(rng.randint(lo, hi))]
        if t == "string":
            if "enum" in s:
                return rng.choice(s["enum"])
            if s.get("format") == "date-time":
                return self.datetime()
            return self.string(0, s.get("maxLength"))
        if t == "integer":
            v = self.integer(s)
            if self.draft6 and abs(v) < 2**53 and rng.random() < 0.1:
                return float(v)  # draft-06: 3.0 is an integer
            return v
        if t == "number":
            return self.number(s)
        if t == "boolean":
            return rng.random() < 0.5
        return self.anything(depth + 1)

    def string(self, lo: int, ml: int | None) -> str:
        rng = self.rng
        cap = ml if ml is not None else 40
        r = rng.random()
        if ml is not None and r < 0.15:
            n = ml  # right at the limit
        elif r < 0.25:
            n = 0
        else:
            n = rng.randint(lo, max(lo, min(cap, 24)))
        n = max(n, lo)
        if rng.random() < 0.7:
            return "".join(rng.choice(ASCII) for _ in range(n)) if n < 200 else "x" * n
        return "".join(rng.choice(SPECIAL) if rng.random() < 0.3 else rng.choice(ASCII)
                       for _ in range(n))

    def datetime(self) -> str:
        rng = self.rng
        y = rng.choice([rng.randint(1970, 2038), rng.randint(1, 9999), 2024, 2000, 1900])
        m = rng.randint(1, 12)
        d = rng.choice([1, calendar.monthrange(y, m)[1], rng.randint(1, calendar.monthrange(y, m)[1])])
        hh, mm, ss = rng.randint(0, 23), rng.randint(0, 59), rng.choice([0, 59, rng.randint(0, 59)])
        frac = "" if rng.random() < 0.5 else "." + "".join(rng.choice("0123456789")
                                                           for _ in range(rng.randint(1, 9)))
        sep = "T" if rng.random() < 0.9 else "t"
        r = rng.random()
        if r < 0.4:
            tz = "Z"
        elif r < 0.45:
            tz = "z"
        elif r < 0.5:
            tz = "-00:00"
        else:
            tz = f"{rng.choice('+-')}{rng.randint(0, 23):02d}:{rng.choice([0, 30, 45, 59]):02d}"
        if y in (1, 9999) and tz not in ("Z", "z", "-00:00"):
            tz = "Z"  # keep the instant inside datetime's range
        return f"{y:04d}-{m:02d}-{d:02d}{sep}{hh:02d}:{mm:02d}:{ss:02d}{frac}{tz}"

    def integer(self, s: dict) -> int:
        rng = self.rng
        lo, hi = s.get("minimum"), s.get("maximum")
        lo_i = int(lo) if lo is not None else None
        hi_i = int(hi) if hi is not None else None
        cands = [c for c in (lo_i, hi_i) if c is not None]
        a = lo_i if lo_i is not None else -1000
        b = hi_i if hi_i is not None else max(a, 0) + 100000
        cands += [rng.randint(a, b), rng.randint(a, min(b, a + 10))]
        if lo_i is None or lo_i <= 0:
            cands += [0]
        if hi_i is None:
            cands += [2**31 - 1, 2**53, 2**64 + 1, 10**30]
        return rng.choice(cands)

    def number(self, s: dict) -> float | int:
        rng = self.rng
        lo, hi = s.get("minimum"), s.get("maximum")
        a = lo if lo is not None else -1e6
        b = hi if hi is not None else 1e6
        step = s.get("multipleOf")
        for _ in range(20):
            r = rng.random()
            if r < 0.3:
                v: float | int = rng.randint(int(-(-a // 1)), int(b // 1)) if b - a >= 1 else a
            elif r < 0.4:
                v = rng.choice([x for x in (lo, hi) if x is not None] or [0.5])
            elif r < 0.7:
                v = round(rng.uniform(a, b), rng.randint(0, 3))
            else:
                v = rng.uniform(a, b)
            if not (a <= v <= b):
                continue
            if step is None or (lambda q: int(q) == q)(v / step):
                return v
        return max(int(-(-a // 1)), 0) if b >= 0 else int(b)

    def anything(self, depth: int) -> Any:
        rng = self.rng
        r = rng.random()
        if depth > 4 or r < 0.6:
            return rng.choice([0, -7, 2.5, "x", "", True, False, None, 10**20])
        if r < 0.8:
            return [self.anything(depth + 1) for _ in range(rng.randint(0, 3))]
        return {self.string(1, 8): self.anything(depth + 1) for _ in range(rng.randint(0, 3))}

    # -- one fault --------------------------------------------------------------------
    WRONG = {
        "string": [123, True, None, {}, [], 1.5],
        "integer": ["12", True, None, 1.5, {}, [], -0.5],
        "number": ["1.5", False, None, {}, [], "0"],
        "boolean": ["true", 1, None, 0, "false"],
        "object": ["x", 1, [], None, True],
        "array": [{}, "x", 1, None],
    }

    def sites(self, s: dict, holder: Any, key: Any, out: list, top: bool = False) -> None:
        """Every single-fault mutation of ``holder[key]`` and below: (kind, apply)."""
        s = self.res(s)
        rng = self.rng
        value = holder[key]
        t = s.get("type")

        def put(new: Any) -> Any:
            return lambda: holder.__setitem__(key, new)

        if t in self.WRONG:
            out.append(("format" if top else "type", put(rng.choice(self.WRONG[t]))))
        if t == "string":
            if "enum" in s:
                alt = [v for v in (value.lower(), value.upper(), value + "x", "Bogus", "")
                       if v not in s["enum"]]
                out.append(("property", put(rng.choice(alt))))
            elif s.get("format") == "date-time":
                out.append(("property", put(rng.choice(BAD_DATETIMES))))
            if "maxLength" in s:
                ml = s["maxLength"]
                out.append(("property", put(self.string(ml + 1, ml + rng.randint(1, 3)))))
        elif t in ("integer", "number"):
            step = s.get("multipleOf")
            if "minimum" in s:
                below = s["minimum"] - (1 if t == "integer" or step else rng.choice([1, 0.5, 1e-9]))
                out.append(("property", put(below)))
            if "maximum" in s:
                above = s["maximum"] + (1 if t == "integer" or step else rng.choice([1, 0.5, 1e-9]))
                out.append(("property", put(above)))
            if step is not None:
                out.append(("property", put(rng.choice([step / 2, step * 7 + step / 2, 0.3, 2.05]))))
        elif t == "array":
            lo, hi = s.get("minItems"), s.get("maxItems")
            if lo:
                out.append(("occurrence", lambda: holder.__setitem__(key, value[: lo - 1])))
            if hi is not None:
                def grow() -> None:
                    while len(value) <= hi:
                        value.append(self.valid(s["items"], 5))
                out.append(("occurrence", grow))
            for i in range(len(value)):
                self.sites(s["items"], value, i, out)
        elif t == "object" and isinstance(value, dict):
            props = s.get("properties", {})
            for name in s.get("required", ()):
                if name in value:
                    out.append(("occurrence", lambda name=name: value.pop(name)))
            if s.get("additionalProperties", True) is False:
                extra = rng.choice(["unknownField", "x", "idtag", "ChargePointVendor", "_"])
                if extra not in props:
                    out.append(("format", lambda extra=extra: value.__setitem__(extra, 1)))
            for name, sub in props.items():
                if name in value:
                    self.sites(sub, value, name, out)

    def invalid(self, schema: dict) -> tuple[str, Any]:
        holder = [self.valid(schema)]
        out: list = []
        self.sites(schema, holder, 0, out, top=True)
        kind, apply = self.rng.choice(out)
        apply()
        return kind, holder[0]


def encode(obj: Any, rng: Any) -> bytes:
    seps = (",", ":") if rng.random() < 0.8 else (", ", ": ")
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3, separators=seps).encode()


def verdict(fn) -> str:
    """'ok' or the CALLERROR code."""
    try:
        fn()
    except PayloadError as exc:
        return exc.code
    return "ok"


def frame_verdict(frame: Any, want_type: type) -> str:
    if isinstance(frame, FrameError):
        return frame.code
    assert isinstance(frame, want_type), frame
    return "ok"


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_differential(version: str, rng, capsys) -> None:
    from .conftest import CCodec, PyCodec

    impls = [PyCodec] + ([CCodec] if CCodec is not None else [])
    tables = Tables(version)
    codes = tables.codes
    charger_side = CHARGER_INITIATED[version]
    codecs = {role: [impl(version, role) for impl in impls] for role in ("csms", "charger")}
    counts = {"valid": 0, "invalid": 0, "schemas": 0, "generator_misses": 0}
    problems: list[str] = []
    t0 = time.perf_counter()

    def report(what: str, action: str, kind: str, raw: bytes) -> None:
        problems.append(f"{what}: {action} {kind} {raw[:300]!r}")

    for action, kind, path in schema_files(version):
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
        cls = Draft4Validator if "draft-04" in schema.get("$schema", "") else Draft6Validator
        ref = cls(schema, format_checker=FORMAT_CHECKER)
        gen = Gen(schema, rng, version != "1.6")
        role = "csms" if action in charger_side else "charger"
        counts["schemas"] += 1
        n_ok = n_bad = 0
        attempts = 0
        while (n_ok < N_VALID or n_bad < N_INVALID) and attempts < 4 * (N_VALID + N_INVALID):
            attempts += 1
            want_bad = n_ok >= N_VALID or (n_bad < N_INVALID and attempts % 2 == 0)
            if want_bad:
                fault, obj = gen.invalid(schema)
            else:
                fault, obj = None, gen.valid(schema)
            raw = encode(obj, rng)
            ref_ok = ref.is_valid(json.loads(raw))
            if ref_ok == (fault is not None):
                counts["generator_misses"] += 1  # the generator's intent is not the verdict
            ours = verdict(lambda: tables.decode_payload(action, kind, raw))
            if (ours == "ok") != ref_ok:
                report(f"verdict ours={ours} jsonschema={'valid' if ref_ok else 'invalid'}",
                       action, kind, raw)
            elif fault is not None and not ref_ok and ours != codes[fault]:
                report(f"code {ours}, expected {codes[fault]} ({fault})", action, kind, raw)
            # the same payload through both codecs, framed for the right direction
            for codec in codecs[role]:
                if kind == "request":
                    frames = [(b'[2,"m-1","%s",%s]' % (action.encode(), raw), Call)]
                    if version == "2.1" and action == "NotifyPeriodicEventStream":
                        frames.append((b'[6,"m-1","%s",%s]' % (action.encode(), raw), Send))
                    for data, want in frames:
                        got = frame_verdict(codec.decode(data), want)
                        if got != ours:
                            report(f"{codec.impl} frame says {got}, decode_payload {ours}",
                                   action, kind, data)
                else:
                    res = codec.decode(b'[3,"m-1",%s]' % raw)
                    if isinstance(res, CallResult):
                        got = verdict(lambda: codec.decode_result(action, res.payload))
                    else:
                        got = frame_verdict(res, CallResult)
                    if got != ours:
                        report(f"{codec.impl} result says {got}, decode_payload {ours}",
                               action, kind, raw)
            if ref_ok:
                n_ok += 1
            else:
                n_bad += 1
        counts["valid"] += n_ok
        counts["invalid"] += n_bad
        assert n_ok >= N_VALID and n_bad >= N_INVALID, (action, kind, n_ok, n_bad, rng)

    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[differential {version}] {counts['schemas']} schemas, "
              f"{counts['valid'] + counts['invalid']} payloads ({counts['valid']} valid, "
              f"{counts['invalid']} invalid), {counts['generator_misses']} generator misses, "
              f"{len(problems)} disagreements, {elapsed:.1f}s, {rng!r}")
        TOTALS["versions"] += 1
        TOTALS["payloads"] += counts["valid"] + counts["invalid"]
        TOTALS["disagreements"] += len(problems)
        print(f"[differential total] {TOTALS['versions']} versions so far: {TOTALS['payloads']} payloads, "
              f"{TOTALS['disagreements']} disagreements")
    assert not problems, f"{len(problems)} disagreements with {rng!r}:\n" + "\n".join(problems[:25])
