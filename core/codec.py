"""The codec in use: the compiled one unless absent or ``CHARGEYARD_PURE=1``.

``CHARGEYARD_REQUIRE_EXT=1`` turns a missing extension into an ImportError, so a
test run that expects the compiled codec cannot silently measure the twin.
"""

from __future__ import annotations

import os

from .codec_py import Codec as PyCodec

IMPL = "python"
Codec = PyCodec
if os.environ.get("CHARGEYARD_PURE", "") not in ("1", "true", "yes"):
    try:
        from ._codec import Codec as CCodec  # type: ignore[import-not-found]
    except ImportError:
        if os.environ.get("CHARGEYARD_REQUIRE_EXT", "") in ("1", "true", "yes"):
            raise
    else:
        Codec = CCodec  # type: ignore[misc,assignment]
        IMPL = "cython"

__all__ = ["Codec", "PyCodec", "IMPL"]
