"""The operator API (JSON over HTTP, ``/api/v1``), plus /metrics, /healthz, /readyz.

It reaches chargers only through the registry (``Registry.call``), reads state from
the store, and streams live events from ``Registry.events`` as Server-Sent Events.
The routes, their scopes and their body types come from ``router/openapi.py``
(``ROUTES``), which also builds the OpenAPI document from them.
Errors are always ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest

from ..store.base import Store
from . import openapi as t
from .chargers import ChargerSecurityApi
from .registry import DISCONNECT, CallRejected, Registry, RegistryError

log = logging.getLogger("chargeyard.api")

FORWARD = Histogram("chargeyard_router_forward_duration_seconds",
                    "Operator call: API request to charger answer", ["result"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

ID_TAG_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
PAGE_MAX = 1000
# the request's bearer token (a typed key: aiohttp >= 3.12 warns about plain strings)
_TOKEN: Any = web.RequestKey("token", str) if hasattr(web, "RequestKey") else "token"
ACL_ROUNDS = 10  # store pages one ACL-filtered list page may read (then it is short, with a cursor)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def ok(obj: Any, status: int = 200) -> web.Response:
    """A JSON response; a Struct of router/openapi.py is encoded as the document says."""
    if isinstance(obj, msgspec.Struct):
        return web.Response(body=msgspec.json.encode(obj), status=status, content_type="application/json")
    return web.json_response(obj, status=status, dumps=_dumps)


def _page_limit(request: web.Request, default: int = PAGE_MAX) -> int:
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        raise web.HTTPBadRequest(reason="limit must be an integer") from None
    if not 1 <= limit <= PAGE_MAX:
        raise web.HTTPBadRequest(reason=f"limit must be 1-{PAGE_MAX}")
    return limit


async def _body(request: web.Request, kind: type) -> Any:
    """The request body decoded into ``kind`` (422 with msgspec's reason otherwise)."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise _Invalid(str(exc)) from None
    except msgspec.DecodeError:
        raise _Invalid("body is not JSON") from None


class _Invalid(Exception):
    pass


class Api:
    def __init__(self, settings: Any, store: Store, registry: Registry, tokens: Any = None,
                 ready: Callable[[], bool] | None = None,
                 on_id_tag_change: Callable[[str], None] | None = None,
                 on_charger_change: Callable[[str], None] | None = None, services: Any = None) -> None:
        self.settings = settings
        # billing's and monitoring's routes (services/api.py ``ServicesApi``); None: 503
        self.services = services
        self.store = store
        self.registry = registry
        self.tokens = tokens
        self._ready = ready or (lambda: True)
        self._on_id_tag_change = on_id_tag_change
        # charger registration, password rotation, security events, server-made tokens
        self.security = ChargerSecurityApi(settings, store, registry, tokens, on_charger_change)
        self.app = web.Application(middlewares=[self._errors, self._auth], client_max_size=1024 * 1024)
        # every route comes from the table the OpenAPI document describes
        self._scopes: dict[tuple[str, str], str | None] = {}
        for rt in t.ROUTES:
            self.app.router.add_route(rt.method, rt.path, getattr(self, rt.handler))
            self._scopes[rt.method, rt.path] = rt.scope
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("operator API on http://%s:%d/api/v1", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- middlewares -------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                    503: "unavailable"}.get(exc.status, "http_error")
            return error(exc.status, code, exc.reason)
        except RegistryError as exc:
            return error(exc.status, exc.code, str(exc))
        except _Invalid as exc:
            return error(422, "invalid", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never a stack trace to the client
            log.exception("API error on %s %s", request.method, request.path)
            return error(500, "internal", type(exc).__name__)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        route = request.match_info.route
        resource = route.resource
        # the route's scope as documented (an unknown path needs read, then gets 404)
        scope = self._scopes.get((route.method, resource.canonical), "read") if resource else "read"
        if self.tokens is None or scope is None or not request.path.startswith("/api/v1"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        verdict = await self.tokens.authorize(token, scope, request.match_info.get("id"))
        if verdict == "unauthenticated":
            return error(401, "unauthenticated", "missing or unknown bearer token")
        if verdict != "ok":
            return error(403, "forbidden", f"token lacks scope {scope!r} for this resource")
        request[_TOKEN] = token  # list endpoints filter by the token's charger ACL
        return await handler(request)

    # -- endpoints ---------------------------------------------------------------------
    async def openapi(self, request: web.Request) -> web.Response:
        return ok(t.OPENAPI)

    async def healthz(self, request: web.Request) -> web.Response:
        return ok(t.Health("ok"))

    async def readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return ok(t.Ready(True))
        return error(503, "not_ready", "draining or starting")

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _connected(self) -> dict:
        try:
            return await self.registry.connected()
        except RegistryError:
            return {}

    @staticmethod
    def _charger_view(row: dict, owner: Any) -> dict:
        return {"id": row["id"], "connected": owner is not None,
                "protocol": (owner.protocol if owner is not None and owner.protocol else row.get("protocol")),
                "vendor": row.get("vendor"), "model": row.get("model"), "last_seen": row.get("last_seen")}

    async def list_chargers(self, request: web.Request) -> web.Response:
        """The store's chargers by id, a page at a time (``?limit=&cursor=``), filtered by
        the token's charger ACL; ``connected`` from the registry."""
        covers = await self._acl(request)
        rows, cursor = await self._acl_page(self.store.list_chargers_page, request, covers, lambda r: r["id"])
        owners = await self._connected() if rows else {}
        items = [msgspec.convert(self._charger_view(r, owners.get(r["id"])), t.ChargerSummary) for r in rows]
        return ok(t.ChargerPage(items, cursor))

    async def _acl_page(self, fetch: Callable, request: web.Request, covers: Callable[[str], bool] | None,
                        charger_of: Callable[[dict], str], **kw: Any) -> tuple[list[dict], str | None]:
        """One page of a store listing, ACL-filtered: store pages of ``limit`` rows until
        the page is full or the store has no more, at most ``ACL_ROUNDS`` of them (a page
        that stops at that bound is short, with a next_cursor). A store page holding more
        matches than still fit is read again up to the last one that fits, so the store's
        cursor is exactly where this page stops."""
        limit = _page_limit(request)
        cursor = request.query.get("cursor") or None
        out: list[dict] = []
        try:
            for _ in range(ACL_ROUNDS if covers is not None else 1):
                rows, after = await fetch(limit=limit, cursor=cursor, **kw)
                if covers is not None:
                    kept = [r for r in rows if covers(charger_of(r))]
                    while len(kept) > limit - len(out):  # shrinks every time: ends
                        last = kept[limit - len(out) - 1]
                        rows, after = await fetch(limit=next(i for i, r in enumerate(rows) if r is last) + 1,
                                                  cursor=cursor, **kw)
                        kept = [r for r in rows if covers(charger_of(r))]
                    rows = kept
                out += rows
                cursor = after
                if cursor is None or len(out) >= limit:
                    break
        except ValueError:
            raise web.HTTPBadRequest(reason="cursor is not a next_cursor of this list") from None
        return out, cursor

    async def _acl(self, request: web.Request) -> Callable[[str], bool] | None:
        """The token's ``Grant.covers`` when it has a charger ACL, else None (all)."""
        token = request.get(_TOKEN)
        if self.tokens is None or not token:
            return None
        grant = await self.tokens.grant(token)
        if grant is None or not grant.chargers:
            return None
        return grant.covers

    async def get_charger(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        row = await self.store.get_charger(cid)
        try:
            owner = await self.registry.owner(cid)
        except RegistryError:
            owner = None
        if row is None and owner is None:
            return error(404, "not_found", f"unknown charger {cid!r}")
        row = row or {"id": cid, "connectors": []}
        view = self._charger_view(row, owner)
        view.update({k: row.get(k) for k in ("serial", "firmware", "last_boot")})
        view["connectors"] = row.get("connectors", [])
        if owner is not None:
            view["worker_id"] = owner.worker_id
        return ok(msgspec.convert(view, t.Charger))

    async def call(self, request: web.Request) -> web.Response:
        cid, action = request.match_info["id"], request.match_info["action"]
        if action == DISCONNECT or action.startswith("_"):  # internal calls are not OCPP actions
            return error(422, "payload_invalid", f"unknown action {action!r}")
        try:
            payload = msgspec.json.decode(await request.read() or b"{}")
        except msgspec.DecodeError:
            return error(422, "payload_invalid", "body is not JSON")
        if not isinstance(payload, dict):
            return error(422, "payload_invalid", "an OCPP payload is a JSON object")
        timeout = self.settings.call_timeout
        if "timeout" in request.query:
            try:
                timeout = min(timeout, max(0.05, float(request.query["timeout"])))
            except ValueError:
                return error(400, "bad_request", "timeout must be a number of seconds")
        t0 = time.perf_counter()
        result = "ok"
        try:
            answer = await self.registry.call(cid, action, payload, timeout)
        except CallRejected as exc:
            result = "charger_error"
            return ok(t.ChargerError(t.ChargerErrorDetail(exc.error_code, exc.description, str(exc))),
                      status=502)
        except RegistryError as exc:
            result = exc.code
            raise
        finally:
            FORWARD.labels(result).observe(time.perf_counter() - t0)
        return ok(t.CallResult(answer))

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await self.sse(request, request.match_info["id"])

    async def sse(self, request: web.Request, stream: str,
                  keep: Callable[[dict], bool] | None = None) -> web.StreamResponse:
        """Server-Sent Events of one registry stream (every SSE endpoint goes through here).

        The response starts only once the subscription exists, with ``: subscribed``;
        then one ``id:``/``event:``/``data:`` block per event, and a ``: keep-alive``
        comment after ``sse_keepalive`` seconds of silence, for as long as the client
        stays. ``Last-Event-ID`` (header, or ``?last_event_id=``) replays the newer
        events of the stream's window first. ``keep``: only the events it accepts."""
        after = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        sub = await self.registry.events(stream, after)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            await resp.write(b": subscribed\n\n")
            keepalive = float(getattr(self.settings, "sse_keepalive", 15.0))
            while True:
                try:
                    item = await sub.next(keepalive)
                except StopAsyncIteration:
                    break
                if item is None:
                    await resp.write(b": keep-alive\n\n")
                    continue
                sid, ev = item
                if keep is not None and not keep(ev):
                    continue
                await resp.write(f"id: {sid}\nevent: {ev.get('type', 'message')}\n"
                                 f"data: {_dumps(ev)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError, RegistryError):
            pass  # the client left, or the registry went away: end the stream
        finally:
            await sub.close()
        return resp

    async def list_transactions(self, request: web.Request) -> web.Response:
        """Newest start first, a page at a time (``?limit=&cursor=``), filtered by the
        token's charger ACL (a ``charger_id`` outside it: 403)."""
        q = request.query
        active = None
        if "active" in q:
            if q["active"].lower() not in ("true", "false", "1", "0"):
                return error(400, "bad_request", "active is true or false")
            active = q["active"].lower() in ("true", "1")
        charger_id = q.get("charger_id") or None
        covers = await self._acl(request)
        if covers is not None and charger_id is not None:
            if not covers(charger_id):
                return error(403, "forbidden", f"the token does not reach charger {charger_id!r}")
            covers = None  # one charger, covered: no filtering
        rows, cursor = await self._acl_page(self.store.list_transactions_page, request, covers,
                                            lambda r: r["charger_id"], charger_id=charger_id, active=active)
        return ok(t.TransactionPage([msgspec.convert(i, t.Transaction) for i in rows], cursor))

    async def get_transaction(self, request: web.Request) -> web.Response:
        tx = await self.store.get_transaction(request.match_info["id"], request.match_info["tx"])
        if tx is None:
            return error(404, "not_found", "unknown transaction")
        return ok(msgspec.convert(tx, t.Transaction))

    async def put_id_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        if not 1 <= len(tag) <= 36:
            return error(422, "invalid", "id tags are 1-36 characters")
        try:
            body = await _body(request, t.IdTagBody)
        except _Invalid as exc:
            return error(422, "invalid", f"{exc}; status is one of {', '.join(ID_TAG_STATUSES)}")
        await self.store.put_id_tag(tag, body.status)
        if self._on_id_tag_change:
            self._on_id_tag_change(tag)
        return ok(t.IdTag(tag, body.status))

    async def get_id_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        status = await self.store.get_id_tag(tag)
        if status is None:
            return error(404, "not_found", "unknown id tag")
        return ok(t.IdTag(tag, status))

    async def list_id_tags(self, request: web.Request) -> web.Response:
        """Paged by tag: ``?limit=`` (1-1000, default 1000) and ``?cursor=`` (next_cursor)."""
        limit = _page_limit(request)
        rows = await self.store.list_id_tags(after=request.query.get("cursor") or None, limit=limit + 1)
        items = [t.IdTag(r["id_tag"], r["status"]) for r in rows[:limit]]
        return ok(t.IdTagPage(items, items[-1].id_tag if len(rows) > limit else None))

    # -- charger security and tokens (router/chargers.py) ------------------------------
    async def put_charger(self, request: web.Request) -> web.Response:
        return await self.security.put_charger(request)

    async def delete_charger(self, request: web.Request) -> web.Response:
        return await self.security.delete_charger(request)

    async def rotate_password(self, request: web.Request) -> web.Response:
        return await self.security.rotate_password(request)

    async def security_events(self, request: web.Request) -> web.Response:
        return await self.security.security_events(request)

    async def create_token(self, request: web.Request) -> web.Response:
        return await self.security.create_token(request)

    async def delete_token(self, request: web.Request) -> web.Response:
        return await self.security.delete_token(request)

    async def delete_id_tag(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        if not await self.store.delete_id_tag(tag):
            return error(404, "not_found", "unknown id tag")
        if self._on_id_tag_change:
            self._on_id_tag_change(tag)
        return web.Response(status=204)

    # -- the services' routes: tariffs, CDRs (billing), alerts (monitoring) --------------
    def _services(self) -> Any:
        if self.services is None:
            raise web.HTTPServiceUnavailable(reason="billing and monitoring are not available on this node")
        return self.services

    async def list_tariffs(self, request: web.Request) -> web.Response:
        return await self._services().list_tariffs(request)

    async def get_tariff(self, request: web.Request) -> web.Response:
        return await self._services().get_tariff(request)

    async def put_tariff(self, request: web.Request) -> web.Response:
        return await self._services().put_tariff(request)

    async def delete_tariff(self, request: web.Request) -> web.Response:
        return await self._services().delete_tariff(request)

    async def get_cdr(self, request: web.Request) -> web.Response:
        return await self._services().get_cdr(request)  # the charger's ACL: checked by _auth

    async def list_alerts(self, request: web.Request) -> web.Response:
        return await self._services().list_alerts(request, await self._acl(request))

    async def alert_events(self, request: web.Request) -> web.StreamResponse:
        """The alerts monitoring publishes on the registry (services/api.py ``ALERT_STREAM``)."""
        from ..services.api import ALERT_STREAM

        covers = await self._acl(request)
        keep = None if covers is None else (lambda ev: covers(ev.get("data", {}).get("charger_id", "")))
        return await self.sse(request, ALERT_STREAM, keep)
