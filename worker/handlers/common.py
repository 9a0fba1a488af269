"""What the handlers of every OCPP version share: the answer forms, the view of a session
they use, the BootNotification steps, and the default answers.

A handler is ``handler(session, request) -> answer``, one function per action, where the
answer is one of:

* a response Struct: sent at once (Heartbeat, StatusNotification, notifications);
* ``Commit(op, response)``: ``response`` is sent once the store write ``op`` committed (the
  durability rule: transaction messages are answered only after their commit). The writer
  sends it right after the commit, with no task or future: the one way to reply after
  a commit;
* a ``Deferred`` (a coroutine, i.e. the handler is ``async def`` or returns one): for the
  few answers that need a lookup or several writes first (Authorize's id-tag status,
  StartTransaction's transaction id, an event after the commit). The session runs it as a
  task and sends what it returns; if it raises, the charger gets an InternalError and
  retries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, Protocol, TypeVar

import msgspec

from ...core.directions import CHARGER_INITIATED
from ...store import base as ops
from ...store.events import SecurityEventReported
from ..services import Services
from ..writer import Commit

__all__ = ["DEFAULT_RESPONSES", "ENERGY", "I64", "UNSET", "energy_register", "finite", "i64", "Commit", "Deferred", "Handler", "Session", "after_commits",
           "boot_accepted", "complete", "heartbeat_seen", "now", "route_data_transfer", "report_security",
           "security_event_notification", "tag_status"]

log = logging.getLogger("chargeyard.worker")
UTC = dt.timezone.utc
UNSET = msgspec.UNSET
ENERGY = "Energy.Active.Import.Register"
I64 = 2**63 - 1
R = TypeVar("R")


def i64(n: int) -> int:
    """Schema-valid integers can be arbitrarily large; the store keeps 64-bit ones."""
    return n if -I64 <= n <= I64 else (I64 if n > 0 else -I64)


def finite(x: float) -> float | None:
    return x if x - x == 0.0 else None  # inf - inf and nan - nan are nan


def energy_register(sampled: list, wh_of: Callable[[Any], float | None]) -> float | None:
    """The ``Energy.Active.Import.Register`` reading (the default measurand) of a
    sampledValue list in Wh, preferring the total over per-phase readings; ``wh_of`` reads
    one sampled value the way its OCPP version writes it."""
    best = None
    for sv in sampled:
        measurand = sv.measurand
        if measurand is not UNSET and measurand != ENERGY:
            continue
        wh = wh_of(sv)
        if wh is None:
            continue
        if sv.phase is UNSET:
            return wh
        if best is None:
            best = wh
    return best


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


Deferred = Coroutine[Any, Any, R]
"""An answer that needs a lookup or several writes first (see the module docstring)."""


class Session(Protocol):
    """What handlers use of a charger's session (``worker/session.py`` is the one class
    that has it)."""

    charger_id: str
    protocol: str
    vendor: str
    model: str
    leniency: frozenset[str]
    services: Services

    def seen_now(self) -> ops.ChargerSeen:
        """last_seen = now, and the periodic last_seen write need not repeat it."""
        ...


Handler = Callable[[Any, Any], Any]
"""``handler(session, request) -> answer``; typed per action in the version modules."""


async def after_commits(writes: list[asyncio.Future], response: R) -> R:
    """Deferred: ``response`` once every write committed (a message with several writes)."""
    await asyncio.gather(*writes)
    return response


def heartbeat_seen(session: Session) -> None:
    """Heartbeat: last_seen now (answered before the commit, which the rule allows)."""
    session.services.writer.add(session.seen_now())


def boot_accepted(session: Session, vendor: str, model: str, serial: str, firmware: str,
                  response: R) -> Deferred[R]:
    """A BootNotification admitted (``Services.boot_admitted``): the charger's identity is
    written now (in the order of the charger's messages), ``response`` sent once it
    committed. Counted in flight until then, so that a storm of boots is answered Pending
    instead of queueing behind each other."""
    services = session.services
    session.vendor, session.model = vendor, model
    session.leniency = services.leniency.for_charger(session.charger_id, vendor, model)
    services.boots_in_flight += 1
    write = services.writer.add(ops.UpsertCharger(session.charger_id, session.protocol, vendor, model,
                                                  serial, firmware, now()))
    return _booted(session, write, firmware, response)


async def _booted(session: Session, write: asyncio.Future, firmware: str, response: R) -> R:
    services = session.services
    try:
        await write
    finally:
        services.boots_in_flight -= 1
    log.info("charger booted", extra={"fields": {
        "event": "boot", "charger_id": session.charger_id, "vendor": session.vendor, "model": session.model,
        "firmware": firmware}})
    return response


async def tag_status(session: Session, tag: str) -> str:
    """The id tag's status (``Authorization.status``); one other than Accepted is also
    written as a ``charger.security_event`` of type ``IdTagRejected`` (the
    ``auth_failures`` alert counts them)."""
    status = await session.services.authorization.status(tag)
    if status != "Accepted":
        report_security(session, "IdTagRejected", f"idTag {tag}: {status}")
    return status


def report_security(session: Session, kind: str, tech_info: str = "", at: dt.datetime | None = None) -> None:
    """Queue a security event: it commits in order with the charger's facts and is
    published from the outbox. Not awaited: a failed write loses only this event."""
    try:
        write = session.services.writer.add(SecurityEventReported(session.charger_id, kind, at or now(), tech_info))
    except Exception as exc:  # a full or closed writer
        log.debug("security event of %s not written: %r", session.charger_id, exc)
        return
    write.add_done_callback(_ignore_failure)


def _ignore_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def security_event_notification(session: Session, req: Any, response: R) -> R:
    """SecurityEventNotification (2.0.1, 2.1): the charger's own security event."""
    report_security(session, req.type, req.tech_info or "", req.timestamp)
    return response


def route_data_transfer(session: Session, req: Any, unknown_vendor: Any) -> Any:
    """DataTransfer goes to the handler registered for its vendorId
    (``Services.data_transfer``), else ``unknown_vendor``."""
    handler = session.services.data_transfer.get(req.vendor_id)
    return unknown_vendor if handler is None else handler(session, req)


# Answers to charger-initiated actions Chargeyard records nothing for (yet): schema-valid
# and honest (no CA, no ISO 15118 backend, no smart-charging optimiser configured).
DEFAULT_RESPONSES: dict[str, dict] = {
    "DataTransfer": {"status": "UnknownVendorId"},
    "SignCertificate": {"status": "Rejected"},
    "Get15118EVCertificate": {"status": "Failed", "exiResponse": ""},
    "GetCertificateStatus": {"status": "Failed"},
    "NotifyEVChargingNeeds": {"status": "Rejected"},
    "NotifyEVChargingSchedule": {"status": "Rejected"},
    "OpenPeriodicEventStream": {"status": "Rejected"},
    "PullDynamicScheduleUpdate": {"status": "Rejected"},
}


class Fixed:
    """The handler of an action answered with a fixed response (``complete``)."""

    __slots__ = ("action", "response")

    def __init__(self, action: str, response: Any) -> None:
        self.action = action
        self.response = response

    def __call__(self, session: Session, req: Any) -> Any:
        return self.response

    def __repr__(self) -> str:
        return f"Fixed({self.action!r})"


def complete(version: str, messages: ModuleType, table: dict[str, Handler]) -> dict[str, Handler]:
    """Give every other charger-initiated action of ``version`` a schema-valid default
    answer (a SEND-only message of 2.1, e.g. NotifyPeriodicEventStream: none)."""
    for action in CHARGER_INITIATED[version]:
        if action in table or action not in messages.REQUESTS:
            continue
        if action not in messages.RESPONSES:
            table[action] = Fixed(action, None)
            continue
        table[action] = Fixed(action, msgspec.convert(DEFAULT_RESPONSES.get(action, {}),
                                                      messages.RESPONSES[action]))
    return table
