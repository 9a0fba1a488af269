"""The handshake gate over real sockets: plain, TLS, mutual TLS, trusted proxy headers."""

from __future__ import annotations

import asyncio
import base64
import ssl
import warnings

import pytest
import uvloop
import websockets
from picows import WSListener, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener

from chargeyard.worker.security.gate import GatedServer, parse_head
from chargeyard.worker.security.tls import TrustedProxies, peer_identity, server_context

from . import pki


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        self.protocol = transport.underlying_transport.get_protocol()
        if frame.msg_type == WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Harness:
    """A gated server whose ticket is the peer identity and the Authorization header."""

    def __init__(self, proxies: str = "") -> None:
        self.proxies = TrustedProxies(proxies)
        self.tickets: list = []
        self.listeners: list[Echo] = []

    async def precheck(self, head: bytes, transport) -> tuple:
        await asyncio.sleep(0.01)  # an await, as a credential lookup would
        target, headers = parse_head(head)
        peer = peer_identity(transport.get_extra_info("peername"), transport.get_extra_info("ssl_object"),
                             headers, self.proxies)
        return target, headers.get("authorization"), peer

    def factory(self, request, ticket):
        self.tickets.append(ticket)
        target, auth, peer = ticket
        assert request.path == target
        if auth != "Basic " + base64.b64encode(b"CP1:pw").decode() and peer.cert_cn is None:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(
                401, b"who are you", {"WWW-Authenticate": "Basic"}), None)
        e = Echo()
        self.listeners.append(e)
        return e


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_run(request):
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = pki.make_ca(), pki.make_ca("Other CA")
    out = {"dir": d}
    out["ca"], _ = ca.write(d, "ca")
    out["server"] = pki.issue(ca, "localhost", server=True).write(d, "server")
    out["cp3"] = pki.issue(ca, "CP3").write(d, "cp3")
    out["expired"] = pki.issue(ca, "CP3", expired=True).write(d, "expired")
    out["other"] = pki.issue(other, "CP3").write(d, "other")
    return out


async def _echo(url: str, **kw) -> str:
    async with websockets.connect(url, open_timeout=5, **kw) as ws:
        await ws.send("hello")
        return await asyncio.wait_for(ws.recv(), 5)


def test_plain_gate_refuses_then_accepts_and_steps_aside(loop_run):
    async def main():
        h = Harness()
        g = GatedServer(h.factory, h.precheck)
        srv = await g.start("127.0.0.1", 0, websocket_handshake_timeout=5)
        port = srv.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ocpp/CP1"
        with pytest.raises(websockets.InvalidStatus) as e:
            await _echo(url)
        assert e.value.response.status_code == 401
        assert await _echo(url, additional_headers={"Authorization": "Basic " + base64.b64encode(b"CP1:pw").decode()}) == "hello"
        assert [t[2].address for t in h.tickets] == ["127.0.0.1", "127.0.0.1"]
        # after the handshake picows' own protocol is on the transport: no gate per frame
        assert type(h.listeners[0].protocol).__name__ == "WSProtocol"
        g.close()
        await srv.wait_closed()

    loop_run(main())


def test_request_head_in_many_pieces(loop_run):
    async def main():
        h = Harness()
        g = GatedServer(h.factory, h.precheck)
        srv = await g.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        head = (b"GET /ocpp/CP1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Authorization: Basic " + base64.b64encode(b"CP1:pw") + b"\r\n\r\n")
        for i in range(0, len(head), 7):
            w.write(head[i:i + 7])
            await w.drain()
            await asyncio.sleep(0.001)
        status = await asyncio.wait_for(r.readline(), 5)
        assert status.startswith(b"HTTP/1.1 101")
        w.close()
        await w.wait_closed()
        g.close()

    loop_run(main())


def _client_ctx(certs, cert=None):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if cert:
        ctx.load_cert_chain(*certs[cert])
    return ctx


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_profiles(loop_run, certs, mutual):
    async def main():
        h = Harness()
        g = GatedServer(h.factory, h.precheck)
        ctx = server_context(*certs["server"], certs["ca"] if mutual else "", require_client_cert=mutual)
        srv = await g.start("127.0.0.1", 0, ssl=ctx)
        port = srv.sockets[0].getsockname()[1]
        url = f"wss://localhost:{port}/ocpp/CP3"
        if mutual:
            assert await _echo(url, ssl=_client_ctx(certs, "cp3")) == "hello"
            assert h.tickets[-1][2].cert_cn == "CP3" and h.tickets[-1][2].secure
            for bad in (None, "expired", "other"):  # refused by TLS itself: the factory never runs
                with pytest.raises((OSError, ssl.SSLError, websockets.InvalidMessage,
                                    websockets.ConnectionClosed, EOFError, asyncio.TimeoutError)):
                    await _echo(url, ssl=_client_ctx(certs, bad))
            assert len(h.tickets) == 1
        else:
            auth = {"Authorization": "Basic " + base64.b64encode(b"CP1:pw").decode()}
            assert await _echo(url.replace("CP3", "CP1"), ssl=_client_ctx(certs), additional_headers=auth) == "hello"
            assert h.tickets[-1][2].secure and h.tickets[-1][2].cert_cn is None
        # plain ws on the TLS port never reaches the upgrade
        with pytest.raises((OSError, websockets.InvalidMessage, websockets.ConnectionClosed, EOFError,
                            asyncio.TimeoutError)):
            await _echo(f"ws://127.0.0.1:{port}/ocpp/CP1")
        tls_low = _client_ctx(certs, "cp3" if mutual else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tls_low.minimum_version = ssl.TLSVersion.TLSv1
            tls_low.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((OSError, ssl.SSLError)):
            await _echo(url, ssl=tls_low)
        g.close()

    loop_run(main())


def test_proxy_headers_only_from_trusted_proxies(loop_run):
    hdrs = {"X-Client-Verify": "SUCCESS", "X-Client-Cert-CN": "CP3", "X-Forwarded-Proto": "https",
            "X-Real-IP": "203.0.113.7"}

    async def main():
        for proxies, trusted in (("10.0.0.0/8", False), ("127.0.0.0/8, ::1", True)):
            h = Harness(proxies)
            g = GatedServer(h.factory, h.precheck)
            srv = await g.start("127.0.0.1", 0)
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/ocpp/CP3"
            if trusted:
                assert await _echo(url, additional_headers=hdrs) == "hello"
                peer = h.tickets[-1][2]
                assert (peer.cert_cn, peer.secure, peer.address, peer.via_proxy) == ("CP3", True, "203.0.113.7", True)
            else:
                with pytest.raises(websockets.InvalidStatus):
                    await _echo(url, additional_headers=hdrs)
                assert h.tickets[-1][2].cert_cn is None and not h.tickets[-1][2].secure
            g.close()

    loop_run(main())


def test_parse_head():
    t, h = parse_head(b"GET /ocpp/a%20b?x=1 HTTP/1.1\r\nhost: h\r\nAUTHORIZATION: Basic x\r\nX-Real-IP: 1.2.3.4\r\n\r\n")
    assert t == b"/ocpp/a%20b?x=1" and h["authorization"] == "Basic x" and h["x-real-ip"] == "1.2.3.4"


def test_a_certificate_signed_from_a_csr_passes_mutual_tls(certs, tmp_path):
    """SignCertificate -> CertificateSigned: the chain the CSMS CA signs is a working
    profile-3 client certificate."""
    from chargeyard.worker.security.certs import CertificateAuthority

    issued = pki.make_ca("CSMS CA")
    ca_cert, ca_key = issued.write(tmp_path, "csms-ca")
    authority = CertificateAuthority.from_files(ca_cert, ca_key)
    req, k = pki.csr("CP3")
    chain = tmp_path / "cp3-chain.pem"
    chain.write_text(authority.sign_csr(req, "CP3"))
    key = tmp_path / "cp3.key"
    key.write_bytes(pki.key_pem(k))

    async def main():
        h = Harness()
        g = GatedServer(h.factory, h.precheck)
        srv = await g.start("127.0.0.1", 0, ssl=server_context(*certs["server"], ca_cert, require_client_cert=True))
        ctx = ssl.create_default_context(cafile=certs["ca"])
        ctx.load_cert_chain(str(chain), str(key))
        assert await _echo(f"wss://localhost:{srv.sockets[0].getsockname()[1]}/ocpp/CP3", ssl=ctx) == "hello"
        assert h.tickets[-1][2].cert_cn == "CP3"
        g.close()

    asyncio.run(main())
