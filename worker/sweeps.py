"""The worker's periodic sweeps over its sessions: WebSocket keep-alive and last_seen.

One sweep over all sessions per period, never a timer or a write per connection or per
message: a worker holds tens of thousands of mostly idle chargers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from .session import Session
from .settings import WorkerSettings
from .writer import BatchWriter

log = logging.getLogger("chargeyard.worker")


class Sweeps:
    """``keepalive`` and ``last_seen`` run as the worker's background tasks over its
    ``sessions`` (charger id -> Session); ``write_seen`` is also called on a close and at
    the start of a drain, so last_seen holds the charger's last message."""

    def __init__(self, settings: WorkerSettings, sessions: dict[str, Session], writer: BatchWriter) -> None:
        self.settings = settings
        self.sessions = sessions
        self.writer = writer

    async def keepalive(self) -> None:
        """Ping chargers idle for ping_interval; close those that leave a ping unanswered
        until idle_timeout (at least 1 s after the ping), sweeping every quarter of the
        shorter interval (0.25-30 s)."""
        s = self.settings
        ping_after = s.ping_interval
        reply_timeout = max(1.0, s.idle_timeout - ping_after)
        period = min(30.0, max(0.25, min(ping_after, reply_timeout) / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sess in list(self.sessions.values()):
                try:
                    sess.keepalive(now, ping_after, reply_timeout)
                except Exception:
                    log.exception("keepalive of %s failed", sess.charger_id)

    async def last_seen(self) -> None:
        """Every ``seen_interval``, last_seen = the time of the last message of each charger
        that sent one since: one write per charger and interval, none per message."""
        while True:
            await asyncio.sleep(self.settings.seen_interval)
            self.write_all_seen()

    def write_all_seen(self) -> None:
        wall, now = dt.datetime.now(dt.timezone.utc), time.monotonic()
        for sess in list(self.sessions.values()):
            self.write_seen(sess, wall, now)

    def write_seen(self, sess: Session, wall: dt.datetime | None = None, now: float | None = None) -> None:
        op = sess.seen_since_written(wall or dt.datetime.now(dt.timezone.utc), now or time.monotonic())
        if op is None or self.writer.closed:
            return
        try:
            self.writer.add(op).add_done_callback(_ignore_failure)
        except Exception as exc:  # a full or closed writer: the next write moves it
            log.debug("last_seen of %s not written: %r", sess.charger_id, exc)


def _ignore_failure(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()
