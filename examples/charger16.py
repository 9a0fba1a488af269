"""A simulated OCPP 1.6 charger built on the `ocpp` library, for the README walk-through.

    python examples/charger16.py CP-1 [ws://127.0.0.1:9000/ocpp]

It boots, reports its connector Available, and obeys the CSMS: RemoteStartTransaction
starts a transaction (meter values every 2 s, +500 Wh each), RemoteStopTransaction
for the transaction it has stops it (another id: Rejected). A call it does not
implement is answered with a CALLERROR and one log line. When the server closes the
connection (or on Ctrl-C / SIGTERM) it says so in one line and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import sys

import websockets
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action

log = logging.getLogger("charger")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Charger(ChargePoint):
    tx: int | None = None
    meter_wh = 10_000

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, websockets.ConnectionClosed):  # closed: main says so
            log.warning("%s failed: %r", task.get_coro().__name__, exc)

    async def route_message(self, raw_msg):
        """As the library's, but a call this charger does not implement (or cannot
        parse) is one log line and a CALLERROR, not a logged traceback."""
        try:
            msg = unpack(raw_msg)
        except OCPPError as exc:
            log.warning("ignored a frame that is not OCPP-J: %s", exc)
            return
        if msg.message_type_id != MessageType.Call:
            self._response_queue.put_nowait(msg)
            return
        try:
            await self._handle_call(msg)
        except OCPPError as exc:
            log.warning("%s: not implemented here, answered %s", msg.action, exc.code)
            await self._send(msg.create_call_error(exc).to_json())

    @on(Action.remote_start_transaction)
    def remote_start(self, id_tag, connector_id=1, **_):
        if self.tx is not None:
            return call_result.RemoteStartTransaction(status="Rejected")
        self.spawn(self.start_session(id_tag, connector_id))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def remote_stop(self, transaction_id, **_):
        if self.tx is None or transaction_id != self.tx:
            print(f"RemoteStopTransaction for {transaction_id}: not mine (mine: {self.tx}), Rejected",
                  flush=True)
            return call_result.RemoteStopTransaction(status="Rejected")
        self.spawn(self.stop_session())
        return call_result.RemoteStopTransaction(status="Accepted")

    async def start_session(self, id_tag: str, connector_id: int) -> None:
        res = await self.call(call.StartTransaction(connector_id=connector_id, id_tag=id_tag,
                                                    meter_start=self.meter_wh, timestamp=now()))
        self.tx = res.transaction_id
        print(f"transaction {self.tx} started ({res.id_tag_info['status']})", flush=True)
        await self.call(call.StatusNotification(connector_id=connector_id, error_code="NoError",
                                                status="Charging", timestamp=now()))
        while self.tx is not None:
            await asyncio.sleep(2)
            if self.tx is None:
                break
            self.meter_wh += 500
            await self.call(call.MeterValues(connector_id=connector_id, transaction_id=self.tx, meter_value=[{
                "timestamp": now(), "sampledValue": [
                    {"value": str(self.meter_wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]))

    async def stop_session(self) -> None:
        tx, self.tx = self.tx, None
        if tx is None:
            return
        await self.call(call.StopTransaction(transaction_id=tx, meter_stop=self.meter_wh, timestamp=now(),
                                             reason="Remote"))
        await self.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available",
                                                timestamp=now()))
        print(f"transaction {tx} stopped at {self.meter_wh} Wh", flush=True)


async def session(cid: str, base: str) -> None:
    async with websockets.connect(f"{base}/{cid}", subprotocols=["ocpp1.6"]) as ws:
        cp = Charger(cid, ws)
        runner = asyncio.create_task(cp.start())
        try:
            boot = await cp.call(call.BootNotification(charge_point_vendor="Example",
                                                       charge_point_model="Sim-1"))
            print(f"{cid} boot: {boot.status}, heartbeat every {boot.interval} s", flush=True)
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Available",
                                                  timestamp=now()))
            await runner
        finally:
            for task in (runner, *cp.tasks):
                task.cancel()
            await asyncio.gather(runner, *cp.tasks, return_exceptions=True)


async def main(cid: str, base: str) -> int:
    """0 when the server (or a signal) ended the session, 1 when it could not start."""
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, me.cancel)  # type: ignore[union-attr]
    try:
        await session(cid, base)
    except websockets.ConnectionClosed as exc:
        rcvd = exc.rcvd
        why = f"{rcvd.code} {rcvd.reason}".strip() if rcvd is not None else "no close frame"
        print(f"{cid}: the server closed the connection ({why}); exiting", flush=True)
    except (OSError, websockets.InvalidHandshake) as exc:
        print(f"{cid}: cannot connect to {base}: {exc}", file=sys.stderr, flush=True)
        return 1
    except asyncio.CancelledError:
        print(f"{cid}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "CP-1",
                                          sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:9000/ocpp")))
