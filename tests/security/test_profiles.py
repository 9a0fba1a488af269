"""Issue 22's proof: security profiles 1-3, rotation, certificate signing, API holes.

Real nodes (``chargeyard run``) on 127.0.0.1, the ``ocpp`` library as the charger, a
test PKI made with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl

import pytest
import websockets
from cryptography import x509
from ocpp.routing import on
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201

from tests.e2e.chargers import CP16, CP201, ts
from tests.support import NodeProc, api_call

from . import pki

PW = "first-password-0001"


def basic(cid: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{cid}:{password}".encode()).decode()


class Charger16(CP16):
    """A 1.6 charger that takes a new AuthorizationKey and a signed certificate."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.keys: list[str] = []
        self.chains: list[str] = []
        self.got_chain = asyncio.Event()

    @on(A16.change_configuration)
    def on_change_configuration(self, key, value, **kw):
        if key == "AuthorizationKey":
            self.keys.append(value)
            return r16.ChangeConfiguration(status="Accepted")
        return r16.ChangeConfiguration(status="NotSupported")

    @on(A16.certificate_signed)
    def on_certificate_signed(self, certificate_chain, **kw):
        self.chains.append(certificate_chain)
        self.got_chain.set()
        return r16.CertificateSigned(status="Accepted")


class Charger201(CP201):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passwords: list[str] = []

    @on(A201.set_variables)
    def on_set_variables(self, set_variable_data, **kw):
        out = []
        for d in set_variable_data:
            if d["component"]["name"] == "SecurityCtrlr" and d["variable"]["name"] == "BasicAuthPassword":
                self.passwords.append(d["attribute_value"])
            out.append({"attribute_status": "Accepted", "component": d["component"], "variable": d["variable"]})
        return r201.SetVariables(set_variable_result=out)


@contextlib.asynccontextmanager
async def charger(cls, url: str, cid: str, proto: str = "ocpp1.6", password: str | None = None,
                  ssl_ctx: ssl.SSLContext | None = None):
    headers = {"Authorization": basic(cid, password)} if password is not None else None
    async with websockets.connect(url, subprotocols=[proto], open_timeout=5, additional_headers=headers,
                                  ssl=ssl_ctx) as ws:
        cp = cls(cid, ws, response_timeout=10)
        task = asyncio.ensure_future(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def boot16(cp) -> str:
    res = await cp.call(c16.BootNotification(charge_point_vendor="Test", charge_point_model="Sec"))
    return res.status


async def refused(url: str, cid: str, password: str | None = None, ssl_ctx=None) -> int | str:
    """The HTTP status a handshake got, or the name of the error when TLS refused it."""
    try:
        async with charger(CP16, url, cid, password=password, ssl_ctx=ssl_ctx):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    except (OSError, ssl.SSLError, websockets.InvalidMessage, websockets.ConnectionClosed, EOFError,
            asyncio.TimeoutError) as exc:
        return type(exc).__name__


async def until(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- profile 1 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def p1(tmp_path_factory):
    n = NodeProc(tmp_path_factory.mktemp("p1"), "--security-profile", "1", "--call-timeout", "5")
    n.start()
    yield n
    n.stop()


def _api(node):
    return f"http://127.0.0.1:{node.http_port}"


def test_profile1_password_boots_wrong_or_missing_gets_401(p1):
    status, body = p1.request("PUT", "/api/v1/chargers/CP-P1", {"security_profile": 1, "password": PW})
    assert status == 201 and PW not in json.dumps(body) and body["password_set"]
    assert p1.request("PUT", "/api/v1/chargers/CP-X", {"security_profile": 1, "password": "short"})[0] == 422

    async def main():
        async with charger(Charger16, p1.ws("CP-P1"), "CP-P1", password=PW) as cp:
            assert await boot16(cp) == "Accepted"
            assert await refused(p1.ws("CP-P1"), "CP-P1", "wrong-password-0001") == 401
            assert await refused(p1.ws("CP-P1"), "CP-P1") == 401
            assert await refused(p1.ws("CP-UNKNOWN"), "CP-UNKNOWN", PW) == 401
            # the impostors changed nothing: the real charger is connected and gets the next call
            status, body = await api_call(_api(p1), "POST", "/api/v1/chargers/CP-P1/calls/RemoteStartTransaction",
                                          {"idTag": "TAG-1"})
            assert status == 200 and cp.remote_starts == ["TAG-1"]

    asyncio.run(main())
    assert PW not in "\n".join(p1.log)
    status, metrics = p1.get("/metrics")
    assert 'chargeyard_ws_auth_failures_total{reason="bad_password"}' in str(metrics)


def test_profile1_repeated_failures_get_429_with_retry_after(p1):
    assert p1.request("PUT", "/api/v1/chargers/CP-429", {"password": PW})[0] == 201

    async def main():
        got = [await refused(p1.ws("CP-429"), "CP-429", "wrong-password-0002") for _ in range(6)]
        assert got[:5] == [401] * 5 and got[5] == 429
        try:
            async with charger(CP16, p1.ws("CP-429"), "CP-429", password="wrong-password-0002"):
                pass
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 429 and int(exc.response.headers["Retry-After"]) > 0

    asyncio.run(main())


def test_rotation_round_trip_16(p1):
    assert p1.request("PUT", "/api/v1/chargers/CP-ROT", {"password": PW})[0] == 201

    async def main():
        async with charger(Charger16, p1.ws("CP-ROT"), "CP-ROT", password=PW) as cp:
            await boot16(cp)
            status, body = await api_call(_api(p1), "POST", "/api/v1/chargers/CP-ROT/password", {})
            assert status == 200 and body["status"] == "Accepted" and body["via"] == "ChangeConfiguration"
            new = cp.keys[-1]
            assert 16 <= len(new) <= 40 and new not in json.dumps(body)
        # the old password works until the charger connects with the new one
        async with charger(Charger16, p1.ws("CP-ROT"), "CP-ROT", password=PW) as cp:
            assert await boot16(cp) == "Accepted"
        async with charger(Charger16, p1.ws("CP-ROT"), "CP-ROT", password=new) as cp:
            assert await boot16(cp) == "Accepted"
        for _ in range(100):  # the worker drops the previous password in the background
            if await refused(p1.ws("CP-ROT"), "CP-ROT", PW) == 401:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the old password still works after a login with the new one")

    asyncio.run(main())


def test_rotation_201_and_a_refusing_charger_keeps_its_password(p1):
    assert p1.request("PUT", "/api/v1/chargers/CP-ROT2", {"password": PW})[0] == 201

    async def main():
        async with charger(Charger201, p1.ws("CP-ROT2"), "CP-ROT2", "ocpp2.0.1", password=PW) as cp:
            status, body = await api_call(_api(p1), "POST", "/api/v1/chargers/CP-ROT2/password",
                                          {"password": "second-password-02"})
            assert status == 200 and body["via"] == "SetVariables" and cp.passwords == ["second-password-02"]
        async with charger(Charger201, p1.ws("CP-ROT2"), "CP-ROT2", "ocpp2.0.1", password="second-password-02"):
            pass
        # a 1.6 charger that does not support the key keeps its password
        assert (await api_call(_api(p1), "PUT", "/api/v1/chargers/CP-NOROT", {"password": PW}))[0] == 201
        async with charger(CP16, p1.ws("CP-NOROT"), "CP-NOROT", password=PW):
            status, body = await api_call(_api(p1), "POST", "/api/v1/chargers/CP-NOROT/password", {})
            assert status in (409, 502)
        async with charger(CP16, p1.ws("CP-NOROT"), "CP-NOROT", password=PW):
            pass

    asyncio.run(main())


def test_deregistration_disconnects(p1):
    assert p1.request("PUT", "/api/v1/chargers/CP-DEL", {"password": PW})[0] == 201

    async def main():
        async with charger(Charger16, p1.ws("CP-DEL"), "CP-DEL", password=PW) as cp:
            await boot16(cp)
            assert (await api_call(_api(p1), "DELETE", "/api/v1/chargers/CP-DEL"))[0] == 204
            await asyncio.wait_for(cp._connection.wait_closed(), 5)
        assert await refused(p1.ws("CP-DEL"), "CP-DEL", PW) == 401
        # operators cannot send the internal disconnect themselves
        status, _ = await api_call(_api(p1), "POST", "/api/v1/chargers/CP-P1/calls/_Disconnect", {})
        assert status in (404, 422)

    asyncio.run(main())


def test_security_events_are_stored_and_served(p1):
    assert p1.request("PUT", "/api/v1/chargers/CP-SEC", {"password": PW})[0] == 201

    async def main():
        async with charger(Charger16, p1.ws("CP-SEC"), "CP-SEC", password=PW) as cp:
            await cp.call(c16.SecurityEventNotification(type="FirmwareUpdated", timestamp=ts(),
                                                        tech_info="v2.1"))
        for _ in range(50):
            status, body = await api_call(_api(p1), "GET", "/api/v1/chargers/CP-SEC/security-events")
            if body["items"]:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and body["items"][0]["type"] == "FirmwareUpdated"
        assert body["items"][0]["tech_info"] == "v2.1"

    asyncio.run(main())


# -- profiles 2 and 3 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = pki.make_ca(), pki.make_ca("Another CA")
    out = {"dir": d, "ca_obj": ca}
    out["ca"], out["ca_key"] = ca.write(d, "ca")
    out["server"] = pki.issue(ca, "localhost", server=True).write(d, "server")
    out["cp3"] = pki.issue(ca, "CP3").write(d, "cp3")
    out["expired"] = pki.issue(ca, "CP3", expired=True).write(d, "expired")
    out["wrong_cn"] = pki.issue(ca, "CP-OTHER").write(d, "wrongcn")
    out["other_ca"] = pki.issue(other, "CP3").write(d, "otherca")
    return out


def _ctx(pkis, cert: str | None = None, chain: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pkis["ca"])
    if cert:
        ctx.load_cert_chain(*pkis[cert])
    if chain:
        ctx.load_cert_chain(*chain)
    return ctx


def _wss(node, cid: str) -> str:
    return f"wss://localhost:{node.ws_port}/ocpp/{cid}"


def test_profile2_wss_with_a_verified_server_certificate(tmp_path, pkis):
    n = NodeProc(tmp_path, "--security-profile", "2", "--tls-cert", pkis["server"][0],
                 "--tls-key", pkis["server"][1])
    n.start()
    try:
        assert n.request("PUT", "/api/v1/chargers/CP2", {"security_profile": 2, "password": PW})[0] == 201

        async def main():
            async with charger(Charger16, _wss(n, "CP2"), "CP2", password=PW, ssl_ctx=_ctx(pkis)) as cp:
                assert await boot16(cp) == "Accepted"
            assert await refused(_wss(n, "CP2"), "CP2", "wrong-password-0003", _ctx(pkis)) == 401
            assert await refused(n.ws("CP2"), "CP2", PW) != 101  # plain ws on the TLS port
            untrusting = ssl.create_default_context()  # the system CAs do not know our server
            assert await refused(_wss(n, "CP2"), "CP2", PW, untrusting) == "SSLCertVerificationError"

        asyncio.run(main())
    finally:
        n.stop()


def test_profile3_mutual_tls_and_certificate_signing(tmp_path, pkis):
    n = NodeProc(tmp_path, "--security-profile", "3", "--tls-cert", pkis["server"][0],
                 "--tls-key", pkis["server"][1], "--tls-client-ca", pkis["ca"],
                 "--ca-cert", pkis["ca"], "--ca-key", pkis["ca_key"], "--unknown-chargers", "accept")
    n.start()
    try:
        async def main():
            async with charger(Charger16, _wss(n, "CP3"), "CP3", ssl_ctx=_ctx(pkis, "cp3")) as cp:
                assert await boot16(cp) == "Accepted"
                # SignCertificate -> CertificateSigned with a chain that verifies against the CA
                req, key = pki.csr("CP3")
                res = await cp.call(c16.SignCertificate(csr=req))
                assert res.status == "Accepted"
                await asyncio.wait_for(cp.got_chain.wait(), 10)
                chain = x509.load_pem_x509_certificates(cp.chains[0].encode())
                chain[0].verify_directly_issued_by(pkis["ca_obj"].cert)
                assert chain[1] == pkis["ca_obj"].cert
                # a CSR for another id is refused
                bad, _ = pki.csr("CP-NOT-ME")
                assert (await cp.call(c16.SignCertificate(csr=bad))).status == "Rejected"
            # the signed certificate is a working profile-3 identity
            (tmp_path / "signed.pem").write_text(cp.chains[0])
            (tmp_path / "signed.key").write_bytes(pki.key_pem(key))
            ctx = _ctx(pkis, chain=(str(tmp_path / "signed.pem"), str(tmp_path / "signed.key")))
            async with charger(Charger16, _wss(n, "CP3"), "CP3", ssl_ctx=ctx) as cp:
                assert await boot16(cp) == "Accepted"
            # refused at the handshake: no certificate, expired, CN != id, another CA
            assert await refused(_wss(n, "CP3"), "CP3", ssl_ctx=_ctx(pkis)) != 101
            assert await refused(_wss(n, "CP3"), "CP3", ssl_ctx=_ctx(pkis, "expired")) != 101
            assert await refused(_wss(n, "CP3"), "CP3", ssl_ctx=_ctx(pkis, "other_ca")) != 101
            assert await refused(_wss(n, "CP3"), "CP3", ssl_ctx=_ctx(pkis, "wrong_cn")) == 401

        asyncio.run(main())
        assert 'reason="cert_cn_mismatch"' in str(n.get("/metrics")[1])
    finally:
        n.stop()


# -- operator API --------------------------------------------------------------------


def test_every_list_is_filtered_by_the_tokens_acl(tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"admin-token-000000000001": ["admin"],
                                  "site-a-token-00000000001": {"scopes": ["read"], "chargers": ["site-a-*"]}}))
    n = NodeProc(tmp_path / "d", "--tokens-file", str(tokens), "--accept-unknown-tags")
    n.start()
    admin = {"Authorization": "Bearer admin-token-000000000001"}
    site_a = {"Authorization": "Bearer site-a-token-00000000001"}
    try:
        async def main():
            for cid in ("site-a-1", "site-b-1"):
                async with charger(CP16, n.ws(cid), cid) as cp:
                    await boot16(cp)
                    await cp.call(c16.StartTransaction(connector_id=1, id_tag="T", meter_start=0, timestamp=ts()))

        asyncio.run(main())
        status, body = n.get("/api/v1/transactions", headers=admin)
        assert status == 200 and {t["charger_id"] for t in body["items"]} == {"site-a-1", "site-b-1"}
        status, body = n.get("/api/v1/transactions", headers=site_a)
        assert status == 200 and {t["charger_id"] for t in body["items"]} == {"site-a-1"}
        status, body = n.get("/api/v1/transactions?charger_id=site-b-1", headers=site_a)
        assert status == 403 or body["items"] == []
        status, body = n.get("/api/v1/chargers", headers=site_a)
        assert [c["id"] for c in body["items"]] == ["site-a-1"]
        assert n.get("/api/v1/chargers/site-b-1", headers=site_a)[0] == 403
    finally:
        n.stop()


def test_a_non_loopback_api_without_tokens_refuses_to_start(tmp_path):
    n = NodeProc(tmp_path / "a", "--api-host", "0.0.0.0")
    try:
        with pytest.raises(RuntimeError) as exc:
            n.start(timeout=20)
    finally:
        n.stop()  # reaps the exited process and its output pipe
    assert "--insecure-api" in str(exc.value) and n.proc.returncode != 0
    ok = NodeProc(tmp_path / "b", "--api-host", "0.0.0.0", "--insecure-api")
    ok.start()
    try:
        assert ok.get("/readyz")[0] == 200
        # profile 0 (the default) says so at start
        assert any("any charger id is accepted" in line for line in ok.log)
    finally:
        ok.stop()


def test_auth_failures_reach_the_event_stream(p1):
    """Monitoring's auth_failures alert feeds on LoginFailed security events (from the outbox)."""
    import aiohttp

    assert p1.request("PUT", "/api/v1/chargers/CP-AF", {"password": PW})[0] == 201

    async def main():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            async with s.get(_api(p1) + "/api/v1/chargers/CP-AF/events") as r:
                assert (await r.content.readline()).startswith(b": subscribed")
                assert await refused(p1.ws("CP-AF"), "CP-AF", "wrong-password-0009") == 401
                while True:
                    line = (await asyncio.wait_for(r.content.readline(), 10)).decode()
                    if line.startswith("data:") and "LoginFailed" in line:
                        event = json.loads(line[5:])
                        assert event["type"] == "charger.security_event" and event["data"]["type"] == "LoginFailed"
                        assert "reason=bad_password" in event["data"]["tech_info"]
                        assert "status=401" in event["data"]["tech_info"]
                        assert PW not in line and "wrong-password" not in line
                        return

    asyncio.run(main())
