"""Pre-encoded OCPP-J frames for the load generator.

The generator must be cheaper per message than the server it measures, so frames
are JSON-encoded once into a template with a ``%b`` hole for the message id (then, for
the 2.0.1 TransactionEvent, a ``%d`` hole for ``seqNo``) and, in metering messages, a
``%06d`` hole for the microseconds of the timestamp (the generator fills in a per-charger
counter: every reading of a charger has its own timestamp, as a real charger's do);
sending a message is one ``%`` formatting. Templates are rebuilt about once a second per
charger, so the timestamp's second and the energy register move forward like a real
charger's.

Replies are matched by message id without parsing the JSON (:func:`reply_id`).
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

OCPP16 = "ocpp1.6"
OCPP201 = "ocpp2.0.1"
PROTOCOLS = (OCPP16, OCPP201)

ID_TAG = "BENCH0001"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


STAMP = "@stamp@"  # a timestamp in a template payload: this second, microseconds to fill in


def _template(action: str, payload: dict, seq_hole: bool = False) -> bytes:
    """``[2,"%b","Action",{...}]`` with ``%`` escaped; ``seqNo`` becomes ``%d`` and
    every ``STAMP`` value this second's timestamp with a ``%06d`` microseconds hole."""
    body = orjson.dumps(payload).replace(b"%", b"%%")
    if seq_hole:
        body = body.replace(b'"seqNo":-424242', b'"seqNo":%d')
    second = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "")
    body = body.replace(orjson.dumps(STAMP), b'"' + second.encode() + b'.%06dZ"')
    return b'[2,"%b",' + orjson.dumps(action) + b"," + body + b"]"


def call(action: str, payload: dict, mid: bytes) -> bytes:
    """One CALL frame, encoded now (setup path, not the hot path)."""
    return b'[2,"' + mid + b'",' + orjson.dumps(action) + b"," + orjson.dumps(payload) + b"]"


def reply_id(data: bytes) -> bytes:
    """Message id of an OCPP-J frame, found between the first two quotes."""
    q1 = data.find(b'"')
    return data[q1 + 1:data.find(b'"', q1 + 1)]


def reply_payload(data: bytes):
    """Full parse of a CALLRESULT's payload (setup path only)."""
    msg = orjson.loads(data)
    if msg[0] != 3:
        return None
    return msg[2]


# ---------------------------------------------------------------- OCPP 1.6

def boot16() -> tuple[str, dict]:
    return "BootNotification", {
        "chargePointVendor": "Chargeyard",
        "chargePointModel": "CY-Sim-22",
        "chargePointSerialNumber": "SIM-0001",
        "firmwareVersion": "1.0.0",
    }


def status16(status: str = "Available") -> tuple[str, dict]:
    return "StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": now_iso()}


def start16(meter_start: int) -> tuple[str, dict]:
    return "StartTransaction", {
        "connectorId": 1, "idTag": ID_TAG, "meterStart": meter_start, "timestamp": now_iso()}


def meter_values16(tx_id: int, energy_wh: int, n_values: int = 4) -> bytes:
    """MeterValues template: Energy register (Wh), power, current and voltage."""
    sampled = [
        {"value": str(energy_wh), "context": "Sample.Periodic", "format": "Raw",
         "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
        {"value": "11040.0", "context": "Sample.Periodic", "format": "Raw",
         "measurand": "Power.Active.Import", "location": "Outlet", "unit": "W"},
        {"value": "16.0", "context": "Sample.Periodic", "format": "Raw",
         "measurand": "Current.Import", "phase": "L1", "location": "Outlet", "unit": "A"},
        {"value": "230.0", "context": "Sample.Periodic", "format": "Raw",
         "measurand": "Voltage", "phase": "L1-N", "location": "Outlet", "unit": "V"},
    ]
    return _template("MeterValues", {
        "connectorId": 1,
        "transactionId": tx_id,
        "meterValue": [{"timestamp": STAMP, "sampledValue": sampled[:max(1, n_values)]}],
    })


def heartbeat_template() -> bytes:
    return _template("Heartbeat", {})


# ---------------------------------------------------------------- OCPP 2.0.1

def boot201() -> tuple[str, dict]:
    return "BootNotification", {
        "reason": "PowerUp",
        "chargingStation": {"model": "CY-Sim-22", "vendorName": "Chargeyard",
                            "serialNumber": "SIM-0001", "firmwareVersion": "1.0.0"},
    }


def status201(status: str = "Available") -> tuple[str, dict]:
    return "StatusNotification", {
        "timestamp": now_iso(), "connectorStatus": status, "evseId": 1, "connectorId": 1}


def _sampled201(energy_wh: int, n_values: int) -> list[dict]:
    sampled = [
        {"value": float(energy_wh), "context": "Sample.Periodic",
         "measurand": "Energy.Active.Import.Register", "location": "Outlet",
         "unitOfMeasure": {"unit": "Wh"}},
        {"value": 11040.0, "context": "Sample.Periodic", "measurand": "Power.Active.Import",
         "location": "Outlet", "unitOfMeasure": {"unit": "W"}},
        {"value": 16.0, "context": "Sample.Periodic", "measurand": "Current.Import",
         "phase": "L1", "location": "Outlet", "unitOfMeasure": {"unit": "A"}},
        {"value": 230.0, "context": "Sample.Periodic", "measurand": "Voltage",
         "phase": "L1-N", "location": "Outlet", "unitOfMeasure": {"unit": "V"}},
    ]
    return sampled[:max(1, n_values)]


def start201(tx_id: str, energy_wh: int) -> tuple[str, dict]:
    return "TransactionEvent", {
        "eventType": "Started", "timestamp": now_iso(), "triggerReason": "Authorized",
        "seqNo": 0, "transactionInfo": {"transactionId": tx_id, "chargingState": "Charging"},
        "idToken": {"idToken": ID_TAG, "type": "ISO14443"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": now_iso(), "sampledValue": _sampled201(energy_wh, 1)}],
    }


def tx_event201(tx_id: str, energy_wh: int, n_values: int = 4) -> bytes:
    """TransactionEvent(Updated) template with holes for message id, seqNo and the
    microseconds of its two timestamps."""
    return _template("TransactionEvent", {
        "eventType": "Updated", "timestamp": STAMP, "triggerReason": "MeterValuePeriodic",
        "seqNo": -424242, "transactionInfo": {"transactionId": tx_id, "chargingState": "Charging"},
        "meterValue": [{"timestamp": STAMP, "sampledValue": _sampled201(energy_wh, n_values)}],
    }, seq_hole=True)


def boot(protocol: str) -> tuple[str, dict]:
    return boot16() if protocol == OCPP16 else boot201()


def status(protocol: str, st: str = "Available") -> tuple[str, dict]:
    return status16(st) if protocol == OCPP16 else status201(st)


def callerror_not_implemented(mid: bytes, protocol: str) -> bytes:
    return b'[4,"' + mid + b'","NotImplemented","bench charger",{}]'
