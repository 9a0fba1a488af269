"""Pure-Python twin of ``_codec.pyx``: same API, same answers, used when the
extension is absent or ``CHARGEYARD_PURE=1``.

Fast path: a compact, well-formed ``[2,"id","Action",{...}]`` is split without a
generic JSON parse and its payload decoded straight into the action's Struct.
Everything else goes to :meth:`Tables.classify`, the one place that decides how
bad input is answered.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .checks import DT_SUSPECT
from .framing import CALL, Call, FrameError, PayloadError, Tables

_ID = re.compile(rb'[^\x00-\x1f"\\]{1,144}')
_ACTION = re.compile(rb"[A-Za-z0-9]{1,64}")
_WS = b" \t\r\n"
_DT_SUSPECT = DT_SUSPECT.search


class Codec:
    """Decode frames from and encode frames to one peer speaking ``version``.

    ``role`` is our side: ``"csms"`` accepts charger-initiated CALLs, ``"charger"``
    the CSMS-initiated ones.
    """

    impl = "python"

    def __init__(self, version: str, role: str = "csms") -> None:
        self.tables = Tables(version, role)
        self.version = version
        self._decoders = self.tables.request_decoders
        self._inbound = self.tables.inbound
        self._enc = msgspec.json.Encoder()

    # -- decoding --------------------------------------------------------------------
    def decode(self, data: bytes) -> Any:
        """One frame -> Call | CallResult | CallError | Send | FrameError. Never raises."""
        if type(data) is not bytes:
            data = bytes(data)  # memoryview / bytearray from the socket layer
        split = self._split_call(data)
        if split is not None:
            msg_id, action, payload = split
            dec = self._decoders.get(action)
            if dec is not None and action in self._inbound:
                try:
                    obj = dec.decode(payload)
                except msgspec.ValidationError as exc:
                    if not self.tables.draft6 or "got `float`" not in str(exc):
                        err = self.tables.payload_error(exc)
                        return FrameError(msg_id, err.code, err.description, action, True, CALL)
                except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                    pass  # maybe not the payload's fault (e.g. a fifth element): classify
                else:
                    if _DT_SUSPECT(payload) is not None:
                        try:
                            self.tables.check_datetimes(dec.type, payload)
                        except PayloadError as err:
                            return FrameError(msg_id, err.code, err.description, action, True, CALL)
                    return Call(msg_id, action, obj)
        return self.tables.classify(data)

    @staticmethod
    def _split_call(data: bytes) -> tuple[str, str, bytes] | None:
        if data[:4] != b'[2,"':
            return None
        q = data.find(b'"', 4)
        if q < 0 or not _ID.fullmatch(data, 4, q):
            return None
        if data[q + 1:q + 3] != b',"':
            return None
        q2 = data.find(b'"', q + 3)
        if q2 < 0 or not _ACTION.fullmatch(data, q + 3, q2) or data[q2 + 1:q2 + 2] != b",":
            return None
        end = len(data.rstrip(_WS)) - 1
        if end <= q2 + 2 or data[end] != 0x5D:  # ']'
            return None
        try:
            msg_id = data[4:q].decode()
        except UnicodeDecodeError:
            return None
        if len(msg_id) > 36:
            return None
        return msg_id, data[q + 3:q2].decode(), data[q2 + 2:end]

    def decode_result(self, action: str, payload: Any) -> Any:
        """Validate the payload of a CALLRESULT to our ``action``; raises PayloadError."""
        return self.tables.decode_payload(action, "response", payload)

    # -- encoding --------------------------------------------------------------------
    def encode_result(self, message_id: str, payload: Any) -> bytes:
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
