"""router/chargers.py on a bare aiohttp app: registration, rotation state machine,
deregistration, server-generated tokens (LocalRegistry with a scripted charger)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from chargeyard.router.chargers import ChargerSecurityApi
from chargeyard.router.registry import DISCONNECT, LocalRegistry
from chargeyard.store.chargers import MemoryChargerCredentials
from chargeyard.store.passwords import verify_password

PW = "first-password-0001"


class Settings:
    call_timeout = 2.0


class Tokens:
    def __init__(self):
        self.added: dict[str, tuple] = {}

    async def add(self, token, scopes, chargers=()):
        from chargeyard.router.tokens import token_hash

        if set(scopes) - {"read", "command", "admin"}:
            raise ValueError("unknown scope")
        self.added[token_hash(token)] = (tuple(scopes), tuple(chargers))

    async def revoke_id(self, token_id):
        return self.added.pop(token_id, None) is not None


async def _serve(store, registry, answers, tokens=None):
    calls: list = []
    changed: list = []

    async def executor(cid, action, payload, timeout):
        calls.append((cid, action, payload))
        if action == DISCONNECT:
            return {}
        return answers[action]

    registry.attach("w1", executor, lambda cid, epoch: None)
    api = ChargerSecurityApi(Settings(), store, registry, tokens, on_change=changed.append)
    app = web.Application()
    api.add_routes(app.router)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    return runner, base, calls, changed


async def _req(method, url, body=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


def test_register_rotate_deregister():
    async def main():
        store, reg = MemoryChargerCredentials(), LocalRegistry("w1")
        answers = {"ChangeConfiguration": {"status": "Accepted"}}
        runner, base, calls, changed = await _serve(store, reg, answers)
        try:
            st, body = await _req("PUT", base + "/api/v1/chargers/CP1", {"security_profile": 1, "password": PW})
            assert st == 201 and PW not in json.dumps(body)
            creds = await store.get_charger_credentials("CP1")
            assert verify_password(PW, creds.password_hash) and changed == ["CP1"]
            assert (await _req("PUT", base + "/api/v1/chargers/CP2", {"security_profile": 2}))[0] == 422
            assert (await _req("PUT", base + "/api/v1/chargers/CP3", {"security_profile": 3}))[0] == 201
            assert (await _req("PUT", base + "/api/v1/chargers/CP4", {"security_profile": 7, "password": PW}))[0] == 422
            # rotation needs the charger connected
            assert (await _req("POST", base + "/api/v1/chargers/CP1/password"))[0] == 404
            await reg.claim("CP1", "ocpp1.6")
            st, body = await _req("POST", base + "/api/v1/chargers/CP1/password", {"password": "second-password-02"})
            assert st == 200 and body["status"] == "Accepted"
            assert calls[-1] == ("CP1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": "second-password-02"})
            creds = await store.get_charger_credentials("CP1")
            assert verify_password("second-password-02", creds.password_hash)
            assert verify_password(PW, creds.previous_password_hash) and not creds.pending_password_hash
            # a refusal leaves the password in force as it was
            answers["ChangeConfiguration"] = {"status": "Rejected"}
            assert (await _req("POST", base + "/api/v1/chargers/CP1/password"))[0] == 409
            assert await store.get_charger_credentials("CP1") == creds
            # 2.0.1: SetVariables
            await reg.claim("CP1", "ocpp2.0.1")
            answers["SetVariables"] = {"setVariableResult": [{"attributeStatus": "Accepted"}]}
            assert (await _req("POST", base + "/api/v1/chargers/CP1/password"))[0] == 200
            assert calls[-1][1] == "SetVariables"
            assert calls[-1][2]["setVariableData"][0]["variable"] == {"name": "BasicAuthPassword"}
            # deregistration disconnects
            assert (await _req("DELETE", base + "/api/v1/chargers/CP1"))[0] == 204
            assert calls[-1] == ("CP1", DISCONNECT, {"reason": "deregistered"})
            assert await store.get_charger_credentials("CP1") is None
            assert (await _req("DELETE", base + "/api/v1/chargers/CP1"))[0] == 404
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_server_generated_tokens():
    async def main():
        tokens = Tokens()
        runner, base, _, _ = await _serve(MemoryChargerCredentials(), LocalRegistry("w1"), {}, tokens)
        try:
            st, body = await _req("POST", base + "/api/v1/tokens", {"scopes": ["read"], "chargers": ["site-a-*"]})
            assert st == 201 and body["token"].startswith("cy_") and len(body["token"]) > 40
            assert body["id"] in tokens.added and body["token"] not in json.dumps(tokens.added)
            assert (await _req("POST", base + "/api/v1/tokens", {"scopes": ["root"]}))[0] == 422
            assert (await _req("DELETE", base + "/api/v1/tokens/" + body["id"]))[0] == 204
            assert (await _req("DELETE", base + "/api/v1/tokens/" + body["id"]))[0] == 404
            assert (await _req("DELETE", base + "/api/v1/tokens/not-a-hash"))[0] == 422
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_token_with_an_acl_cannot_create_a_broader_one():
    from chargeyard.router.tokens import Grant

    class Scoped(Tokens):
        async def grant(self, token):
            return Grant(frozenset({"admin"}), ("site-a-*",)) if token == "scoped" else None

    async def main():
        tokens = Scoped()
        store, reg = MemoryChargerCredentials(), LocalRegistry("w1")
        reg.attach("w1", None, lambda cid, epoch: None)
        api = ChargerSecurityApi(Settings(), store, reg, tokens)

        @web.middleware
        async def as_scoped(request, handler):
            import warnings

            with warnings.catch_warnings():  # the key the API's own auth middleware uses
                warnings.simplefilter("ignore")
                request["token"] = "scoped"
            return await handler(request)

        app = web.Application(middlewares=[as_scoped])
        api.add_routes(app.router)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            assert (await _req("POST", base + "/api/v1/tokens", {"scopes": ["read"]}))[0] == 403
            assert (await _req("POST", base + "/api/v1/tokens", {"scopes": ["read"], "chargers": ["*"]}))[0] == 403
            assert (await _req("POST", base + "/api/v1/tokens",
                               {"scopes": ["read"], "chargers": ["site-a-*"]}))[0] == 201
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_service_rejects_inconsistent_settings(tmp_path):
    from chargeyard.worker.security.service import ChargerSecurity, SecurityConfigError

    class S:
        security_profile = 2
        tls_cert = tls_key = tls_client_ca = trusted_proxies = ca_cert = ca_key = unknown_chargers = ""

    with pytest.raises(SecurityConfigError, match="--tls-cert"):
        ChargerSecurity(S(), MemoryChargerCredentials(), lambda b: None)
    S.security_profile, S.trusted_proxies = 2, "10.0.0.0/8"
    sec = ChargerSecurity(S(), MemoryChargerCredentials(), lambda b: None)
    assert sec.gated and sec.scheme == "ws"
    S.security_profile, S.trusted_proxies = 1, ""
    with pytest.raises(SecurityConfigError, match="store"):
        ChargerSecurity(S(), object(), lambda b: None)
    S.security_profile = 0
    assert not ChargerSecurity(S(), object(), lambda b: None).gated
    S.ca_cert = "x"
    with pytest.raises(SecurityConfigError, match="--ca-key"):
        ChargerSecurity(S(), object(), lambda b: None)


def test_open_mode_lets_unregistered_ids_in_without_a_lookup():
    from chargeyard.store.chargers import ChargerCredentials
    from chargeyard.worker.security.gate import NOT_NOW
    from chargeyard.worker.server import parse_charger_id
    from chargeyard.worker.security.service import ChargerSecurity

    class S:
        security_profile = 0
        tls_cert = tls_key = tls_client_ca = trusted_proxies = ca_cert = ca_key = unknown_chargers = ""

    async def main():
        store = MemoryChargerCredentials()
        await store.put_charger_credentials(ChargerCredentials(charger_id="REG", security_profile=1,
                                                               password_hash="scrypt$x"))
        sec = ChargerSecurity(S(), store, parse_charger_id)
        assert sec.open and sec.quick(b"GET /ocpp/any HTTP/1.1\r\n\r\n", None) is NOT_NOW  # not loaded yet
        await sec.start()
        t = sec.quick(b"GET /ocpp/any HTTP/1.1\r\nHost: x\r\n\r\n", None)
        assert t.charger_id == "any" and t.decision.accepted
        assert sec.quick(b"GET /ocpp/REG HTTP/1.1\r\n\r\n", None) is NOT_NOW
        assert sec.quick(b"GET /a/b/c HTTP/1.1\r\n\r\n", None) is None
        sec.forget("NEW")  # registered through this process's API: checked at once
        assert sec.quick(b"GET /ocpp/NEW HTTP/1.1\r\n\r\n", None) is NOT_NOW
        sec.close()

    asyncio.run(main())
