"""TLS for the charger endpoint (security profiles 2 and 3), and the identity a trusted
TLS-terminating proxy passes on.

One node terminates TLS itself: :func:`server_context` builds the ``ssl.SSLContext``
handed to picows' ``ws_create_server(..., ssl=ctx)`` (forwarded to
``loop.create_server``). TLS 1.2 is the floor. With ``--tls-client-ca`` chargers may
(profile 2 node) or must (profile 3 node) present a client certificate chaining to that
CA; a certificate that is presented but does not verify (expired, another CA) fails the
TLS handshake itself. Whether its subject CN equals the charger id in the URL is checked
after the TLS handshake, at the WebSocket upgrade (:func:`peer_identity`).

In a cluster nginx terminates TLS and verifies the client certificate; it passes the
result in headers (``X-Client-Verify: SUCCESS``, ``X-Client-Cert-CN``,
``X-Forwarded-Proto: https``, ``X-Real-IP``) that a worker believes only when the TCP
peer is in ``--trusted-proxies`` (:class:`TrustedProxies`).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

# header names in lower case, as the handshake gate's parse_head gives them
HDR_VERIFY = "x-client-verify"      # nginx $ssl_client_verify: SUCCESS | FAILED:... | NONE
HDR_CN = "x-client-cert-cn"         # subject CN of the verified client certificate
HDR_PROTO = "x-forwarded-proto"     # https when the proxy terminated TLS
HDR_REAL_IP = "x-real-ip"           # the charger's address as the proxy saw it


class TlsConfigError(ValueError):
    pass


def server_context(cert: str, key: str, client_ca: str = "", *, require_client_cert: bool = False) -> ssl.SSLContext:
    """The charger listener's context: TLS 1.2+, the server certificate chain, and with
    ``client_ca`` client certificates verified against it (required when
    ``require_client_cert``, i.e. a profile-3 node)."""
    if not cert or not key:
        raise TlsConfigError("TLS needs both --tls-cert and --tls-key")
    if require_client_cert and not client_ca:
        raise TlsConfigError("security profile 3 needs --tls-client-ca")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"--tls-cert/--tls-key: {exc}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"--tls-client-ca: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def subject_cn(peercert: Mapping | None) -> str | None:
    """The subject CN of ``SSLObject.getpeercert()`` (None without a certificate, or with
    none or several CNs: an ambiguous identity is no identity)."""
    if not peercert:
        return None
    cns = [v for rdn in peercert.get("subject", ()) for (k, v) in rdn if k == "commonName"]
    return cns[0] if len(cns) == 1 else None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What the transport tells about a connecting charger."""
    address: str = ""             # the charger's IP (the proxy's view when trusted)
    secure: bool = False          # TLS between the charger and its terminator
    cert_cn: str | None = None    # subject CN of a verified client certificate
    via_proxy: bool = False


class TrustedProxies:
    """``--trusted-proxies``: comma-separated addresses or CIDRs whose identity headers
    are believed. Headers from anyone else are ignored (a charger cannot claim a
    certificate by sending the header itself)."""

    def __init__(self, spec: str | None = "") -> None:
        self.nets = tuple(ipaddress.ip_network(p.strip(), strict=False)
                          for p in (spec or "").split(",") if p.strip())

    def __bool__(self) -> bool:
        return bool(self.nets)

    def trusts(self, address: str) -> bool:
        if not self.nets or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.nets)


def peer_identity(peername: object, ssl_object: object, headers: Mapping[str, str],
                  proxies: TrustedProxies) -> PeerIdentity:
    """The identity of one connection: from our own TLS, or from a trusted proxy's headers
    (``headers`` keyed by lower-case name)."""
    address = peername[0] if isinstance(peername, tuple) and peername else ""
    if ssl_object is not None:
        cert = ssl_object.getpeercert()  # type: ignore[attr-defined]  # verified, or None
        return PeerIdentity(address, True, subject_cn(cert))
    if proxies.trusts(address):
        real = (headers.get(HDR_REAL_IP) or "").strip() or address
        secure = (headers.get(HDR_PROTO) or "").strip().lower() in ("https", "wss")
        cn = None
        if (headers.get(HDR_VERIFY) or "").strip() == "SUCCESS":
            cn = (headers.get(HDR_CN) or "").strip() or None
        return PeerIdentity(real, secure, cn, True)
    return PeerIdentity(address, False, None)


__all__ = ["server_context", "subject_cn", "peer_identity", "PeerIdentity", "TrustedProxies",
           "TlsConfigError", "HDR_VERIFY", "HDR_CN", "HDR_PROTO", "HDR_REAL_IP"]
