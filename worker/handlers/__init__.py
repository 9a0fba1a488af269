"""Action handlers per OCPP version: ``ocpp16``, ``ocpp201``, ``ocpp21`` (reusing 2.0.1
where the schemas agree), and what they share in ``common`` (the answer forms: a response,
``Commit``, or a deferred coroutine)."""

from __future__ import annotations

from ..services import Services
from . import ocpp16, ocpp21, ocpp201
from .common import Commit, Handler

__all__ = ["Commit", "all_handlers"]


def all_handlers(services: Services) -> dict[str, dict[str, Handler]]:
    """OCPP version -> action name -> handler, for one worker."""
    return {"1.6": ocpp16.handlers(services), "2.0.1": ocpp201.handlers(services),
            "2.1": ocpp21.handlers(services)}
