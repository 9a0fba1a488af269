"""Who initiates each OCPP action.

The JSON schemas say what a message looks like but not who may send it; the
specifications do. These tables are hand-kept from the OCPP 1.6 (with the
security extension), 2.0.1 and 2.1 specifications. ``DataTransfer`` goes both
ways. Anything in a version's schema set that is not listed as charger-initiated
is CSMS-initiated. ``tests/worker/test_handlers.py`` checks that every charger-initiated
action has a handler.
"""

from __future__ import annotations

CHARGER_INITIATED_16 = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction",
    # security extension
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate",
    "SignedFirmwareStatusNotification",
})

CHARGER_INITIATED_201 = frozenset({
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer",
    "FirmwareStatusNotification", "Get15118EVCertificate", "GetCertificateStatus",
    "Heartbeat", "LogStatusNotification", "MeterValues", "NotifyChargingLimit",
    "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
    "PublishFirmwareStatusNotification", "ReportChargingProfiles",
    "ReservationStatusUpdate", "SecurityEventNotification", "SignCertificate",
    "StatusNotification", "TransactionEvent",
})

CHARGER_INITIATED_21 = CHARGER_INITIATED_201 | frozenset({
    "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus",
    "NotifyDERAlarm", "NotifyDERStartStop", "NotifyPeriodicEventStream",
    "NotifyPriorityCharging", "NotifySettlement", "OpenPeriodicEventStream",
    "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation",
})

BOTH_WAYS = frozenset({"DataTransfer"})

CHARGER_INITIATED = {
    "1.6": CHARGER_INITIATED_16,
    "2.0.1": CHARGER_INITIATED_201,
    "2.1": CHARGER_INITIATED_21,
}
