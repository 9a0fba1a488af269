"""``--alert-webhook URL``: each alert raised or cleared is POSTed as JSON, retried with
backoff, from a queue of its own: the consumer never waits for it (a full queue drops
the oldest alert, with a log line)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import msgspec

from ...core.tasks import cancel_and_wait
from .. import metrics as m
from .alerts import Alert

log = logging.getLogger("chargeyard.monitoring.webhook")


class Webhook:
    def __init__(self, url: str, *, max_queue: int = 10_000, attempts: int = 8, backoff_s: float = 0.5,
                 backoff_max_s: float = 60.0, timeout_s: float = 10.0) -> None:
        self.url = url
        self.queue: deque[bytes] = deque()
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.sent = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def __call__(self, alert: Alert) -> None:
        """A monitoring listener: queue it and return."""
        if len(self.queue) >= self.max_queue:
            self.queue.popleft()
            log.warning("alert webhook queue full: dropped the oldest alert")
        self.queue.append(msgspec.json.encode(alert.api()))
        self._wake.set()

    def start(self) -> Webhook:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alert-webhook")
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                body = self.queue[0]
                delay = self.backoff_s
                for attempt in range(1, self.attempts + 1):
                    try:
                        async with http.post(self.url, data=body,
                                             headers={"Content-Type": "application/json"}) as r:
                            if r.status < 300:
                                self.sent += 1
                                break
                            raise RuntimeError(f"HTTP {r.status}")
                    except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                        m.WEBHOOK_ERRORS.inc()
                        if attempt == self.attempts:
                            log.error("alert webhook gave up after %d attempts: %r", attempt, exc)
                        else:
                            log.warning("alert webhook failed (%r); retrying in %.1f s", exc, delay)
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, self.backoff_max_s)
                if self.queue and self.queue[0] is body:
                    self.queue.popleft()
