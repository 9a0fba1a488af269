"""Load generator worker: one process, uvloop, many simulated chargers on picows.

Started by the coordinator (:mod:`chargeyard.bench.runner`), usually pinned with
``taskset``. Protocol on stdio, one JSON object per line:

* stdin line 1: the worker config (see :func:`main`); stdout: ``{"event":"ready",...}``
  once every charger is connected, booted and (optionally) in a transaction.
* then commands on stdin, each answered by one ``{"event":"result",...}`` line:
  ``closed`` (request/response, next request after the reply), ``open`` (fixed offered
  rate), ``interval`` (each charger every N s, plus heartbeats), ``idle`` (heartbeats
  only), ``storm`` (every charger drops and reconnects at once), ``hold`` (chargers that
  drop stay down: the server is about to restart), ``rejoin`` (every charger reconnects at
  once, to the ``url`` given: the restarted server), ``quit``.

With ``password`` in the config every charger sends HTTP Basic (its id, that password)
at the handshake (security profile 1).

Times in commands are ``time.monotonic()`` values: CLOCK_MONOTONIC is system-wide on
Linux, so the coordinator and all workers share one clock. A reply counts when it is
received inside ``[start, end]``; its latency is receive time minus send time.

A charger has at most one CALL outstanding (as OCPP requires). Replies are matched by
message id (:func:`chargeyard.bench.frames.reply_id`) without parsing JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import random
import resource
import socket
import sys
import time
from collections import deque

from picows import WSListener, WSMsgType, ws_connect

from . import frames

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
monotonic = time.monotonic
log2 = math.log2

# holes of a charger's frame template (bench/frames.py): id; id + timestamp microseconds;
# id + microseconds + seqNo + microseconds (2.0.1 TransactionEvent)
HOLES_ID, HOLES_STAMP, HOLES_EVENT = 0, 1, 2
HIST_SCALE = 32          # buckets per power of two of microseconds (~2.2 % wide)
HIST_SIZE = 32 * 26      # up to 2**26 us = 67 s


def hist_bucket_upper_us(k: int) -> float:
    return 2.0 ** ((k + 1) / HIST_SCALE)


def hist_percentiles(hist: dict, qs=(0.5, 0.99, 0.999)) -> dict:
    """Percentiles in milliseconds from a sparse {bucket: count} histogram."""
    items = sorted((int(k), v) for k, v in hist.items())
    total = sum(v for _, v in items)
    out = {}
    for q in qs:
        if total == 0:
            out[q] = None
            continue
        rank, acc = q * total, 0
        for k, v in items:
            acc += v
            if acc >= rank:
                out[q] = hist_bucket_upper_us(k) / 1000.0
                break
    return out


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Charger(WSListener):
    """One simulated charger; also its own picows listener (reused across reconnects)."""

    def __init__(self, gen: "Generator", idx: int, cid: str):
        self.gen = gen
        self.idx = idx
        self.cid = cid
        self.t = None
        self.ready = False
        self.n = 0                # last message id used
        self.mid = None           # id of the CALL in flight
        self.waiter = None        # future for setup-path requests
        self.sent_at = 0.0
        self.tx_id = None
        self.energy = 1000 + idx  # Wh
        self.tmpl = b""
        self.holes = HOLES_ID
        self.seq = 1
        self.built = -1e9
        self.timers: dict = {}
        self.flip = False
        self.headers: dict = {}   # handshake headers (subprotocol, HTTP Basic)

    # -- picows callbacks
    def on_ws_connected(self, transport):
        self.t = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type is not TEXT:
            if frame.msg_type is CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        q1 = data.find(b'"')
        rid = data[q1 + 1:data.find(b'"', q1 + 1)]
        if rid == self.mid:
            self.mid = None
            w = self.waiter
            if w is not None:
                self.waiter = None
                if not w.done():
                    w.set_result(data)
                return
            self.gen.on_reply(self, data)
        else:
            self.gen.on_other(self, data)

    def on_ws_disconnected(self, transport):
        if transport is not self.t:  # a late callback from a connection we already dropped
            return
        self.t = None
        self.gen.on_disconnected(self)


class Generator:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.protocol = cfg.get("protocol", frames.OCPP16)
        self.url = cfg["url"].rstrip("/") + "/"
        self.local_ip = cfg.get("local_ip")
        self.start_tx = bool(cfg.get("start_transactions", True))
        self.action = cfg.get("action", "MeterValues")
        self.n_values = int(cfg.get("sampled_values", 4))
        self.hb_interval = float(cfg.get("heartbeat_interval_s", 300))
        self.hs_timeout = float(cfg.get("handshake_timeout_s", 10))
        self.req_timeout = float(cfg.get("request_timeout_s", 30))
        rc = cfg.get("reconnect", {})
        self.bo_initial = float(rc.get("backoff_initial_s", 1.0))
        self.bo_max = float(rc.get("backoff_max_s", 30.0))
        self.bo_jitter = float(rc.get("jitter", 0.5))
        self.read_buffer = int(cfg.get("read_buffer", 1024))
        first = int(cfg.get("first", 0))
        prefix = cfg.get("prefix", "cy")
        self.chargers = [Charger(self, i, f"{prefix}-{i:07d}")
                         for i in range(first, first + int(cfg["count"]))]
        password = cfg.get("password")
        for ch in self.chargers:
            ch.headers = {"Sec-WebSocket-Protocol": self.protocol}
            if password:
                ch.headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{ch.cid}:{password}".encode()).decode()
        self.mode = "setup"
        self.reconnect = True
        self.stopping = False
        self.connect_errors: dict[str, int] = {}
        self.reset_counters()
        self.ready_count = 0
        self.storm_at = None
        self.storm_done_at = None
        self.storm_target = 0
        self.storm_event = None
        self.pending_tasks: set = set()

    def reset_counters(self):
        self.start = self.end = 0.0
        self.count = 0
        self.sent = 0
        self.errors = 0
        self.error_sample = None
        self.unmatched = 0
        self.skipped = 0
        self.late = 0
        self.outstanding = 0
        self.hist = [0] * HIST_SIZE
        self.idle_q: deque = deque()

    # ------------------------------------------------------------- hot path
    def build(self, ch: Charger, now: float):
        if ch.built > 0:
            ch.energy += max(1, int((now - ch.built) * 11040 / 3600))
        ch.built = now
        if self.action == "Heartbeat":
            ch.tmpl, ch.holes = frames.heartbeat_template(), HOLES_ID
        elif self.protocol == frames.OCPP16:
            ch.tmpl, ch.holes = frames.meter_values16(ch.tx_id or 0, ch.energy, self.n_values), HOLES_STAMP
            if ch.tx_id is None:  # MeterValues outside a transaction: drop the key
                ch.tmpl = ch.tmpl.replace(b'"transactionId":0,', b"")
        else:
            ch.tmpl, ch.holes = frames.tx_event201(ch.tx_id or ch.cid, ch.energy, self.n_values), HOLES_EVENT

    def send_hot(self, ch: Charger):
        now = monotonic()
        if now - ch.built > 1.0:
            self.build(ch, now)
        ch.n += 1
        mid = b"%d" % ch.n
        holes = ch.holes
        if holes == HOLES_STAMP:  # each reading its own timestamp (microseconds = message count)
            frame = ch.tmpl % (mid, ch.n % 1_000_000)
        elif holes == HOLES_EVENT:
            us = ch.n % 1_000_000
            frame = ch.tmpl % (mid, us, ch.seq, us)
            ch.seq += 1
        else:
            frame = ch.tmpl % mid
        ch.mid = mid
        ch.sent_at = now
        self.sent += 1
        self.outstanding += 1
        ch.t.send(TEXT, frame)

    def on_reply(self, ch: Charger, data: bytes):
        now = monotonic()
        self.outstanding -= 1
        if data[1] == 52:  # b"4": CALLERROR
            self.errors += 1
            if self.error_sample is None:
                self.error_sample = data[:300].decode("utf-8", "replace")
        if self.start <= now <= self.end:
            self.count += 1
            us = (now - ch.sent_at) * 1e6
            k = int(log2(us) * HIST_SCALE) if us > 1.0 else 0
            self.hist[k if k < HIST_SIZE else HIST_SIZE - 1] += 1
        mode = self.mode
        if mode == "closed":
            if now < self.end and ch.t is not None:
                self.send_hot(ch)
        elif mode == "open":
            self.idle_q.append(ch)

    def on_other(self, ch: Charger, data: bytes):
        """A frame that is not the reply we wait for: answer CSMS calls, count the rest."""
        try:
            msg = json.loads(data)
        except ValueError:
            self.unmatched += 1
            return
        if isinstance(msg, list) and msg and msg[0] == 2 and ch.t is not None:
            ch.t.send(TEXT, frames.callerror_not_implemented(str(msg[1]).encode(), self.protocol))
        else:
            self.unmatched += 1

    def on_disconnected(self, ch: Charger):
        was_ready = ch.ready
        ch.ready = False
        if ch.mid is not None and ch.waiter is None:
            self.outstanding -= 1
        ch.mid = None
        if ch.waiter is not None and not ch.waiter.done():
            ch.waiter.set_exception(ConnectionError("disconnected"))
        ch.waiter = None
        if was_ready:
            self.ready_count -= 1
        if self.reconnect and not self.stopping and was_ready:
            delay = 0.0 if self.storm_at is not None else \
                self.bo_initial * (1 + self.bo_jitter * random.random())
            self.spawn(self.connect(ch, first_delay=delay, deadline=monotonic() + 120))

    # ------------------------------------------------------------ setup path
    def spawn(self, coro):
        task = self.loop.create_task(coro)
        self.pending_tasks.add(task)
        task.add_done_callback(self.pending_tasks.discard)
        return task

    async def request(self, ch: Charger, action: str, payload: dict) -> bytes:
        if ch.t is None:
            raise ConnectionError("closed by the server")
        ch.n += 1
        mid = b"%d" % ch.n
        fut = self.loop.create_future()
        ch.waiter, ch.mid = fut, mid
        ch.t.send(TEXT, frames.call(action, payload, mid))
        return await asyncio.wait_for(fut, self.req_timeout)

    def new_socket(self, _url) -> socket.socket:
        """A socket bound to this worker's source address; picows connects it.

        Passing a socket (not host/port) skips getaddrinfo in the executor, which
        otherwise dominates the generator's cost in a reconnect storm.
        """
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.local_ip:
            # choose the port at connect() time, per destination, not at bind()
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((self.local_ip, 0))
        return s

    async def connect(self, ch: Charger, first_delay: float = 0.0, deadline: float = 0.0,
                      sem: asyncio.Semaphore | None = None) -> bool:
        attempt = 0
        if first_delay > 0:
            await asyncio.sleep(first_delay)
        while not self.stopping:
            try:
                if sem is not None:
                    await sem.acquire()
                try:
                    await ws_connect(
                        lambda: ch, self.url + ch.cid,
                        extra_headers=ch.headers,
                        websocket_handshake_timeout=self.hs_timeout,
                        read_buffer_init_size=self.read_buffer,
                        max_frame_size=1 << 20, socket_factory=self.new_socket)
                    await self.request(ch, *frames.boot(self.protocol))
                    await self.request(ch, *frames.status(self.protocol,
                                                          "Charging" if ch.tx_id else "Available"))
                    if self.start_tx and ch.tx_id is None and self.action != "Heartbeat":
                        await self.start_transaction(ch)
                finally:
                    if sem is not None:
                        sem.release()
                ch.ready = True
                self.ready_count += 1
                if self.storm_at is not None and self.ready_count >= self.storm_target \
                        and self.storm_done_at is None:
                    self.storm_done_at = monotonic()
                    self.storm_event.set()
                return True
            except Exception as exc:  # connection refused, handshake timeout, reset, ...
                key = type(exc).__name__
                status = getattr(getattr(exc, "response", None), "status", None)
                if status is not None:
                    key += f":{int(status)}"
                self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
                ch.waiter = None
                ch.mid = None
                if ch.t is not None:
                    t, ch.t = ch.t, None
                    t.disconnect(graceful=False)
                delay = min(self.bo_max, self.bo_initial * 2 ** attempt) * \
                    (1 + self.bo_jitter * random.random())
                attempt += 1
                if deadline and monotonic() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
        return False

    async def start_transaction(self, ch: Charger):
        if self.protocol == frames.OCPP16:
            data = await self.request(ch, *frames.start16(ch.energy))
            payload = frames.reply_payload(data)
            tx = payload.get("transactionId") if isinstance(payload, dict) else None
            # The echo server answers with our own request: invent a stable id.
            ch.tx_id = tx if isinstance(tx, int) else 100000 + ch.idx
        else:
            tx = f"{ch.cid}-tx"
            await self.request(ch, *frames.start201(tx, ch.energy))
            ch.tx_id = tx

    async def setup(self):
        sem = asyncio.Semaphore(int(self.cfg.get("connect_concurrency", 100)))
        deadline = monotonic() + float(self.cfg.get("setup_timeout_s", 120))
        t0 = monotonic()
        results = await asyncio.gather(*(self.connect(ch, deadline=deadline, sem=sem)
                                         for ch in self.chargers))
        return {"event": "ready", "connected": sum(results), "failed": len(results) - sum(results),
                "setup_s": monotonic() - t0, "connect_errors": self.connect_errors}

    # -------------------------------------------------------------- commands
    async def _wait_until(self, t: float):
        d = t - monotonic()
        if d > 0:
            await asyncio.sleep(d)

    async def _drain(self, timeout: float = 3.0):
        t_end = monotonic() + timeout
        while self.outstanding > 0 and monotonic() < t_end:
            await asyncio.sleep(0.01)

    def _result(self, cmd: str, cpu0: float, wall0: float) -> dict:
        return {"event": "result", "cmd": cmd, "count": self.count, "sent": self.sent,
                "errors": self.errors, "error_sample": self.error_sample,
                "unmatched": self.unmatched, "skipped": self.skipped, "late": self.late,
                "hist": {k: v for k, v in enumerate(self.hist) if v},
                "cpu_s": _cpu_s() - cpu0, "wall_s": monotonic() - wall0,
                "ready": self.ready_count, "connect_errors": self.connect_errors}

    async def run_closed(self, c: dict) -> dict:
        self.reset_counters()
        self.start, self.end = c["start"], c["end"]
        await self._wait_until(c["begin"])
        self.mode = "closed"
        for ch in self.chargers:
            if ch.ready and ch.mid is None:
                self.send_hot(ch)
        await self._wait_until(self.start)
        cpu0, wall0 = _cpu_s(), monotonic()
        await self._wait_until(self.end)
        res = self._result("closed", cpu0, wall0)
        await self._drain()
        self.mode = "idle"
        return res

    async def run_open(self, c: dict) -> dict:
        self.reset_counters()
        self.start, self.end = c["start"], c["end"]
        rate = float(c["rate"])
        self.idle_q.extend(ch for ch in self.chargers if ch.ready and ch.mid is None)
        begin = c["begin"]
        await self._wait_until(begin)
        self.mode = "open"
        due_sent = 0
        cpu0 = wall0 = None
        q = self.idle_q
        while True:
            now = monotonic()
            if now >= self.end:
                break
            if cpu0 is None and now >= self.start:
                cpu0, wall0 = _cpu_s(), now
            due = int((now - begin) * rate) - due_sent
            for _ in range(due):
                due_sent += 1
                while q:
                    ch = q.popleft()
                    if ch.ready and ch.mid is None and ch.t is not None:
                        self.send_hot(ch)
                        break
                else:
                    self.skipped += 1
            await asyncio.sleep(0.001)
        if cpu0 is None:
            cpu0, wall0 = _cpu_s(), monotonic()
        res = self._result("open", cpu0, wall0)
        res["offered"] = rate
        await self._drain()
        self.mode = "idle"
        return res

    def _schedule_periodic(self, ch: Charger, period: float, what: str):
        def fire():
            if self.mode not in ("interval", "idle"):
                return
            if ch.ready and ch.mid is None and ch.t is not None:
                if what == "hot":
                    self.send_hot(ch)
                else:
                    if what == "hb":
                        action, payload = "Heartbeat", {}
                    else:  # a status change: Charging <-> SuspendedEV, Available <-> Preparing
                        ch.flip = not ch.flip
                        st = ("SuspendedEV" if ch.flip else "Charging") if ch.tx_id else \
                            ("Preparing" if ch.flip else "Available")
                        action, payload = frames.status(self.protocol, st)
                    ch.n += 1
                    mid = b"%d" % ch.n
                    ch.mid, ch.sent_at = mid, monotonic()
                    self.sent += 1
                    self.outstanding += 1
                    ch.t.send(TEXT, frames.call(action, payload, mid))
            else:
                self.late += 1
            ch.timers[what] = self.loop.call_later(period, fire)
        # random phase so chargers do not fire in lockstep
        ch.timers[what] = self.loop.call_later(random.random() * period, fire)

    async def run_periodic(self, c: dict, mode: str) -> dict:
        self.reset_counters()
        self.start, self.end = c["start"], c["end"]
        await self._wait_until(c["begin"])
        self.mode = mode
        interval = float(c.get("interval_s", 10))
        hb = float(c.get("heartbeat_interval_s", self.hb_interval))
        status_every = float(c.get("status_interval_s", 0))
        for ch in self.chargers:
            if mode == "interval":
                self._schedule_periodic(ch, interval, "hot")
            if hb > 0:
                self._schedule_periodic(ch, hb, "hb")
            if status_every > 0:
                self._schedule_periodic(ch, status_every, "status")
        await self._wait_until(self.start)
        cpu0, wall0 = _cpu_s(), monotonic()
        await self._wait_until(self.end)
        res = self._result(mode, cpu0, wall0)
        self.mode = "setup"
        for ch in self.chargers:
            for h in ch.timers.values():
                h.cancel()
            ch.timers.clear()
        await self._drain()
        return res

    async def run_storm(self, c: dict) -> dict:
        self.reset_counters()
        cpu0, wall0 = await self._storm_start(sum(1 for ch in self.chargers if ch.ready), c["at"])
        for ch in self.chargers:
            if ch.t is not None:
                ch.t.disconnect(graceful=False)  # power cut / network drop
        return await self._storm_result("storm", cpu0, wall0, float(c.get("timeout", 60)))

    async def _storm_start(self, target: int, at: float) -> tuple[float, float]:
        """Arm a storm of ``target`` chargers and wait for the common start ``at``; the CPU
        and wall clock it is measured from."""
        self.storm_target = target
        self.storm_done_at = None
        self.storm_event = asyncio.Event()
        self.connect_errors = {}
        await self._wait_until(at)
        cpu0, wall0 = _cpu_s(), monotonic()
        self.storm_at = monotonic()
        return cpu0, wall0

    async def _storm_result(self, kind: str, cpu0: float, wall0: float, timeout: float) -> dict:
        """Wait (at most ``timeout``) for every charger of the storm to be back; the result."""
        try:
            await asyncio.wait_for(self.storm_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        res = self._result(kind, cpu0, wall0)
        res["storm_at"] = self.storm_at
        res["storm_done_at"] = self.storm_done_at
        res["storm_target"] = self.storm_target
        self.storm_at = None
        return res

    async def run_rejoin(self, c: dict) -> dict:
        """The server restarted (after ``hold``): every charger not connected reconnects at
        ``at`` to ``url``, at once and without back-off, as in a storm; measured the same way."""
        self.reset_counters()
        self.url = c["url"].rstrip("/") + "/"
        self.reconnect = True
        down = [ch for ch in self.chargers if ch.t is None and not ch.ready]
        cpu0, wall0 = await self._storm_start(self.ready_count + len(down), c["at"])
        timeout = float(c.get("timeout", 60))
        for ch in down:
            self.spawn(self.connect(ch, deadline=self.storm_at + timeout))
        return await self._storm_result("rejoin", cpu0, wall0, timeout)

    async def close(self):
        self.stopping = True
        for task in list(self.pending_tasks):
            task.cancel()
        for ch in self.chargers:
            if ch.t is not None:
                ch.t.disconnect(graceful=False)
        await asyncio.sleep(0.05)


def _emit(obj: dict):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def amain():
    loop = asyncio.get_running_loop()
    cfg = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    gen = Generator(cfg)
    _emit(await gen.setup())
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        c = json.loads(line)
        cmd = c["cmd"]
        if cmd == "quit":
            break
        if cmd == "closed":
            res = await gen.run_closed(c)
        elif cmd == "open":
            res = await gen.run_open(c)
        elif cmd in ("interval", "idle"):
            res = await gen.run_periodic(c, cmd)
        elif cmd == "storm":
            res = await gen.run_storm(c)
        elif cmd == "hold":
            gen.reconnect = False
            res = {"event": "result", "cmd": "hold", "ready": gen.ready_count}
        elif cmd == "rejoin":
            res = await gen.run_rejoin(c)
        elif cmd == "ping":
            res = {"event": "result", "cmd": "ping", "ready": gen.ready_count}
        else:
            res = {"event": "result", "cmd": cmd, "error": "unknown command"}
        _emit(res)
    await gen.close()
    _emit({"event": "bye"})


def main():
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    raise_nofile()
    try:
        import uvloop
        uvloop.run(amain())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(amain())
    os._exit(0)


if __name__ == "__main__":
    main()
