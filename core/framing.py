"""OCPP-J frames, CALLERROR codes per version and the precise classification of bad input.

Shared by the compiled codec (``_codec.pyx``) and its pure-Python twin
(``codec.py``): the fast path of both only recognises well-formed frames; every
other input goes through :func:`classify`, which is written once, here, so both
implementations answer bad input identically.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .checks import bad_datetime, datetime_plan, dt_suspect
from .directions import BOTH_WAYS, CHARGER_INITIATED
from .messages import v16, v21, v201

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6
MAX_MESSAGE_ID = 36
UNREADABLE_ID = "-1"

MODULES = {"1.6": v16, "2.0.1": v201, "2.1": v21}
SUBPROTOCOLS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}

# Our name for a failure -> the code each version uses for it.
_CODES_16 = {
    "frame": "FormationViolation",        # not an OCPP-J array of the right shape
    "message_type": "FormationViolation",  # 1.6 has no MessageTypeNotSupported
    "format": "FormationViolation",        # payload not an object, unknown field
    "type": "TypeConstraintViolation",
    "occurrence": "OccurenceConstraintViolation",  # sic, the 1.6 spelling
    "property": "PropertyConstraintViolation",
    "not_implemented": "NotImplemented",
    "not_supported": "NotSupported",
    "internal": "InternalError",
    "generic": "GenericError",
}
_CODES_201 = {
    "frame": "RpcFrameworkError",
    "message_type": "MessageTypeNotSupported",
    "format": "FormatViolation",
    "type": "TypeConstraintViolation",
    "occurrence": "OccurrenceConstraintViolation",
    "property": "PropertyConstraintViolation",
    "not_implemented": "NotImplemented",
    "not_supported": "NotSupported",
    "internal": "InternalError",
    "generic": "GenericError",
}
ERROR_CODES = {"1.6": _CODES_16, "2.0.1": _CODES_201, "2.1": _CODES_201}
#: Every code a version may put in a CALLERROR.
VALID_ERROR_CODES = {
    "1.6": frozenset(_CODES_16.values()) | {"ProtocolError", "SecurityError"},
    "2.0.1": frozenset(_CODES_201.values()) | {"ProtocolError", "SecurityError", "FormationViolation",
                                               "OccurenceConstraintViolation"},
    "2.1": frozenset(_CODES_201.values()) | {"ProtocolError", "SecurityError"},
}


class Call(msgspec.Struct, gc=False):
    """A request: ``[2, id, action, payload]``; ``payload`` is the validated Struct."""
    message_id: str
    action: str
    payload: Any


class Send(msgspec.Struct, gc=False):
    """OCPP 2.1 unconfirmed message ``[6, id, action, payload]``; never answered."""
    message_id: str
    action: str
    payload: Any


class CallResult(msgspec.Struct, gc=False):
    """``[3, id, payload]``; the payload stays raw until the pending call says its action."""
    message_id: str
    payload: msgspec.Raw


class CallError(msgspec.Struct, gc=False):
    """``[4, id, code, description, details]`` (and 2.1 ``[5, ...]`` CALLRESULTERROR)."""
    message_id: str
    code: str
    description: str
    details: Any
    result_error: bool = False


class FrameError(msgspec.Struct, gc=False):
    """Input that is not a valid message. ``reply`` says whether a CALLERROR must be sent
    (only for CALLs: OCPP never answers a broken reply with an error)."""
    message_id: str
    code: str
    description: str
    action: str | None = None
    reply: bool = True
    message_type: int | None = None


class PayloadError(Exception):
    """A payload that breaks its schema: ``code`` is the version's CALLERROR code."""

    def __init__(self, code: str, description: str, kind: str = "property") -> None:
        super().__init__(code, description)
        self.code = code
        self.description = description
        self.kind = kind


def kind_of_validation_error(msg: str) -> str:
    """Map a msgspec validation message onto our failure kinds."""
    if msg.startswith("Object missing required field"):
        return "occurrence"
    if msg.startswith("Object contains unknown field"):
        return "format"
    if msg.startswith("Expected `array` of length") or msg.startswith("Expected `array` of at"):
        return "occurrence"
    if msg.startswith("Expected `object`, got") and "- at `$" not in msg:
        return "format"  # the payload itself is not an object
    if msg.startswith("Expected `") and ", got `" in msg:
        return "type"
    return "property"  # enum, length, range, multipleOf, date-time


class Tables:
    """Per-version lookups, built once: decoders per action and direction."""

    def __init__(self, version: str, role: str = "csms") -> None:
        if version not in MODULES:
            raise ValueError(f"unknown OCPP version {version!r}")
        if role not in ("csms", "charger"):
            raise ValueError("role is 'csms' or 'charger'")
        mod = MODULES[version]
        self.version = version
        self.codes = ERROR_CODES[version]
        self.draft6 = version != "1.6"
        self.requests: dict[str, type] = mod.REQUESTS
        self.responses: dict[str, type] = mod.RESPONSES
        charger = CHARGER_INITIATED[version]
        # actions this side accepts as CALLs and may send as CALLs
        inbound = {a for a in self.requests if (a in charger) == (role == "csms") or a in BOTH_WAYS}
        outbound = {a for a in self.requests if (a not in charger) == (role == "csms") or a in BOTH_WAYS}
        self.inbound = frozenset(inbound)
        self.outbound = frozenset(outbound)
        self.request_decoders = {a: msgspec.json.Decoder(t) for a, t in self.requests.items()}
        self.response_decoders = {a: msgspec.json.Decoder(t) for a, t in self.responses.items()}

    # -- payloads --------------------------------------------------------------------
    def payload_error(self, exc: Exception, kind_hint: str | None = None) -> PayloadError:
        if isinstance(exc, msgspec.ValidationError):
            kind = kind_of_validation_error(str(exc))
        elif isinstance(exc, RecursionError):
            kind, exc = "format", Exception("payload nested too deeply")
        else:  # DecodeError: the payload is not JSON
            kind = "format"
        if kind_hint:
            kind = kind_hint
        return PayloadError(self.codes[kind], str(exc)[:255], kind)

    def decode_payload(self, action: str, kind: str, raw: bytes | memoryview | msgspec.Raw) -> Any:
        """Validate one payload; raises :class:`PayloadError`."""
        table = self.request_decoders if kind == "request" else self.response_decoders
        dec = table.get(action)
        if dec is None:
            raise PayloadError(self.codes["not_implemented"], f"unknown action {action!r}", "not_implemented")
        try:
            out = dec.decode(raw)
        except msgspec.ValidationError as exc:
            if self.draft6 and "got `float`" in str(exc):
                return self._decode_integral_floats(dec.type, raw, exc)
            raise self.payload_error(exc) from None
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise self.payload_error(exc) from None
        if datetime_plan(dec.type) is not None:
            if dt_suspect(raw if type(raw) is bytes else bytes(raw)):
                self.check_datetimes(dec.type, raw)
        return out

    def check_datetimes(self, typ: Any, raw: Any, obj: Any = None) -> None:
        """Raise :class:`PayloadError` if a date-time field of a payload that msgspec
        accepted uses an ISO 8601 spelling RFC 3339 forbids (``T`` replaced by a space,
        ``+0100``). Only called when :func:`checks.dt_suspect` says the raw bytes might hold one."""
        plan = datetime_plan(typ)
        if plan is None:
            return
        if obj is None:
            obj = msgspec.json.decode(raw)
        bad = bad_datetime(plan, obj)
        if bad is not None:
            raise PayloadError(self.codes["property"],
                               f"Invalid RFC3339 encoded datetime - at `{bad}`", "property")

    def _decode_integral_floats(self, typ: Any, raw: Any, exc: Exception) -> Any:
        """Draft-06 schemas (2.0.1, 2.1) count ``1.0`` as an integer; msgspec does not.
        Off the hot path: only reached after the strict decode failed on a float."""
        def ints(o: Any) -> Any:
            if isinstance(o, float) and o.is_integer():
                return int(o)
            if isinstance(o, dict):
                return {k: ints(v) for k, v in o.items()}
            if isinstance(o, list):
                return [ints(v) for v in o]
            return o
        try:
            obj = ints(msgspec.json.decode(raw))
            out = msgspec.convert(obj, typ, dec_hook=None)
        except msgspec.ValidationError as exc2:
            raise self.payload_error(exc2) from None
        except Exception:
            raise self.payload_error(exc) from None
        self.check_datetimes(typ, raw, obj)
        return out

    def validate(self, action: str, kind: str, obj: Any) -> Any:
        """Validate a Python object (e.g. an API body) as a payload; returns the Struct."""
        try:
            raw = msgspec.json.encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(self.codes["type"], str(exc)[:255], "type") from None
        return self.decode_payload(action, kind, raw)

    # -- frames ----------------------------------------------------------------------
    def error(self, kind: str, description: str, message_id: str = UNREADABLE_ID,
              action: str | None = None, reply: bool = True, message_type: int | None = None) -> FrameError:
        return FrameError(message_id, self.codes[kind], description[:255], action, reply, message_type)

    def classify(self, data: bytes | memoryview) -> Any:
        """The slow, complete path: any input to a frame or a typed FrameError. Never raises."""
        try:
            frame = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            return self.error("frame", f"not a JSON text: {str(exc)[:200]}")
        except RecursionError:
            return self.error("frame", "JSON nested too deeply")
        except UnicodeDecodeError:
            return self.error("frame", "not a JSON text: invalid UTF-8")
        except Exception as exc:  # pragma: no cover - defensive: e.g. MemoryError on absurd input
            return self.error("frame", f"unreadable frame: {type(exc).__name__}")
        if not isinstance(frame, list) or not frame:
            return self.error("frame", "an OCPP-J message is a non-empty JSON array")
        mtype = frame[0]
        if type(mtype) is not int:
            return self.error("frame", "message type must be an integer")
        mid = frame[1] if len(frame) > 1 else None
        readable = isinstance(mid, str) and 0 < len(mid) <= MAX_MESSAGE_ID
        msg_id = mid if readable else UNREADABLE_ID
        is_call = mtype == CALL
        known = (CALL, CALLRESULT, CALLERROR) + ((CALLRESULTERROR, SEND) if self.version == "2.1" else ())
        if mtype not in known:
            shown = mtype if -1_000_000 < mtype < 1_000_000 else "(out of range)"
            return self.error("message_type", f"message type {shown} is not supported",
                              msg_id, reply=True, message_type=mtype)
        if not readable:
            why = "missing" if mid is None else ("not a string" if not isinstance(mid, str)
                                                  else "empty or longer than 36 characters")
            return self.error("frame", f"message id {why}", UNREADABLE_ID, reply=is_call, message_type=mtype)
        arity = {CALL: 4, CALLRESULT: 3, CALLERROR: 5, CALLRESULTERROR: 5, SEND: 4}[mtype]
        if len(frame) != arity:
            return self.error("frame", f"message type {mtype} takes {arity} elements, got {len(frame)}",
                              msg_id, reply=is_call, message_type=mtype)
        if mtype in (CALL, SEND):
            action, payload = frame[2], frame[3]
            if not isinstance(action, str):
                return self.error("frame", "action must be a string", msg_id,
                                  reply=is_call, message_type=mtype)
            return self.check_call(msg_id, action, msgspec.json.encode(payload), mtype)
        if mtype == CALLRESULT:
            if not isinstance(frame[2], dict):
                return self.error("format", "CALLRESULT payload must be an object", msg_id,
                                  reply=False, message_type=mtype)
            return CallResult(msg_id, msgspec.Raw(msgspec.json.encode(frame[2])))
        code, desc, details = frame[2], frame[3], frame[4]
        if not isinstance(code, str) or not isinstance(desc, str) or not isinstance(details, dict):
            return self.error("frame", "CALLERROR is [4, id, code, description, {details}]", msg_id,
                              reply=False, message_type=mtype)
        return CallError(msg_id, code, desc, details, mtype == CALLRESULTERROR)

    def check_call(self, msg_id: str, action: str, payload: Any, mtype: int = CALL) -> Any:
        """Action lookup and payload validation of a CALL/SEND whose frame is sound."""
        reply = mtype == CALL
        if action not in self.requests:
            return self.error("not_implemented", f"unknown action {action[:64]!r}", msg_id, action,
                              reply, mtype)
        if action not in self.inbound:
            return self.error("not_supported", f"{action} is not sent in this direction", msg_id,
                              action, reply, mtype)
        try:
            obj = self.decode_payload(action, "request", payload)
        except PayloadError as exc:
            return FrameError(msg_id, exc.code, exc.description, action, reply, mtype)
        return Call(msg_id, action, obj) if mtype == CALL else Send(msg_id, action, obj)
