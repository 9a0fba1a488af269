"""Action handlers per OCPP version: ``handler(session, request) -> response``.

A handler returns the response Struct when it can answer at once (Heartbeat,
StatusNotification, notifications), or a future/coroutine when the answer must
wait: transaction messages are answered only after their batch commit
(ARCHITECTURE.md, durability rule), Authorize after the id-tag lookup.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.directions import CHARGER_INITIATED
from ..core.messages import v16, v21, v201
from ..store import base as ops
from . import metrics as m
from . import meter
from .meter import energy_201, i64
from .writer import Commit

_METER = meter.select()  # MeterValues 1.6 readings, compiled unless CHARGEYARD_PURE=1

if TYPE_CHECKING:
    from .server import Worker
    from .session import Session

log = logging.getLogger("chargeyard.worker")
UTC = dt.timezone.utc

Handler = Callable[["Session", Any], Any]

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


UNSET = msgspec.UNSET


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


class Reply:
    """Answer ``response`` once ``future`` (a store write) has committed."""

    __slots__ = ("future", "response")

    def __init__(self, future: asyncio.Future, response: Any) -> None:
        self.future = future
        self.response = response


def after(futs: list[asyncio.Future], response: Any) -> asyncio.Future:
    """A future resolved with ``response`` once every future in ``futs`` succeeded
    (for the rare message that needs several store writes; one write: :class:`Reply`)."""
    out = asyncio.get_running_loop().create_future()
    left = [len(futs)]

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        if f.cancelled() or f.exception() is not None:
            out.set_exception(f.exception() or asyncio.CancelledError())
            return
        left[0] -= 1
        if left[0] == 0:
            out.set_result(response)
    for f in futs:
        f.add_done_callback(done)
    if not futs:
        out.set_result(response)
    return out


class Common:
    """What the handlers of every version share."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.settings = worker.settings
        self.writer = worker.writer
        self.auth = worker.auth
        self.data_transfer: dict[str, Callable[[Session, Any], Any]] = worker.data_transfer

    def boot_admitted(self) -> bool:
        return self.w.boots_in_flight < self.settings.max_concurrent_boots

    def pending_interval(self) -> int:
        m.BOOTS_PENDING.inc()
        base = self.settings.boot_retry_interval
        return max(1, int(base * (0.5 + random.random())))

    def boot(self, session: Session, vendor: str, model: str, serial: str, firmware: str,
             make_response: Callable[[str, int], Any]) -> Any:
        if not self.boot_admitted():
            return make_response("Pending", self.pending_interval())
        session.vendor, session.model = vendor, model
        session.leniency = self.w.leniency.for_charger(session.charger_id, vendor, model)
        self.w.boots_in_flight += 1
        fut = self.writer.add(ops.UpsertCharger(session.charger_id, session.protocol, vendor, model,
                                                serial, firmware, now()))

        def booted(_: asyncio.Future) -> None:
            self.w.boots_in_flight -= 1
        fut.add_done_callback(booted)
        self.w.emit(session, "charger.booted", {"vendor": vendor, "model": model, "firmware": firmware})
        return Reply(fut, make_response("Accepted", self.settings.heartbeat_interval))

    def data_transfer_handler(self, T: Any) -> Handler:
        """DataTransfer goes to the handler registered for its vendorId, else UnknownVendorId."""
        unknown = T.DataTransferResponse(status="UnknownVendorId")

        def DataTransfer(s: Session, r: Any) -> Any:
            h = self.data_transfer.get(r.vendor_id)
            return unknown if h is None else h(s, r)
        return DataTransfer

    def seen(self, session: Session) -> None:
        self.writer.add(ops.ChargerSeen(session.charger_id, now()))


def handlers_16(worker: Worker) -> dict[str, Handler]:
    c = Common(worker)
    T = v16
    METER_VALUES_16 = T.MeterValuesResponse()

    def id_tag_info(status: str) -> Any:
        return T.AuthorizeResponseIdTagInfo(status=status)

    def BootNotification(s: Session, r: Any) -> Any:
        return c.boot(s, r.charge_point_vendor, r.charge_point_model,
                      r.charge_point_serial_number or r.charge_box_serial_number or "",
                      r.firmware_version or "",
                      lambda st, iv: T.BootNotificationResponse(status=st, current_time=now(), interval=iv))

    def Heartbeat(s: Session, r: Any) -> Any:
        c.seen(s)
        return T.HeartbeatResponse(current_time=now())

    async def Authorize(s: Session, r: Any) -> Any:
        return T.AuthorizeResponse(id_tag_info=id_tag_info(await c.auth.status(r.id_tag)))

    def StatusNotification(s: Session, r: Any) -> Any:
        at = r.timestamp if r.timestamp is not UNSET else now()
        c.writer.add(ops.ConnectorStatus(s.charger_id, 0, i64(r.connector_id), r.status, r.error_code, at,
                                         r.info or ""))
        worker.emit(s, "charger.status", {"connector_id": r.connector_id, "status": r.status,
                                          "error_code": r.error_code, "at": at.isoformat()})
        return T.StatusNotificationResponse()

    async def StartTransaction(s: Session, r: Any) -> Any:
        status = await c.auth.status(r.id_tag)
        tx_new = await worker.tx_ids.next()
        tx = await c.writer.add(ops.StartTransaction(
            s.charger_id, str(tx_new), i64(r.connector_id), r.id_tag, float(r.meter_start), r.timestamp,
            i64(r.reservation_id) if r.reservation_id is not UNSET else None))
        worker.emit(s, "transaction.started", {"transaction_id": tx, "connector_id": r.connector_id,
                                               "id_tag": r.id_tag, "meter_start_wh": float(r.meter_start),
                                               "at": r.timestamp.isoformat()})
        return T.StartTransactionResponse(id_tag_info=id_tag_info(status), transaction_id=int(tx))

    samples_16 = _METER.samples_16
    MeterSample = ops.MeterSample

    def _samples(s: Session, tx: str, connector: int, meter_value: list) -> list:
        return samples_16(s.charger_id, tx, connector, meter_value, MeterSample)

    def meter_values_rest(s: Session, r: Any, tx: str, samples: list, wants: bool) -> Any:
        """MeterValues with several readings, or whose event someone wants."""
        futs = [c.writer.add(op) for op in samples]
        fut = futs[0] if len(futs) == 1 else after(futs, None)
        if wants:
            last = (samples[-1].at, samples[-1].energy_wh)

            def publish(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    worker.emit(s, "transaction.meter", {"transaction_id": tx, "connector_id": r.connector_id,
                                                         "energy_wh": last[1], "at": last[0].isoformat()})
            fut.add_done_callback(publish)
        return Reply(fut, METER_VALUES_16)

    # the common path (one reading, no event wanted) compiled unless CHARGEYARD_PURE=1
    MeterValues = _METER.handler_16(worker.wants_events, MeterSample, Commit,
                                    METER_VALUES_16, meter_values_rest)

    async def StopTransaction(s: Session, r: Any) -> Any:
        tx = str(r.transaction_id)
        futs = []
        if r.transaction_data is not UNSET:
            futs = [c.writer.add(op) for op in _samples(s, tx, 0, r.transaction_data)]
        status = await c.auth.status(r.id_tag) if r.id_tag is not UNSET else None
        futs.append(c.writer.add(ops.StopTransaction(s.charger_id, tx, float(r.meter_stop), r.timestamp,
                                                     r.reason or "", r.id_tag or "")))
        await asyncio.gather(*futs)
        worker.emit(s, "transaction.ended", {"transaction_id": tx, "meter_stop_wh": float(r.meter_stop),
                                             "reason": r.reason or "", "at": r.timestamp.isoformat()})
        if status is None:
            return T.StopTransactionResponse()
        return T.StopTransactionResponse(id_tag_info=id_tag_info(status))

    DataTransfer = c.data_transfer_handler(T)

    table: dict[str, Handler] = {
        "BootNotification": BootNotification, "Heartbeat": Heartbeat, "Authorize": Authorize,
        "StatusNotification": StatusNotification, "StartTransaction": StartTransaction,
        "MeterValues": MeterValues, "StopTransaction": StopTransaction, "DataTransfer": DataTransfer,
    }
    return _complete("1.6", T, table)


def handlers_201(worker: Worker, T: Any = v201) -> dict[str, Handler]:
    """2.0.1 handlers; 2.1 reuses them with its own message types."""
    c = Common(worker)
    version = T.VERSION
    TX_EVENT_EMPTY = T.TransactionEventResponse()
    METER_VALUES = T.MeterValuesResponse()

    def BootNotification(s: Session, r: Any) -> Any:
        cs = r.charging_station
        return c.boot(s, cs.vendor_name, cs.model, cs.serial_number or "", cs.firmware_version or "",
                      lambda st, iv: T.BootNotificationResponse(status=st, current_time=now(), interval=iv))

    def Heartbeat(s: Session, r: Any) -> Any:
        c.seen(s)
        return T.HeartbeatResponse(current_time=now())

    def token_info(status: str) -> Any:
        return T.IdTokenInfoType(status=status if status != "ConcurrentTx" else "ConcurrentTx")

    async def Authorize(s: Session, r: Any) -> Any:
        return T.AuthorizeResponse(id_token_info=token_info(await c.auth.status(r.id_token.id_token)))

    def StatusNotification(s: Session, r: Any) -> Any:
        c.writer.add(ops.ConnectorStatus(s.charger_id, i64(r.evse_id), i64(r.connector_id), r.connector_status, "",
                                         r.timestamp))
        worker.emit(s, "charger.status", {"evse_id": r.evse_id, "connector_id": r.connector_id,
                                          "status": r.connector_status, "at": r.timestamp.isoformat()})
        return T.StatusNotificationResponse()

    def MeterValues(s: Session, r: Any) -> Any:
        samples = []
        for mv in r.meter_value:
            wh = energy_201(mv.sampled_value)
            if wh is not None:
                samples.append(ops.MeterSample(s.charger_id, "", mv.timestamp, wh, 0))
        if not samples:
            return METER_VALUES
        if len(samples) == 1:
            return Commit(samples[0], METER_VALUES)
        return after([c.writer.add(op) for op in samples], METER_VALUES)

    def TransactionEvent(s: Session, r: Any) -> Any:
        info = r.transaction_info
        wh = None
        if r.meter_value is not UNSET:
            for mv in r.meter_value:
                e = energy_201(mv.sampled_value)
                if e is not None:
                    wh = e
        evse_id = connector_id = 0
        if r.evse is not UNSET:
            evse_id = i64(r.evse.id)
            connector_id = i64(r.evse.connector_id or 0)
        tag = r.id_token.id_token if r.id_token is not UNSET else ""
        op = ops.TransactionEvent(s.charger_id, info.transaction_id, i64(r.seq_no), r.event_type, r.timestamp,
                                  r.trigger_reason, tag, evse_id, connector_id, wh,
                                  info.stopped_reason or "")
        wants = worker.wants_events(s.charger_id)
        if not tag and not wants:
            return Commit(op, TX_EVENT_EMPTY)
        fut = c.writer.add(op)
        if wants:
            kind = {"Started": "transaction.started", "Updated": "transaction.meter",
                    "Ended": "transaction.ended"}[r.event_type]

            def publish(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None and f.result():
                    worker.emit(s, kind, {
                        "transaction_id": info.transaction_id, "seq_no": r.seq_no, "event_type": r.event_type,
                        "energy_wh": wh, "evse_id": evse_id, "at": r.timestamp.isoformat(),
                        "stop_reason": info.stopped_reason or ""})
            fut.add_done_callback(publish)
        if not tag:
            return Reply(fut, TX_EVENT_EMPTY)

        async def with_token() -> Any:
            status = await c.auth.status(tag)
            await fut
            return T.TransactionEventResponse(id_token_info=token_info(status))
        return with_token()

    DataTransfer = c.data_transfer_handler(T)

    table: dict[str, Handler] = {
        "BootNotification": BootNotification, "Heartbeat": Heartbeat, "Authorize": Authorize,
        "StatusNotification": StatusNotification, "MeterValues": MeterValues,
        "TransactionEvent": TransactionEvent, "DataTransfer": DataTransfer,
    }
    if version == "2.1":
        def VatNumberValidation(s: Session, r: Any) -> Any:
            return T.VatNumberValidationResponse(vat_number=r.vat_number, status="Rejected")
        table["VatNumberValidation"] = VatNumberValidation

        def GetCertificateChainStatus(s: Session, r: Any) -> Any:
            # no OCSP/CRL client configured: every requested status is "Failed"
            return T.GetCertificateChainStatusResponse(certificate_status=[
                T.CertificateStatusType(certificate_hash_data=q.certificate_hash_data, source=q.source,
                                        status="Failed", next_update=now())
                for q in r.certificate_status_requests])
        table["GetCertificateChainStatus"] = GetCertificateChainStatus
    return _complete(version, T, table)


def _complete(version: str, T: Any, table: dict[str, Handler]) -> dict[str, Handler]:
    """Give every other charger-initiated action a schema-valid default answer."""
    for action in CHARGER_INITIATED[version]:
        if action in table or action not in T.REQUESTS:
            continue
        if action not in T.RESPONSES:  # 2.1 SEND-only messages (NotifyPeriodicEventStream)
            table[action] = lambda s, r: None
            continue
        response = msgspec.convert(DEFAULT_RESPONSES.get(action, {}), T.RESPONSES[action])
        table[action] = (lambda resp: lambda s, r: resp)(response)
    return table


def all_handlers(worker: Worker) -> dict[str, dict[str, Handler]]:
    return {"1.6": handlers_16(worker), "2.0.1": handlers_201(worker, v201), "2.1": handlers_201(worker, v21)}
