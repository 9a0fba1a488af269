"""OCPP 2.0.1 handlers: one function per charger-initiated action (``handlers(services)``
maps the action names to them). 2.1 (``ocpp21.py``) reuses them: as they are where the
two schemas agree, and with its own message types (the ``messages`` argument) where only
the response types differ. The answer forms are in ``common.py``."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

from ...core.messages import v201
from ...store import base as ops
from ..services import Services
from . import security
from .common import (UNSET, Commit, Deferred, Handler, Session, after_commits, boot_accepted, complete,
                     energy_register, finite, heartbeat_seen, i64, now, route_data_transfer, tag_status)

__all__ = ["authorize", "boot_notification", "data_transfer", "handlers", "heartbeat", "meter_values",
           "security_event_notification", "sign_certificate", "status_notification", "transaction_event"]



def _wh_201(sv: Any) -> float | None:
    """2.0.1/2.1: value x 10^multiplier in Wh (the default) or kWh."""
    unit, mult = "Wh", 0
    uom = sv.unit_of_measure
    if uom is not UNSET:
        if uom.unit is not UNSET:
            unit = uom.unit
        if uom.multiplier is not UNSET:
            mult = uom.multiplier
    if unit not in ("Wh", "kWh") or not -9 <= mult <= 9:
        return None
    return finite(sv.value * (10.0 ** mult) * (1000.0 if unit == "kWh" else 1.0))


def energy_201(sampled: list) -> float | None:
    return energy_register(sampled, _wh_201)


METER_VALUES_ACCEPTED = v201.MeterValuesResponse()
STATUS_NOTIFICATION_ACCEPTED = v201.StatusNotificationResponse()
TRANSACTION_EVENT_ACCEPTED = v201.TransactionEventResponse()
UNKNOWN_VENDOR = v201.DataTransferResponse(status="UnknownVendorId")


def boot_notification(session: Session, req: v201.BootNotificationRequest, messages: ModuleType = v201
                      ) -> v201.BootNotificationResponse | Deferred[v201.BootNotificationResponse]:
    """``messages``: the version's message types (2.1 passes its own)."""
    services = session.services
    if not services.boot_admitted():
        return messages.BootNotificationResponse(status="Pending", current_time=now(),
                                                 interval=services.boot_retry_interval())
    accepted = messages.BootNotificationResponse(status="Accepted", current_time=now(),
                                                 interval=services.settings.heartbeat_interval)
    station = req.charging_station
    return boot_accepted(session, station.vendor_name, station.model, station.serial_number or "",
                         station.firmware_version or "", accepted)


def heartbeat(session: Session, req: v201.HeartbeatRequest) -> v201.HeartbeatResponse:
    heartbeat_seen(session)
    return v201.HeartbeatResponse(current_time=now())


async def authorize(session: Session, req: v201.AuthorizeRequest, messages: ModuleType = v201
                    ) -> v201.AuthorizeResponse:
    """``messages``: the version's message types (2.1 passes its own)."""
    status = await tag_status(session, req.id_token.id_token)
    return messages.AuthorizeResponse(id_token_info=messages.IdTokenInfoType(status=status))


def status_notification(session: Session, req: v201.StatusNotificationRequest) -> v201.StatusNotificationResponse:
    """Answered before the commit (the durability rule allows it for statuses)."""
    services = session.services
    services.writer.add(ops.ConnectorStatus(session.charger_id, i64(req.evse_id), i64(req.connector_id),
                                            req.connector_status, "", req.timestamp))
    return STATUS_NOTIFICATION_ACCEPTED


def meter_values(session: Session, req: v201.MeterValuesRequest
                 ) -> v201.MeterValuesResponse | Commit | Deferred[v201.MeterValuesResponse]:
    """Readings outside a transaction (its readings come in TransactionEvent): each with an
    energy register is kept as the connector's last reading."""
    readings = []
    for mv in req.meter_value:
        wh = energy_201(mv.sampled_value)
        if wh is not None:
            readings.append(ops.MeterSample(session.charger_id, "", mv.timestamp, wh, 0))
    if not readings:
        return METER_VALUES_ACCEPTED
    if len(readings) == 1:
        return Commit(readings[0], METER_VALUES_ACCEPTED)
    writer = session.services.writer
    return after_commits([writer.add(op) for op in readings], METER_VALUES_ACCEPTED)


def transaction_event(session: Session, req: v201.TransactionEventRequest, messages: ModuleType = v201
                      ) -> Commit | Deferred[v201.TransactionEventResponse]:
    """The event is written at once (applied once per transaction and seqNo). No id token:
    ``Commit``. Otherwise the answer waits for the token's status and the commit. Its
    ``transaction.*`` events come from the commit (``store/events.py``). ``messages``: the
    version's message types (2.1 passes its own; the empty answer is the same in both)."""
    services = session.services
    info = req.transaction_info
    meter_wh = None
    if req.meter_value is not UNSET:
        for mv in req.meter_value:
            wh = energy_201(mv.sampled_value)
            if wh is not None:
                meter_wh = wh
    evse_id = connector_id = 0
    if req.evse is not UNSET:
        evse_id = i64(req.evse.id)
        connector_id = i64(req.evse.connector_id or 0)
    tag = req.id_token.id_token if req.id_token is not UNSET else ""
    op = ops.TransactionEvent(session.charger_id, info.transaction_id, i64(req.seq_no), req.event_type,
                              req.timestamp, req.trigger_reason, tag, evse_id, connector_id, meter_wh,
                              info.stopped_reason or "")
    if not tag:
        return Commit(op, TRANSACTION_EVENT_ACCEPTED)
    return _transaction_event_after(messages, session, tag, services.writer.add(op))


async def _transaction_event_after(messages: ModuleType, session: Session, tag: str, write: asyncio.Future) -> Any:
    status = await tag_status(session, tag)
    await write
    return messages.TransactionEventResponse(id_token_info=messages.IdTokenInfoType(status=status))


def data_transfer(session: Session, req: v201.DataTransferRequest) -> v201.DataTransferResponse:
    return route_data_transfer(session, req, UNKNOWN_VENDOR)


def sign_certificate(session: Session, req: v201.SignCertificateRequest) -> v201.SignCertificateResponse:
    """Signed by the CSMS CA when the CSR's CN is this charger; CertificateSigned follows."""
    return security.sign_certificate(session, req, v201)


def security_event_notification(session: Session, req: v201.SecurityEventNotificationRequest
                                ) -> Deferred[v201.SecurityEventNotificationResponse]:
    """Stored, published as charger.security_event, then answered."""
    return security.security_event_notification(session, req, v201)


def handlers(services: Services) -> dict[str, Handler]:
    """Action name -> handler for a worker's 2.0.1 sessions; every other charger-initiated
    action gets its default answer (``common.complete``)."""
    table: dict[str, Handler] = {
        "BootNotification": boot_notification,
        "Heartbeat": heartbeat,
        "Authorize": authorize,
        "StatusNotification": status_notification,
        "MeterValues": meter_values,
        "TransactionEvent": transaction_event,
        "DataTransfer": data_transfer,
        "SignCertificate": sign_certificate,
        "SecurityEventNotification": security_event_notification,
    }
    return complete("2.0.1", v201, table)
