"""Operator API for charger security: registration, password rotation, security events,
and API tokens created by the server.

| method, path | scope | result |
|---|---|---|
| ``PUT /api/v1/chargers/{id}`` ``{"security_profile", "password"}`` | admin | 201 new / 200 replaced; never echoes the password |
| ``DELETE /api/v1/chargers/{id}`` | admin | 204; deregisters and disconnects it |
| ``POST /api/v1/chargers/{id}/password`` ``{"password"?}`` | admin | 200 once the charger accepted (1.6 ChangeConfiguration AuthorizationKey, 2.0.1 SetVariables SecurityCtrlr.BasicAuthPassword); 409 if it refused |
| ``GET /api/v1/chargers/{id}/security-events`` | read | ``{"items":[{"type","at","tech_info","received_at"}]}``, newest first |
| ``POST /api/v1/tokens`` ``{"scopes", "chargers"}`` | admin | 201 ``{"token", "id", ...}``: the secret, shown once; stored hashed |
| ``DELETE /api/v1/tokens/{id}`` | admin | 204; ``id`` is the token's SHA-256, never the secret |

Rotation keeps a charger reachable at every step: the new hash is stored as pending
before the charger is asked; once it accepted, the new one is in force and the previous
one still works until the charger connects with the new one (the worker then drops it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from ..store.chargers import ChargerCredentials, ChargerCredentialStore
from ..store.passwords import PasswordError, check_rule, generate_password, hash_password
from .registry import DISCONNECT, NotConnected, Registry, RegistryError

log = logging.getLogger("chargeyard.api")

PROFILES = (0, 1, 2, 3)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request) -> dict | web.Response:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(422, "invalid", "body is not JSON")
    if not isinstance(body, dict):
        return _error(422, "invalid", "body is a JSON object")
    return body


def rotation_call(protocol: str, password: str) -> tuple[str, dict]:
    """The CSMS->charger call that sets a charger's Basic password, by protocol."""
    if protocol == "ocpp1.6":
        return "ChangeConfiguration", {"key": "AuthorizationKey", "value": password}
    return "SetVariables", {"setVariableData": [{
        "component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"},
        "attributeValue": password}]}


def rotation_status(protocol: str, answer: dict) -> str:
    if protocol == "ocpp1.6":
        return str(answer.get("status", ""))
    results = answer.get("setVariableResult") or [{}]
    return str(results[0].get("attributeStatus", ""))


class ChargerSecurityApi:
    def __init__(self, settings: Any, store: Any, registry: Registry, tokens: Any = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.store: ChargerCredentialStore | None = store if isinstance(store, ChargerCredentialStore) else None
        self.registry = registry
        self.tokens = tokens
        self.on_change = on_change or (lambda cid: None)
        self.call_timeout = float(getattr(settings, "call_timeout", 30.0) or 30.0)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_put("/api/v1/chargers/{id}", self.put_charger)
        r.add_delete("/api/v1/chargers/{id}", self.delete_charger)
        r.add_post("/api/v1/chargers/{id}/password", self.rotate_password)
        r.add_get("/api/v1/chargers/{id}/security-events", self.security_events)
        r.add_post("/api/v1/tokens", self.create_token)
        r.add_delete("/api/v1/tokens/{token_id}", self.delete_token)

    def _no_store(self) -> web.Response:
        return _error(501, "not_supported", "this store does not keep charger credentials")

    # -- registration ------------------------------------------------------------------
    async def put_charger(self, request: web.Request) -> web.Response:
        if self.store is None:
            return self._no_store()
        cid = request.match_info["id"]
        if not 1 <= len(cid) <= 48 or not cid.isprintable():
            return _error(422, "invalid", "charger ids are 1-48 printable characters")
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        profile = body.get("security_profile", 1)
        if isinstance(profile, bool) or profile not in PROFILES:
            return _error(422, "invalid", "security_profile is 0, 1, 2 or 3")
        password = body.get("password")
        old = await self.store.get_charger_credentials(cid)
        if password is not None:
            try:
                check_rule(password)
            except PasswordError as exc:
                return _error(422, "invalid", str(exc))
            pw_hash = await asyncio.to_thread(hash_password, password)
        elif profile in (1, 2) and (old is None or not old.password_hash):
            return _error(422, "invalid", f"security profile {profile} needs a password (16-40 characters)")
        else:
            pw_hash = old.password_hash if old is not None else ""
        creds = ChargerCredentials(charger_id=cid, security_profile=profile, password_hash=pw_hash)
        await self.store.put_charger_credentials(creds)
        self.on_change(cid)
        log.info("charger %s registered at security profile %d", cid, profile)
        return web.json_response({"id": cid, "security_profile": profile, "password_set": bool(pw_hash)},
                                 status=201 if old is None else 200)

    async def delete_charger(self, request: web.Request) -> web.Response:
        if self.store is None:
            return self._no_store()
        cid = request.match_info["id"]
        if not await self.store.delete_charger_credentials(cid):
            return _error(404, "not_found", f"charger {cid!r} is not registered")
        self.on_change(cid)
        try:
            await self.registry.call(cid, DISCONNECT, {"reason": "deregistered"}, 5.0)
        except NotConnected:
            pass
        except RegistryError as exc:  # deregistered all the same; it cannot log in again
            log.warning("deregistered %s but could not disconnect it: %r", cid, exc)
        log.info("charger %s deregistered", cid)
        return web.Response(status=204)

    # -- rotation ----------------------------------------------------------------------
    async def rotate_password(self, request: web.Request) -> web.Response:
        if self.store is None:
            return self._no_store()
        cid = request.match_info["id"]
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        creds = await self.store.get_charger_credentials(cid)
        if creds is None:
            return _error(404, "not_found", f"charger {cid!r} is not registered")
        password = body.get("password") or generate_password()
        try:
            check_rule(password)
        except PasswordError as exc:
            return _error(422, "invalid", str(exc))
        owner = await self.registry.owner(cid)
        if owner is None:
            return _error(404, "not_connected", f"charger {cid!r} is not connected: it must take the new "
                                                "password itself")
        new_hash = await asyncio.to_thread(hash_password, password)
        await self.store.put_charger_credentials(msgspec.structs.replace(creds, pending_password_hash=new_hash))
        self.on_change(cid)
        action, payload = rotation_call(owner.protocol, password)
        try:
            answer = await self.registry.call(cid, action, payload, self.call_timeout)
            status = rotation_status(owner.protocol, answer)
        except BaseException:
            await self._drop_pending(cid, new_hash)
            raise
        if status not in ("Accepted", "RebootRequired"):
            await self._drop_pending(cid, new_hash)
            return _error(409, "charger_refused", f"the charger answered {status or 'nothing usable'} "
                                                  f"to {action}; the password is unchanged")
        cur = await self.store.get_charger_credentials(cid) or creds
        await self.store.put_charger_credentials(msgspec.structs.replace(
            cur, password_hash=new_hash, pending_password_hash="",
            previous_password_hash=cur.password_hash if cur.password_hash != new_hash else ""))
        self.on_change(cid)
        log.info("charger %s accepted a new password (%s); the previous one works until it reconnects", cid, action)
        return web.json_response({"id": cid, "status": status, "via": action,
                                  "previous_password": "valid until the charger reconnects with the new one"})

    async def _drop_pending(self, cid: str, new_hash: str) -> None:
        assert self.store is not None
        cur = await self.store.get_charger_credentials(cid)
        if cur is not None and cur.pending_password_hash == new_hash:
            await self.store.put_charger_credentials(msgspec.structs.replace(cur, pending_password_hash=""))
        self.on_change(cid)

    # -- security events ---------------------------------------------------------------
    async def security_events(self, request: web.Request) -> web.Response:
        if self.store is None:
            return self._no_store()
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "100"))))
        except ValueError:
            return _error(400, "bad_request", "limit is a number")
        events = await self.store.list_security_events(request.match_info["id"], limit)
        return web.json_response({"items": [{"type": e.type, "at": e.at, "tech_info": e.tech_info,
                                             "received_at": e.received_at} for e in events]})

    # -- tokens ------------------------------------------------------------------------
    async def create_token(self, request: web.Request) -> web.Response:
        add = getattr(self.tokens, "add", None)
        if add is None:
            return _error(409, "read_only", "tokens come from a file here; edit the file")
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        scopes, chargers = body.get("scopes"), body.get("chargers", [])
        if not isinstance(scopes, list) or not isinstance(chargers, list) or \
                not all(isinstance(c, str) for c in chargers):
            return _error(422, "invalid", 'body is {"scopes": ["read"|"command"|"admin", ...], "chargers": [globs]}')
        from .tokens import token_hash

        # a token limited to some chargers makes tokens limited to (some of) the same ones
        own = await self._grant(request)
        if own is not None and own.chargers and (not chargers or not set(chargers) <= set(own.chargers)):
            return _error(403, "forbidden", "a token limited to chargers "
                                            f"{list(own.chargers)} can only create tokens limited to those")
        secret = "cy_" + secrets.token_urlsafe(32)
        try:
            await add(secret, scopes, chargers)
        except ValueError as exc:
            return _error(422, "invalid", str(exc))
        return web.json_response({"token": secret, "id": token_hash(secret), "scopes": scopes, "chargers": chargers,
                                  "note": "the token is shown once; only its hash is kept"}, status=201)

    async def _grant(self, request: web.Request) -> Any:
        token = request.get("token")
        if self.tokens is None or not token:
            return None
        return await self.tokens.grant(token)

    async def delete_token(self, request: web.Request) -> web.Response:
        revoke = getattr(self.tokens, "revoke_id", None)
        if revoke is None:
            return _error(409, "read_only", "tokens come from a file here; edit the file")
        token_id = request.match_info["token_id"].lower()
        if len(token_id) != 64 or any(c not in "0123456789abcdef" for c in token_id):
            return _error(422, "invalid", "a token id is the 64 hex digits returned when it was created")
        if not await revoke(token_id):
            return _error(404, "not_found", "unknown token")
        return web.Response(status=204)


__all__ = ["ChargerSecurityApi", "rotation_call", "rotation_status"]
