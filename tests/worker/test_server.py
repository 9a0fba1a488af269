"""The worker in-process (``worker/server.py``) on a real socket with a SQLite store:
last_seen follows the chargers' messages, the events' fields, and the lifecycle log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from chargeyard.router.registry import LocalRegistry
from chargeyard.store import make_store
from chargeyard.store.base import ChargerSeen
from chargeyard.worker.server import Worker
from chargeyard.worker.settings import WorkerSettings

BOOT16 = '[2,"b","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"AC22"}]'


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def worker(tmp_path: Path, sinks: list | None = None, **settings: object) -> AsyncIterator[Worker]:
    store = make_store("sqlite", data_dir=tmp_path)
    await store.open()
    registry = LocalRegistry("w1")
    await registry.start()
    w = Worker(WorkerSettings(worker_id="w1", host="127.0.0.1", ws_port=0, **settings),  # type: ignore[arg-type]
               store, registry, sinks)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await registry.stop()
        await store.close()


def url(w: Worker, cid: str) -> str:
    return f"ws://127.0.0.1:{w.port}/ocpp/{cid}"


async def rpc(ws, frame: str | list) -> list:
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def meter_values(i: int, tx: int | None = None) -> list:
    body: dict = {"connectorId": 1, "meterValue": [
        {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": str(1000 + i)}]}]}
    if tx is not None:
        body["transactionId"] = tx
    return [2, f"m{i}", "MeterValues", body]


async def until(check, timeout: float = 5.0, step: float = 0.02):
    """``await check()`` until it is truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await check()
        if got or loop.time() > deadline:
            return got
        await asyncio.sleep(step)


# -- last_seen (issue 19, bug 4) ------------------------------------------------------

def test_last_seen_follows_a_charger_that_only_meters(tmp_path):
    async def scenario():
        async with worker(tmp_path, seen_interval=0.1) as w:
            async with websockets.connect(url(w, "meter-only"), subprotocols=["ocpp1.6"]) as ws:
                await rpc(ws, BOOT16)
                booted = (await w.store.get_charger("meter-only"))["last_seen"]
                for i in range(50):  # each reading answered after its commit; no Heartbeat
                    assert (await rpc(ws, meter_values(i)))[0] == 3

                    async def moved():
                        return (await w.store.get_charger("meter-only"))["last_seen"] > booted
                    if await until(moved, timeout=0.5):
                        break
                else:
                    pytest.fail(f"last_seen stayed at the boot time {booted}")
    run(scenario())


def test_last_seen_is_one_write_per_interval_not_per_message(tmp_path):
    async def scenario():
        async with worker(tmp_path, seen_interval=3600) as w:
            written: list[ChargerSeen] = []
            add = w.writer.add

            def counting_add(op):
                if type(op) is ChargerSeen:
                    written.append(op)
                return add(op)
            w.writer.add = counting_add  # type: ignore[method-assign]
            async with websockets.connect(url(w, "cp-many"), subprotocols=["ocpp1.6"]) as ws:
                for i in range(20):
                    await rpc(ws, meter_values(i))
                assert written == []
                w.sweeps.write_all_seen()  # what the periodic task does every seen_interval
                w.sweeps.write_all_seen()  # no message since: nothing
                assert [op.charger_id for op in written] == ["cp-many"]
                last_message = w.sessions["cp-many"]._last
                await rpc(ws, meter_values(20))
                assert w.sessions["cp-many"]._last > last_message
                w.sweeps.write_all_seen()
                assert len(written) == 2 and written[1].at >= written[0].at
    run(scenario())


# -- events (issue 19, bug 5) -----------------------------------------------------------

def test_the_meter_event_carries_the_register_as_meter_wh(tmp_path):
    events: list[dict] = []

    async def scenario():
        async with worker(tmp_path, [events.append], accept_unknown_tags=True) as w:
            async with websockets.connect(url(w, "ev-16"), subprotocols=["ocpp1.6"]) as ws:
                start = await rpc(ws, [2, "s", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1000,
                                                                    "timestamp": "2026-01-01T00:00:00Z"}])
                await rpc(ws, meter_values(500, tx=start[2]["transactionId"]))
            async with websockets.connect(url(w, "ev-201"), subprotocols=["ocpp2.0.1"]) as ws:
                for seq, kind in enumerate(("Started", "Updated")):
                    await rpc(ws, [2, f"t{seq}", "TransactionEvent", {
                        "eventType": kind, "timestamp": "2026-01-01T00:00:00Z", "triggerReason": "MeterValuePeriodic",
                        "seqNo": seq, "transactionInfo": {"transactionId": "TX-1"},
                        "meterValue": [{"timestamp": "2026-01-01T00:00:00Z",
                                        "sampledValue": [{"value": 2000.0 + seq}]}]}])
    run(scenario())
    meters = {e["charger_id"]: e["data"] for e in events if e["type"] == "transaction.meter"}
    assert meters["ev-16"]["meter_wh"] == 1500.0 and "energy_wh" not in meters["ev-16"]
    assert meters["ev-201"]["meter_wh"] == 2001.0 and "energy_wh" not in meters["ev-201"]


# -- log lines (issue 19, rough edge 9) ---------------------------------------------------

def _lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if hasattr(r, "fields") and r.levelno == logging.INFO]


def test_lifecycle_log_lines(tmp_path, caplog):
    async def scenario():
        async with worker(tmp_path) as w:
            async with websockets.connect(url(w, "log-1"), subprotocols=["ocpp1.6"]) as ws:
                await rpc(ws, BOOT16)
                before = len(caplog.records)
                for i in range(10):
                    await rpc(ws, '[2,"h%d","Heartbeat",{}]' % i)
                    await rpc(ws, meter_values(i))
                assert len(caplog.records) == before  # nothing per message
                async with websockets.connect(url(w, "log-1"), subprotocols=["ocpp1.6"]):
                    await asyncio.wait_for(ws.wait_closed(), 5)

                    async def both_closed():
                        return sum(f["event"] == "disconnect" for f in _lines(caplog)) >= 1
                    assert await until(both_closed)
            with pytest.raises(websockets.exceptions.InvalidStatus):
                async with websockets.connect(url(w, "log-2"), subprotocols=["ocpp9"]):
                    pass

            async def all_closed():
                return not w.sessions
            assert await until(all_closed)

    with caplog.at_level(logging.INFO, logger="chargeyard.worker"):
        run(scenario())
    lines = _lines(caplog)
    by_event: dict[str, list[dict]] = {}
    for f in lines:
        by_event.setdefault(f["event"], []).append(f)
    connect = by_event["connect"][0]
    assert connect["charger_id"] == "log-1" and connect["protocol"] == "ocpp1.6"
    assert connect["address"].startswith("127.0.0.1:")
    assert by_event["boot"] == [{"event": "boot", "charger_id": "log-1", "vendor": "ACME", "model": "AC22",
                                 "firmware": ""}]
    assert [f["charger_id"] for f in by_event["takeover"]] == ["log-1"]
    replaced = next(f for f in by_event["disconnect"] if f["reason"] == "takeover")
    assert replaced["charger_id"] == "log-1" and replaced["code"] == 1000 and replaced["duration_s"] >= 0
    assert replaced["close_reason"] == "replaced by a new connection"
    assert [(f["reason"], f["status"]) for f in by_event["refused"]] == [("no_subprotocol", 400)]
    assert len(by_event["connect"]) == 2 and len(by_event["disconnect"]) == 2


def test_the_json_log_line_carries_the_fields():
    from chargeyard.logs import JsonFormatter

    record = logging.LogRecord("chargeyard.worker", logging.INFO, __file__, 1, "charger connected", None, None)
    record.fields = {"event": "connect", "charger_id": "CP-1", "protocol": "ocpp1.6", "address": "127.0.0.1:5"}
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "charger connected" and line["event"] == "connect" and line["charger_id"] == "CP-1"
