"""OCPP 2.1 handlers. Where the 2.0.1 and 2.1 schemas agree on what a handler reads and
answers (Heartbeat, StatusNotification, MeterValues), the 2.0.1 function is the handler;
where only the response types differ, the 2.0.1 function runs with the 2.1 message types.
2.1's own actions are here."""

from __future__ import annotations

from ...core.messages import v21
from ..services import Services
from . import ocpp201, security
from .common import Commit, Deferred, Handler, Session, complete, now, route_data_transfer

__all__ = ["authorize", "boot_notification", "data_transfer", "get_certificate_chain_status", "handlers",
           "security_event_notification", "sign_certificate", "transaction_event", "vat_number_validation"]

UNKNOWN_VENDOR = v21.DataTransferResponse(status="UnknownVendorId")


def boot_notification(session: Session, req: v21.BootNotificationRequest
                      ) -> v21.BootNotificationResponse | Deferred[v21.BootNotificationResponse]:
    return ocpp201.boot_notification(session, req, v21)


def authorize(session: Session, req: v21.AuthorizeRequest) -> Deferred[v21.AuthorizeResponse]:
    return ocpp201.authorize(session, req, v21)


def transaction_event(session: Session, req: v21.TransactionEventRequest
                      ) -> Commit | Deferred[v21.TransactionEventResponse]:
    return ocpp201.transaction_event(session, req, v21)


def data_transfer(session: Session, req: v21.DataTransferRequest) -> v21.DataTransferResponse:
    return route_data_transfer(session, req, UNKNOWN_VENDOR)


def vat_number_validation(session: Session, req: v21.VatNumberValidationRequest
                          ) -> v21.VatNumberValidationResponse:
    """No VAT registry configured: every number is Rejected."""
    return v21.VatNumberValidationResponse(vat_number=req.vat_number, status="Rejected")


def get_certificate_chain_status(session: Session, req: v21.GetCertificateChainStatusRequest
                                 ) -> v21.GetCertificateChainStatusResponse:
    """No OCSP/CRL client configured: every requested status is Failed."""
    return v21.GetCertificateChainStatusResponse(certificate_status=[
        v21.CertificateStatusType(certificate_hash_data=q.certificate_hash_data, source=q.source,
                                  status="Failed", next_update=now())
        for q in req.certificate_status_requests])


def sign_certificate(session: Session, req: v21.SignCertificateRequest) -> v21.SignCertificateResponse:
    """Signed by the CSMS CA when the CSR's CN is this charger; CertificateSigned follows."""
    return security.sign_certificate(session, req, v21)


def security_event_notification(session: Session, req: v21.SecurityEventNotificationRequest
                                ) -> Deferred[v21.SecurityEventNotificationResponse]:
    """Stored, published as charger.security_event, then answered."""
    return security.security_event_notification(session, req, v21)


def handlers(services: Services) -> dict[str, Handler]:
    """Action name -> handler for a worker's 2.1 sessions; every other charger-initiated
    action gets its default answer (``common.complete``)."""
    table: dict[str, Handler] = {
        "BootNotification": boot_notification,
        "Heartbeat": ocpp201.heartbeat,
        "Authorize": authorize,
        "StatusNotification": ocpp201.status_notification,
        "MeterValues": ocpp201.meter_values,
        "TransactionEvent": transaction_event,
        "DataTransfer": data_transfer,
        "SignCertificate": sign_certificate,
        "SecurityEventNotification": security_event_notification,
        "VatNumberValidation": vat_number_validation,
        "GetCertificateChainStatus": get_certificate_chain_status,
    }
    return complete("2.1", v21, table)
