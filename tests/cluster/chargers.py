"""A light OCPP 1.6 charger for fleets of hundreds in one event loop: raw
``websockets``, answers every CSMS CALL with ``{"status": "Accepted"}``,
reconnects with a short jittered back-off."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import random
import time

import websockets


class Disconnected(Exception):
    pass


def ts() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Charger:
    def __init__(self, url: str, cid: str) -> None:
        self.url = url
        self.cid = cid
        self.ws = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.calls_seen: list[str] = []
        self.connects = 0

    async def connect(self, timeout: float = 10.0) -> None:
        self.ws = await websockets.connect(self.url, subprotocols=["ocpp1.6"], open_timeout=timeout,
                                           ping_interval=None, close_timeout=1)
        self.connects += 1
        self._reader = asyncio.create_task(self._read(self.ws))

    async def reconnect(self, deadline: float, backoff: float = 0.2) -> None:
        """Connect (and boot) again until it works or ``deadline`` (monotonic) passes."""
        await self.close()
        while True:
            try:
                await self.connect(timeout=5)
                await self.boot()
                return
            except (OSError, Disconnected, asyncio.TimeoutError, websockets.WebSocketException):
                await self.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(backoff * (0.5 + random.random()))

    async def _read(self, ws) -> None:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.calls_seen.append(msg[2])
                    await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                elif msg[0] in (3, 4):
                    fut = self._pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except websockets.WebSocketException:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(Disconnected(self.cid))
            self._pending.clear()

    async def call(self, action: str, payload: dict, timeout: float = 10.0) -> dict:
        ws = self.ws
        if ws is None or self._reader is None or self._reader.done():
            raise Disconnected(self.cid)
        mid = f"{self.cid}-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        try:
            await ws.send(json.dumps([2, mid, action, payload]))
        except websockets.WebSocketException as exc:
            self._pending.pop(mid, None)
            raise Disconnected(self.cid) from exc
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(mid, None)
        if reply[0] != 3:
            raise AssertionError(f"{self.cid} {action}: CALLERROR {reply}")
        return reply[2]

    async def boot(self) -> dict:
        r = await self.call("BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "CL"})
        assert r["status"] == "Accepted", r
        return r

    async def meter(self, tx: int, wh: int, timeout: float = 10.0) -> dict:
        return await self.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
            "timestamp": ts(), "sampledValue": [
                {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]},
            timeout)

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None


async def fleet(url_of, ids, concurrency: int = 50, deadline_s: float = 60.0) -> list[Charger]:
    """Connect and boot chargers, ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + deadline_s

    async def one(cid: str) -> Charger:
        c = Charger(url_of(cid), cid)
        async with sem:
            await c.reconnect(deadline)
        return c

    return list(await asyncio.gather(*(one(cid) for cid in ids)))


async def close_all(chargers) -> None:
    await asyncio.gather(*(c.close() for c in chargers), return_exceptions=True)


async def until(pred, timeout: float, step: float = 0.05, what: str = "condition"):
    """Poll an async predicate until truthy (returns it) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        await asyncio.sleep(step)
