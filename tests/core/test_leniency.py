"""core/leniency.py: opt-in repairs, re-validated by the strict decoder."""

from __future__ import annotations

import datetime
import json

import pytest

from chargeyard.core import PayloadError, Tables
from chargeyard.core.leniency import RULES, relax
from chargeyard.core.messages import v16, v201

UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T16, T201, T21 = Tables("1.6"), Tables("2.0.1"), Tables("2.1")


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def strict_fails(tables: Tables, action: str, raw: bytes, kind: str = "request") -> None:
    with pytest.raises(PayloadError):
        tables.decode_payload(action, kind, raw)


def test_unknown_fields_dropped_at_any_depth() -> None:
    raw = j({"chargePointVendor": "V", "chargePointModel": "M", "vendorExtra": {"a": 1}})
    strict_fails(T16, "BootNotification", raw)
    out, used = relax(T16, "BootNotification", raw, {"unknown_fields"})
    assert out == v16.BootNotificationRequest(charge_point_vendor="V", charge_point_model="M")
    assert used == ["unknown_fields"]
    raw = j({"idTagInfo": {"status": "Accepted", "colour": "green"}})
    out, used = relax(T16, "Authorize", raw, {"unknown_fields"}, kind="response")
    assert out.id_tag_info.status == "Accepted" and used == ["unknown_fields"]
    # nested in an array of objects (2.0.1 TransactionEvent meterValue[].sampledValue[])
    raw = j({"eventType": "Updated", "timestamp": "2024-01-01T00:00:00Z", "triggerReason": "MeterValuePeriodic",
             "seqNo": 1, "transactionInfo": {"transactionId": "t"},
             "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": 1, "x": 2}]}]})
    out, used = relax(T201, "TransactionEvent", raw, {"unknown_fields"})
    assert out.meter_value[0].sampled_value[0].value == 1 and used == ["unknown_fields"]


def test_numeric_strings() -> None:
    raw = j({"connectorId": "1", "transactionId": " 42 ", "meterValue": [
        {"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "12.5"}]}]})
    strict_fails(T16, "MeterValues", raw)
    out, used = relax(T16, "MeterValues", raw, {"numeric_strings"})
    assert (out.connector_id, out.transaction_id) == (1, 42) and used == ["numeric_strings"]
    assert out.meter_value[0].sampled_value[0].value == "12.5"  # a string in the 1.6 schema: untouched
    # a float field, and "3.0" for an integer field
    raw = j({"eventType": "Updated", "timestamp": "2024-01-01T00:00:00Z", "triggerReason": "MeterValuePeriodic",
             "seqNo": "3.0", "transactionInfo": {"transactionId": "t"},
             "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "1.5e3"}]}]})
    out, used = relax(T201, "TransactionEvent", raw, {"numeric_strings"})
    assert out.seq_no == 3 and out.meter_value[0].sampled_value[0].value == 1500.0
    # not a number: still invalid, strict code
    with pytest.raises(PayloadError) as exc:
        relax(T16, "MeterValues", j({"connectorId": "one", "meterValue": []}), {"numeric_strings"})
    assert exc.value.code == "TypeConstraintViolation"
    # a number, but out of range for the schema: the repaired payload is still rejected
    with pytest.raises(PayloadError) as exc:
        relax(T201, "StatusNotification", j({"timestamp": "2024-01-01T00:00:00Z", "connectorStatus": "Available",
                                             "evseId": "1.5", "connectorId": "1"}), {"numeric_strings"})
    assert exc.value.code == "TypeConstraintViolation"


def test_enum_case() -> None:
    raw = j({"connectorId": 1, "errorCode": "noerror", "status": "AVAILABLE"})
    strict_fails(T16, "StatusNotification", raw)
    out, used = relax(T16, "StatusNotification", raw, {"enum_case"})
    assert (out.error_code, out.status) == ("NoError", "Available") and used == ["enum_case"]
    with pytest.raises(PayloadError) as exc:
        relax(T16, "StatusNotification", j({"connectorId": 1, "errorCode": "NoError", "status": "Free"}),
              {"enum_case"})
    assert exc.value.code == "PropertyConstraintViolation"


def test_missing_timestamps() -> None:
    raw = j({"connectorId": 1, "idTag": "T", "meterStart": 0})
    strict_fails(T16, "StartTransaction", raw)
    out, used = relax(T16, "StartTransaction", raw, {"missing_timestamps"}, now=NOW)
    assert out.timestamp == NOW and used == ["missing_timestamps"]
    # nested required date-time (meterValue[].timestamp), default "now" is UTC and recent
    raw = j({"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "1"}]}]})
    out, used = relax(T16, "MeterValues", raw, {"missing_timestamps"})
    ts = out.meter_value[0].timestamp
    assert ts.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(UTC) - ts).total_seconds()) < 60
    # other missing required fields are not invented
    with pytest.raises(PayloadError) as exc:
        relax(T16, "StartTransaction", j({"connectorId": 1, "meterStart": 0}), {"missing_timestamps"})
    assert exc.value.code == "OccurenceConstraintViolation"


def test_naive_timestamps() -> None:
    raw = j({"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2024-05-01T10:00:00.5"})
    strict_fails(T16, "StartTransaction", raw)
    out, used = relax(T16, "StartTransaction", raw, {"naive_timestamps"})
    assert out.timestamp == datetime.datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert used == ["naive_timestamps"]
    out, _ = relax(T16, "StartTransaction", j({"connectorId": 1, "idTag": "T", "meterStart": 0,
                                              "timestamp": "2024-05-01 10:00:00"}), {"naive_timestamps"})
    assert out.timestamp == datetime.datetime(2024, 5, 1, 10, tzinfo=UTC)
    with pytest.raises(PayloadError):
        relax(T16, "StartTransaction", j({"connectorId": 1, "idTag": "T", "meterStart": 0,
                                         "timestamp": "yesterday"}), {"naive_timestamps"})


def test_rules_combine_and_only_used_ones_are_reported() -> None:
    raw = j({"connectorId": "2", "errorCode": "NOERROR", "status": "available", "extra": True})
    out, used = relax(T16, "StatusNotification", raw, set(RULES))
    assert (out.connector_id, out.error_code, out.status) == (2, "NoError", "Available")
    assert used == ["unknown_fields", "numeric_strings", "enum_case"]
    # a rule that is not allowed is not applied
    with pytest.raises(PayloadError) as exc:
        relax(T16, "StatusNotification", raw, {"numeric_strings", "enum_case"})
    assert exc.value.code == "FormationViolation"
    # an already valid payload: no rule used
    out, used = relax(T16, "Heartbeat", b"{}", set(RULES))
    assert out == v16.HeartbeatRequest() and used == []


def test_errors() -> None:
    with pytest.raises(ValueError):
        relax(T16, "Heartbeat", b"{}", {"be_nice"})
    for raw in (b"[]", b"not json", b'"x"', b"{"):
        with pytest.raises(PayloadError) as exc:
            relax(T16, "Heartbeat", raw, set(RULES))
        assert exc.value.code == "FormationViolation"
    with pytest.raises(PayloadError) as exc:
        relax(T16, "NoSuchAction", b"{}", set(RULES))
    assert exc.value.code == "NotImplemented"
    with pytest.raises(PayloadError) as exc:
        relax(T201, "Heartbeat", b'{"x":1}', set())
    assert exc.value.code == "FormatViolation"


def test_2_1_and_responses() -> None:
    raw = j({"currentTime": "2024-05-01T10:00:00", "interval": "300", "status": "accepted"})
    out, used = relax(T21, "BootNotification", raw, set(RULES), kind="response")
    assert out.interval == 300 and out.status == "Accepted"
    assert used == ["numeric_strings", "enum_case", "naive_timestamps"]
    raw = j({"chargingStation": {"model": "M", "vendorName": "V", "firmware": "1"}, "reason": "powerup"})
    out, used = relax(T201, "BootNotification", raw, {"unknown_fields", "enum_case"})
    assert out == v201.BootNotificationRequest(
        charging_station=v201.ChargingStationType(model="M", vendor_name="V"), reason="PowerUp")
