"""The codec in use: the compiled one unless absent or ``CHARGEYARD_PURE=1``.

``CHARGEYARD_REQUIRE_EXT=1`` turns a missing extension into an ImportError, so a
test run that expects the compiled codec cannot silently measure the twin. The same
switches select the worker's compiled listener (``worker/listener.py``).
"""

from __future__ import annotations

import os

from .codec_py import Codec as PyCodec

_YES = ("1", "true", "yes")


def want_ext() -> bool:
    """Use compiled extensions (the default), unless ``CHARGEYARD_PURE`` is set."""
    return os.environ.get("CHARGEYARD_PURE", "") not in _YES


def require_ext() -> bool:
    """A missing compiled extension is an error (``CHARGEYARD_REQUIRE_EXT``)."""
    return os.environ.get("CHARGEYARD_REQUIRE_EXT", "") in _YES


IMPL = "python"
Codec = PyCodec
if want_ext():
    try:
        from ._codec import Codec as CCodec  # type: ignore[import-not-found]
    except ImportError:
        if require_ext():
            raise
    else:
        Codec = CCodec  # type: ignore[misc,assignment]
        IMPL = "cython"

__all__ = ["Codec", "PyCodec", "IMPL", "want_ext", "require_ext"]
