"""Charger authentication at the WebSocket handshake, independent of picows.

:meth:`Authenticator.decide` takes what the upgrade request and the transport tell
(charger id, ``Authorization`` header, :class:`~.tls.PeerIdentity`) and answers a
:class:`Decision`: accept (101), 401, 429 with ``Retry-After``, or 503 when the password
checks are saturated. Refusals happen before any OCPP frame, so an impostor never
reaches the session table and never takes over a connected charger.

The profile a charger must meet is the node's ``--security-profile``, raised by its own
registration (``ChargerCredentials.security_profile``):

* 0: nothing to check;
* 1: HTTP Basic, username = charger id, password verified against the stored hashes;
* 2: as 1, over TLS (our own, or a trusted proxy's);
* 3: a verified client certificate whose subject CN equals the charger id (no Basic).

Unregistered ids: ``--unknown-chargers reject`` (the default from profile 1) refuses
them with 401 (the same answer as a wrong password: no registry probing); ``accept``
lets them in at the node's profile without a password (for profile 2 and 3 the TLS
conditions still hold).

Failures per charger id (5 a minute) and per address (50 a minute: a site's chargers
may share one NAT address) over a sliding window make the next attempts 429 with
``Retry-After``. A charger presenting a password that was already verified (one
HMAC, no scrypt: this process's verifier or the stored one, ADR 0019) is still admitted
while its id is throttled, so an attacker hammering an id cannot lock out the real
charger once it has connected.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...store.chargers import ChargerCredentials
from ..metrics import AUTH_FAILURES
from .passwords import PasswordVerifier, VerifierBusy
from .tls import PeerIdentity

log = logging.getLogger("chargeyard.worker.security")

# The bounded label set of chargeyard_ws_auth_failures_total{reason}
REASONS = (
    "missing_credentials",  # profile >= 1 and no (parsable) HTTP Basic header
    "bad_username",         # Basic username is not the charger id in the URL
    "bad_password",         # no stored hash matches
    "unknown_charger",      # not registered, --unknown-chargers reject
    "tls_required",         # profile >= 2 over plain ws
    "no_client_cert",       # profile 3 without a verified client certificate
    "cert_cn_mismatch",     # profile 3, certificate CN != charger id
    "rate_limited",         # answered 429
    "busy",                 # password checks saturated, answered 503
)

UNKNOWN_ACCEPT, UNKNOWN_REJECT = "accept", "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    status: int                        # 101 accept, 401, 429, 503
    reason: str = ""                   # one of REASONS when refused
    retry_after: int = 0
    profile: int = 0                   # the profile the charger met (when accepted)
    matched_hash: str = ""             # the stored hash the password matched (rotation)

    @property
    def accepted(self) -> bool:
        return self.status == 101

    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": 'Basic realm="chargeyard", charset="UTF-8"'}
        if self.retry_after:
            return {"Retry-After": str(self.retry_after)}
        return {}


ACCEPT0 = Decision(101)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:password)`` -> (user, password), or None.
    OCPP 1.6's AuthorizationKey may be sent as the raw key bytes; those are decoded as
    latin-1 so any byte string maps to one password string."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return user.decode("latin-1"), password.decode("latin-1")


class FailureWindow:
    """Failures per key over a sliding window; ``limit`` of them within ``window_s``
    throttle the key until the oldest one ages out."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def _trim(self, key: str, now: float) -> deque[float] | None:
        q = self._hits.get(key)
        if q is None:
            return None
        edge = now - self.window_s
        while q and q[0] <= edge:
            q.popleft()
        if not q:
            del self._hits[key]
            return None
        return q

    def retry_after(self, key: str, now: float) -> int:
        """Seconds until ``key`` may try again (0: not throttled)."""
        if not key or self.limit <= 0:
            return 0
        q = self._trim(key, now)
        if q is None or len(q) < self.limit:
            return 0
        return max(1, int(q[-self.limit] + self.window_s - now + 0.999))

    def fail(self, key: str, now: float) -> None:
        if not key or self.limit <= 0:
            return
        q = self._trim(key, now)
        if q is None:
            if len(self._hits) >= self.max_keys:
                self._hits.clear()  # bounded memory beats perfect memory under a flood
            q = self._hits[key] = deque(maxlen=self.limit)
        q.append(now)

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)


CredentialLookup = Callable[[str], Awaitable[ChargerCredentials | None]]


class Authenticator:
    def __init__(self, lookup: CredentialLookup, *, profile: int = 0, unknown_chargers: str = "",
                 verifier: PasswordVerifier | None = None,
                 id_failures: tuple[int, float] = (5, 60.0), address_failures: tuple[int, float] = (50, 60.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if profile not in (0, 1, 2, 3):
            raise ValueError(f"--security-profile must be 0, 1, 2 or 3, not {profile!r}")
        unknown_chargers = unknown_chargers or (UNKNOWN_ACCEPT if profile == 0 else UNKNOWN_REJECT)
        if unknown_chargers not in (UNKNOWN_ACCEPT, UNKNOWN_REJECT):
            raise ValueError(f"--unknown-chargers must be accept or reject, not {unknown_chargers!r}")
        self.lookup = lookup
        self.profile = profile
        self.unknown = unknown_chargers
        self.verifier = verifier or PasswordVerifier()
        self.by_id = FailureWindow(*id_failures)
        self.by_address = FailureWindow(*address_failures)
        self.clock = clock

    def describe(self) -> str:
        """One start-up log line (profile 0 says that any charger id is accepted)."""
        if self.profile == 0 and self.unknown == UNKNOWN_ACCEPT:
            return ("security profile 0: any charger id is accepted without authentication "
                    "(registered chargers still need their own profile)")
        return f"security profile {self.profile}: unknown charger ids are {self.unknown}ed"

    def _refuse(self, reason: str, charger_id: str, peer: PeerIdentity, *, count: bool = True,
                status: int = 401, retry_after: int = 0) -> Decision:
        AUTH_FAILURES.labels(reason).inc()
        if count:
            now = self.clock()
            self.by_id.fail(charger_id, now)
            if not peer.via_proxy or peer.address:
                self.by_address.fail(peer.address, now)
        log.info("charger %s refused at the handshake from %s: %s", charger_id, peer.address or "?", reason)
        return Decision(status, reason, retry_after)

    async def decide(self, charger_id: str, authorization: str | None, peer: PeerIdentity) -> Decision:
        creds = await self.lookup(charger_id)
        if creds is None:
            if self.unknown == UNKNOWN_REJECT:
                return await self._throttled_or(charger_id, peer, lambda: self._refuse(
                    "unknown_charger", charger_id, peer))
            required, hashes, stored_verifier = self.profile, (), ""
        else:
            required, hashes = max(self.profile, creds.security_profile), creds.hashes()
            stored_verifier = creds.verifier
        if required == 0:
            return ACCEPT0

        # TLS conditions first: they need no secret and no CPU
        if required >= 2 and not peer.secure:
            return self._refuse("tls_required", charger_id, peer, count=False)
        if required == 3:
            if peer.cert_cn is None:
                return self._refuse("no_client_cert", charger_id, peer)
            if peer.cert_cn != charger_id:
                return self._refuse("cert_cn_mismatch", charger_id, peer)
            return Decision(101, profile=3)
        if creds is None:  # unknown id, accepted by configuration: nothing to check against
            return Decision(101, profile=required)

        basic = parse_basic(authorization)
        password = basic[1] if basic is not None and basic[0] == charger_id else None
        # a password already verified (here, or by any worker with the cache key: the stored
        # verifier) passes even while the id is throttled
        if password is not None:
            hit = self.verifier.known(charger_id, password, hashes, stored_verifier)
            if hit is not None:
                return Decision(101, profile=required, matched_hash=hit)
        now = self.clock()
        wait = max(self.by_id.retry_after(charger_id, now), self.by_address.retry_after(peer.address, now))
        if wait:
            return self._refuse("rate_limited", charger_id, peer, count=False, status=429, retry_after=wait)
        if basic is None:
            return self._refuse("missing_credentials", charger_id, peer)
        if password is None:
            return self._refuse("bad_username", charger_id, peer)
        try:
            hit = await self.verifier.verify(charger_id, password, hashes, stored_verifier)
        except VerifierBusy:
            return self._refuse("busy", charger_id, peer, count=False, status=503, retry_after=1)
        if hit is None:
            return self._refuse("bad_password", charger_id, peer)
        return Decision(101, profile=required, matched_hash=hit)

    async def _throttled_or(self, charger_id: str, peer: PeerIdentity, refuse: Callable[[], Decision]) -> Decision:
        now = self.clock()
        wait = max(self.by_id.retry_after(charger_id, now), self.by_address.retry_after(peer.address, now))
        if wait:
            return self._refuse("rate_limited", charger_id, peer, count=False, status=429, retry_after=wait)
        return refuse()

    def forget(self, charger_id: str) -> None:
        """A charger's credentials changed or it was deregistered."""
        self.verifier.forget(charger_id)


__all__ = ["Authenticator", "Decision", "FailureWindow", "parse_basic", "REASONS", "AUTH_FAILURES",
           "UNKNOWN_ACCEPT", "UNKNOWN_REJECT"]
