"""Drain in waves for real (issue 23, item 2): in a local cluster (valkey, 3 workers,
the API node, nginx) one worker holding CHARGERS charging chargers gets SIGTERM.

* readiness goes false (its /readyz answers 503 while it drains);
* it closes its chargers with 1001 at --drain-rate per second (measured from the
  chargers' close times, within +-50 %) and exits 0;
* every charger reconnects through nginx to another worker and its next MeterValues
  is acknowledged there;
* no receiving worker refuses a handshake for rate (their
  ``chargeyard_ws_handshakes_refused_total{reason="overload"}`` does not move), with
  --handshake-rate at twice the drain rate: the limit of the rule in app/config.py
  (drain_rate <= handshake_rate / 2), tighter than the defaults (500 and 2000);
* nothing acknowledged is lost: each charger's transaction holds at least its last
  acknowledged meter reading before it meters on.

How the worker is stopped: the cluster runs without supervision (``restart_delay=None``),
so the drained worker stays down, as a scaled-in pod does; with supervision the cluster
would start it again a second later and chargers would hash back to it.

The chargers first connect straight to the worker under test (its own ws port), so
all CHARGERS sit on it without connecting three times as many through nginx; their
reconnects go through nginx, which hashes them over the live workers (the stopped
one's port refuses, nginx takes the next upstream).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import urllib.request

import pytest

from tests.cluster.chargers import Charger, Disconnected, close_all, until
from tests.cluster.conftest import start_cluster
from tests.cluster.test_sharded import Http, bounded_gather, start_tx

pytestmark = pytest.mark.slow

CHARGERS = 1000        # on the worker under test (see the report in the commit for 300 vs 1,000)
# chargers/s: CHARGERS take about 40 s to close. Low on purpose: this one-loop charger
# fleet reconnects at most ~200/s here, so only a handshake rate below that (~100/s on
# each of the 2 receivers) shows what closing all at once does: with --drain-rate 0
# the same test sees the receivers refuse handshakes for rate.
DRAIN_RATE = 25.0
HANDSHAKE_RATE = 50.0  # = 2 x DRAIN_RATE, the limit of the rule
METER_EVERY = 2.0      # seconds between a charger's MeterValues (+-50 %): ~500 messages/s


class TrackedCharger(Charger):
    """Remembers when (monotonic) and how its first connection was closed by the server."""

    def __init__(self, url: str, cid: str) -> None:
        super().__init__(url, cid)
        self.first_close: tuple[float, int | None] | None = None

    async def _read(self, ws) -> None:
        try:
            await super()._read(ws)
        finally:
            if self.first_close is None and ws.close_code is not None:
                self.first_close = (time.monotonic(), ws.close_code)


def refused_overload(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    mt = re.search(r'^chargeyard_ws_handshakes_refused_total\{reason="overload"\} (\S+)$', text, re.M)
    return float(mt.group(1)) if mt else 0.0


def test_sigterm_drains_one_worker_in_waves(tmp_path_factory, arun):
    cluster = start_cluster(tmp_path_factory.mktemp("drain"), workers=3, restart_delay=None,
                            drain_rate=DRAIN_RATE, handshake_rate=HANDSHAKE_RATE, drain_timeout=5.0)
    victim = cluster.workers[0]
    direct = cluster.cluster.specs[0].ws_port
    ids = [f"dr-{i:04d}" for i in range(CHARGERS)]
    receivers = cluster.node_ports()[1:3]

    async def body():
        chargers = [TrackedCharger(f"ws://127.0.0.1:{direct}/ocpp/{cid}", cid) for cid in ids]
        deadline = time.monotonic() + 180  # admission: HANDSHAKE_RATE per second
        sem = asyncio.Semaphore(50)

        async def connect(c):
            async with sem:
                await c.reconnect(deadline)

        await asyncio.gather(*(connect(c) for c in chargers))
        http = Http()
        stop, resume = asyncio.Event(), asyncio.Event()
        state = {c.cid: {"acked": 1000, "sent": 1000} for c in chargers}
        at_close: dict[str, tuple[int, int]] = {}
        served: dict[str, float] = {}
        loops: list[asyncio.Task] = []
        try:
            txs = await bounded_gather([start_tx(c) for c in chargers])
            for c, tx in zip(chargers, txs):
                state[c.cid]["tx"] = tx
                c.url = cluster.ws(c.cid)  # reconnects go through nginx

            async def charging(c: TrackedCharger) -> None:
                st = state[c.cid]
                await asyncio.sleep(random.random() * METER_EVERY)
                while not stop.is_set():
                    st["sent"] = st["acked"] + 10
                    try:
                        await c.meter(st["tx"], st["sent"], timeout=20)
                        st["acked"] = st["sent"]
                        if c.cid in at_close:
                            served.setdefault(c.cid, time.monotonic())  # acknowledged elsewhere
                    except Disconnected:
                        pass
                    reader = c._reader
                    if reader is not None and not reader.done():  # wait, but wake on a close
                        await asyncio.wait({reader}, timeout=METER_EVERY * (0.5 + random.random()))
                    if c.cid not in at_close and (c._reader is None or c._reader.done()):
                        at_close[c.cid] = (st["acked"], st["sent"])
                        await c.reconnect(time.monotonic() + 60)
                        await resume.wait()  # the store is checked before it meters on

            loops = [asyncio.create_task(charging(c)) for c in chargers]

            async def all_acked() -> bool:
                return all(s["acked"] > 1000 for s in state.values())

            await until(all_acked, 60, 0.1, "every charger has acknowledged meter values")
            before = [await asyncio.to_thread(refused_overload, p) for p in receivers]
            t_term = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(victim.stop, 120.0))

            probe = Http(timeout=2)  # its own connection, closed before the worker stops

            async def not_ready() -> bool:
                try:
                    st, _ = await probe(cluster.node_url(0, ""), "GET", "/readyz")
                except (OSError, asyncio.TimeoutError):
                    return False
                return st == 503

            try:
                await until(not_ready, 10, 0.02, "the draining worker's /readyz is 503")
            finally:
                await probe.close()

            async def all_reconnected() -> bool:
                return len(at_close) == CHARGERS and all(
                    c.first_close is not None and c._reader is not None and not c._reader.done() for c in chargers)

            await until(all_reconnected, CHARGERS / DRAIN_RATE + 60, 0.1, "every charger reconnected")
            code = await asyncio.wait_for(stopping, 30)
            assert code == 0, victim.log_tail()

            closes = sorted(c.first_close for c in chargers)  # type: ignore[type-var]
            assert [cc for _, cc in closes] == [1001] * CHARGERS
            span = closes[-1][0] - closes[0][0]
            measured = (CHARGERS - 1) / span
            assert DRAIN_RATE * 0.5 <= measured <= DRAIN_RATE * 1.5, (measured, span)

            # nothing acknowledged is lost: the store has the last acknowledged reading
            async def check(cid):
                acked, sent = at_close[cid]
                st, doc = await http(cluster.url(""), "GET",
                                     f"/api/v1/chargers/{cid}/transactions/{state[cid]['tx']}")
                assert st == 200 and acked - 1000 <= doc["energy_wh"] <= sent - 1000, (cid, at_close[cid], doc)
            await bounded_gather([check(cid) for cid in ids], 20)
            resume.set()

            # every charger is served again: its next MeterValues acknowledged by another worker
            async def all_served() -> bool:
                return len(served) == CHARGERS
            await until(all_served, 60, 0.1, "every charger's next MeterValues acknowledged")
            after = [await asyncio.to_thread(refused_overload, p) for p in receivers]
            assert after == before, ("handshakes refused for rate on the receivers", before, after)
            print(f"\n{CHARGERS} chargers drained at {measured:.0f}/s (configured {DRAIN_RATE:g}/s) in "
                  f"{span:.1f} s; first close {closes[0][0] - t_term:.2f} s after SIGTERM; all served again "
                  f"{max(served.values()) - t_term:.1f} s after SIGTERM; refused for rate: {after} (before {before})")
        finally:
            stop.set()
            resume.set()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await close_all(chargers)
            await http.close()

    try:
        arun(body(), timeout=500)
    finally:
        cluster.stop()
