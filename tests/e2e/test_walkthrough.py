"""The README walk-through, step by step, against a real node and the example charger:
twice, with a restart of the node in between (transaction ids jump after a restart,
and the walk-through still works because it reads the id from the API).

The README's steps, which ``walkthrough`` follows literally:

    curl -X PUT $API/id-tags/TAG-1 -d '{"status":"Accepted"}'
    curl -X PUT $API/tariffs/std -d '{"currency":"EUR","per_kwh":"0.30","session_fee":"1.00","vat_percent":"19"}'
    curl -N $API/chargers/CP-1/events &
    curl -X POST $API/chargers/CP-1/calls/RemoteStartTransaction -d '{"idTag":"TAG-1","connectorId":1}'
    sleep 5     # the charger starts metering (here: wait for its first transaction.meter event)
    TX=$(curl -s "$API/transactions?charger_id=CP-1&active=true" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["tx_id"])')
    curl -X POST $API/chargers/CP-1/calls/RemoteStopTransaction -d "{\"transactionId\":$TX}"
    curl $API/chargers/CP-1/transactions/$TX
    curl $API/chargers/CP-1/transactions/$TX/cdr

then (``offline_alert``) the charger is stopped with Ctrl-C: ``curl "$API/alerts?active=true"``
lists ``charger_offline`` for CP-1 after ``--offline-after``; started again, it is cleared.
"""  # noqa: E501

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from tests.support import NodeProc

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "charger16.py"


async def curl(base: str, method: str, path: str, data: str | None = None) -> tuple[int, object]:
    """``curl -X METHOD $API/path -d DATA``: the body goes as the raw text the shell makes."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.request(method, base + path, data=data) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


def start_charger(node: NodeProc) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EXAMPLE), "CP-1", f"ws://127.0.0.1:{node.ws_port}/ocpp"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def walkthrough(base: str) -> str:
    """The README's steps; returns the transaction id read from the API."""
    assert (await curl(base, "PUT", "/id-tags/TAG-1", '{"status":"Accepted"}'))[0] == 200
    assert (await curl(base, "PUT", "/tariffs/std", TARIFF))[0] == 200
    deadline = time.monotonic() + 15
    while True:  # the charger boots and connects
        status, body = await curl(base, "GET", "/chargers/CP-1")
        if status == 200 and body["connected"] and body.get("vendor") == "Example":
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)

    events: list[dict] = []
    subscribed = asyncio.Event()

    async def watch() -> None:  # curl -N $API/chargers/CP-1/events
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/chargers/CP-1/events") as r:
                async for line in r.content:
                    if line.startswith(b": subscribed"):
                        subscribed.set()
                    elif line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))

    async def seen(kind: str) -> None:
        while not any(e["type"] == kind for e in events):
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)  # the line comes once the subscription exists
        status, body = await curl(base, "POST", "/chargers/CP-1/calls/RemoteStartTransaction",
                                  '{"idTag":"TAG-1","connectorId":1}')
        assert (status, body) == (200, {"result": {"status": "Accepted"}})
        await asyncio.wait_for(seen("transaction.meter"), 15)

        # TX=$(curl -s "$API/transactions?charger_id=CP-1&active=true" | python3 -c '...["items"][0]["tx_id"]')
        status, body = await curl(base, "GET", "/transactions?charger_id=CP-1&active=true")
        assert status == 200
        tx = str(body["items"][0]["tx_id"])  # what print() writes into $TX
        status, body = await curl(base, "POST", "/chargers/CP-1/calls/RemoteStopTransaction",
                                  f'{{"transactionId":{tx}}}')
        assert (status, body) == (200, {"result": {"status": "Accepted"}})
        await asyncio.wait_for(seen("transaction.ended"), 15)
    finally:
        watcher.cancel()
    status, body = await curl(base, "GET", f"/chargers/CP-1/transactions/{tx}")
    assert status == 200 and body["energy_wh"] >= 500 and body["stopped_at"] and body["id_tag"] == "TAG-1"
    assert body["stop_reason"] == "Remote"
    energy_wh = body["energy_wh"]
    cdr = await until(base, f"/chargers/CP-1/transactions/{tx}/cdr", lambda status, _: status == 200)
    # the tariff applied to the store's energy: 0.30/kWh, 1.00 per session, 19 % VAT
    energy = (Decimal(str(energy_wh)) / 1000 * Decimal("0.30")).quantize(Decimal("0.01"))
    net = energy + Decimal("1.00")
    vat = (net * Decimal("0.19")).quantize(Decimal("0.01"))
    assert cdr["tariff_id"] == "std" and cdr["energy_wh"] == energy_wh, cdr
    assert (cdr["energy_cost"], cdr["session_fee"], cdr["net"], cdr["vat"], cdr["total"]) == \
        (str(energy), "1.00", str(net), str(vat), str(net + vat)), cdr
    return tx


TARIFF = '{"currency":"EUR","per_kwh":"0.30","session_fee":"1.00","vat_percent":"19"}'


async def until(base: str, path: str, ok, timeout: float = 15.0):
    """GET ``path`` until ``ok(status, body)``; the body then."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await curl(base, "GET", path)
        if ok(status, body):
            return body
        assert time.monotonic() < deadline, (path, status, body)
        await asyncio.sleep(0.1)


def offline_alert(node: NodeProc, charger: subprocess.Popen) -> subprocess.Popen:
    """Ctrl-C the charger: charger_offline after --offline-after; back: cleared. Returns the
    charger started again."""
    base = node.url("/api/v1")

    def alerts(active: str, pred):
        async def get():
            body = await until(base, f"/alerts?active={active}&charger_id=CP-1",
                               lambda s, b: s == 200 and pred(b["items"]))
            return body["items"]
        return asyncio.run(asyncio.wait_for(get(), 30))

    charger.send_signal(signal.SIGINT)
    out, _ = charger.communicate(timeout=15)
    assert charger.returncode == 0, out
    (alert,) = alerts("true", lambda items: any(a["kind"] == "charger_offline" for a in items))
    assert alert["cleared_at"] is None and alert["kind"] == "charger_offline"
    charger = start_charger(node)
    # cleared on reconnect (earlier ones: the node's own restart, while CP-1 was away)
    alerts("false", lambda items: alert["id"] in [a["id"] for a in items])
    assert alerts("true", lambda items: True) == []
    return charger


async def wrong_id_is_rejected(base: str, wrong: str) -> None:
    """RemoteStop for a transaction the charger does not have: Rejected, and its own
    transaction goes on."""
    status, body = await curl(base, "POST", "/chargers/CP-1/calls/RemoteStartTransaction",
                              '{"idTag":"TAG-1","connectorId":1}')
    assert (status, body) == (200, {"result": {"status": "Accepted"}})
    deadline = time.monotonic() + 10
    while True:
        status, body = await curl(base, "GET", "/transactions?charger_id=CP-1&active=true")
        if body["items"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    mine = str(body["items"][0]["tx_id"])
    assert mine != wrong
    status, body = await curl(base, "POST", "/chargers/CP-1/calls/RemoteStopTransaction",
                              f'{{"transactionId":{wrong}}}')
    assert (status, body) == (200, {"result": {"status": "Rejected"}})
    await asyncio.sleep(0.3)  # a stop would be committed by now; there must be none
    status, body = await curl(base, "GET", f"/chargers/CP-1/transactions/{mine}")
    assert status == 200 and body["active"] is True and body["stopped_at"] is None
    status, body = await curl(base, "POST", "/chargers/CP-1/calls/RemoteStopTransaction",
                              f'{{"transactionId":{mine}}}')
    assert (status, body) == (200, {"result": {"status": "Accepted"}})


def stop_both(node: NodeProc, charger: subprocess.Popen) -> str:
    """Stop the node; the charger must notice and exit 0 by itself, no traceback."""
    node.stop()
    out, _ = charger.communicate(timeout=15)
    assert charger.returncode == 0, out
    assert "Traceback" not in out and "the server closed the connection (1001" in out, out
    return out


def test_readme_walkthrough_twice_with_a_restart(tmp_path):
    data = tmp_path / "data"
    txs = []
    for round_ in range(2):
        node = NodeProc(data, "--call-timeout", "5", "--heartbeat-interval", "120", "--offline-after", "1").start()
        charger = start_charger(node)
        try:
            base = node.url("/api/v1")
            txs.append(asyncio.run(asyncio.wait_for(walkthrough(base), 40)))
            if round_ == 1:  # after the restart: ids jumped, the first one is not the charger's
                assert int(txs[1]) > int(txs[0]) + 1, txs
                asyncio.run(asyncio.wait_for(wrong_id_is_rejected(base, txs[0]), 30))
                charger = offline_alert(node, charger)
        except BaseException:
            node.stop()
            charger.kill()
            print(charger.communicate(timeout=10)[0])
            raise
        stop_both(node, charger)


def test_example_charger_answers_unknown_calls_with_one_line(tmp_path):
    node = NodeProc(tmp_path / "data", "--call-timeout", "5").start()
    charger = start_charger(node)
    try:
        async def scenario() -> None:
            base = node.url("/api/v1")
            deadline = time.monotonic() + 15
            while (await curl(base, "GET", "/chargers/CP-1"))[0] != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            status, body = await curl(base, "POST", "/chargers/CP-1/calls/GetDiagnostics",
                                      '{"location":"ftp://example.invalid/"}')
            assert status == 502 and body["error"]["code"] == "NotImplemented", body

        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        out = stop_both(node, charger)
    lines = [ln for ln in out.splitlines() if "GetDiagnostics" in ln]
    assert len(lines) == 1 and "not implemented here" in lines[0], out
