"""The OCPP-J codec in pure Python, twin of the compiled ``_codec.pyx``: same API, same
answers (and the same bytes out). ``core/__init__.py`` picks one with ``twins.load``.

Fast path: a well-formed ``[2,"id","Action",{...}]`` (whitespace allowed between
tokens, as in the C scan) is split without a generic JSON parse and its payload
decoded straight into the action's Struct.
Everything else goes to :meth:`Tables.classify`, the one place that decides how
bad input is answered.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .checks import datetime_plan, dt_suspect
from .framing import CALL, Call, FrameError, PayloadError, Tables

_HEAD = re.compile(
    rb'[ \t\r\n]*\[[ \t\r\n]*2[ \t\r\n]*,[ \t\r\n]*"([^\x00-\x1f"\\]{1,144})"'
    rb'[ \t\r\n]*,[ \t\r\n]*"([A-Za-z0-9]{1,64})"[ \t\r\n]*,').match
_WS = b" \t\r\n"


class Codec:
    """Decode frames from and encode frames to one peer speaking ``version``.

    ``role`` is our side: ``"csms"`` accepts charger-initiated CALLs, ``"charger"``
    the CSMS-initiated ones.
    """

    impl = "python"

    def __init__(self, version: str, role: str = "csms") -> None:
        self.tables = Tables(version, role)
        self.version = version
        self._inbound = self.tables.inbound
        # action -> (bound decode, Struct type, has a date-time field): one lookup per frame
        self._decoders = {a: (d.decode, d.type, datetime_plan(d.type) is not None)
                          for a, d in self.tables.request_decoders.items() if a in self._inbound}
        self._enc = msgspec.json.Encoder()

    # -- decoding --------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        """One frame -> Call | CallResult | CallError | Send | FrameError. Never raises."""
        if type(data) is not bytes:
            data = bytes(data)  # memoryview / bytearray from the socket layer
        split = self._split_call(data)
        if split is not None:
            msg_id, action, payload = split
            entry = self._decoders.get(action)
            if entry is not None:
                decode, typ, has_dt = entry
                try:
                    obj = decode(payload)
                except msgspec.ValidationError as exc:
                    if not self.tables.draft6 or "got `float`" not in str(exc):
                        err = self.tables.payload_error(exc)
                        return FrameError(msg_id, err.code, err.description, action, True, CALL)
                except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                    pass  # maybe not the payload's fault (e.g. a fifth element): classify
                else:
                    if has_dt and dt_suspect(payload):
                        try:
                            self.tables.check_datetimes(typ, payload)
                        except PayloadError as err:
                            return FrameError(msg_id, err.code, err.description, action, True, CALL)
                    return Call(msg_id, action, obj)
        return self.tables.classify(data)

    @staticmethod
    def _split_call(data: bytes) -> tuple[str, str, bytes] | None:
        """``[2,"id","Action",`` (JSON whitespace allowed between tokens, like the C scan)
        and a closing ``]``: (id, action, payload bytes), else None."""
        m = _HEAD(data)
        if m is None:
            return None
        start = m.end()
        end = len(data.rstrip(_WS)) - 1
        if end <= start or data[end] != 0x5D:  # ']'
            return None
        try:
            msg_id = m.group(1).decode()
        except UnicodeDecodeError:
            return None
        if len(msg_id) > 36:
            return None
        return msg_id, m.group(2).decode(), data[start:end]

    def decode_result(self, action: str, payload: Any) -> Any:
        """Validate the payload of a CALLRESULT to our ``action``; raises PayloadError."""
        return self.tables.decode_payload(action, "response", payload)

    # -- encoding --------------------------------------------------------------------
    def encode_result(self, message_id: str, payload: Any) -> bytes:
        """The CALLRESULT ``[3, message_id, payload]``: every reply to a charger's CALL is
        built here (the compiled twin writes an empty-object payload without the encoder)."""
        return self._enc.encode((3, message_id, payload))

    def encode_call(self, message_id: str, action: str, payload: Any) -> bytes:
        return self._enc.encode((2, message_id, action, payload))

    def encode_error(self, message_id: str, code: str, description: str = "",
                     details: Any = None) -> bytes:
        return self._enc.encode((4, message_id, code, description[:255],
                                 details if details is not None else {}))

    def encode_reply_error(self, err: FrameError) -> bytes:
        return self.encode_error(err.message_id, err.code, err.description)


__all__ = ["Codec", "PayloadError"]
