"""Security actions of every version (1.6 security extension, 2.0.1, 2.1): the charger's
SignCertificate, answered and followed by CertificateSigned with the chain the CSMS CA
signed, and SecurityEventNotification, stored and published as ``charger.security_event``.
The CA and the store come from ``services.security`` (``worker/security/service.py``)."""

from __future__ import annotations

import datetime as dt
import logging
from types import ModuleType
from typing import Any

import msgspec

from ...store.chargers import SecurityEvent
from ..security.certs import CsrRejected
from .common import Deferred, Session, report_security

__all__ = ["security_event_notification", "sign_certificate"]

log = logging.getLogger("chargeyard.worker")

CERTIFICATE_SIGNED_TIMEOUT = 30.0


def _iso(t: Any) -> str:
    if isinstance(t, dt.datetime):
        return t.isoformat().replace("+00:00", "Z")
    return str(t)


def sign_certificate(session: Session, req: Any, messages: ModuleType) -> Any:
    """Accepted only with a configured CA (``--ca-cert``/``--ca-key``) and a CSR whose CN is
    this charger's id; the chain follows in a CertificateSigned call."""
    security = session.services.security
    ca = security.ca if security is not None else None
    cert_type = getattr(req, "certificate_type", msgspec.UNSET)
    if ca is None or cert_type not in (msgspec.UNSET, "ChargingStationCertificate"):
        return messages.SignCertificateResponse(status="Rejected")
    try:
        chain = ca.sign_csr(req.csr, session.charger_id)
    except CsrRejected as exc:
        log.warning("SignCertificate of %s rejected: %s", session.charger_id, exc)
        return messages.SignCertificateResponse(status="Rejected")
    payload: dict[str, Any] = {"certificateChain": chain}
    if session.protocol != "ocpp1.6":
        payload["certificateType"] = "ChargingStationCertificate"
    session.services.spawn(_certificate_signed(session, payload))
    return messages.SignCertificateResponse(status="Accepted")


async def _certificate_signed(session: Session, payload: dict) -> None:
    try:
        answer = await session.call("CertificateSigned", payload, CERTIFICATE_SIGNED_TIMEOUT)  # type: ignore[attr-defined]
        log.info("charger %s answered %s to CertificateSigned", session.charger_id, answer.get("status"))
    except Exception as exc:
        log.warning("CertificateSigned to %s failed: %r", session.charger_id, exc)


def security_event_notification(session: Session, req: Any, messages: ModuleType) -> Deferred[Any]:
    return _security_event(session, req, messages)


async def _security_event(session: Session, req: Any, messages: ModuleType) -> Any:
    tech = req.tech_info if isinstance(req.tech_info, str) else ""
    event = SecurityEvent(charger_id=session.charger_id, type=req.type, at=_iso(req.timestamp), tech_info=tech)
    security = session.services.security
    if security is not None and security.store is not None:
        await security.store.add_security_event(event)  # answered once stored: the charger retries otherwise
    report_security(session, event.type, tech, req.timestamp)  # the outbox's charger.security_event
    return messages.SecurityEventNotificationResponse()
