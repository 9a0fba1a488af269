"""Profile 3 through the local cluster's nginx: nginx terminates TLS and verifies client
certificates, the workers believe its identity headers (--trusted-proxies) and check
that the certificate's CN is the charger id."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import ClusterProc

from . import pki
from .test_profiles import Charger16, _ctx, boot16, charger, refused


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = pki.make_ca(), pki.make_ca("Another CA")
    certs = {"ca_obj": ca}
    certs["ca"], certs["ca_key"] = ca.write(d, "ca")
    certs["server"] = pki.issue(ca, "localhost", server=True).write(d, "server")
    certs["cp3"] = pki.issue(ca, "CP3").write(d, "cp3")
    certs["expired"] = pki.issue(ca, "CP3", expired=True).write(d, "expired")
    certs["wrong_cn"] = pki.issue(ca, "CP-OTHER").write(d, "wrongcn")
    certs["other_ca"] = pki.issue(other, "CP3").write(d, "otherca")
    c = ClusterProc(tmp_path_factory.mktemp("cluster"), workers=2, security_profile=3,
                    tls_cert=certs["server"][0], tls_key=certs["server"][1], tls_client_ca=certs["ca"])
    try:
        c.start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield c, certs
    c.stop()


def test_profile3_through_nginx(tls_cluster):
    c, certs = tls_cluster
    assert c.request("PUT", "/api/v1/chargers/CP3", {"security_profile": 3})[0] == 201
    url = f"wss://localhost:{c.ws_port}/ocpp/CP3"

    async def main():
        async with charger(Charger16, url, "CP3", ssl_ctx=_ctx(certs, "cp3")) as cp:
            assert await boot16(cp) == "Accepted"
        # refused before any OCPP frame: nginx for the TLS part, the worker for the identity
        assert await refused(url, "CP3", ssl_ctx=_ctx(certs)) in (400, "SSLError", "ConnectionResetError")
        assert await refused(url, "CP3", ssl_ctx=_ctx(certs, "expired")) == 400
        assert await refused(url, "CP3", ssl_ctx=_ctx(certs, "other_ca")) == 400
        assert await refused(url, "CP3", ssl_ctx=_ctx(certs, "wrong_cn")) == 401
        # a charger cannot claim another identity with the proxy's headers: nginx sets them
        import websockets

        try:
            async with websockets.connect(url, subprotocols=["ocpp1.6"], ssl=_ctx(certs, "wrong_cn"),
                                          additional_headers={"X-Client-Cert-CN": "CP3",
                                                              "X-Client-Verify": "SUCCESS"}, open_timeout=5):
                raise AssertionError("accepted a forged identity header")
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 401
        # deregistration through the API node disconnects the charger on its worker (Redis)
        from tests.support import api_call

        async with charger(Charger16, url, "CP3", ssl_ctx=_ctx(certs, "cp3")) as cp:
            await boot16(cp)
            status, _ = await api_call(c.url(""), "DELETE", "/api/v1/chargers/CP3")
            assert status == 204
            await asyncio.wait_for(cp._connection.wait_closed(), 10)
        assert await refused(url, "CP3", ssl_ctx=_ctx(certs, "cp3")) == 401  # unknown now: rejected

    asyncio.run(main())
