"""OCPP 1.6 handlers: one function per charger-initiated action (``handlers(services)``
maps the action names to them). The answer forms are in ``common.py``.

MeterValues runs for every message of a saturated worker: its common path
(``meter_values_16``) and the readings it builds (``samples_16``) are compiled in this
module's twin ``_ocpp16.pyx``, which defines those two names and ``energy_16``; the
handlers take them through ``twins.load`` (this module's own under ``CHARGEYARD_PURE=1``
or when the twin is not built)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ...core import twins
from ...core.messages import v16
from ...store import base as ops
from ...store.base import MeterSample
from ..services import Services
from . import security
from .common import (tag_status, UNSET, Commit, Deferred, Handler, Session, after_commits, boot_accepted, complete,
                     energy_register, finite, heartbeat_seen, i64, now, route_data_transfer)

__all__ = ["IMPL", "authorize", "boot_notification", "data_transfer", "energy_16", "handlers", "heartbeat",
           "meter_values_16", "meter_values_several", "samples_16", "security_event_notification",
           "sign_certificate", "start_transaction", "status_notification", "stop_transaction"]

IMPL = "python"

METER_VALUES_ACCEPTED = v16.MeterValuesResponse()
STATUS_NOTIFICATION_ACCEPTED = v16.StatusNotificationResponse()
UNKNOWN_VENDOR = v16.DataTransferResponse(status="UnknownVendorId")


def boot_notification(session: Session, req: v16.BootNotificationRequest
                      ) -> v16.BootNotificationResponse | Deferred[v16.BootNotificationResponse]:
    services = session.services
    if not services.boot_admitted():
        return v16.BootNotificationResponse(status="Pending", current_time=now(),
                                            interval=services.boot_retry_interval())
    accepted = v16.BootNotificationResponse(status="Accepted", current_time=now(),
                                            interval=services.settings.heartbeat_interval)
    return boot_accepted(session, req.charge_point_vendor, req.charge_point_model,
                         req.charge_point_serial_number or req.charge_box_serial_number or "",
                         req.firmware_version or "", accepted)


def heartbeat(session: Session, req: v16.HeartbeatRequest) -> v16.HeartbeatResponse:
    heartbeat_seen(session)
    return v16.HeartbeatResponse(current_time=now())


async def authorize(session: Session, req: v16.AuthorizeRequest) -> v16.AuthorizeResponse:
    status = await tag_status(session, req.id_tag)
    return v16.AuthorizeResponse(id_tag_info=v16.AuthorizeResponseIdTagInfo(status=status))


def status_notification(session: Session, req: v16.StatusNotificationRequest) -> v16.StatusNotificationResponse:
    """Answered before the commit (the durability rule allows it for statuses)."""
    services = session.services
    at = req.timestamp if req.timestamp is not UNSET else now()
    services.writer.add(ops.ConnectorStatus(session.charger_id, 0, i64(req.connector_id), req.status,
                                            req.error_code, at, req.info or ""))
    return STATUS_NOTIFICATION_ACCEPTED


async def start_transaction(session: Session, req: v16.StartTransactionRequest) -> v16.StartTransactionResponse:
    """Deferred: the id tag's status and a new transaction id first. A retry of the same
    start (same connector, tag, meter and time) gets the first one's id from the store."""
    services = session.services
    status = await tag_status(session, req.id_tag)
    new_id = await services.tx_ids.next()
    tx = await services.writer.add(ops.StartTransaction(
        session.charger_id, str(new_id), i64(req.connector_id), req.id_tag, float(req.meter_start), req.timestamp,
        i64(req.reservation_id) if req.reservation_id is not UNSET else None))
    return v16.StartTransactionResponse(id_tag_info=v16.StartTransactionResponseIdTagInfo(status=status),
                                        transaction_id=int(tx))


def meter_values_several(session: Session, readings: list[ops.MeterSample]) -> Deferred[v16.MeterValuesResponse]:
    """MeterValues with several readings: every reading committed, then the answer. The
    common case (no reading, or one) is answered by ``meter_values_16`` (compiled), which
    calls this for the rest. Their ``transaction.meter`` events come from the outbox."""
    writer = session.services.writer
    return after_commits([writer.add(op) for op in readings], METER_VALUES_ACCEPTED)


def stop_transaction(session: Session, req: v16.StopTransactionRequest) -> Deferred[v16.StopTransactionResponse]:
    """The transaction's last readings and its stop are written now, in order; with an id
    tag the answer waits for its status too."""
    writer = session.services.writer
    tx = str(req.transaction_id)
    stop = ops.StopTransaction(session.charger_id, tx, float(req.meter_stop), req.timestamp,
                               req.reason or "", req.id_tag or "")
    readings = _twin().samples_16(session.charger_id, tx, 0, req.transaction_data) \
        if req.transaction_data is not UNSET else []
    writes = [writer.add(op) for op in readings]
    writes.append(writer.add(stop))
    return _stopped(session, req, writes)


async def _stopped(session: Session, req: v16.StopTransactionRequest,
                   writes: list[asyncio.Future]) -> v16.StopTransactionResponse:
    status = await tag_status(session, req.id_tag) if req.id_tag is not UNSET else None
    await asyncio.gather(*writes)
    if status is None:
        return v16.StopTransactionResponse()
    return v16.StopTransactionResponse(id_tag_info=v16.StopTransactionResponseIdTagInfo(status=status))


def _wh_16(sv: Any) -> float | None:
    """1.6: a decimal string in Wh (the default) or kWh."""
    try:
        value = float(sv.value)
    except ValueError:
        return None
    return finite(value * 1000.0 if sv.unit == "kWh" else value)


def energy_16(sampled: list) -> float | None:
    return energy_register(sampled, _wh_16)


def samples_16(charger_id: str, tx: str, connector: int, meter_value: list) -> list[MeterSample]:
    """A ``MeterSample`` for each MeterValue with an energy reading (``energy_16``), in
    order; the connector clamped to 64 bits."""
    samples = []
    for mv in meter_value:
        wh = energy_16(mv.sampled_value)
        if wh is not None:
            samples.append(MeterSample(charger_id, tx, mv.timestamp, wh, i64(connector)))
    return samples


def meter_values_16(several: Callable[..., Any], commit: Callable[..., Any],
                    accepted: Any) -> Callable[[Any, Any], Any]:
    """The MeterValues handler. The common case is answered here: no reading: ``accepted``
    at once; one reading: ``commit(reading, accepted)``. Several go to ``several(session,
    readings)`` (``meter_values_several``). No event is built here: the store derives the
    ``transaction.meter`` events of each committed batch (``store/events.py``)."""

    def meter_values(session: Any, req: Any) -> Any:
        tx = str(req.transaction_id) if req.transaction_id is not UNSET else ""
        readings = samples_16(session.charger_id, tx, req.connector_id, req.meter_value)
        if not readings:
            return accepted
        if len(readings) == 1:
            return commit(readings[0], accepted)
        return several(session, readings)
    return meter_values


def data_transfer(session: Session, req: v16.DataTransferRequest) -> v16.DataTransferResponse:
    return route_data_transfer(session, req, UNKNOWN_VENDOR)


def sign_certificate(session: Session, req: v16.SignCertificateRequest) -> v16.SignCertificateResponse:
    """Signed by the CSMS CA when the CSR's CN is this charger; CertificateSigned follows."""
    return security.sign_certificate(session, req, v16)


def security_event_notification(session: Session, req: v16.SecurityEventNotificationRequest
                                ) -> Deferred[v16.SecurityEventNotificationResponse]:
    """Stored, published as charger.security_event, then answered."""
    return security.security_event_notification(session, req, v16)


def handlers(services: Services) -> dict[str, Handler]:
    """Action name -> handler for a worker's 1.6 sessions; every other charger-initiated
    action gets its default answer (``common.complete``)."""
    table: dict[str, Handler] = {
        "BootNotification": boot_notification,
        "Heartbeat": heartbeat,
        "Authorize": authorize,
        "StatusNotification": status_notification,
        "StartTransaction": start_transaction,
        # compiled; several readings go to meter_values_several
        "MeterValues": _twin().meter_values_16(meter_values_several, Commit, METER_VALUES_ACCEPTED),
        "StopTransaction": stop_transaction,
        "DataTransfer": data_transfer,
        "SignCertificate": sign_certificate,
        "SecurityEventNotification": security_event_notification,
    }
    return complete("1.6", v16, table)


def _twin() -> Any:
    """The compiled ``_ocpp16`` unless absent or ``CHARGEYARD_PURE=1``, else this module."""
    return twins.load(__name__)
