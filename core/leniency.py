"""Opt-in repairs for quirky chargers, tried only after the strict decode failed.

    struct, used = relax(tables, "MeterValues", payload_bytes, {"numeric_strings"})

``rules`` names the repairs allowed for this charger (:data:`RULES`):

``unknown_fields``      drop fields the schema does not know where it forbids extra fields
``numeric_strings``     ``"12"`` / ``"1.5"`` where the schema wants a number -> the number
``enum_case``           ``"accepted"`` -> ``"Accepted"`` (the schema's spelling, if unique)
``missing_timestamps``  a missing *required* date-time -> now, UTC
``naive_timestamps``    a date-time without offset (``2024-05-01T10:00:00``) -> read as UTC

The repairs are generic: they walk the payload along the generated message type
(``msgspec.inspect``), so every action of every version gets them. The repaired payload
is decoded again by the strict decoder (:meth:`Tables.decode_payload`), so whatever comes
out satisfies the schema; if it still does not, :class:`PayloadError` is raised (with the
strict code for what is left). ``used`` lists, in :data:`RULES` order, the rules that
changed something, for logging and metrics.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import msgspec
import msgspec.inspect as mi

from .framing import PayloadError, Tables

RULES = ("unknown_fields", "numeric_strings", "enum_case", "missing_timestamps", "naive_timestamps")

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?")
_INFO: dict[type, Any] = {}


def _info(typ: type) -> Any:
    try:
        return _INFO[typ]
    except KeyError:
        info = _INFO[typ] = mi.type_info(typ)
        return info


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class _Repair:
    def __init__(self, rules: frozenset[str], now: str) -> None:
        self.rules = rules
        self.now = now
        self.used: set[str] = set()

    def value(self, t: Any, v: Any) -> Any:
        """``v`` repaired for type ``t`` (a msgspec.inspect type)."""
        if isinstance(t, mi.UnionType):
            real = [x for x in t.types if not isinstance(x, mi.UnsetType)]
            return self.value(real[0], v) if len(real) == 1 else v
        if isinstance(t, mi.StructType):
            return self.struct(t, v) if isinstance(v, dict) else v
        if isinstance(t, mi.ListType):
            return [self.value(t.item_type, x) for x in v] if isinstance(v, list) else v
        if not isinstance(v, str):
            return v
        if isinstance(t, (mi.IntType, mi.FloatType)) and "numeric_strings" in self.rules:
            s = v.strip()
            if len(s) <= 400 and _NUMBER.fullmatch(s):
                num: float | int
                if s.lstrip("-").isdigit():
                    num = int(s)
                else:
                    num = float(s)
                    if isinstance(t, mi.IntType) and num.is_integer():
                        num = int(num)  # "3.0" for an integer field
                self.used.add("numeric_strings")
                return num
            return v
        if isinstance(t, mi.LiteralType) and "enum_case" in self.rules and v not in t.values:
            folded = v.strip().casefold()
            hits = [x for x in t.values if isinstance(x, str) and x.casefold() == folded]
            if len(hits) == 1:
                self.used.add("enum_case")
                return hits[0]
            return v
        if isinstance(t, mi.DateTimeType) and "naive_timestamps" in self.rules and _NAIVE.fullmatch(v.strip()):
            s = v.strip()
            self.used.add("naive_timestamps")
            return s[:10] + "T" + s[11:] + "Z"
        return v

    def struct(self, t: mi.StructType, obj: dict) -> dict:
        fields = {f.encode_name: f for f in t.fields}
        out = {}
        for k, v in obj.items():
            f = fields.get(k)
            if f is None:
                if t.forbid_unknown_fields and "unknown_fields" in self.rules:
                    self.used.add("unknown_fields")
                    continue
                out[k] = v
            else:
                out[k] = self.value(f.type, v)
        if "missing_timestamps" in self.rules:
            for f in t.fields:
                if f.required and f.encode_name not in out and isinstance(f.type, mi.DateTimeType):
                    out[f.encode_name] = self.now
                    self.used.add("missing_timestamps")
        return out


def relax(tables: Tables, action: str, payload_bytes: bytes, rules: set[str] | frozenset[str],
          *, kind: str = "request", now: datetime.datetime | None = None) -> tuple[Any, list[str]]:
    """Repair a payload the strict decoder rejected; returns (struct, rules used).

    Raises :class:`PayloadError` if the repaired payload is still invalid (or the input
    is not a JSON object, or ``action`` is unknown), and ValueError for an unknown rule.
    """
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValueError(f"unknown leniency rules: {sorted(unknown)}")
    table = tables.request_decoders if kind == "request" else tables.response_decoders
    dec = table.get(action)
    if dec is None:
        raise PayloadError(tables.codes["not_implemented"], f"unknown action {action!r}", "not_implemented")
    try:
        obj = msgspec.json.decode(payload_bytes)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict) or not rules:
        return tables.decode_payload(action, kind, payload_bytes), []  # raises the strict error
    if now is None:
        stamp = _utc_now()
    else:
        stamp = now.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    rep = _Repair(frozenset(rules), stamp)
    fixed = rep.struct(_info(dec.type), obj)
    struct = tables.decode_payload(action, kind, msgspec.json.encode(fixed))
    return struct, [r for r in RULES if r in rep.used]


__all__ = ["RULES", "relax"]
