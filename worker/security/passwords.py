"""Charger passwords: salted memory-hard hashes, and a verifier that survives a storm.

Hashes are scrypt (``hashlib.scrypt``, standard library: no extra dependency) written as
``scrypt$ln=14,r=8,p=1$<salt>$<key>`` (base64 without padding). The parameters travel
with each hash, so new hashes can use stronger ones while old hashes keep verifying.
n = 2^14, r = 8 costs 16 MiB and tens of milliseconds: cheap for one login, ruinous
for an offline guesser.

A reconnect storm must not queue thousands of scrypt runs, so :class:`PasswordVerifier`

* runs scrypt in a small thread pool (scrypt releases the GIL), never on the event loop,
  with a bounded number of checks in flight: beyond it a handshake is told to retry;
* remembers every successful (charger, password) check for the process lifetime as an
  HMAC-SHA256 under a per-process random key, bound to the stored hash it matched: a
  charger reconnecting with the same password costs one HMAC. A rotated or deleted
  password changes or removes the stored hash, so its cached entry no longer matches.

Passwords never appear in a log line, an exception message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

# OCPP: 16-40 characters (1.6 security whitepaper, 2.0.1 SecurityCtrlr.BasicAuthPassword)
MIN_LEN, MAX_LEN = 16, 40

DEFAULT_LN, DEFAULT_R, DEFAULT_P = 14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
_MAX_LN = 20  # a hash asking for more (1 GiB at r=8) is refused rather than run


class PasswordError(ValueError):
    """A password breaking the 16-40 character rule (the message never quotes it)."""


class VerifierBusy(Exception):
    """Too many checks in flight: tell the charger to retry (HTTP 503)."""


def check_rule(password: str) -> None:
    if not isinstance(password, str):
        raise PasswordError("the password must be a string")
    if not MIN_LEN <= len(password) <= MAX_LEN:
        raise PasswordError(f"the password must have {MIN_LEN}-{MAX_LEN} characters")
    if not password.isprintable() or not password.isascii():
        raise PasswordError("the password must be printable ASCII")


def generate_password() -> str:
    """40 hex digits (20 random bytes): fits both OCPP 1.6's hex AuthorizationKey and
    the 16-40 character rule."""
    return secrets.token_hex(20)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=max(64 << 20, 130 * n * r * p))


def hash_password(password: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new salted hash of ``password`` (which must pass :func:`check_rule`)."""
    check_rule(password)
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password.encode(), salt, ln, r, p, _KEY_BYTES)
    return f"scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, params, salt, key = stored.split("$")
    if scheme != "scrypt":
        raise ValueError("unknown password hash scheme")
    kv = dict(item.split("=", 1) for item in params.split(","))
    ln, r, p = int(kv["ln"]), int(kv["r"]), int(kv["p"])
    if not (1 <= ln <= _MAX_LN and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("password hash parameters out of range")
    return ln, r, p, _unb64(salt), _unb64(key)


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison of scrypt(password) with a stored hash; False for a
    malformed hash (never raises on bad input)."""
    try:
        ln, r, p, salt, key = _parse(stored)
    except (ValueError, KeyError, TypeError):
        return False
    if not isinstance(password, str) or len(password) > 4 * MAX_LEN:
        return False
    got = _scrypt(password.encode(), salt, ln, r, p, len(key))
    return hmac.compare_digest(got, key)


def needs_rehash(stored: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R, p: int = DEFAULT_P) -> bool:
    try:
        sln, sr, sp, _, _ = _parse(stored)
    except (ValueError, KeyError, TypeError):
        return True
    return (sln, sr, sp) < (ln, r, p)


class PasswordVerifier:
    """Checks a presented password against a charger's stored hashes (see module doc)."""

    def __init__(self, threads: int = 2, max_in_flight: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cy-pwcheck")
        self._key = os.urandom(32)
        # charger id -> (the stored hash it matched, HMAC of the password)
        self._known: dict[str, tuple[str, bytes]] = {}
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.slow_checks = 0   # scrypt runs (for the bench and the logs)
        self.fast_checks = 0   # HMAC hits

    def _mac(self, charger_id: str, password: str) -> bytes:
        return hmac.digest(self._key, charger_id.encode() + b"\0" + password.encode(), "sha256")

    def known(self, charger_id: str, password: str, hashes: Iterable[str]) -> str | None:
        """The stored hash this password was already verified against, if any (one HMAC)."""
        hit = self._known.get(charger_id)
        if hit is None or hit[0] not in hashes:
            return None
        if hmac.compare_digest(hit[1], self._mac(charger_id, password)):
            self.fast_checks += 1
            return hit[0]
        return None

    async def verify(self, charger_id: str, password: str, hashes: Iterable[str]) -> str | None:
        """The stored hash (of ``hashes``) that ``password`` matches, else None. Raises
        :class:`VerifierBusy` rather than queue more than ``max_in_flight`` scrypt runs."""
        hashes = tuple(hashes)
        if not hashes:
            return None
        hit = self.known(charger_id, password, hashes)
        if hit is not None:
            return hit
        if self.in_flight >= self.max_in_flight:
            raise VerifierBusy()
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            for stored in hashes:
                self.slow_checks += 1
                if await loop.run_in_executor(self._pool, verify_password, password, stored):
                    if len(self._known) > 1_000_000:  # bounded: one entry per charger
                        self._known.clear()
                    self._known[charger_id] = (stored, self._mac(charger_id, password))
                    return stored
            return None
        finally:
            self.in_flight -= 1

    def forget(self, charger_id: str) -> None:
        """Drop the cached check (rotation, deregistration)."""
        self._known.pop(charger_id, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["PasswordError", "VerifierBusy", "PasswordVerifier", "check_rule", "generate_password",
           "hash_password", "verify_password", "needs_rehash", "MIN_LEN", "MAX_LEN"]
