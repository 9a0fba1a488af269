"""Operational behaviour: live events (SSE), drain on SIGTERM, admission control, rate
limits, idle timeout, one CSMS call in flight per charger, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time

import aiohttp
import pytest
import websockets

from tests.support import NodeProc, api_call

HB = '[2,"hb","Heartbeat",{}]'


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def rpc(ws, frame: str) -> list:
    await ws.send(frame)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def test_sse_stream_shows_status_and_transaction_updates(node):
    async def scenario():
        seen: list[dict] = []
        got_end = asyncio.Event()

        async def listen():
            async with aiohttp.ClientSession() as s:
                async with s.get(node.url("/api/v1/chargers/sse-1/events")) as r:
                    assert r.headers["Content-Type"].startswith("text/event-stream")
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            seen.append(json.loads(line[6:]))
                            if seen[-1]["type"] == "transaction.ended":
                                got_end.set()
                                return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        async with websockets.connect(node.ws("sse-1"), subprotocols=["ocpp1.6"]) as ws:
            await rpc(ws, '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Charging"}]')
            tx = (await rpc(ws, '[2,"2","StartTransaction",{"connectorId":1,"idTag":"S","meterStart":100,'
                                '"timestamp":"2026-01-01T00:00:00Z"}]'))[2]["transactionId"]
            await rpc(ws, json.dumps([2, "3", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                {"timestamp": "2026-01-01T00:01:00Z", "sampledValue": [{"value": "600"}]}]}]))
            await rpc(ws, json.dumps([2, "4", "StopTransaction", {"transactionId": tx, "meterStop": 900,
                                                                  "timestamp": "2026-01-01T00:02:00Z"}]))
            await asyncio.wait_for(got_end.wait(), 5)
        await task
        types = [e["type"] for e in seen]
        for t in ("charger.connected", "charger.status", "transaction.started", "transaction.meter",
                  "transaction.ended"):
            assert t in types, types
        meter = next(e for e in seen if e["type"] == "transaction.meter")
        assert meter["charger_id"] == "sse-1" and meter["data"]["meter_wh"] == 600  # the register
        assert "energy_wh" not in meter["data"]  # a transaction's energy_wh is the energy delivered
        assert {"id", "type", "source", "time", "charger_id", "data"} <= set(meter)

    run(scenario())


def test_one_operator_call_in_flight_per_charger(node):
    async def scenario():
        async with websockets.connect(node.ws("queue-1"), subprotocols=["ocpp1.6"]) as ws:
            await rpc(ws, HB)
            base = node.url("")
            path = "/api/v1/chargers/queue-1/calls/ClearCache"
            a = asyncio.create_task(api_call(base, "POST", path, {}))
            b = asyncio.create_task(api_call(base, "POST", path, {}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(asyncio.TimeoutError):  # the second waits for the first's answer
                await asyncio.wait_for(ws.recv(), 0.5)
            await ws.send(json.dumps([3, first[1], {"status": "Accepted"}]))
            second = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert second[1] != first[1]
            await ws.send(json.dumps([3, second[1], {"status": "Rejected"}]))
            results = sorted([(await a)[1]["result"]["status"], (await b)[1]["result"]["status"]])
            assert results == ["Accepted", "Rejected"]
            # a charger answering with a schema-invalid result -> 502, never a crash
            c = asyncio.create_task(api_call(base, "POST", path, {}))
            third = json.loads(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(json.dumps([3, third[1], {"status": "Maybe"}]))
            status, body = await c
            assert status == 502 and body["error"]["code"] == "PropertyConstraintViolation"
            assert (await rpc(ws, HB))[0] == 3

    run(scenario())


HEARTBEAT_SERIES = ['chargeyard_ocpp_messages_total{action="Heartbeat",direction="in",protocol="ocpp1.6",type="call"}',
                    'chargeyard_ocpp_messages_total{action="Heartbeat",direction="out",protocol="ocpp1.6",'
                    'type="result"}',
                    'chargeyard_ocpp_handle_duration_seconds_count{action="Heartbeat"}']


def _series(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_health(node):
    async def unknown_action():
        async with websockets.connect(node.ws("metrics-1"), subprotocols=["ocpp1.6"]) as ws:
            assert (await rpc(ws, '[2,"u","NoSuchAction",{}]'))[2] == "NotImplemented"
            for i in range(3):
                assert (await rpc(ws, f'[2,"h{i}","Heartbeat",{{}}]'))[0] == 3

    before = node.request("GET", "/metrics")[1]
    run(unknown_action())
    status, _ = node.get("/healthz")
    assert status == 200
    status, _ = node.get("/readyz")
    assert status == 200
    text = node.request("GET", "/metrics")[1]
    for name in ("chargeyard_ws_connections", "chargeyard_ws_connections_closed_total",
                 "chargeyard_ocpp_messages_total", "chargeyard_ocpp_call_errors_total",
                 "chargeyard_ocpp_handle_duration_seconds", "chargeyard_db_batch_rows",
                 "chargeyard_db_batch_commit_duration_seconds", "chargeyard_db_write_queue_depth",
                 "chargeyard_db_deferred_rows",
                 "chargeyard_router_forward_duration_seconds", "chargeyard_build_info"):
        assert name in text, name
    # unknown actions are one bounded label value, never the charger's text
    assert 'action="_unknown"' in text and "NoSuchAction" not in text
    for name in HEARTBEAT_SERIES:  # counted per message, in and out, and timed
        assert _series(text, name) - _series(before, name) == 3.0, name
    assert 'chargeyard_ocpp_call_errors_total{code="NotImplemented",protocol="ocpp1.6"}' in text
    status, body = node.get("/api/v1/openapi.json")
    assert status == 200 and body["openapi"].startswith("3.") and "/chargers/{id}/calls/{action}" in body["paths"]
    status, body = node.get("/api/v1/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = node.request("PUT", "/api/v1/id-tags/X", {"status": "Maybe"})
    assert status == 422 and "error" in body


def test_the_log_has_one_json_line_per_charger_event(node):
    """connect, boot and disconnect as structured JSON lines (issue 19, rough edge 9)."""
    async def scenario():
        async with websockets.connect(node.ws("log-e2e"), subprotocols=["ocpp1.6"]) as ws:
            await rpc(ws, '[2,"b","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"AC22"}]')
            for _ in range(5):
                await rpc(ws, HB)

    def lines() -> dict[str, dict]:
        found = {}
        for line in list(node.log):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("charger_id") == "log-e2e" and "event" in obj:
                found[obj["event"]] = obj
        return found

    run(scenario())
    deadline = time.monotonic() + 5
    while "disconnect" not in lines() and time.monotonic() < deadline:
        time.sleep(0.05)
    got = lines()
    assert got["connect"]["protocol"] == "ocpp1.6" and got["connect"]["address"].startswith("127.0.0.1:")
    assert got["boot"]["vendor"] == "ACME" and got["boot"]["model"] == "AC22" and got["boot"]["level"] == "info"
    assert got["disconnect"]["code"] == 1000 and got["disconnect"]["reason"] == "client"
    assert got["disconnect"]["duration_s"] >= 0


def test_sigterm_drains(tmp_path):
    n = NodeProc(tmp_path).start()

    async def scenario():
        async with websockets.connect(n.ws("drain-1"), subprotocols=["ocpp1.6"]) as ws:
            await rpc(ws, '[2,"s","StartTransaction",{"connectorId":1,"idTag":"D","meterStart":0,'
                          '"timestamp":"2026-01-01T00:00:00Z"}]')
            os.kill(n.proc.pid, signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        with pytest.raises(OSError):  # no longer accepting chargers
            async with websockets.connect(n.ws("drain-2"), subprotocols=["ocpp1.6"], open_timeout=2):
                pass

    try:
        run(scenario())
        assert n.proc.wait(15) == 0
    finally:
        n.stop()
    n2 = NodeProc(tmp_path).start()
    try:
        status, body = n2.get("/api/v1/transactions?charger_id=drain-1")
        assert status == 200 and len(body["items"]) == 1
    finally:
        n2.stop()


def test_boot_storm_gets_pending_with_jitter_and_handshake_cap(tmp_path):
    n = NodeProc(tmp_path, "--max-concurrent-boots", "0", "--handshake-rate", "20").start()

    async def one(i: int):
        for attempt in range(40):
            try:
                async with websockets.connect(n.ws(f"storm-{i}"), subprotocols=["ocpp1.6"]) as ws:
                    r = await rpc(ws, '[2,"b","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]')
                    return attempt, r[2]
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 503
                await asyncio.sleep(0.1)
        raise AssertionError("never admitted")

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(60)))

    try:
        results = run(scenario())
    finally:
        n.stop()
    assert all(r["status"] == "Pending" for _, r in results)
    intervals = {r["interval"] for _, r in results}
    assert len(intervals) > 3  # jittered, so the fleet does not come back at once
    assert any(attempt > 0 for attempt, _ in results)  # some handshakes were refused first (cap)


def test_rate_limit_slows_a_flooding_charger_without_dropping(tmp_path):
    n = NodeProc(tmp_path, "--rate-limit", "50", "--rate-burst", "10").start()

    async def scenario():
        async with websockets.connect(n.ws("flood"), subprotocols=["ocpp1.6"]) as flood, \
                websockets.connect(n.ws("calm"), subprotocols=["ocpp1.6"]) as calm:
            t0 = time.monotonic()
            for i in range(60):
                await flood.send(f'[2,"f{i}","Heartbeat",{{}}]')
            # the calm charger is served promptly meanwhile
            t1 = time.monotonic()
            assert (await rpc(calm, HB))[0] == 3
            calm_latency = time.monotonic() - t1
            ids = [json.loads(await asyncio.wait_for(flood.recv(), 10))[1] for _ in range(60)]
            elapsed = time.monotonic() - t0
            return ids, elapsed, calm_latency

    try:
        ids, elapsed, calm_latency = run(scenario())
    finally:
        n.stop()
    assert ids == [f"f{i}" for i in range(60)]  # all answered, in order, none dropped
    assert elapsed >= 0.7, elapsed  # 50 beyond the burst at 50/s take about a second
    assert calm_latency < 0.5


def test_charger_answering_pings_stays_connected(tmp_path):
    n = NodeProc(tmp_path, "--ping-interval", "1", "--idle-timeout", "2").start()

    async def scenario():
        # websockets answers pings itself; it sends none (ping_interval=None) and no message
        async with websockets.connect(n.ws("pong-1"), subprotocols=["ocpp1.6"], ping_interval=None) as ws:
            await asyncio.sleep(4.5)  # idle for over twice the idle timeout
            assert (await rpc(ws, '[2,"h","Heartbeat",{}]'))[0] == 3
    try:
        run(scenario())
    finally:
        n.stop()


def test_idle_connection_is_pinged_and_closed(tmp_path):
    n = NodeProc(tmp_path, "--ping-interval", "2", "--idle-timeout", "3").start()
    try:
        s = socket.create_connection(("127.0.0.1", n.ws_port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ocpp/idle-1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n").encode())
        t0 = time.monotonic()
        data = b""
        s.settimeout(5)
        while True:  # never answer the pings
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - t0
        assert b"101" in data.split(b"\r\n", 1)[0]
        assert b"\x89" in data  # a ping frame arrived
        assert 2.5 <= elapsed <= 6.0, elapsed
        s.close()
    finally:
        n.stop()
