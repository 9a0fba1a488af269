"""Codec micro-benchmark: decode + validate + encode the reply, messages/s on one core.

    taskset -c 1 .venv/bin/python -m chargeyard.bench.codec      (make bench-codec)

Three messages (1.6 BootNotification, 1.6 MeterValues with 4 sampledValues, 2.0.1
TransactionEvent Updated with a meterValue), each through:

* ``cython`` / ``python``: ``Codec.decode`` (frame split, payload decoded into the action's
  Struct = validation) and ``encode_result`` of the reply Struct;
* ``ocpp``: the ``ocpp`` library's own path: ``ocpp.messages.unpack`` (json.loads), the
  jsonschema validation ``ocpp.messages.validate_payload`` runs, and ``json.dumps`` of the
  reply via ``CallResult.to_json``;
* ``orjson``: ``orjson.loads`` + ``orjson.dumps`` of the same reply, no validation at all.

Best of several repetitions. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys
import time
from typing import Any, Callable

TS = "2024-05-01T10:00:00Z"
NOW = datetime.datetime(2024, 5, 1, 10, 0, 0, tzinfo=datetime.timezone.utc)

MESSAGES: dict[str, tuple[str, bytes, str, dict]] = {
    # name: (version, frame, action, reply payload as JSON object)
    "boot16": ("1.6", json.dumps([2, "19223201", "BootNotification", {
        "chargePointVendor": "VendorX", "chargePointModel": "SingleSocketCharger",
        "chargePointSerialNumber": "SN-000123", "firmwareVersion": "1.2.3"}],
        separators=(",", ":")).encode(),
        "BootNotification", {"status": "Accepted", "currentTime": TS, "interval": 300}),
    "meter16": ("1.6", json.dumps([2, "a7c1", "MeterValues", {
        "connectorId": 1, "transactionId": 4711, "meterValue": [{"timestamp": TS, "sampledValue": [
            {"value": "12345.6", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
             "unit": "Wh", "location": "Outlet"},
            {"value": "7200.0", "context": "Sample.Periodic", "measurand": "Power.Active.Import", "unit": "W"},
            {"value": "31.9", "context": "Sample.Periodic", "measurand": "Current.Import", "unit": "A",
             "phase": "L1"},
            {"value": "230.1", "context": "Sample.Periodic", "measurand": "Voltage", "unit": "V",
             "phase": "L1-N"}]}]}], separators=(",", ":")).encode(),
        "MeterValues", {}),
    "txevent201": ("2.0.1", json.dumps([2, "5d2e", "TransactionEvent", {
        "eventType": "Updated", "timestamp": TS, "triggerReason": "MeterValuePeriodic", "seqNo": 12,
        "transactionInfo": {"transactionId": "b1c2d3e4-0001", "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": TS, "sampledValue": [
            {"value": 12345.6, "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
             "unitOfMeasure": {"unit": "Wh"}},
            {"value": 7200.0, "measurand": "Power.Active.Import"}]}]}], separators=(",", ":")).encode(),
        "TransactionEvent", {}),
}


def best_rate(fn: Callable[[], Any], n: int, reps: int) -> float:
    """Messages per second: the best of ``reps`` runs of ``n`` calls."""
    best = float("inf")
    gc.collect()
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def codec_runner(codec_cls: Any, version: str, frame: bytes, action: str) -> Callable[[], Any]:
    from chargeyard.core.framing import MODULES

    codec = codec_cls(version)
    reply_type = MODULES[version].RESPONSES[action]
    kwargs = {"BootNotification": dict(status="Accepted", current_time=NOW, interval=300)}.get(action, {})
    reply = reply_type(**kwargs)  # built once, like the other contenders' reply dicts
    decode, encode = codec.decode, codec.encode_result
    probe = decode(frame)
    assert type(probe).__name__ == "Call", probe

    def run() -> bytes:
        msg = decode(frame)
        return encode(msg.message_id, reply)
    return run


def ocpp_runner(version: str, frame: bytes, reply: dict) -> Callable[[], Any]:
    from ocpp import messages as om

    text = frame.decode()

    def run() -> str:
        msg = om.unpack(text)
        om._validate_payload(msg, version)  # what validate_payload runs (without the executor)
        return msg.create_call_result(reply).to_json()
    run()
    return run


def orjson_runner(frame: bytes, reply: dict) -> Callable[[], Any]:
    import orjson

    loads, dumps = orjson.loads, orjson.dumps

    def run() -> bytes:
        msg = loads(frame)
        return dumps([3, msg[1], reply])
    return run


def main() -> int:
    from chargeyard.core import IMPL, twins

    PyCodec = twins.load("chargeyard.core.codec", pure=True).Codec
    try:
        CCodec = twins.load("chargeyard.core.codec", pure=False).Codec
    except ImportError:
        CCodec = None
    quick = os.environ.get("CHARGEYARD_BENCH_QUICK") == "1"
    n_fast, n_slow, reps = (2000, 200, 3) if quick else (40000, 2000, 7)
    rows: dict[str, dict[str, float]] = {}
    for name, (version, frame, action, reply) in MESSAGES.items():
        row: dict[str, float] = {}
        if CCodec is not None:
            row["cython"] = best_rate(codec_runner(CCodec, version, frame, action), n_fast, reps)
        row["python"] = best_rate(codec_runner(PyCodec, version, frame, action), n_fast, reps)
        row["orjson"] = best_rate(orjson_runner(frame, reply), n_fast, reps)
        row["ocpp"] = best_rate(ocpp_runner(version, frame, reply), n_slow, reps)
        rows[name] = row
    main_impl = "cython" if CCodec is not None else "python"
    cols = [c for c in ("cython", "python", "orjson", "ocpp") if c in rows["boot16"]]
    print(f"codec benchmark, messages/s on one core (best of {reps}); "
          f"CPU affinity {sorted(os.sched_getaffinity(0))}, python {sys.version.split()[0]}")
    print(f"{'message':<12}" + "".join(f"{c:>12}" for c in cols)
          + f"{'vs ocpp':>10}{'vs orjson':>11}{'py vs ocpp':>12}")
    result: dict[str, Any] = {"codec": main_impl, "default_impl": IMPL}
    vs_ocpp, vs_orjson, py_vs_ocpp, py_vs_orjson = [], [], [], []
    for name, row in rows.items():
        r1 = row[main_impl] / row["ocpp"]
        r2 = row[main_impl] / row["orjson"]
        vs_ocpp.append(r1)
        vs_orjson.append(r2)
        py_vs_ocpp.append(row["python"] / row["ocpp"])
        py_vs_orjson.append(row["python"] / row["orjson"])
        print(f"{name:<12}" + "".join(f"{row[c]:>12,.0f}" for c in cols)
              + f"{r1:>9.1f}x{r2:>10.2f}x{py_vs_ocpp[-1]:>11.1f}x")
        for c in cols:
            result[f"{name}_{c}_msgs_per_s"] = round(row[c])
        result[f"{name}_ratio_vs_ocpp"] = round(r1, 2)
        result[f"{name}_ratio_vs_orjson"] = round(r2, 3)
    result["ratio_vs_ocpp"] = round(min(vs_ocpp), 2)
    result["ratio_vs_orjson"] = round(min(vs_orjson), 3)
    result["python_ratio_vs_ocpp"] = round(min(py_vs_ocpp), 2)
    result["python_ratio_vs_orjson"] = round(min(py_vs_orjson), 3)
    result["targets_met"] = result["ratio_vs_ocpp"] >= 50 and result["ratio_vs_orjson"] >= 0.8
    print(f"min ratio vs ocpp {result['ratio_vs_ocpp']}x (target >= 50x), vs orjson "
          f"{result['ratio_vs_orjson']}x (target >= 0.8x); pure-Python twin {result['python_ratio_vs_ocpp']}x"
          f" / {result['python_ratio_vs_orjson']}x")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
