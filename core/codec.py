"""The codec in use: the compiled one unless absent or ``CHARGEYARD_PURE=1``.

``CHARGEYARD_REQUIRE_EXT=1`` turns a missing extension into an ImportError, so a
test run that expects the compiled codec cannot silently measure the twin. The same
switches select the worker's compiled listener (``worker/listener.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .codec_py import Codec as PyCodec

_YES = ("1", "true", "yes")


def pick(pure: type, compiled: Callable[[], type]) -> type:
    """``compiled()`` (which imports the extension's class), unless ``CHARGEYARD_PURE`` is
    set or the extension is absent (an error under ``CHARGEYARD_REQUIRE_EXT``): else ``pure``."""
    if os.environ.get("CHARGEYARD_PURE", "") not in _YES:
        try:
            return compiled()
        except ImportError:
            if os.environ.get("CHARGEYARD_REQUIRE_EXT", "") in _YES:
                raise
    return pure


def _compiled() -> type:
    from ._codec import Codec as CCodec  # type: ignore[import-not-found]
    return CCodec


Codec = pick(PyCodec, _compiled)
IMPL: str = Codec.impl

__all__ = ["Codec", "PyCodec", "IMPL", "pick"]
