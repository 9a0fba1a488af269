"""One switch for every compiled module and its pure-Python twin.

Convention: a compiled module ``_name.pyx`` sits beside its twin ``name.py`` in the same
package and defines the same public names with the same behaviour, or, where only part of
a module runs per message (``worker/handlers/_ocpp16.pyx``: the 1.6 MeterValues path), the
same behaviour for the subset of its names it lists in ``__all__``. Callers never import
``_name`` themselves; they ask this module::

    Rows = twins.load("chargeyard.store.logrows").Rows

* ``CHARGEYARD_PURE=1`` selects every twin;
* otherwise the compiled module is used, and the twin only when the compiled one is not
  importable (not built);
* ``CHARGEYARD_REQUIRE_EXT=1`` turns "not importable" into an ImportError, so a run that
  expects the compiled modules cannot silently measure the twins.

Tests that must run both take the ``twin`` fixture (``tests/conftest.py``), which passes
``pure=True`` / ``pure=False`` explicitly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["compiled_name", "load", "pure_requested", "require_ext"]

_YES = ("1", "true", "yes")


def pure_requested() -> bool:
    return os.environ.get("CHARGEYARD_PURE", "").lower() in _YES


def require_ext() -> bool:
    return os.environ.get("CHARGEYARD_REQUIRE_EXT", "").lower() in _YES


def compiled_name(twin: str) -> str:
    """``chargeyard.store.logrows`` -> ``chargeyard.store._logrows``."""
    package, _, name = twin.rpartition(".")
    return f"{package}._{name}"


def load(twin: str, pure: bool | None = None) -> ModuleType:
    """The module to use for ``twin`` (dotted name of the pure-Python module).

    ``pure=None`` follows the environment (see the module docstring); ``pure=True`` always
    returns the twin; ``pure=False`` always returns the compiled module (ImportError if it
    is not built)."""
    want_pure = pure_requested() if pure is None else pure
    if not want_pure:
        try:
            return importlib.import_module(compiled_name(twin))
        except ImportError:
            if pure is False or require_ext():
                raise
    return importlib.import_module(twin)
