"""The services' part of the operator API: tariffs, CDRs, alerts (ARCHITECTURE.md, "Events").

    PUT/GET/DELETE /api/v1/tariffs/{tariff_id}, GET /api/v1/tariffs
    GET /api/v1/chargers/{id}/transactions/{tx}/cdr     404 until priced
    GET /api/v1/alerts?active=&charger_id=
    GET /api/v1/alerts/events                           Server-Sent Events (raised / cleared)

``ServicesApi.add_routes(app.router)`` mounts them on the operator API's application, whose
middlewares already turn exceptions into ``{"error": {"code", "message"}}`` and check
tokens (PUT/DELETE need the admin scope). ``AlertFeed`` is a monitoring listener that
fans alerts out to the SSE subscribers of this process (one node; in a cluster the
monitoring process would publish them on the bus instead).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .billing.tariffs import TariffError, from_json, to_json
from .monitoring.alerts import Alert
from .storage import BillingStore, MonitoringStore

MAX_ALERTS = 10_000  # the largest page of GET /alerts (and what an ACL-filtered page reads)


# the registry stream the operator API's ``GET /alerts/events`` reads (``Api.sse``): alerts
# are published there as envelopes whose ``charger_id`` is this key (a charger id never
# starts with "@"), the alert itself in ``data``
ALERT_STREAM = "@alerts"


def alert_event(alert: Alert) -> dict:
    """The registry envelope of an alert raised or cleared (``Registry.publish``)."""
    return {"id": f"{alert.id}:{'cleared' if alert.cleared_at else 'raised'}",
            "type": "alert.cleared" if alert.cleared_at else "alert.raised", "source": "chargeyard-monitoring",
            "time": alert.cleared_at or alert.raised_at, "charger_id": ALERT_STREAM, "data": alert.api()}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class AlertFeed:
    """Alerts to SSE subscribers; a slow subscriber loses alerts, never blocks monitoring."""

    def __init__(self, queue_max: int = 1000) -> None:
        self.queue_max = queue_max
        self.subscribers: set[asyncio.Queue] = set()

    def __call__(self, alert: Alert) -> None:
        for q in self.subscribers:
            if q.qsize() < self.queue_max:
                q.put_nowait(alert)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)


class ServicesApi:
    def __init__(self, billing: BillingStore, monitoring: MonitoringStore, feed: AlertFeed | None = None,
                 keepalive_s: float = 15.0) -> None:
        self.billing = billing
        self.monitoring = monitoring
        self.feed = feed
        self.keepalive_s = keepalive_s

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/api/v1/tariffs", self.list_tariffs)
        r.add_put("/api/v1/tariffs/{tariff_id}", self.put_tariff)
        r.add_get("/api/v1/tariffs/{tariff_id}", self.get_tariff)
        r.add_delete("/api/v1/tariffs/{tariff_id}", self.delete_tariff)
        r.add_get("/api/v1/chargers/{id}/transactions/{tx}/cdr", self.get_cdr)
        r.add_get("/api/v1/alerts", self.list_alerts)
        r.add_get("/api/v1/alerts/events", self.alert_events)

    async def list_tariffs(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [to_json(t) for t in await self.billing.list_tariffs()]})

    async def put_tariff(self, request: web.Request) -> web.Response:
        tid = request.match_info["tariff_id"]
        try:
            tariff = from_json(tid, await request.read())
        except TariffError as exc:
            return _error(422, "invalid_tariff", str(exc))
        await self.billing.put_tariff(tariff)
        return web.json_response(to_json(tariff))

    async def get_tariff(self, request: web.Request) -> web.Response:
        t = await self.billing.get_tariff(request.match_info["tariff_id"])
        if t is None:
            return _error(404, "not_found", "no such tariff")
        return web.json_response(to_json(t))

    async def delete_tariff(self, request: web.Request) -> web.Response:
        if not await self.billing.delete_tariff(request.match_info["tariff_id"]):
            return _error(404, "not_found", "no such tariff")
        return web.Response(status=204)

    async def get_cdr(self, request: web.Request) -> web.Response:
        cdr = await self.billing.get_cdr(request.match_info["id"], request.match_info["tx"])
        if cdr is None:
            return _error(404, "not_found", "no CDR for this transaction (yet)")
        return web.json_response(cdr.api())

    async def list_alerts(self, request: web.Request,
                          covers: Callable[[str], bool] | None = None) -> web.Response:
        """``covers``: the token's charger ACL (None: every charger)."""
        q = request.query
        active: bool | None = None
        if "active" in q:
            if q["active"] not in ("true", "false", "1", "0"):
                return _error(422, "invalid_query", "active must be true or false")
            active = q["active"] in ("true", "1")
        try:
            limit = min(int(q.get("limit", "1000")), MAX_ALERTS)
        except ValueError:
            return _error(422, "invalid_query", "limit must be an integer")
        if covers is None:
            alerts = await self.monitoring.list_alerts(active, q.get("charger_id") or None, limit)
        else:  # filter before the limit: a page of others' alerts must not hide this token's
            alerts = [a for a in await self.monitoring.list_alerts(active, q.get("charger_id") or None, MAX_ALERTS)
                      if covers(a.charger_id)][:limit]
        return web.json_response({"items": [a.api() for a in alerts]})

    async def alert_events(self, request: web.Request) -> web.StreamResponse:
        if self.feed is None:
            return _error(503, "unavailable", "alerts are not streamed by this node")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q = self.feed.subscribe()
        try:
            while True:
                try:
                    a: Any = await asyncio.wait_for(q.get(), self.keepalive_s)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                kind = "alert.cleared" if a.cleared_at else "alert.raised"
                await resp.write(f"event: {kind}\nid: {a.id}\ndata: {json.dumps(a.api())}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(q)
        return resp
