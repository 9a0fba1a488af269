"""OCPP-J protocol core: frames, generated message types, validation, CALLERROR codes.

No I/O lives here. ``Codec(version)`` is the entry point::

    codec = Codec("1.6")
    frame = codec.decode(b'[2,"1","Heartbeat",{}]')   # Call | CallResult | CallError | Send | FrameError
    reply = codec.encode_result(frame.message_id, HeartbeatResponse(current_time=now))

``Codec`` is the compiled one (``_codec.pyx``) unless ``CHARGEYARD_PURE=1`` or it is not
built; then its twin ``codec.py`` (see ``twins``). ``IMPL`` names the one in use.
"""

from . import twins
from .framing import (
    CALL, CALLERROR, CALLRESULT, CALLRESULTERROR, SEND, SUBPROTOCOLS, Call, CallError,
    CallResult, FrameError, PayloadError, Send, Tables,
)

Codec = twins.load("chargeyard.core.codec").Codec
IMPL: str = Codec.impl

__all__ = [
    "CALL", "CALLERROR", "CALLRESULT", "CALLRESULTERROR", "IMPL", "SEND", "SUBPROTOCOLS", "Call",
    "CallError", "CallResult", "Codec", "FrameError", "PayloadError", "Send", "Tables",
]
