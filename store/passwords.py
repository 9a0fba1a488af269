"""Charger passwords: salted memory-hard hashes (the store keeps nothing else).

Hashes are scrypt (``hashlib.scrypt``, standard library: no extra dependency) written as
``scrypt$ln=14,r=8,p=1$<salt>$<key>`` (base64 without padding). The parameters travel
with each hash, so new hashes can use stronger ones while old hashes keep verifying.
n = 2^14, r = 8 costs 16 MiB and tens of milliseconds: cheap for one login, ruinous
for an offline guesser.

The worker checks them through ``chargeyard.worker.security.passwords.PasswordVerifier``
(thread pool, HMAC cache of successful checks).

Passwords never appear in a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

# OCPP: 16-40 characters (1.6 security whitepaper, 2.0.1 SecurityCtrlr.BasicAuthPassword)
MIN_LEN, MAX_LEN = 16, 40

DEFAULT_LN, DEFAULT_R, DEFAULT_P = 14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
_MAX_LN = 20  # a hash asking for more (1 GiB at r=8) is refused rather than run


class PasswordError(ValueError):
    """A password breaking the 16-40 character rule (the message never quotes it)."""


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


__all__ = ["PasswordError", "check_rule", "generate_password", "hash_password", "verify_password",
           "needs_rehash", "MIN_LEN", "MAX_LEN", "DEFAULT_LN", "DEFAULT_R", "DEFAULT_P"]
