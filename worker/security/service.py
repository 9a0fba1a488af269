"""Charger security for one worker: everything the server needs, composed from settings.

The worker builds one :class:`ChargerSecurity`, serves through its gate when
:attr:`ChargerSecurity.gated`, and asks :meth:`ChargerSecurity.refusal` for the upgrade
answer of each connection. Settings read (all optional, defaults = profile 0):
``security_profile``, ``unknown_chargers``, ``tls_cert``, ``tls_key``, ``tls_client_ca``,
``trusted_proxies``, ``ca_cert``, ``ca_key``, and for the stored password verifiers
(ADR 0019) ``auth_cache_key``, ``auth_cache_key_file``, ``data_dir``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ...store.chargers import ChargerCredentialStore, ChargerCredentials
from .authcache import CacheKey, CacheKeyError, load_cache_key
from .certs import CertificateAuthority
from .gate import NOT_NOW, parse_head
from .handshake import ACCEPT0, UNKNOWN_ACCEPT, Authenticator, Decision
from .passwords import PasswordVerifier
from .tls import PeerIdentity, TlsConfigError, TrustedProxies, peer_identity, server_context

log = logging.getLogger("chargeyard.worker.security")


class SecurityConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Ticket:
    """The handshake check's result for one connection."""
    charger_id: str
    decision: Decision
    peer: PeerIdentity


# the precheck failed (store down): the charger retries shortly
UNAVAILABLE = Ticket("", Decision(503, "unavailable", retry_after=5), PeerIdentity())
_NO_PEER = PeerIdentity()


def _get(s: Any, name: str, default: Any) -> Any:
    v = getattr(s, name, default)
    return default if v is None else v


class ChargerSecurity:
    def __init__(self, settings: Any, store: Any, parse_id: Callable[[bytes], str | None],
                 *, cache_ttl: float = 5.0) -> None:
        s = settings
        self.profile = int(_get(s, "security_profile", 0))
        self.proxies = TrustedProxies(_get(s, "trusted_proxies", ""))
        cert, key, client_ca = _get(s, "tls_cert", ""), _get(s, "tls_key", ""), _get(s, "tls_client_ca", "")
        try:
            self.tls = server_context(cert, key, client_ca, require_client_cert=self.profile == 3) \
                if (cert or key) else None
        except TlsConfigError as exc:
            raise SecurityConfigError(str(exc)) from None
        if self.profile >= 2 and self.tls is None and not self.proxies:
            raise SecurityConfigError(f"security profile {self.profile} needs --tls-cert and --tls-key "
                                      "(or --trusted-proxies when a proxy terminates TLS)")
        if client_ca and self.tls is None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        ca_cert, ca_key = _get(s, "ca_cert", ""), _get(s, "ca_key", "")
        if bool(ca_cert) != bool(ca_key):
            raise SecurityConfigError("certificate signing needs both --ca-cert and --ca-key")
        try:
            self.ca = CertificateAuthority.from_files(ca_cert, ca_key) if ca_cert else None
        except (OSError, ValueError) as exc:
            raise SecurityConfigError(f"--ca-cert/--ca-key: {exc}") from None
        self.store = store if isinstance(store, ChargerCredentialStore) else None
        try:  # the key of the stored verifiers: shared by every worker on this store
            self.cache_key = load_cache_key(_get(s, "auth_cache_key", ""), _get(s, "auth_cache_key_file", ""),
                                            _get(s, "data_dir", "")) if self.store is not None \
                else CacheKey.per_process()
        except CacheKeyError as exc:
            raise SecurityConfigError(str(exc)) from None
        verifier = PasswordVerifier(cache_key=self.cache_key, on_verified=self._save_verifier)
        try:
            self.auth = Authenticator(self._lookup, profile=self.profile,
                                      unknown_chargers=_get(s, "unknown_chargers", ""), verifier=verifier)
        except ValueError as exc:
            raise SecurityConfigError(str(exc)) from None
        if self.profile >= 1 and self.store is None:
            raise SecurityConfigError(f"security profile {self.profile} needs a store that keeps charger "
                                      "credentials")
        self.parse_id = parse_id
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, ChargerCredentials | None]] = {}
        self._tasks: set[asyncio.Task] = set()
        # profile 0, unknown ids accepted, no TLS: only registered ids need a check; the
        # others are let in at once (quick), without a lookup per handshake
        self.open = (self.profile == 0 and self.auth.unknown == UNKNOWN_ACCEPT and self.tls is None
                     and not self.proxies and self.store is not None)
        self._registered: set[str] | None = None  # None: unknown yet (or too many): full checks

    REGISTERED_MAX = 10_000

    async def start(self) -> None:
        """Load the registered ids (open mode) and keep them fresh every ``cache_ttl``."""
        if self.open:
            await self._load_registered()
            t = asyncio.ensure_future(self._refresh_registered())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _load_registered(self) -> None:
        assert self.store is not None
        try:
            ids = await self.store.registered_charger_ids(self.REGISTERED_MAX + 1)
        except Exception as exc:  # full checks until the next refresh
            log.warning("could not read the registered charger ids: %r", exc)
            self._registered = None
            return
        self._registered = set(ids) if len(ids) <= self.REGISTERED_MAX else None

    async def _refresh_registered(self) -> None:
        while True:
            await asyncio.sleep(self.cache_ttl)
            await self._load_registered()

    def quick(self, head: bytes, transport: asyncio.BaseTransport) -> Ticket | None | object:
        """The gate's synchronous answer: in open mode an unregistered id is accepted at
        once; everything else is ``NOT_NOW`` (the full :meth:`precheck`)."""
        registered = self._registered
        if registered is None:
            return NOT_NOW
        line = head.split(b"\r\n", 1)[0].split(b" ")
        charger_id = self.parse_id(line[1]) if len(line) >= 3 else None
        if charger_id is None:
            return None  # picows' factory answers 400
        if charger_id in registered:
            return NOT_NOW
        return Ticket(charger_id, ACCEPT0, _NO_PEER)

    @property
    def gated(self) -> bool:
        """Whether handshakes go through the gate (else plain picows, as before)."""
        return self.store is not None or self.profile > 0 or self.tls is not None or bool(self.proxies)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"

    def describe(self) -> str:
        tls = "" if self.tls is None else (", TLS (client certificates " +
                                           ("required" if self.profile == 3 else "verified if sent") + ")"
                                           if self.tls.verify_mode.name != "CERT_NONE" else ", TLS")
        proxies = f", identity headers trusted from {len(self.proxies.nets)} proxy network(s)" if self.proxies else ""
        cache = f", password checks remembered under {self.cache_key.source}" if self.profile >= 1 else ""
        return self.auth.describe() + tls + proxies + cache

    # -- credentials, cached briefly (a cluster's API process changes them) --------------
    async def _lookup(self, charger_id: str) -> ChargerCredentials | None:
        if self.store is None:
            return None
        now = time.monotonic()
        hit = self._cache.get(charger_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        creds = await self.store.get_charger_credentials(charger_id)
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[charger_id] = (now + self.cache_ttl, creds)
        return creds

    def _save_verifier(self, charger_id: str, verifier: str) -> None:
        """A scrypt check succeeded: store its verifier for every worker (and this one's
        next start), and keep it in the cached credentials meanwhile."""
        if self.store is None:
            return
        hit = self._cache.get(charger_id)
        if hit is not None and hit[1] is not None:
            self._cache[charger_id] = (hit[0], msgspec.structs.replace(hit[1], verifier=verifier))
        t = asyncio.ensure_future(self._store_verifier(charger_id, verifier))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _store_verifier(self, charger_id: str, verifier: str) -> None:
        assert self.store is not None
        try:
            await self.store.put_charger_verifier(charger_id, verifier)
        except Exception as exc:  # the next login runs scrypt again: slower, never wrong
            log.warning("could not store the password verifier of %s: %s", charger_id, type(exc).__name__)

    def forget(self, charger_id: str) -> None:
        """Credentials changed here (API in this process): no waiting for the TTL."""
        self._cache.pop(charger_id, None)
        self.auth.forget(charger_id)
        if self._registered is not None:  # maybe registered now: full checks (a refresh drops it)
            self._registered.add(charger_id)

    # -- the handshake -----------------------------------------------------------------
    async def precheck(self, head: bytes, transport: asyncio.BaseTransport) -> Ticket | None:
        """The gate's check (see ``gate.GatedServer``); None: no charger id, picows' factory
        answers 400 as usual."""
        target, headers = parse_head(head)
        charger_id = self.parse_id(target)
        if charger_id is None:
            return None
        peer = peer_identity(transport.get_extra_info("peername"), transport.get_extra_info("ssl_object"),
                             headers, self.proxies)
        decision = await self.auth.decide(charger_id, headers.get("authorization"), peer)
        return Ticket(charger_id, decision, peer)

    def accepted(self, ticket: Ticket | None) -> None:
        """A charger got in. If it used the password the rotation put in force while the
        previous one is still kept, the rotation is complete: the previous one stops working."""
        if ticket is None or not ticket.decision.matched_hash or self.store is None:
            return
        hit = self._cache.get(ticket.charger_id)
        creds = hit[1] if hit is not None else None
        if creds is None or not creds.previous_password_hash or ticket.decision.matched_hash != creds.password_hash:
            return
        t = asyncio.ensure_future(self._complete_rotation(ticket.charger_id, creds.password_hash))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _complete_rotation(self, charger_id: str, new_hash: str) -> None:
        assert self.store is not None
        try:
            creds = await self.store.get_charger_credentials(charger_id)
            if creds is None or not creds.previous_password_hash or creds.password_hash != new_hash:
                return
            await self.store.put_charger_credentials(msgspec.structs.replace(creds, previous_password_hash=""))
            self.forget(charger_id)
            log.info("charger %s reconnected with its new password: the previous one no longer works", charger_id)
        except Exception as exc:
            log.warning("could not complete the password rotation of %s: %r", charger_id, exc)

    def close(self) -> None:
        self.auth.verifier.close()
        for t in list(self._tasks):
            t.cancel()


__all__ = ["ChargerSecurity", "SecurityConfigError", "Ticket", "UNAVAILABLE"]
